"""Turns a module handle from the config into something hub.KerasLayer loads.

A handle is one of:
  - the name of a module hubpipe builds offline (`hubpipe modules list`),
    built on first use and cached under the data directory;
  - a local SavedModel folder (TF2 SavedModel or TF1 Hub format);
  - a TF Hub handle: a tfhub.dev or Kaggle model URL, or a gs:// path, which
    tensorflow_hub downloads into TFHUB_CACHE_DIR.

A URL that is already in TFHUB_CACHE_DIR is used from there without network.
Otherwise its host is probed with a short timeout first, so that a machine
without network fails in seconds with a message saying how to use a local copy,
instead of hanging in a download.
"""

import hashlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

METADATA_FILE = os.path.join('assets.extra', 'hubpipe_module.json')
PROBE_TIMEOUT_S = 3.0
GCS_HOST = 'storage.googleapis.com'


class ModuleNotFound(ValueError):
  """The handle names no module that can be loaded."""


class ModuleUnavailable(RuntimeError):
  """The handle is a URL, not cached, and its host cannot be reached."""


def kind(handle: str) -> str:
  """'offline', 'url', 'gcs' or 'local'."""
  from hubpipe.components.hub_modules import registry
  if registry.is_offline(handle):
    return 'offline'
  if handle.startswith(('http://', 'https://')):
    return 'url'
  if handle.startswith('gs://'):
    return 'gcs'
  return 'local'


def cache_dir() -> str:
  """TF Hub's cache folder: TFHUB_CACHE_DIR, else tensorflow_hub's default."""
  return os.environ.get('TFHUB_CACHE_DIR') or os.path.join(
      tempfile.gettempdir(), 'tfhub_modules')


def cached_path(handle: str) -> Optional[str]:
  """Where tensorflow_hub keeps `handle` once downloaded, if it is there."""
  path = os.path.join(cache_dir(), hashlib.sha1(handle.encode('utf8')).hexdigest())
  if os.path.exists(os.path.join(path, 'saved_model.pb')) and not os.path.exists(
      path + '.lock'):
    return path
  return None


def _reachable(host: str, port: int = 443,
               timeout: float = PROBE_TIMEOUT_S) -> bool:
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def _unavailable(handle: str, host: str) -> ModuleUnavailable:
  digest = hashlib.sha1(handle.encode('utf8')).hexdigest()
  return ModuleUnavailable(
      f'module.handle: cannot reach {host} to download {handle} (no network?). '
      'Use a local copy instead: download and unpack the module on a machine '
      'with network, then either set module.handle to that folder, or copy it '
      f'to {os.path.join(cache_dir(), digest)} (TFHUB_CACHE_DIR/<sha1 of the '
      'handle>) so the URL resolves offline. Offline modules hubpipe builds '
      'itself: `hubpipe modules list`.')


def resolve(handle: str, probe_timeout: float = PROBE_TIMEOUT_S) -> str:
  """Returns a loadable handle: a local path for all but uncached gs:// paths."""
  from hubpipe.components.hub_modules import registry
  handle_kind = kind(handle)
  if handle_kind == 'offline':
    return str(registry.build(handle))
  if handle_kind in ('url', 'gcs'):
    cached = cached_path(handle)
    if cached:
      return cached
    url = urlparse(handle)
    host, port = ((url.hostname, url.port or 443) if handle_kind == 'url'
                  else (GCS_HOST, 443))
    if not _reachable(host, port, timeout=probe_timeout):
      raise _unavailable(handle, host)
    import tensorflow_hub as hub
    return hub.resolve(handle)
  path = Path(handle).expanduser()
  if path.is_dir():
    if not (path / 'saved_model.pb').exists():
      raise ModuleNotFound(
          f'module.handle: {path} is a folder but holds no saved_model.pb; '
          'point it at a TF2 SavedModel (or TF1 Hub format) folder.')
    return str(path.resolve())
  raise ModuleNotFound(
      f'module.handle: "{handle}" is neither an offline module '
      f'({", ".join(sorted(registry.offline_modules()))}), nor a local '
      'SavedModel folder, nor a TF Hub URL or gs:// path.')


def metadata(resolved: str) -> dict:
  """hubpipe's metadata for a module (input size, value range...), if it has any."""
  if '://' in resolved:
    return {}
  path = Path(resolved) / METADATA_FILE
  return json.loads(path.read_text()) if path.exists() else {}
