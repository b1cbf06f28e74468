"""Reading examples: TFXIO datasets, seeded shuffling, stratified samples,
and what the Transform output says about them (class count, image size).

Every reader goes through TFX's TFXIO (the Trainer's `fn_args.data_accessor`,
or the same factory built from the Examples artifacts in the ModuleSelector
and the Compressor), so the payload and file format come from the artifact,
not from a hard-coded GZIP TFRecord reader; a fixed number of files side by
side (`read`), so the order does not depend on the machine's core count.

Training input is shuffled (files and examples, with the config's seed) and
repeated, and the Trainer sets the steps per epoch: a class-sorted or
span-ordered delivery does not train in sorted batches. Samples (the
selector's probes, the Compressor's calibration, fine-tuning and measuring
sets) are seeded random draws, stratified by class, not the first N in file
order.
"""

import logging
import math
import os
from typing import Callable, List, Optional, Tuple

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.components.util import tfxio_utils
from tfx.types import artifact_utils
from tfx_bsl.tfxio import dataset_options

from hubpipe.components.modeling import LABEL_NAMES
from hubpipe.components.modeling import LABEL_VOCABULARY

# Examples (raw records) held for shuffling; training.shuffle_buffer.
SHUFFLE_BUFFER = 10000
TELEMETRY = ['hubpipe']

DatasetFactory = Callable[[List[str], dataset_options.TensorFlowDatasetOptions,
                           Optional[schema_pb2.Schema]], tf.data.Dataset]


def factory_for(examples_artifacts) -> DatasetFactory:
  """The TFXIO dataset factory for Examples artifacts (what TFX's Trainer
  hands `run_fn` as `fn_args.data_accessor.tf_dataset_factory`)."""
  return tfxio_utils.get_tf_dataset_factory_from_artifact(
      list(examples_artifacts), TELEMETRY)


def split_patterns(examples_artifacts, split: str) -> list:
  """File patterns of `split` in Examples artifacts (ValueError if none)."""
  patterns = [os.path.join(artifact_utils.get_split_uri([a], split), '*')
              for a in examples_artifacts
              if split in artifact_utils.decode_split_names(a.split_names)]
  if not patterns:
    raise ValueError(f'the examples have no "{split}" split.')
  return patterns


def _options(batch_size):
  return dataset_options.TensorFlowDatasetOptions(
      batch_size=batch_size, shuffle=False, num_epochs=1,
      sloppy_ordering=False)


def files_of(patterns) -> List[str]:
  files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
  if not files:
    raise ValueError(f'no example files match {list(patterns)}.')
  return files


# Files read side by side (round robin, example by example) by `read`.
LANES = 4


def read(factory: DatasetFactory, patterns, schema, batch_size,
         file_seed: Optional[int] = None) -> tf.data.Dataset:
  """Parsed batches through TFXIO. Files (sorted, or in a seeded order) are
  dealt into LANES lanes, each read file after file, and the lanes are taken
  in turn, one example each. Not one TFXIO dataset over all files: it
  interleaves as many files as the machine has cores, so the order (and
  anything chosen by position, and what each worker's DATA shard holds)
  would differ between a laptop and a pod. The order does not depend on
  `batch_size` either."""
  files = files_of(patterns)
  if file_seed is not None:
    files = [files[i] for i in
             np.random.default_rng(file_seed).permutation(len(files))]
  lanes = []
  for lane in range(min(LANES, len(files))):
    dataset = None
    for path in files[lane::LANES]:
      one = factory([path], _options(1024), schema).unbatch()
      dataset = one if dataset is None else dataset.concatenate(one)
    lanes.append(dataset)
  examples = (lanes[0] if len(lanes) == 1 else
              tf.data.Dataset.choose_from_datasets(
                  lanes, tf.data.Dataset.range(len(lanes)).repeat(),
                  stop_on_empty_dataset=False))
  return examples.batch(batch_size)


def data_sharded(dataset: tf.data.Dataset, workers: int) -> tf.data.Dataset:
  """With several workers (MultiWorkerMirroredStrategy) every worker reads
  the same (identically seeded) stream and keeps its share of each batch
  (tf.data's DATA sharding). Not FILE sharding: it fails outright on fewer
  files than workers, and on ExampleGen's shards, which differ in size, it
  gives the workers different step counts and partial global batches. The
  price: every worker reads and transforms the whole split."""
  if workers <= 1:
    return dataset
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return dataset.with_options(options)


def transformed_dataset(factory: DatasetFactory, patterns, tf_transform_output,
                        input_key, label_key, batch_size, *, shuffle=False,
                        seed=None, repeat=False, workers: int = 1,
                        shuffle_buffer: int = SHUFFLE_BUFFER) -> tf.data.Dataset:
  """(inputs, labels) batches: raw examples through TFXIO, then the
  Transform graph. shuffle/seed/repeat: for training (files and examples
  shuffled with the seed, the same order on every worker); without them one
  pass in `read` order (the same on every machine)."""
  schema = tf_transform_output.raw_metadata.schema
  if shuffle:
    # Files in a seeded order, then examples through a seeded buffer
    # (reshuffled each epoch); the same stream on every worker.
    raw = (read(factory, patterns, schema, 1024, file_seed=seed).unbatch()
           .shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True))
    raw = (raw.repeat() if repeat else raw).batch(batch_size)
  else:
    raw = read(factory, patterns, schema, batch_size)
    raw = raw.repeat() if repeat else raw
  tft_layer = tf_transform_output.transform_features_layer()

  def transform(features):
    transformed = tft_layer(features)
    return transformed[input_key], transformed[label_key]

  dataset = raw.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
  return data_sharded(dataset, workers).prefetch(tf.data.AUTOTUNE)


def _only(schema: schema_pb2.Schema, key: str) -> schema_pb2.Schema:
  out = schema_pb2.Schema()
  for feature in schema.feature:
    if feature.name == key:
      out.feature.add().CopyFrom(feature)
  if not out.feature:
    raise ValueError(f'the schema has no feature "{key}".')
  return out


def raw_column(factory: DatasetFactory, patterns, schema, key) -> np.ndarray:
  """One raw feature of every example, in file order (e.g. the labels,
  without decoding images). Only that feature is parsed."""
  dataset = read(factory, patterns, _only(schema, key), 1024)
  values = [np.reshape(batch[key].numpy(), [-1]) for batch in dataset]
  return np.concatenate(values) if values else np.zeros([0])


def content_size(factory: DatasetFactory, patterns, schema, key,
                 limit: int = 64) -> Optional[List[int]]:
  """The [height, width] of the first `limit` raw images, as stored (before
  the Transform resizes them): the 90th percentile of each, so that a few
  small images among large ones do not make the size small; None when
  none decodes."""
  dataset = read(factory, patterns, _only(schema, key), limit).take(1)
  sizes = []
  for batch in dataset:
    for encoded in np.reshape(batch[key].numpy(), [-1]):
      try:
        shape = tf.io.decode_image(encoded, expand_animations=False).shape
      except (tf.errors.InvalidArgumentError, ValueError):
        continue
      sizes.append([int(shape[0]), int(shape[1])])
  if not sizes:
    return None
  return [int(np.ceil(v)) for v in np.percentile(np.asarray(sizes), 90,
                                                  axis=0)]


def raw_labels(factory: DatasetFactory, patterns, tf_transform_output,
               key) -> np.ndarray:
  """Every example's class id, in file order, from the raw label (no image
  is decoded): class ids as they are; class names through the Transform's
  vocabulary of them (label_names), -1 for a name it does not hold."""
  values = raw_column(factory, patterns, tf_transform_output.raw_metadata.schema,
                      key)
  names = label_names(tf_transform_output)
  if names is None:
    return values.astype(int)
  ids = {name: i for i, name in enumerate(names)}
  return np.array([ids.get(v.decode('utf-8'), -1) for v in values], dtype=int)


def stratified_indices(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
  """Up to `limit` positions of `labels`, drawn at random (seeded), each
  class in its share of the whole (at least one of each class when `limit`
  allows), sorted."""
  total = len(labels)
  if limit >= total:
    return np.arange(total)
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(labels, return_counts=True)
  quota = np.floor(counts * limit / total).astype(int)
  if limit >= len(classes):
    quota = np.maximum(quota, 1)
    # Raising rare classes to one can overshoot: take it from the largest.
    while quota.sum() > limit:
      quota[np.argmax(quota)] -= 1
  # Hand out what rounding left over to the largest remainders.
  remainders = counts * limit / total - np.floor(counts * limit / total)
  for i in np.argsort(-remainders):
    if quota.sum() >= limit:
      break
    if quota[i] < counts[i]:
      quota[i] += 1
  chosen = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
            for c, q in zip(classes, quota) if q]
  return np.sort(np.concatenate(chosen))[:limit] if chosen else np.arange(0)


def transformed_sample(factory: DatasetFactory, patterns, tf_transform_output,
                       input_key, label_key, limit: int, seed: int
                       ) -> Tuple[np.ndarray, np.ndarray]:
  """A seeded, class-stratified random sample of `limit` transformed
  (inputs, labels) as numpy, in a seeded random order. The labels are read
  first (cheap); only the chosen examples go through the Transform graph."""
  schema = tf_transform_output.raw_metadata.schema
  labels = raw_column(factory, patterns, schema, label_key)
  if not len(labels):
    raise ValueError(f'no examples in {list(patterns)}.')
  chosen = np.zeros(len(labels), bool)
  chosen[stratified_indices(labels, limit, seed)] = True
  mask = tf.constant(chosen)
  tft_layer = tf_transform_output.transform_features_layer()
  # The same read as the labels' (file order), so positions agree.
  picked = (read(factory, patterns, schema, 1).enumerate()
            .filter(lambda i, _: mask[i])
            .map(lambda _, features: features)
            .unbatch().batch(64)
            .map(lambda f: (lambda t: (t[input_key], t[label_key]))(
                tft_layer(f)), num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic=True)
            .prefetch(tf.data.AUTOTUNE))
  xs, ys = [], []
  for x, y in picked:
    xs.append(x.numpy())
    ys.append(y.numpy())
  # In a seeded random order, so that its first N are a random sample too
  # (the Compressor calibrates on the first calibration_examples).
  order = np.random.default_rng(seed).permutation(sum(len(y) for y in ys))
  return np.concatenate(xs)[order], np.concatenate(ys)[order]


def steps_per_epoch(examples: int, global_batch: int,
                    train_steps: Optional[int] = None, epochs: int = 1) -> int:
  """Steps that cover the split once; with TFX's TrainArgs.num_steps
  (`train_steps`), that many steps in all, spread over the epochs."""
  if train_steps:
    return max(1, math.ceil(train_steps / epochs))
  return max(1, math.ceil(examples / global_batch))


def label_names(tf_transform_output) -> Optional[List[str]]:
  """With class names as labels, the Transform's vocabulary of them in id
  order; None when the labels are class ids."""
  if not tf_transform_output.vocabulary_file_by_name(LABEL_NAMES):
    return None
  return [v.decode('utf-8') if isinstance(v, bytes) else str(v)
          for v in tf_transform_output.vocabulary_by_name(LABEL_NAMES)]


def num_classes(tf_transform_output) -> int:
  """The class count, from the labels the Transform saw in the data."""
  names = label_names(tf_transform_output)
  if names is not None:
    if not names:
      raise ValueError('the training data holds no labels.')
    _two_or_more(names)
    return len(names)
  values = tf_transform_output.vocabulary_by_name(LABEL_VOCABULARY)
  ids = sorted(int(v) for v in values)
  if not ids:
    raise ValueError('the training data holds no labels.')
  if ids[0] < 0:
    raise ValueError(f'labels must be class ids 0..K-1; the data has {ids[0]}.')
  _two_or_more(ids)
  missing = sorted(set(range(ids[-1] + 1)) - set(ids))
  if missing:
    logging.warning('class ids %s never occur in the data; the head still has '
                    '%d outputs', missing, ids[-1] + 1)
  return ids[-1] + 1


def _two_or_more(classes) -> None:
  if len(classes) < 2:
    raise ValueError(
        f'the training data holds one class only (label {classes[0]}): a '
        'classifier needs examples of two or more classes. Add examples of '
        'the other classes to the data (train/ holds what the model learns).')


# What an ExampleGen that knows the class names (the image-folder one)
# writes in its Examples artifact's folder: one name a line, in id order.
CLASSES_FILE = 'classes.txt'


def class_names(patterns, num_classes: int, tf_transform_output=None
                ) -> List[str]:
  """The class names, in id order: the Transform's label vocabulary when the
  labels are names, else those the Examples artifact behind the split's file
  `patterns` (<artifact>/Split-<name>/*) records, else the ids."""
  names = label_names(tf_transform_output) if tf_transform_output else None
  if names is not None:
    return names
  for pattern in patterns:
    path = os.path.join(os.path.dirname(os.path.dirname(pattern)),
                        CLASSES_FILE)
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        names = [line.strip() for line in f if line.strip()]
      if len(names) == num_classes:
        return names
      logging.warning('%s names %d classes, the data has %d; the class names '
                      'are the ids', path, len(names), num_classes)
  return [str(i) for i in range(num_classes)]


def images_at(tf_transform_output, input_key: str) -> Optional[list]:
  """The [height, width] the Transform wrote the images at (None: text)."""
  spec = tf_transform_output.transformed_feature_spec()[input_key]
  shape = list(getattr(spec, 'shape', None) or [])
  return [int(shape[0]), int(shape[1])] if len(shape) == 3 else None


def sample(examples_artifacts, split: str, tf_transform_output, config,
           limit: int) -> Tuple[np.ndarray, np.ndarray]:
  """`transformed_sample` of `split` of Examples artifacts, with the config's
  input and label features and training.seed (what the ModuleSelector and
  the Compressor fit and measure on)."""
  return transformed_sample(
      factory_for(examples_artifacts),
      split_patterns(examples_artifacts, split), tf_transform_output,
      config.input_feature, config.data.label_feature, limit,
      seed=config.training.seed)
