"""The modules hubpipe builds offline, from pinned packages, by name.

Each builder module (mobilenet_v1, mobilenet_v2, efficientnet_lite, glove, minilm) has a `MODULES` dict of specs
with a `description`, and `build_module(name, force=False) -> Path` that is
idempotent. This file only gathers them.
"""

import importlib
from pathlib import Path
from typing import Dict

BUILDERS = ('mobilenet_v1', 'mobilenet_v2', 'efficientnet_lite', 'glove', 'minilm')


def _builder(module_name: str):
  return importlib.import_module(f'hubpipe.components.hub_modules.{module_name}')


def offline_modules() -> Dict[str, str]:
  """{module name: one-line description}, for every buildable module."""
  out = {}
  for builder in BUILDERS:
    for name, spec in _builder(builder).MODULES.items():
      out[name] = spec.description
  return out


def _owner(name: str):
  for builder in BUILDERS:
    module = _builder(builder)
    if name in module.MODULES:
      return module
  raise KeyError(name)


def is_offline(name: str) -> bool:
  try:
    _owner(name)
    return True
  except KeyError:
    return False


def build(name: str, force: bool = False) -> Path:
  """Fetches, checks and converts one offline module (no work when built)."""
  try:
    module = _owner(name)
  except KeyError:
    raise ValueError(f'unknown offline module "{name}"; known: '
                     f'{", ".join(sorted(offline_modules()))}') from None
  return Path(module.build_module(name, force=force))
