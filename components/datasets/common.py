"""What every data set's `prepare()` shares: argument checks, the `.complete`
marker and atomic writes.

A prepared data set is a folder with a JSON `.complete` marker, written last, that
records the arguments it was prepared with (and whatever else the data set adds:
sources, statistics, counts). `prepare()` is idempotent through it:

  * `prepared(out, wanted, keys, what)`: True when `out` holds a finished output
    with the same arguments; ValueError when it holds one with other arguments,
    or something that is not a finished output;
  * `write_prepared(out, wanted, keys, what, write)`: has `write(tmp)` fill a
    temporary sibling folder and return the marker, writes the marker last, and
    renames the folder onto `out`, so `out` never holds a partial result.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

MARKER = '.complete'


def read_marker(out: Path) -> Optional[dict]:
  """The marker of out as a dict: None without a marker, {} when it is not JSON."""
  marker = out / MARKER
  if not marker.exists():
    return None
  try:
    return json.loads(marker.read_text())
  except ValueError:
    return {}


def matches(out: Path, wanted: dict, keys: Sequence[str], what: str) -> bool:
  """Whether out holds a finished output whose marker agrees with wanted on keys.

  Args:
    out: the output folder.
    wanted: the arguments asked for, with every key of keys.
    keys: the marker entries that must agree.
    what: names the output in the error, e.g. 'a prepared Fashion-MNIST subset'.

  Raises:
    ValueError: out has a marker that disagrees (prepared with other arguments).
  """
  marker = read_marker(out)
  if marker is None:
    return False
  if any(marker.get(k) != wanted[k] for k in keys):
    have = {k: marker.get(k) for k in keys}
    raise ValueError(
        f'{out} already holds {what} with {have}, not {wanted}; choose another '
        f'out_dir or delete {out}.')
  return True


def prepared(out: Path, wanted: dict, keys: Sequence[str], what: str) -> bool:
  """`matches`, and ValueError when out exists, is not empty and has no marker."""
  if matches(out, wanted, keys, what):
    return True
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise ValueError(f'{out} exists but has no {MARKER} marker, so it is not a '
                     'finished prepare() output; delete it or choose another out_dir.')
  return False


def write_prepared(out: Path, wanted: dict, keys: Sequence[str], what: str,
                   write: Callable[[Path], dict]) -> Path:
  """Writes a prepared output atomically; returns out.

  `write(tmp)` writes the data into tmp, a new temporary sibling folder of out
  (mode 0755), and returns the marker dict; the marker is written last as indented
  JSON, and tmp is renamed onto out (which must be missing or an empty folder). If
  another process finished a matching output first, that one is kept. tmp is
  removed whatever happens.
  """
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.tmp', dir=out.parent))
  try:
    tmp.chmod(0o755)  # mkdtemp makes it private; the data is meant to be shared.
    marker = write(tmp)
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + '\n')
    try:
      os.rename(tmp, out)  # Replaces `out` only when it is an empty folder.
    except OSError:
      if not matches(out, wanted, keys, what):  # Another process finished first: fine.
        raise
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return out


def check_seed(seed) -> int:
  """A non-negative integer seed, or ValueError."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed must be a non-negative integer, not {seed!r}')
  return int(seed)


def check_features(input_name: str, input_feature, label_feature) -> None:
  """Two different, non-empty feature names, or ValueError naming them."""
  for name, value in ((input_name, input_feature),
                      ('label_feature', label_feature)):
    if not isinstance(value, str) or not value:
      raise ValueError(f'{name} must be a non-empty string, not {value!r}')
  if input_feature == label_feature:
    raise ValueError(f'{input_name} and label_feature must differ, both are '
                     f'{input_feature!r}')
