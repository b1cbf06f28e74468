"""Idempotent, atomic module builds, shared by the offline module builders.

Every builder (mobilenet_v1, mobilenet_v2, efficientnet_lite, glove, minilm) writes each of its modules into
`data_dir()/'modules'/<name>` the same way:

  * a finished build holds a `.complete` marker, written last, whose text is the
    spec's fingerprint; a folder whose marker holds that fingerprint is complete
    and is returned at once (nothing here imports TensorFlow);
  * otherwise the module is exported into a temporary sibling folder
    (`.<name>.*.building`), the marker is written into it, and it is renamed into
    place, so the target is never half written. An old or interrupted target is
    moved aside and deleted.

`module_dir`, `lookup`, `is_complete` and `build_once` are that logic, and
`module_path`, `is_built` and `build` apply it to a builder's `MODULES` (specs
with `name` and `fingerprint`); each builder keeps its `MODULES` and its
`build_module(name, force)`, which says how a module is exported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from hubpipe.components.assets import data_dir

COMPLETE_MARKER = '.complete'

Spec = TypeVar('Spec')


def lookup(modules: Mapping[str, Spec], name: str) -> Spec:
  """modules[name], or ValueError naming the known modules."""
  try:
    return modules[name]
  except KeyError:
    raise ValueError(f'unknown module {name!r}; known modules: '
                     f'{", ".join(sorted(modules))}') from None


def module_dir(name: str) -> Path:
  """`data_dir()/'modules'/name`: where a module called name is built."""
  return data_dir() / 'modules' / name


def is_complete(target: Path, fingerprint: str) -> bool:
  """Whether target holds a complete build: a `.complete` marker reading fingerprint."""
  try:
    return (target / COMPLETE_MARKER).read_text() == fingerprint
  except OSError:
    return False


def module_path(modules: Mapping[str, Spec], name: str) -> Path:
  """Where a registered module is built (it may not be built yet)."""
  return module_dir(lookup(modules, name).name)


def is_built(modules: Mapping[str, Spec], name: str) -> bool:
  """Whether a registered module's folder holds a build of its current spec."""
  spec = lookup(modules, name)
  return is_complete(module_dir(spec.name), spec.fingerprint)


def build(modules: Mapping[str, Spec], name: str,
          export: Callable[[Path], object], force: bool = False) -> Path:
  """`build_once` for a registered module: its folder and fingerprint."""
  spec = lookup(modules, name)
  return build_once(module_dir(spec.name), spec.fingerprint, export, force)


def build_once(target: Path, fingerprint: str, export: Callable[[Path], object],
               force: bool = False) -> Path:
  """Builds into target once; returns target.

  When target is complete for fingerprint (see `is_complete`) and not force, returns
  at once. Otherwise calls `export(folder)` to write the module into a new folder
  inside a temporary sibling of target, writes the `.complete` marker there last,
  and renames the folder onto target (an old target is moved aside and deleted).
  If another process installs a complete build meanwhile, that one is kept.

  Raises:
    RuntimeError: target was replaced by a build of another fingerprint meanwhile.
    Whatever export raises; target is then left as it was.
  """
  if not force and is_complete(target, fingerprint):
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=f'.{target.name}.', suffix='.building',
                                  dir=target.parent))
  try:
    export_dir = staging / target.name
    export(export_dir)
    (export_dir / COMPLETE_MARKER).write_text(fingerprint)
    _install(export_dir, target, staging)
    if not is_complete(target, fingerprint):
      raise RuntimeError(f'{target} was replaced while building')
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return target


def _install(built: Path, target: Path, staging: Path) -> None:
  """Renames built onto target, moving an old target into staging to be deleted."""
  if target.exists():
    os.rename(target, staging / 'replaced')
  try:
    os.rename(built, target)
  except OSError:
    # Another process installed the module meanwhile; keep its complete build.
    if not (target / COMPLETE_MARKER).exists():
      raise
