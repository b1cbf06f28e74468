"""The frozen module's embeddings, streamed to and from sharded files.

With the module frozen (feature extraction, the first stage of hybrid, the
control), its forward pass runs once over each split and the head trains on
the result. The features (vectors, or feature maps) are written as they are
computed: TFRecords of one record per example (RAW_RECORD: the label as a
little-endian int64, then the features as little-endian float32; a
tf.train.Example per row cost more time than a cached run's embedding),
SHARD_EXAMPLES per file, each written under a temporary name and renamed,
and a `done.json` (count, feature shape, shards, encoding) written last.
Folders of the older encoding (tf.train.Example {features, label}; no
`encoding` in done.json) are still read. Nothing holds a whole split in
memory: training reads the shards back as a tf.data pipeline (shards in a
seeded order, a bounded shuffle buffer).

A Trainer that was killed and runs again finds `done.json` and skips the
pass (the folder lives in the Trainer's checkpoint folder, keyed on its
inputs). Without it, the pass starts over.
"""

import json
import os
import uuid
from typing import Callable, Dict, Iterable, Tuple

import numpy as np
import tensorflow as tf

SHARD_EXAMPLES = 4096
DONE = 'done.json'
# done.json's `encoding` of records written by `write`.
RAW_RECORD = 'label-int64-features-float32'
# Bytes of features held for shuffling the head's training input.
SHUFFLE_BYTES = 256 << 20


def _record(features: np.ndarray, label: int) -> bytes:
  """One example as RAW_RECORD bytes."""
  return (np.asarray(label, '<i8').tobytes() +
          np.asarray(features, '<f4').tobytes())


def read_done(folder: str):
  path = os.path.join(folder, DONE)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)
  except (ValueError, tf.errors.OpError):
    return None  # unreadable: the pass starts over


def write(folder: str, batches: Iterable[Tuple[np.ndarray, np.ndarray]]
          ) -> Dict:
  """Streams (features, labels) batches into shards under `folder`; returns
  what done.json records. An existing complete folder is reused."""
  done = read_done(folder)
  if done:
    return done
  if tf.io.gfile.exists(folder):
    tf.io.gfile.rmtree(folder)  # what a killed pass left
  tf.io.gfile.makedirs(folder)
  shards, count, shape, writer, in_shard, temporary = [], 0, None, None, 0, ''

  def close():
    writer.close()
    name = f'features-{len(shards):05d}.tfrecord'
    tf.io.gfile.rename(temporary, os.path.join(folder, name), overwrite=True)
    shards.append(name)

  for features, labels in batches:
    features = np.asarray(features, np.float32)
    shape = list(features.shape[1:])
    for row, label in zip(features, np.reshape(labels, [-1])):
      if writer is None:
        temporary = os.path.join(folder, f'.tmp-{uuid.uuid4().hex}')
        writer, in_shard = tf.io.TFRecordWriter(temporary), 0
      writer.write(_record(row, label))
      in_shard += 1
      count += 1
      if in_shard == SHARD_EXAMPLES:
        close()
        writer = None
  if writer is not None:
    close()
  if not count:
    raise ValueError('no examples to embed.')
  done = {'count': count, 'shape': shape, 'shards': shards,
          'encoding': RAW_RECORD}
  temporary = os.path.join(folder, f'.tmp-{uuid.uuid4().hex}')
  with tf.io.gfile.GFile(temporary, 'w') as f:
    json.dump(done, f)
  tf.io.gfile.rename(temporary, os.path.join(folder, DONE), overwrite=True)
  return done


def dataset(folder: str, done: Dict, *, shuffle=False, seed=None,
            transform: Callable = None) -> tf.data.Dataset:
  """The cached (features, label) pairs, one by one; shuffled: shards in a
  seeded order and a buffer of at most SHUFFLE_BYTES (reshuffled each epoch,
  the same on every worker)."""
  shape = done['shape']
  width = int(np.prod(shape))
  spec = {'features': tf.io.FixedLenFeature([width], tf.float32),
          'label': tf.io.FixedLenFeature([], tf.int64)}
  raw = done.get('encoding') == RAW_RECORD
  files = tf.data.Dataset.from_tensor_slices(
      [os.path.join(folder, s) for s in done['shards']])
  if shuffle:
    files = files.shuffle(len(done['shards']), seed=seed)
  # Unshuffled: one shard after the other (the order they were written in).
  records = files.interleave(
      tf.data.TFRecordDataset, deterministic=True,
      cycle_length=min(4, len(done['shards'])) if shuffle else 1)

  def parse(record):
    if raw:
      label = tf.io.decode_raw(tf.strings.substr(record, 0, 8), tf.int64)[0]
      features = tf.reshape(tf.io.decode_raw(
          tf.strings.substr(record, 8, 4 * width), tf.float32), shape)
    else:
      parsed = tf.io.parse_single_example(record, spec)
      features, label = tf.reshape(parsed['features'], shape), parsed['label']
    if transform is not None:
      features = transform(features)
    return features, label

  pairs = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=True)
  if shuffle:
    per_example = 4 * max(1, int(np.prod(shape)))
    buffer = max(1, min(done['count'], SHUFFLE_BYTES // per_example))
    pairs = pairs.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
  return pairs


def moments(folder: str, done: Dict) -> Tuple[np.ndarray, np.ndarray]:
  """Per-feature mean and standard deviation, in one streamed pass."""
  total = sq = None
  for features, _ in dataset(folder, done).batch(1024):
    features = features.numpy().astype(np.float64)
    s, q = features.sum(axis=0), (features ** 2).sum(axis=0)
    total = s if total is None else total + s
    sq = q if sq is None else sq + q
  mean = total / done['count']
  std = np.sqrt(np.maximum(sq / done['count'] - mean ** 2, 0.0))
  return mean.astype(np.float32), std.astype(np.float32)
