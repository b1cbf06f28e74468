"""The TFX Trainer entry point (`run_fn`) for Hub module reuse.

Integration mode `feature_extraction`: the module is frozen, so its forward pass
over the data runs once, not once per epoch. The Trainer embeds the train and
eval splits a single time (under the distribution strategy), fits the head on
the cached feature vectors, then assembles module + head into the served model,
which still takes raw encoded images.

The config reaches the Trainer through `custom_config['config']`.
"""

import json
import logging
import os
import time

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from hubpipe.components.hub_modules import resolve as hub_resolve
from hubpipe.components.trainer import model as model_lib
from hubpipe.components.trainer import strategy as strategy_lib
from hubpipe.components.transform import image as image_transform
from hubpipe.pipeline.config import config_from_dict

REPORT_FILE = 'training_report.json'


def num_classes_from(tf_transform_output) -> int:
  """The class count, from the label values the Transform saw in the data."""
  values = tf_transform_output.vocabulary_by_name(
      image_transform.LABEL_VOCABULARY)
  ids = sorted(int(v) for v in values)
  if not ids:
    raise ValueError('the training data holds no labels.')
  if ids[0] < 0:
    raise ValueError(f'labels must be class ids 0..K-1; the data has {ids[0]}.')
  missing = sorted(set(range(ids[-1] + 1)) - set(ids))
  if missing:
    logging.warning('class ids %s never occur in the data; the head still has '
                    '%d outputs', missing, ids[-1] + 1)
  return ids[-1] + 1


def _files(patterns):
  files = []
  for pattern in patterns:
    files.extend(tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f'no example files match {patterns}')
  return sorted(files)


def _records(patterns) -> tf.data.Dataset:
  return tf.data.TFRecordDataset(_files(patterns), compression_type='GZIP')


def transformed_dataset(patterns, tf_transform_output, image_key, label_key,
                        batch_size) -> tf.data.Dataset:
  """(images, labels) batches: raw tf.Examples through the Transform graph."""
  raw_spec = tf_transform_output.raw_feature_spec()
  tft_layer = tf_transform_output.transform_features_layer()

  def transform(serialized):
    transformed = tft_layer(tf.io.parse_example(serialized, raw_spec))
    return transformed[image_key], transformed[label_key]

  return (_records(patterns).batch(batch_size)
          .map(transform, num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))


def labels_of(patterns, label_key) -> np.ndarray:
  """The labels alone, in file order (no image decoding)."""
  spec = {label_key: tf.io.FixedLenFeature([1], tf.int64)}
  ds = _records(patterns).batch(1024).map(
      lambda s: tf.reshape(tf.io.parse_example(s, spec)[label_key], [-1]))
  return np.concatenate(list(ds.as_numpy_iterator()))


def _fit_head(strategy, features, labels, eval_features, eval_labels,
              num_classes, config, log_dir=None, name='head'):
  with strategy.scope():
    head = model_lib.head(features.shape[1], num_classes,
                          config.model.hidden_units, config.model.dropout,
                          name=name)
    model_lib.compile_for_training(head, config.training.learning_rate)
  callbacks = [tf_keras.callbacks.TensorBoard(log_dir)] if log_dir else []
  global_batch = config.training.batch_size * strategy.num_replicas_in_sync
  history = head.fit(features, labels, batch_size=global_batch,
                     epochs=config.training.epochs,
                     validation_data=(eval_features, eval_labels),
                     callbacks=callbacks, verbose=2)
  _, accuracy = head.evaluate(eval_features, eval_labels,
                              batch_size=global_batch, verbose=0)
  return head, float(accuracy), history.history


def _standardise(train, *others):
  mean, std = train.mean(axis=0), train.std(axis=0) + 1e-12
  return [(a - mean) / std for a in (train,) + others]


def run_fn(fn_args):
  """Trains the head on the frozen Hub module and exports the served model."""
  config = config_from_dict(fn_args.custom_config['config'])
  image_key, label_key = config.data.image_feature, config.data.label_feature
  tf_keras.utils.set_random_seed(config.training.seed)
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  num_classes = num_classes_from(tf_transform_output)

  strategy = strategy_lib.make(config.training.strategy)
  handle = hub_resolve.resolve(config.module.handle)
  input_size = fn_args.custom_config['input_size']
  logging.info('Trainer: module %s, %d classes, strategy %s with %d replica(s)',
               handle, num_classes, strategy_lib.describe(strategy),
               strategy.num_replicas_in_sync)

  batch = config.training.batch_size * strategy.num_replicas_in_sync
  train_ds = transformed_dataset(fn_args.train_files, tf_transform_output,
                                 image_key, label_key, batch)
  eval_ds = transformed_dataset(fn_args.eval_files, tf_transform_output,
                                image_key, label_key, batch)
  train_labels = labels_of(fn_args.train_files, label_key)
  eval_labels = labels_of(fn_args.eval_files, label_key)

  def embed(module_handle):
    with strategy.scope():
      extractor = model_lib.feature_extractor(module_handle, input_size)
    start = time.time()
    train = extractor.predict(train_ds, verbose=0)
    evaluation = extractor.predict(eval_ds, verbose=0)
    return extractor, train, evaluation, time.time() - start

  extractor, train_feat, eval_feat, embed_s = embed(handle)
  start = time.time()
  head, accuracy, history = _fit_head(
      strategy, train_feat, train_labels, eval_feat, eval_labels, num_classes,
      config, log_dir=os.path.join(fn_args.model_run_dir, 'logs'))
  report = {
      'module': config.module.handle,
      'resolved_module': handle,
      'integration': config.model.integration,
      'num_classes': num_classes,
      'train_examples': int(len(train_labels)),
      'eval_examples': int(len(eval_labels)),
      'epochs': config.training.epochs,
      'strategy': strategy_lib.describe(strategy),
      'replicas': strategy.num_replicas_in_sync,
      'embedding_seconds': round(embed_s, 2),
      'head_training_seconds': round(time.time() - start, 2),
      'eval_accuracy': accuracy,
      'history': {k: [float(v) for v in vals] for k, vals in history.items()},
  }

  if config.module.control_handle:
    # The value of reuse: the same head on a control module (e.g. the same
    # architecture, randomly initialised). A random module's features can be
    # tiny (untrained BatchNorm), so they are standardised first, which only
    # helps the control.
    control = hub_resolve.resolve(config.module.control_handle)
    _, c_train, c_eval, _ = embed(control)
    c_train, c_eval = _standardise(c_train, c_eval)
    _, c_accuracy, _ = _fit_head(strategy, c_train, train_labels, c_eval,
                                 eval_labels, num_classes, config,
                                 name='control_head')
    report['control'] = {'module': config.module.control_handle,
                         'eval_accuracy': c_accuracy,
                         'features': 'standardised'}
    logging.info('Trainer: eval accuracy %.4f with %s, %.4f with control %s',
                 accuracy, config.module.handle, c_accuracy,
                 config.module.control_handle)

  with strategy.scope():
    served = model_lib.classifier(extractor, head)
  model_lib.export_serving_model(served, tf_transform_output, image_key,
                                 label_key, fn_args.serving_model_dir)
  tf.io.gfile.makedirs(fn_args.model_run_dir)
  with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, REPORT_FILE),
                         'w') as f:
    json.dump(report, f, indent=2)
