"""What a run ingests and what it is measured against, worked out fresh each run.

A scheduled pipeline is compiled once and then run again and again with the
same parameters. Whether a run has anything new to do depends on things
outside the pipeline: the files under the data root and the models under the
serving dir. `take()` looks at both and returns two strings that later steps
take as parameters, so that an orchestrator's cache (KFP's, or ML Metadata's
locally) keys on what is really there:

- `examples`: the data snapshot (JSON): for each split, the file patterns to
  ingest (with span folders: the newest span's eval files and the train files
  of the latest N spans), the spans, and a fingerprint of every file the
  patterns match (path, size, modification time). It changes exactly when
  the data does, so ExampleGen (and every step after it) reruns on new data
  and is a cache hit otherwise.
- `baseline`: the pushed model version the run warm-starts from and is gated
  against: the newest push at the time this data (and this pipeline
  definition) was first seen. It is recorded the first time, under
  `<state_dir>/baselines/`, and read back by later runs of the same data, so
  that a run with no new data has the same inputs as the run before it and
  pushes nothing new, while a run with new data is measured against the
  model in service.

Everything goes through tf.io.gfile, so the data root, the serving dir and
the state dir may be on object storage (gs://, s3://).
"""

import hashlib
import json
import os
import posixpath
import re
from typing import Dict, List, Optional

import tensorflow as tf

SPLITS = ('train', 'eval')
SPAN = '{SPAN}'


class SnapshotError(ValueError):
  """The data root does not hold what the config says it does."""


def _join(*parts: str) -> str:
  # URIs (gs://, s3://) always use '/', local paths too on the systems we run.
  return posixpath.join(*parts)


def list_spans(input_base: str, span_pattern: str) -> List[int]:
  """The span numbers of the folders under `input_base` that match
  `span_pattern` (e.g. 'span-{SPAN}'), ascending."""
  regex = re.compile(
      '^' + re.escape(span_pattern).replace(re.escape(SPAN), r'(\d+)') + '$')
  names = [name.rstrip('/') for name in tf.io.gfile.listdir(input_base)] if (
      tf.io.gfile.isdir(input_base)) else []
  spans = sorted({int(m.group(1)) for m in map(regex.match, names) if m})
  return spans


def span_folder(span_pattern: str, span: int) -> str:
  return span_pattern.replace(SPAN, str(span))


def _files(pattern: str) -> List[str]:
  return sorted(p for p in tf.io.gfile.glob(pattern)
                if not tf.io.gfile.isdir(p))


def _walk_files(root: str) -> List[str]:
  out = []
  for folder, _, files in tf.io.gfile.walk(root):
    out.extend(_join(folder, f) for f in files)
  return sorted(out)


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


def examples_snapshot(input_base: str, source: str = 'tfrecord',
                      span_pattern: Optional[str] = None,
                      latest_spans: int = 1) -> Dict:
  """The data snapshot (see the module docstring) as a dict.

  source 'tfrecord': `input_base` holds train/ and eval/ folders of TFRecord
  files, or span folders that each hold them. source 'image_folder': the
  whole folder is fingerprinted; the image ExampleGen reads its layout.
  """
  if not tf.io.gfile.isdir(input_base):
    raise SnapshotError(f'data root {input_base} is not a folder (or cannot '
                        'be read): check data.path / --data-root.')
  snapshot = {'input_base': input_base, 'source': source, 'spans': None,
              'span': 0, 'splits': None}
  if source == 'image_folder':
    if not _walk_files(input_base):
      raise SnapshotError(f'data root {input_base} holds no files.')
    snapshot['fingerprint'] = refingerprint(snapshot)
    return snapshot

  if span_pattern:
    spans = list_spans(input_base, span_pattern)
    if not spans:
      raise SnapshotError(
          f'no folder under {input_base} matches data.span_pattern '
          f'"{span_pattern}" (e.g. {span_folder(span_pattern, 1)}/train/).')
    window = spans[-latest_spans:]
    # Train on the latest N spans; evaluate (and gate) on the newest.
    folders = {'train': [span_folder(span_pattern, s) for s in window],
               'eval': [span_folder(span_pattern, window[-1])]}
    snapshot.update(spans=window, span=window[-1])
  else:
    folders = {split: [''] for split in SPLITS}
  snapshot['splits'] = {
      split: [_join(folder, split, '*') if folder else _join(split, '*')
              for folder in folders[split]] for split in SPLITS}
  snapshot['fingerprint'] = refingerprint(snapshot, check=True)
  return snapshot


def refingerprint(snapshot: Dict, check: bool = False) -> Dict:
  """The fingerprint of the files `snapshot` names, as they are now (with
  `check`, a pattern that matches no file is an error)."""
  base = snapshot['input_base']
  if not snapshot['splits']:
    return fingerprint(_walk_files(base), base)
  files = []
  for patterns in snapshot['splits'].values():
    for pattern in patterns:
      matched = _files(_join(base, pattern))
      if check and not matched:
        raise SnapshotError(
            f'{_join(base, pattern)} matches no file: each '
            f'{"span folder" if snapshot["spans"] else "data root"} must hold '
            'train/ and eval/ folders of TFRecord files of tf.Examples.')
      files.extend(matched)
  return fingerprint(files, base)


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


def baseline_for(examples: Dict, identity: str, serving_dir: str,
                 state_dir: str) -> str:
  """The pushed version this data is measured against ('' when none): the
  one recorded when this data and pipeline `identity` were first seen, else
  the newest push now (recorded for the next runs)."""
  key = hashlib.sha256(json.dumps(
      [examples['fingerprint'], examples['splits'], identity],
      sort_keys=True).encode()).hexdigest()[:32]
  record = _join(state_dir, 'baselines', f'{key}.json')
  if tf.io.gfile.exists(record):
    with tf.io.gfile.GFile(record) as f:
      return json.load(f)['baseline']
  baseline = latest_version(serving_dir) or ''
  tf.io.gfile.makedirs(posixpath.dirname(record))
  # Written aside and renamed: a killed run leaves no half-written record.
  tmp = f'{record}.tmp-{os.getpid()}'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    json.dump({'baseline': baseline, 'fingerprint': examples['fingerprint'],
               'spans': examples['spans'], 'identity': identity}, f)
  tf.io.gfile.rename(tmp, record, overwrite=True)
  return baseline


def take(input_base: str, source: str, span_pattern: Optional[str],
         latest_spans: int, serving_dir: str, state_dir: str,
         identity: str) -> Dict[str, str]:
  """{'examples': JSON snapshot, 'baseline': pushed version or ''}."""
  examples = examples_snapshot(input_base, source, span_pattern, latest_spans)
  # Key order is the code's (train before eval): ExampleGen keeps it.
  return {'examples': json.dumps(examples),
          'baseline': baseline_for(examples, identity, serving_dir, state_dir)}
