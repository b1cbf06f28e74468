"""What a run ingests and what it is measured against, worked out fresh each run.

A scheduled pipeline is compiled once and then run again and again with the
same parameters. Whether a run has anything new to do depends on things
outside the pipeline: the files under the data root and the models under the
serving dir. `take()` looks at both and returns two strings that later steps
take as parameters (and, for the log, the spans still waiting for their ready
marker), so that an orchestrator's cache (KFP's, or ML Metadata's locally)
keys on what is really there:

- `examples`: the data snapshot (JSON): for each split, the file patterns to
  ingest (with span folders: the newest span's eval files and the train files
  of the latest N spans), the spans, and a fingerprint of every file the
  patterns match (path, size, modification time). It changes exactly when
  the data does, so ExampleGen (and every step after it) reruns on new data
  and is a cache hit otherwise.
- `baseline`: the pushed model version the run warm-starts from and is gated
  against: the model in service when this data (with this pipeline
  definition) arrived. The last snapshot's key and baseline are kept in
  `<state_dir>/last_snapshot.json`: while the data and pipeline stay the
  same, the baseline stays the same, so a run with no new data has the same
  inputs as the run before it and pushes nothing new; when either changes
  (new data, data put back as it was, a new config), the baseline is the
  newest push then, the model in service. That push must load (its
  saved_model.pb parses, its variables read back): a broken one stops the
  run (BrokenBaselineError) naming the folder and the fix, rather than be
  skipped for an older push or none.

With `ready_marker` (e.g. '_SUCCESS'), a span folder (or, without spans, the
data root) counts only once that file is in it: a delivery still being
written is left for a later run.

Everything goes through tf.io.gfile, so the data root, the serving dir and
the state dir may be on object storage (gs://, s3://).
"""

import hashlib
import json
import os
import posixpath
import re
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

SPLITS = ('train', 'eval')
# Optional: a validation/ folder beside train/ and eval/ (else ExampleGen
# carves the validation split out of train).
VALIDATION = 'validation'
SPAN = '{SPAN}'
# source 'csv' without split folders: the one "split" of the CSV files at the
# data root, whose rows a column routes (snapshot_example_gen/executor.py).
ALL_ROWS = 'all'
# Beside the splits, optional: the class names of integer labels, one a line
# in id order (the bundled data sets write one); part of the fingerprint.
CLASSES_FILE = 'classes.txt'
LAST_SNAPSHOT = 'last_snapshot.json'


class SnapshotError(ValueError):
  """The data root does not hold what the config says it does."""


def _join(*parts: str) -> str:
  # URIs (gs://, s3://) always use '/', local paths too on the systems we run.
  return posixpath.join(*parts)


def list_spans(input_base: str, span_pattern: str) -> Dict[int, str]:
  """{span number: folder name} of the folders under `input_base` that match
  `span_pattern` (e.g. 'span-{SPAN}': span-7, span-07 and span-0007 are all
  span 7; two folders for one span are an error)."""
  regex = re.compile(
      '^' + re.escape(span_pattern).replace(re.escape(SPAN), r'(\d+)') + '$')
  names = [name.rstrip('/') for name in tf.io.gfile.listdir(input_base)] if (
      tf.io.gfile.isdir(input_base)) else []
  spans = {}
  for name in sorted(names):
    match = regex.match(name)
    if not match:
      continue
    number = int(match.group(1))
    if number in spans:
      raise SnapshotError(
          f'{input_base} holds two folders for span {number}: '
          f'{spans[number]} and {name}. Keep one.')
    spans[number] = name
  return dict(sorted(spans.items()))


def _files(pattern: str) -> List[str]:
  try:
    return sorted(p for p in tf.io.gfile.glob(pattern)
                  if not tf.io.gfile.isdir(p))
  except tf.errors.OpError as err:  # a folder it may not list
    raise _unreadable(posixpath.dirname(pattern), err) from None


def _unreadable(folder: str, err: Exception) -> SnapshotError:
  reason = getattr(err, 'message', None) or str(err)
  return SnapshotError(
      f'{folder} cannot be read ({reason}): give the user that runs hubpipe '
      f'read access to the data (e.g. chmod -R a+rX {folder}), or point '
      'data.path / --data-root at a copy it can read.')


def _check_readable(folder: str) -> None:
  try:
    tf.io.gfile.listdir(folder)
  except tf.errors.OpError as err:
    raise _unreadable(folder, err) from None


def _walk_files(root: str) -> List[str]:
  out = []
  try:
    for folder, _, files in tf.io.gfile.walk(root):
      out.extend(_join(folder, f) for f in files)
  except tf.errors.OpError as err:  # a sub-folder it may not list
    raise _unreadable(root, err) from None
  return sorted(out)


def _check_image_folder(input_base: str) -> None:
  """The layout the image folder ExampleGen reads (class folders, images in
  each, two classes or more), checked before any step runs."""
  # Imported here: the snapshot of TFRecord and CSV data needs no TFX.
  from hubpipe.components.image_folder_example_gen import component  # pylint: disable=g-import-not-at-top
  from hubpipe.components.image_folder_example_gen import executor  # pylint: disable=g-import-not-at-top
  try:
    input_config, _ = component.split_configs(input_base)
    executor.check_layout(input_base,
                          [(s.name, s.pattern) for s in input_config.splits])
  except ValueError as err:
    raise SnapshotError(str(err)) from None


def fingerprint(files: List[str], base: str) -> Dict:
  """{files, bytes, sha256}: the listing (path below `base`, size, mtime),
  in path order."""
  digest = hashlib.sha256()
  total = 0
  files = sorted(set(files))
  for path in files:
    stat = tf.io.gfile.stat(path)
    total += stat.length
    relative = path[len(base):].lstrip('/') if path.startswith(base) else path
    digest.update(f'{relative}\t{stat.length}\t'
                  f'{stat.mtime_nsec}\n'.encode())
  return {'files': len(files), 'bytes': total, 'sha256': digest.hexdigest()}


def _ready(folder: str, ready_marker: Optional[str]) -> bool:
  return not ready_marker or tf.io.gfile.exists(_join(folder, ready_marker))


def examples_snapshot(input_base: str, source: str = 'tfrecord',
                      span_pattern: Optional[str] = None,
                      latest_spans: int = 1,
                      ready_marker: Optional[str] = None
                      ) -> Tuple[Dict, List[int]]:
  """(The data snapshot (see the module docstring) as a dict, the spans
  left for later: without their ready marker yet).

  source 'tfrecord': `input_base` holds train/ and eval/ folders of TFRecord
  files (and optionally validation/), or span folders that each hold them.
  source 'csv': the same with CSV files, or (no train/ folder, no spans)
  the `*.csv` files at the root, one split (ALL_ROWS) that a column routes.
  source 'image_folder': the whole folder is fingerprinted; its layout is
  checked as the image ExampleGen reads it (class folders, images in each,
  two classes or more), so that a wrong one stops the run before any step.
  A data root (or a folder in it) that cannot be listed is a SnapshotError.
  """
  if not tf.io.gfile.isdir(input_base):
    raise SnapshotError(f'data root {input_base} is not a folder (or cannot '
                        'be read): check data.path / --data-root.')
  _check_readable(input_base)
  snapshot = {'input_base': input_base, 'source': source, 'spans': None,
              'span': 0, 'splits': None}
  if not span_pattern and not _ready(input_base, ready_marker):
    raise SnapshotError(
        f'data root {input_base} has no {ready_marker} file (data.'
        'ready_marker): the delivery is not complete. Write it last, once '
        'every file is in place.')
  if source == 'image_folder':
    if not _walk_files(input_base):
      raise SnapshotError(
          f'data root {input_base} holds no files: deliver the images there '
          '(a folder per class, or train/ and eval/ folders of class '
          'folders), or point data.path / --data-root at them.')
    _check_image_folder(input_base)
    snapshot['fingerprint'] = refingerprint(snapshot)
    return snapshot, []

  if span_pattern:
    found = list_spans(input_base, span_pattern)
    ready = {n: f for n, f in found.items()
             if _ready(_join(input_base, f), ready_marker)}
    if not ready:
      raise SnapshotError(
          f'no folder under {input_base} matches data.span_pattern '
          f'"{span_pattern}" (e.g. {span_pattern.replace(SPAN, "1")}/train/)'
          + (f' and holds its {ready_marker} file (data.ready_marker)'
             if ready_marker and found else '') + '.')
    window = sorted(ready)[-latest_spans:]
    # Train on the latest N spans; evaluate (and gate) on the newest.
    folders = {'train': [ready[s] for s in window],
               'eval': [ready[window[-1]]]}
    # The newest span's own validation data, when it brings some.
    if tf.io.gfile.isdir(_join(input_base, ready[window[-1]], VALIDATION)):
      folders[VALIDATION] = [ready[window[-1]]]
    snapshot.update(spans=window, span=window[-1])
    # Not part of the parameter ExampleGen caches on: a delivery in
    # progress must not make the next run look new.
    waiting = sorted(set(found) - set(ready))
  elif source == 'csv' and not tf.io.gfile.isdir(_join(input_base, 'train')):
    snapshot['splits'] = {ALL_ROWS: ['*.csv']}
    snapshot['fingerprint'] = refingerprint(snapshot, check=True)
    return snapshot, []
  else:
    folders = {split: [''] for split in SPLITS}
    if tf.io.gfile.isdir(_join(input_base, VALIDATION)):
      folders[VALIDATION] = ['']
  # CSV folders: only the .csv files (not a _SUCCESS marker, a README...).
  files = '*.csv' if source == 'csv' else '*'
  snapshot['splits'] = {
      split: [_join(folder, split, files) if folder else _join(split, files)
              for folder in folders[split]] for split in folders}
  snapshot['fingerprint'] = refingerprint(snapshot, check=True)
  return snapshot, (waiting if span_pattern else [])


def files_of(snapshot: Dict, check: bool = False) -> Dict[str, List[str]]:
  """{split: the files its patterns match now} (files only: sub-folders are
  not read); with `check`, a pattern that matches no file is an error."""
  base = snapshot['input_base']
  out = {}
  for split, patterns in snapshot['splits'].items():
    out[split] = []
    for pattern in patterns:
      matched = _files(_join(base, pattern))
      if check and not matched:
        kind = ('CSV files' if snapshot.get('source') == 'csv'
                else 'TFRecord files of tf.Examples')
        where = 'span folder' if snapshot['spans'] else 'data root'
        also = (', or CSV files with a split column (data.split_feature)'
                if snapshot.get('source') == 'csv' and not snapshot['spans']
                else '')
        raise SnapshotError(
            f'{_join(base, pattern)} matches no file: each {where} must hold '
            f'train/ and eval/ folders of {kind}{also}.')
      out[split] += matched
  return out


def refingerprint(snapshot: Dict, check: bool = False) -> Dict:
  """The fingerprint of the files `snapshot` names, as they are now."""
  base = snapshot['input_base']
  if not snapshot['splits']:
    return fingerprint(_walk_files(base), base)
  names = _join(base, CLASSES_FILE)
  return fingerprint([f for files in files_of(snapshot, check).values()
                      for f in files]
                     + ([names] if tf.io.gfile.exists(names) else []), base)


def latest_version(serving_dir: str) -> Optional[str]:
  """The newest numbered version folder under `serving_dir` holding a
  SavedModel, or None."""
  if not serving_dir or not tf.io.gfile.isdir(serving_dir):
    return None
  versions = sorted(
      (int(name.rstrip('/')) for name in tf.io.gfile.listdir(serving_dir)
       if name.rstrip('/').isdigit() and tf.io.gfile.exists(
           _join(serving_dir, name.rstrip('/'), 'saved_model.pb'))),
      reverse=True)
  return _join(serving_dir, str(versions[0])) if versions else None


class BrokenBaselineError(SnapshotError):
  """The push a run would be measured against does not load."""


def broken_saved_model(folder: str, read_variables: bool = True
                       ) -> Optional[str]:
  """What is wrong with the SavedModel in `folder` (None: nothing found):
  a saved_model.pb that does not parse (truncated, overwritten), or
  variables that are missing or do not read back (with `read_variables`,
  every tensor is read: the checkpoint's checksums are checked; a few tens
  of milliseconds for a MobileNet, the model's size read on object storage;
  without, only that the index and data files are there). It does not
  build the model."""
  # pylint: disable=g-import-not-at-top
  from tensorflow.core.protobuf import saved_model_pb2
  from google.protobuf import message
  graph = saved_model_pb2.SavedModel()
  try:
    with tf.io.gfile.GFile(_join(folder, 'saved_model.pb'), 'rb') as f:
      graph.ParseFromString(f.read())
  except (message.DecodeError, tf.errors.OpError) as err:
    return f'its saved_model.pb does not parse ({err}): truncated or damaged'
  if not graph.meta_graphs:
    return 'its saved_model.pb holds no graph (an empty or truncated file)'
  prefix = _join(folder, 'variables', 'variables')
  if not tf.io.gfile.exists(f'{prefix}.index'):
    return 'its variables (variables/variables.index) are missing'
  if not read_variables:
    if not tf.io.gfile.glob(f'{prefix}.data-*'):
      return 'its variables (variables/variables.data-*) are missing'
    return None
  try:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except (tf.errors.OpError, IndexError, ValueError) as err:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ''
    return (f'its variables do not read back ({type(err).__name__}: '
            f'{first}): missing, truncated or damaged')
  return None


def _listing(folder: str) -> list:
  """[path under `folder`, size, modification time] of its files: what
  tells that a checked SavedModel has not changed since."""
  out = []
  for path, _, files in tf.io.gfile.walk(folder):
    for name in files:
      stat = tf.io.gfile.stat(_join(path, name))
      out.append([_join(path, name)[len(folder):], stat.length,
                  stat.mtime_nsec])
  return sorted(out)


def check_baseline(baseline: str, read_variables: bool = True) -> str:
  """`baseline`, once it is checked that the SavedModel there loads; raises
  BrokenBaselineError naming the folder and the fix."""
  if baseline:
    wrong = broken_saved_model(baseline, read_variables)
    if wrong:
      raise BrokenBaselineError(
          f'the pushed model {baseline}, the push this run is measured '
          f'against (and warm-starts from), is broken: {wrong}. TF Serving '
          'cannot load it either. Remove that version folder (the push '
          'before it then becomes the baseline) or push that model again, '
          'then run again. Nothing was trained or pushed.')
  return baseline


def baseline_for(examples: Dict, identity: str, serving_dir: str,
                 state_dir: str) -> str:
  """The pushed version this run is measured against ('' when none): the
  last snapshot's, while the data and the pipeline `identity` are the same
  as then and that push is still there; else the newest push now (and this
  snapshot becomes the last)."""
  key = hashlib.sha256(json.dumps(
      [examples['fingerprint'], examples['splits'], identity],
      sort_keys=True).encode()).hexdigest()[:32]
  record = _join(state_dir, LAST_SNAPSHOT)
  if tf.io.gfile.exists(record):
    with tf.io.gfile.GFile(record) as f:
      last = json.load(f)
    kept = last.get('baseline', '')
    if last.get('key') == key and (not kept or tf.io.gfile.exists(
        _join(kept, 'saved_model.pb'))):
      # Read in full when it was chosen; read again only if its files
      # changed since (their sizes and times, from a listing).
      unchanged = bool(kept) and last.get('baseline_files') == _listing(kept)
      return check_baseline(kept, read_variables=not unchanged)
  # A broken newest push is not skipped for the one before it: it is the
  # model TF Serving is meant to serve, so it stops the run (see
  # check_baseline) before anything is measured against a guess.
  baseline = check_baseline(latest_version(serving_dir) or '')
  tf.io.gfile.makedirs(state_dir)
  # Written aside and renamed: a killed run leaves no half-written record.
  tmp = f'{record}.tmp-{os.getpid()}'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    json.dump({'key': key, 'baseline': baseline,
               'baseline_files': _listing(baseline) if baseline else None,
               'fingerprint': examples['fingerprint'],
               'spans': examples['spans'], 'identity': identity}, f)
  tf.io.gfile.rename(tmp, record, overwrite=True)
  return baseline


def take(input_base: str, source: str, span_pattern: Optional[str],
         latest_spans: int, serving_dir: str, state_dir: str,
         identity: str, ready_marker: Optional[str] = None) -> Dict[str, str]:
  """{'examples': JSON snapshot, 'baseline': pushed version or '',
  'waiting': spans left for later}; the first two are the parameters later
  steps take."""
  examples, waiting = examples_snapshot(input_base, source, span_pattern,
                                        latest_spans, ready_marker)
  # Key order is the code's (train before eval): ExampleGen keeps it.
  return {'examples': json.dumps(examples),
          'baseline': baseline_for(examples, identity, serving_dir, state_dir),
          'waiting': waiting}
