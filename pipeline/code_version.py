"""A digest of the code each step runs, so that editing it reruns the step.

TFX names hubpipe's preprocessing_fn and run_fn by dotted path, and its
custom components by executor class. ML Metadata's cache key holds that
name, not the code behind it: after an edit to hubpipe (or an upgrade), a
rerun with the same data and config would reuse what the old code made.
`digest(step)` hashes the source files the step runs (and hubpipe's
version); the DAG puts it into the step's parameters, which are part of the
cache key. An unchanged rerun still hits the cache.

TFX's own answer, `module_file`, packages one user file into a wheel and
keys on it; hubpipe's steps import a whole package, so they are keyed on
the package's files instead.
"""

import functools
import hashlib
from importlib import metadata
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[1]

# Source each step runs: folders (every .py file under them) or files,
# relative to the package root: what its entry module imports
# (tests/test_code_version.py checks), and the modules it imports when it
# runs (building an offline module, the hybrid's partial unfreezing).
_PACKAGES = ('components/__init__.py', 'pipeline/__init__.py')
_MODULES = ('components/hub_modules', 'components/assets.py',
            'pipeline/config.py') + _PACKAGES
_MODELING = ('components/modeling',) + _MODULES
STEPS = {
    'ExampleGen': ('components/snapshot_example_gen',
                   'components/image_folder_example_gen',
                   'components/data_snapshot') + _PACKAGES,
    'Transform': ('components/transform', 'components/modeling/__init__.py',
                  'components/modeling/modules.py') + _MODULES,
    # code_version itself: the embedding cache's identity holds the
    # Transform's digest (components/trainer/run.py).
    'Trainer': ('components/trainer', 'pipeline/code_version.py',
                'components/faults.py') + _MODELING,
    'ModuleSelector': ('components/module_selector',
                       'components/report_svg.py') + _MODELING,
    'Compressor': ('components/compressor', 'components/report_svg.py')
                  + _MODELING,
}
# The module each step starts from (its executor, run_fn or preprocessing_fn).
ENTRY_MODULES = {
    'ExampleGen': ('hubpipe.components.snapshot_example_gen.executor',),
    'Transform': ('hubpipe.components.transform.image',
                  'hubpipe.components.transform.text'),
    'Trainer': ('hubpipe.components.trainer.run',
                'hubpipe.components.trainer.executor'),
    'ModuleSelector': ('hubpipe.components.module_selector.executor',),
    'Compressor': ('hubpipe.components.compressor.executor',),
}


def _version() -> str:
  try:
    return metadata.version('hubpipe')
  except metadata.PackageNotFoundError:
    return 'unknown'


def files_of(paths: Iterable[str], root: Path = ROOT) -> list:
  out = set()
  for path in paths:
    full = root / path
    if full.is_dir():
      out.update(p for p in full.rglob('*.py') if '__pycache__' not in p.parts)
    elif full.is_file():
      out.add(full)
  return sorted(out)


def digest_of(paths: Iterable[str], root: Path = ROOT) -> str:
  """sha256 (16 hex digits) of the .py files under `paths` and hubpipe's
  version."""
  sha = hashlib.sha256(_version().encode())
  for path in files_of(paths, root):
    sha.update(str(path.relative_to(root)).encode() + b'\0')
    sha.update(path.read_bytes() + b'\0')
  return sha.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def digest(step: str) -> str:
  """The digest of the code `step` (a key of STEPS) runs."""
  return digest_of(STEPS[step])
