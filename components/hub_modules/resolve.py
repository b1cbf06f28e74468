"""Turns a module handle from the config into something hub.KerasLayer loads.

A handle is one of: the name of a module hubpipe builds offline (built on first
use, then cached under the data directory), a local SavedModel folder, or a TF
Hub handle (tfhub.dev / Kaggle URL, gs:// path) that tensorflow_hub resolves
itself, honouring TFHUB_CACHE_DIR.
"""

import json
import os
from pathlib import Path

METADATA_FILE = os.path.join('assets.extra', 'hubpipe_module.json')


class ModuleNotFound(ValueError):
  """The handle names no module that can be loaded."""


def _offline_modules():
  from hubpipe.components.hub_modules import mobilenet_v1
  return mobilenet_v1.MODULES


def resolve(handle: str) -> str:
  """Returns a loadable handle (a local path for offline and local modules)."""
  offline = _offline_modules()
  if handle in offline:
    from hubpipe.components.hub_modules import mobilenet_v1
    return str(mobilenet_v1.build_module(handle))
  if '://' in handle:
    return handle
  path = Path(handle).expanduser()
  if path.is_dir():
    if not (path / 'saved_model.pb').exists():
      raise ModuleNotFound(
          f'module.handle: {path} is a folder but holds no saved_model.pb; '
          'point it at a TF2 SavedModel folder.')
    return str(path.resolve())
  raise ModuleNotFound(
      f'module.handle: "{handle}" is neither an offline module '
      f'({", ".join(sorted(offline))}), nor a local SavedModel folder, nor a '
      'TF Hub URL.')


def metadata(resolved: str) -> dict:
  """hubpipe's metadata for a module (input size, value range...), if it has any."""
  if '://' in resolved:
    return {}
  path = Path(resolved) / METADATA_FILE
  return json.loads(path.read_text()) if path.exists() else {}


def input_size(resolved: str, configured=None) -> list:
  """[height, width] for the Transform: the config's, else the module's own."""
  if configured:
    return list(configured)
  size = metadata(resolved).get('input_size')
  if not size:
    raise ModuleNotFound(
        f'the module {resolved} does not declare its input size; set '
        'module.input_size: [height, width] in the config.')
  return list(size)
