"""A content-addressed cache of a frozen module's embeddings, shared by runs.

Scheduled retraining over the latest N spans hands every run one Examples
artifact that holds all N spans merged (snapshot_example_gen), so an old
span's examples reappear inside each new run's artifact: a cache keyed on
the artifact would never hit. This one is keyed on the examples themselves.
An example's key is a 64-bit fingerprint of its RAW input value (the image
bytes, the text), so an example embedded by any earlier run, whatever span
or split it was in then, is not embedded again. Labels are never cached:
they always come from the current data, so a relabelled example reuses its
features and trains with its new label.

Layout (tf.io.gfile only, and no folder is ever renamed, so it works on
object storage as on a disk):

  <cache root>/<identity digest>/        one folder per feature identity
    identity.json                        what the digest covers (for humans)
    last_used.json                       when a run last used the folder
    segments/<uuid>/                     what one run embedded
      started.json                       written first (its creation time)
      features-00000.tfrecord ...        raw float32 bytes, one record a row
      keys.npy                           the rows' keys, in record order
      last_used.json                     rewritten by each run that reads it
      done.json                          written LAST: the segment is complete

The identity digest covers everything that decides the features (the
Transform's treatment of the input feature, the module's weights, its input
size, the dtype policy): a change to any of them starts a new folder, never
mixes features. A segment without done.json (a killed run) is ignored and
removed by `cleanup` once it is a day old. Runs never modify a complete
segment's features, so concurrent runs cannot corrupt each other: the worst
a race does is embed an example twice.

A run assembles its training folder (embeddings.py's format) from segments
in an order fixed by the keys alone (`assemble`): every worker of a
multi-worker cluster gets the same examples in the same order with the same
labels whatever the cache held when it looked, and so does a run with the
cache on or off (features computed in other batches may differ in the last
bits of float rounding).
"""

import hashlib
import io
import json
import os
import time
import uuid
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from hubpipe.components.trainer import embeddings

FOLDER = 'embedding_cache'
SEGMENTS = 'segments'
IDENTITY = 'identity.json'
LAST_USED = 'last_used.json'
STARTED = 'started.json'
DONE = 'done.json'
KEYS = 'keys.npy'
# Bump when the segment format or the keying changes: old folders are then
# simply never used again, and age out.
FORMAT_VERSION = 1
# A segment without done.json this old is a killed run's, not a live one's.
INCOMPLETE_AFTER_S = 24 * 3600
# Cleanup never removes what a run used (or listed) this recently.
USE_GRACE_S = 24 * 3600
DAY_S = 24 * 3600


def example_keys(raw_values: tf.Tensor) -> tf.Tensor:
  """[N] int64 keys of N raw input values (dense [N] or [N, 1] strings, or
  numbers): tf.fingerprint (farmhash, 64 bits) of each value, bitcast."""
  values = tf.reshape(raw_values, [-1])
  if values.dtype != tf.string:
    values = tf.strings.as_string(values)
  return tf.bitcast(tf.fingerprint(values), tf.int64)


def file_digest(path: str, sha=None) -> str:
  """sha256 of a file's bytes (tf.io.gfile: any file system)."""
  sha = sha or hashlib.sha256()
  with tf.io.gfile.GFile(path, 'rb') as f:
    while True:
      chunk = f.read(1 << 20)
      if not chunk:
        break
      sha.update(chunk)
  return sha.hexdigest()


def saved_model_digest(folder: str) -> str:
  """A SavedModel's content: its graph (saved_model.pb), its variables'
  index, which records every variable's shape and checksum, so new weights
  change it, and every file under assets/ (a preprocessor's vocabulary).
  Cheap: none of them holds the weights themselves. A folder without
  saved_model.pb is refused rather than given a digest that another such
  folder would share."""
  graph = os.path.join(folder, 'saved_model.pb')
  if not tf.io.gfile.exists(graph):
    raise ValueError(f'{folder} holds no saved_model.pb: the embedding cache '
                     'cannot tell this module from another. Turn the cache '
                     'off (training.embedding_cache: false), or use a module '
                     'saved as a binary SavedModel.')
  names = ['saved_model.pb', os.path.join('variables', 'variables.index')]
  assets = os.path.join(folder, 'assets')
  if tf.io.gfile.isdir(assets):
    for parent, _, files in tf.io.gfile.walk(assets):
      names += sorted(os.path.relpath(os.path.join(parent, f), folder)
                      for f in files)
  sha = hashlib.sha256()
  for name in names:
    path = os.path.join(folder, name)
    sha.update(name.encode() + b'\0')
    if tf.io.gfile.exists(path):
      file_digest(path, sha)
  return sha.hexdigest()[:32]


def identity_digest(parts: dict) -> str:
  """16 hex digits over the identity's parts (JSON, keys sorted)."""
  parts = {'format': FORMAT_VERSION, **parts}
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str)
                        .encode()).hexdigest()[:16]


def _write_json(path: str, value) -> None:
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump(value, f)


def _read_json(path: str) -> Optional[dict]:
  try:
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)
  except (ValueError, tf.errors.OpError):
    return None


def _children(folder: str) -> List[str]:
  if not tf.io.gfile.isdir(folder):
    return []
  return sorted(c.rstrip('/') for c in tf.io.gfile.listdir(folder))


# --------------------------------------------------------------------------
# Segments


def write_segment(segments_folder: str, batches: Iterable[
    Tuple[np.ndarray, np.ndarray]], now: Optional[float] = None
                  ) -> Optional[str]:
  """Streams (keys [n], features [n, ...]) batches into a new segment under
  `segments_folder`; returns its folder, or None (and writes nothing) when
  there was nothing to write. done.json goes last: a segment a killed run
  left has none, and nobody reads it."""
  folder = os.path.join(segments_folder, uuid.uuid4().hex)
  shards, keys, shape, writer, in_shard = [], [], None, None, 0
  for batch_keys, features in batches:
    features = np.asarray(features, np.float32)
    if not len(features):
      continue
    if writer is None and not shards:
      tf.io.gfile.makedirs(folder)
      _write_json(os.path.join(folder, STARTED),
                  {'time': now if now is not None else time.time()})
    shape = list(features.shape[1:])
    keys.append(np.asarray(batch_keys, np.int64).reshape(-1))
    for row in features:
      if writer is None:
        name = f'features-{len(shards):05d}.tfrecord'
        writer, in_shard = tf.io.TFRecordWriter(os.path.join(folder, name)), 0
        shards.append(name)
      writer.write(row.tobytes())
      in_shard += 1
      if in_shard == embeddings.SHARD_EXAMPLES:
        writer.close()
        writer = None
  if writer is not None:
    writer.close()
  if not shards:
    return None
  keys = np.concatenate(keys)
  buffer = io.BytesIO()
  np.save(buffer, keys)
  with tf.io.gfile.GFile(os.path.join(folder, KEYS), 'wb') as f:
    f.write(buffer.getvalue())
  _write_json(os.path.join(folder, DONE),
              {'count': int(len(keys)), 'shape': shape, 'shards': shards})
  return folder


def read_segment_done(folder: str) -> Optional[dict]:
  """A segment's done record; None while it is incomplete."""
  return _read_json(os.path.join(folder, DONE))


def read_segment_keys(folder: str) -> np.ndarray:
  with tf.io.gfile.GFile(os.path.join(folder, KEYS), 'rb') as f:
    return np.load(io.BytesIO(f.read()))


def segment_rows(folder: str, done: dict, batch_size: int = 1024):
  """A complete segment's features, in record order, as [n, ...] batches."""
  shape = [int(s) for s in done['shape']]
  records = tf.data.TFRecordDataset(
      [os.path.join(folder, s) for s in done['shards']])
  decoded = records.batch(batch_size).map(
      lambda r: tf.reshape(tf.io.decode_raw(r, tf.float32), [-1, *shape]))
  return decoded.as_numpy_iterator()


class Index:
  """Which segment (and row in it) holds each key, over complete segments.

  Vectorised (numpy): keys sorted once, looked up with searchsorted, so a
  cache of millions of examples costs 8 bytes a key in memory, not a dict."""

  def __init__(self, segments: Sequence[Tuple[str, dict]]):
    self.segments = list(segments)  # [(folder, done)]
    keys, owners, rows = [], [], []
    for i, (folder, _) in enumerate(self.segments):
      k = read_segment_keys(folder)
      keys.append(k)
      owners.append(np.full(len(k), i, np.int32))
      rows.append(np.arange(len(k), dtype=np.int64))
    if keys:
      keys, owners, rows = (np.concatenate(keys), np.concatenate(owners),
                            np.concatenate(rows))
    else:
      keys = np.zeros(0, np.int64)
      owners, rows = np.zeros(0, np.int32), np.zeros(0, np.int64)
    # The first copy of a key wins (two runs may both have embedded it).
    self.keys, first = np.unique(keys, return_index=True)
    self.owners, self.rows = owners[first], rows[first]

  def find(self, keys: np.ndarray) -> np.ndarray:
    """Positions in self.keys of `keys`, -1 where absent."""
    keys = np.asarray(keys, np.int64)
    if not len(self.keys):
      return np.full(len(keys), -1, np.int64)
    at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
    return np.where(self.keys[at] == keys, at, -1)

  def contains(self, keys: np.ndarray) -> np.ndarray:
    return self.find(keys) >= 0


def assembly_order(keys: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Positions of a split's examples in the order its folder is written:
  by key (a fingerprint: a pseudo-random order that mixes classes and
  spans), then label, then position (duplicates). It depends on the split's
  content alone: not on the cache, the worker or the delivery's order."""
  positions = np.arange(len(keys))
  return np.lexsort((positions, np.asarray(labels), np.asarray(keys)))


def assemble(folder: str, keys: np.ndarray, labels: np.ndarray,
             index: Index, spill_folder: str) -> Dict:
  """Writes a split's (features, label) folder in embeddings.py's format
  from the segments `index` covers (every key must be in it), in
  `assembly_order`; returns its done record (an existing complete folder is
  reused, as embeddings.write does).

  Memory stays bounded by one output shard: each segment is read once,
  front to back, and each row it must give is spilled to the temporary
  file of the output shard it lands in; then each shard is put in order
  and written."""
  done = embeddings.read_done(folder)
  if done:
    return done
  keys, labels = np.asarray(keys, np.int64), np.asarray(labels)
  order = assembly_order(keys, labels)
  found = index.find(keys[order])
  if (found < 0).any():
    raise ValueError(f'{int((found < 0).sum())} example(s) are in no segment.')
  shard_size = embeddings.SHARD_EXAMPLES
  slots = np.arange(len(order))  # slot i: the i-th example in output order
  owners, rows = index.owners[found], index.rows[found]
  if tf.io.gfile.exists(spill_folder):
    tf.io.gfile.rmtree(spill_folder)
  tf.io.gfile.makedirs(spill_folder)
  writers = {}
  shape = None
  for owner in np.unique(owners):
    segment, seg_done = index.segments[owner]
    shape = seg_done['shape']
    wanted = np.flatnonzero(owners == owner)
    by_row = wanted[np.argsort(rows[wanted], kind='stable')]
    wanted_rows, start = rows[by_row], 0
    for batch in segment_rows(segment, seg_done):
      lo = np.searchsorted(wanted_rows, start)
      hi = np.searchsorted(wanted_rows, start + len(batch))
      for slot, row in zip(slots[by_row[lo:hi]], wanted_rows[lo:hi] - start):
        shard = int(slot) // shard_size
        if shard not in writers:
          writers[shard] = tf.io.TFRecordWriter(
              os.path.join(spill_folder, f'{shard:05d}'))
        writers[shard].write(np.int64(slot).tobytes() + batch[row].tobytes())
      start += len(batch)
  for writer in writers.values():
    writer.close()

  def shards():
    width = int(np.prod(shape))
    for shard in range(-(-len(order) // shard_size)):
      first = shard * shard_size
      size = min(shard_size, len(order) - first)
      features = np.zeros([size, width], np.float32)
      spilled = tf.data.TFRecordDataset(os.path.join(
          spill_folder, f'{shard:05d}')).batch(1024).map(
              lambda r: (tf.io.decode_raw(tf.strings.substr(r, 0, 8),
                                          tf.int64)[:, 0],
                         tf.io.decode_raw(tf.strings.substr(r, 8, 4 * width),
                                          tf.float32)))
      for slot, rows in spilled.as_numpy_iterator():
        features[slot - first] = rows
      yield (features.reshape([size, *shape]),
             labels[order[first:first + size]])

  done = embeddings.write(folder, shards())
  tf.io.gfile.rmtree(spill_folder)
  return done


# --------------------------------------------------------------------------
# The cache folder of one identity


class EmbeddingCache:
  """The segments of one feature identity under a cache root."""

  def __init__(self, root: str, identity: dict):
    self.identity = identity
    self.digest = identity_digest(identity)
    self.folder = os.path.join(root, self.digest)
    self.segments_folder = os.path.join(self.folder, SEGMENTS)

  def complete_segments(self) -> List[Tuple[str, dict]]:
    """(folder, done) of every complete segment, by name (a stable order)."""
    out = []
    for name in _children(self.segments_folder):
      folder = os.path.join(self.segments_folder, name)
      done = read_segment_done(folder)
      if done:
        out.append((folder, done))
    return out

  def write(self, batches, now: Optional[float] = None) -> Optional[str]:
    """A new segment of (keys, features) batches (the chief's, only)."""
    tf.io.gfile.makedirs(self.segments_folder)
    if not tf.io.gfile.exists(os.path.join(self.folder, IDENTITY)):
      _write_json(os.path.join(self.folder, IDENTITY),
                  {'format': FORMAT_VERSION, **self.identity})
    return write_segment(self.segments_folder, batches, now)

  def mark_used(self, segment_folders: Iterable[str],
                now: Optional[float] = None) -> None:
    """Records a use of the identity folder and of `segment_folders`: one
    tiny file each, rewritten (so no read-modify-write race)."""
    now = time.time() if now is None else now
    tf.io.gfile.makedirs(self.folder)
    _write_json(os.path.join(self.folder, LAST_USED), {'time': now})
    for folder in segment_folders:
      if folder.startswith(self.segments_folder):
        _write_json(os.path.join(folder, LAST_USED), {'time': now})


def _time_of(folder: str, *names: str) -> Optional[float]:
  for name in names:
    value = _read_json(os.path.join(folder, name))
    if value and isinstance(value.get('time'), (int, float)):
      return float(value['time'])
  return None


def cleanup(root: str, max_age_days: float, max_segments: int,
            now: Optional[float] = None) -> dict:
  """Removes, under a cache root: identity folders nobody used for
  max_age_days; in each other one, complete segments not used for
  max_age_days, then all but the max_segments most recently used, and
  segments without done.json (killed runs) older than a day. Nothing used
  within the last day (USE_GRACE_S) goes, whatever max_segments says: a
  run that overlaps this one may have listed it and be about to read it
  (runs mark what they list as used before they read it). Returns what it
  removed: {'identities': n, 'segments': n, 'incomplete': n}."""
  now = time.time() if now is None else now
  max_age_s = max_age_days * DAY_S
  removed = {'identities': 0, 'segments': 0, 'incomplete': 0}
  for digest in _children(root):
    folder = os.path.join(root, digest)
    if not tf.io.gfile.isdir(folder):
      continue
    used = _time_of(folder, LAST_USED)
    if used is not None and now - used > max(max_age_s, USE_GRACE_S):
      tf.io.gfile.rmtree(folder)
      removed['identities'] += 1
      continue
    segments_folder = os.path.join(folder, SEGMENTS)
    complete = []
    for name in _children(segments_folder):
      segment = os.path.join(segments_folder, name)
      if tf.io.gfile.exists(os.path.join(segment, DONE)):
        complete.append((_time_of(segment, LAST_USED, STARTED) or now,
                         segment))
        continue
      started = _time_of(segment, STARTED)
      if started is None or now - started > INCOMPLETE_AFTER_S:
        # started.json goes first: without it, a run died before writing
        # anything but the folder (or it is a stray): nothing to wait for.
        if started is not None or not tf.io.gfile.listdir(segment):
          tf.io.gfile.rmtree(segment)
          removed['incomplete'] += 1
    complete.sort(reverse=True)  # most recently used first
    for rank, (used, segment) in enumerate(complete):
      if now - used <= USE_GRACE_S:
        continue  # another run may be reading it
      if now - used > max_age_s or rank >= max_segments:
        tf.io.gfile.rmtree(segment)
        removed['segments'] += 1
  return removed
