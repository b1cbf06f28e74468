"""The TFX Trainer entry point (`run_fn`) for Hub module reuse.

Integration modes:
  feature_extraction: the module is frozen, so its forward pass over the data
    runs once, not once per epoch. The Trainer embeds the train and
    validation splits a single time, streaming the features to sharded files
    (embeddings.py), fits the head on them, then assembles module + head into
    the served model.
  fine_tune: module and head train together on the transformed examples, the
    module in inference mode (batch-norm statistics frozen) at the configured
    (small) learning rate.
  hybrid: the head is trained as in feature_extraction; then the top blocks
    of the module (model.unfreeze) train with it at
    training.fine_tune_learning_rate for training.fine_tune_epochs.
The served model takes the raw feature either way (image bytes or text).

Splits: the Trainer reads `train` (fn_args.train_files), shuffled with the
config's seed and repeated, steps_per_epoch steps an epoch (TFX's
TrainArgs.num_steps, when set: that many steps in all for each training
stage; hybrid has two), and `validation` (fn_args.eval_files: the
pipeline's EvalArgs name it) for early stopping and every accuracy it
reports (EvalArgs.num_steps, when set: that many validation batches). It
never reads `eval`, which only the Evaluator uses.

The config reaches the Trainer as its hand-off (pipeline/config.py) in
`custom_config`; the module is the ModuleSelector's choice, when
`fn_args.hyperparameters` carry one, else module.handle (modeling/modules.py).
The export (modeling/export.py) has a serving signature, a core signature
and a model record that the Trainer's executor copies onto the Model
artifact.
"""

import json
import logging
import os
import tempfile
import time
from typing import Optional

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_transform as tft
import tf_keras

from hubpipe.components import faults
from hubpipe.components.modeling import export as export_lib
from hubpipe.components.modeling import inputs
from hubpipe.components.modeling import model as model_lib
from hubpipe.components.modeling import modules
from hubpipe.components.modeling import no_reuse
from hubpipe.components.modeling import training
from hubpipe.components.trainer import checkpoints
from hubpipe.components.trainer import embedding_cache
from hubpipe.components.trainer import embeddings
from hubpipe.components.trainer import strategy as strategy_lib
from hubpipe.pipeline import code_version
from hubpipe.pipeline.config import augments, from_handoff

REPORT_FILE = 'training_report.json'
# The model record of the last export in this process (every worker of a
# cluster has the same one): the Trainer's executor puts it on the Model
# artifact (trainer/executor.py).
LAST_RECORD = {}


class StepCounter(tf_keras.callbacks.Callback):
  """Counts the training steps of the last epoch `fit` ran (what the global
  batch really was: examples / steps)."""

  def __init__(self):
    super().__init__()
    self.steps_per_epoch = None
    self._steps = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._steps = 0

  def on_train_batch_end(self, batch, logs=None):
    self._steps += 1

  def on_epoch_end(self, epoch, logs=None):
    self.steps_per_epoch = self._steps


def _callbacks(config, checkpoint_dir, name, extra=()):
  callbacks = list(extra) + [checkpoints.backup_callback(checkpoint_dir, name)]
  if config.training.early_stopping_patience:
    callbacks.append(tf_keras.callbacks.EarlyStopping(
        monitor='val_accuracy', mode='max', restore_best_weights=True,
        patience=config.training.early_stopping_patience))
  if faults.armed('trainer_mid_epoch'):
    callbacks.append(_PauseMidEpoch())
  return callbacks


class _PauseMidEpoch(tf_keras.callbacks.Callback):
  """components/faults.py's `trainer_mid_epoch`: the first batch of the
  second epoch, the first one saved by BackupAndRestore."""

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    if self._epoch >= 1 and batch == 0:
      faults.pause_point('trainer_mid_epoch')


def _warm_start(model, base_model_dir, name, module: modules.ModuleChoice,
                class_names=None) -> str:
  """Loads `name` weights saved inside the base model, if it was built on the
  same module at the same size, for the same classes in the same order (its
  model record); returns what happened."""
  if not base_model_dir:
    return 'off'
  if not tf.io.gfile.exists(os.path.join(base_model_dir, 'saved_model.pb')):
    return 'skipped: nothing pushed yet'
  record = export_lib.read_record(base_model_dir)
  if record is None:
    return f'skipped: {base_model_dir} has no model record ({export_lib.MODEL_RECORD})'
  base = (record.get('module_handle'), record.get('module_input_size'))
  if base != (module.handle, module.input_size):
    return (f'skipped: the base model was built on {base[0]} at {base[1]}, '
            f'this one on {module.handle} at {module.input_size}')
  if (class_names and record.get('class_names')
      and list(record['class_names']) != list(class_names)):
    # Class names as labels: their ids follow the vocabulary's order, which
    # new data can change; a head for other ids would start wrong.
    return (f'skipped: the base model\'s classes are {record["class_names"]}, '
            f'this one\'s {list(class_names)}')
  path = os.path.join(base_model_dir, export_lib.WARM_START_DIR, name)
  if not tf.io.gfile.exists(path + '.index'):
    return f'skipped: {base_model_dir} holds no {name} weights'
  try:
    model.load_weights(path)
  except (ValueError, tf.errors.OpError) as err:
    return f'skipped: the base model does not match ({err})'[:300]
  return f'from {base_model_dir}'


def _augmented(dataset: tf.data.Dataset, settings) -> tf.data.Dataset:
  """Training batches changed at random (modeling.training.augment; never
  part of the served model), each batch's draws seeded by training.seed and
  the batch's number."""
  seed = tf.constant(settings.seed, tf.int64)
  return tf.data.Dataset.zip((dataset, tf.data.Dataset.counter())).map(
      lambda batch, i: (training.augment(batch[0], settings,
                                         tf.stack([seed, i])), batch[1]),
      num_parallel_calls=tf.data.AUTOTUNE)


class _Training:
  """One Trainer execution: config, strategy, data, and what every mode uses."""

  def __init__(self, fn_args):
    self.fn_args = fn_args
    self.config = config = from_handoff(fn_args.custom_config, 'Trainer')
    # First: a multi-worker strategy must be built before the runtime starts.
    self.strategy = strategy_lib.make(config.training.strategy,
                                      config.training.mixed_precision)
    # Multi-worker: every worker trains; the chief's model and files are kept.
    self.role = strategy_lib.worker_role(self.strategy)
    self.is_chief = strategy_lib.is_chief(*self.role)
    self.global_batch = (config.training.batch_size *
                         self.strategy.num_replicas_in_sync)
    self.steps = StepCounter()
    # The same seed on every worker: Keras shuffles numpy inputs (the head's
    # features) before it shards them, so the workers must agree on the order.
    tf_keras.utils.set_random_seed(config.training.seed)
    self.input_key = config.input_feature
    self.label_key = config.data.label_feature
    transform_output = tft.TFTransformOutput(fn_args.transform_output)
    self.transform_output = transform_output
    self.num_classes = inputs.num_classes(transform_output)
    self.class_names = inputs.class_names(fn_args.train_files,
                                          self.num_classes, transform_output)
    # Images: the size the Transform wrote them at; a module chosen by the
    # ModuleSelector may run at another (resized in the model).
    self.transform_size = inputs.images_at(transform_output, self.input_key)
    # The module: the ModuleSelector's choice when it is in the pipeline (it
    # reaches the Trainer as hyperparameters, as the Tuner's would), else the
    # config's.
    self.module = modules.choose(config, fn_args.hyperparameters,
                                 self.transform_size)
    self.base_model_dir = (getattr(fn_args, 'base_model', None)
                           if config.training.warm_start else None)
    self.workers = strategy_lib.num_workers(self.strategy)
    # TFXIO, as TFX's Trainer hands it over: format and payload from the
    # Examples artifact. fn_args.eval_files are the validation split's.
    self.factory = fn_args.data_accessor.tf_dataset_factory
    schema = transform_output.raw_metadata.schema
    self.train_labels = inputs.raw_labels(self.factory, fn_args.train_files,
                                          transform_output, self.label_key)
    self.validation_labels = inputs.raw_labels(
        self.factory, fn_args.eval_files, transform_output, self.label_key)
    for split, labels, files in (
        ('train', self.train_labels, fn_args.train_files),
        ('validation', self.validation_labels, fn_args.eval_files)):
      if not len(labels):
        raise ValueError(f'the {split} split holds no examples ({files}): '
                         'give the data more examples, or raise '
                         'data.validation_fraction.')
      if (labels < 0).any():
        raise ValueError(
            f'the {split} split holds {int((labels < 0).sum())} example(s) of '
            f'class names the training data does not have (it has '
            f'{self.class_names}): every class needs training examples.')
    self.unvalidated_classes = sorted(
        set(self.train_labels.tolist()) - set(self.validation_labels.tolist()))
    if self.unvalidated_classes:
      logging.warning(
          'Trainer: class(es) %s have no validation examples (a class needs '
          'two or more train examples to give one up): validation accuracy '
          'says nothing about them. Add examples, or a validation/ folder.',
          self.unvalidated_classes)
    self.tensorboard = tf_keras.callbacks.TensorBoard(
        os.path.join(fn_args.model_run_dir, 'logs'))
    self.checkpoint_dir = checkpoints.checkpoint_dir(fn_args)
    # Embeddings: the chief's go beside the checkpoints (a retry reuses
    # them); another worker's to a folder of its own.
    self.embedding_dir = (os.path.join(self.checkpoint_dir, 'embeddings')
                          if self.is_chief else tempfile.mkdtemp())
    self.embeddings_reused = {}
    # Per extractor: examples embedded now, taken from the cache, seconds.
    self.embedding_stats = {}
    self.embedding_cache_root = (
        config.training.embedding_cache_dir or os.path.join(
            checkpoints.trainer_root(fn_args), embedding_cache.FOLDER))
    # Images, when the model trains end to end (config.training.augment_*).
    self.augments = config.modality == 'image' and augments(config.training)

  def steps_per_epoch(self, epochs: int) -> int:
    """Steps that cover train once (TrainArgs.num_steps: that many in all)."""
    return inputs.steps_per_epoch(len(self.train_labels), self.global_batch,
                                  self.fn_args.train_steps, epochs)

  def dataset(self, split: str, training: bool = False) -> tf.data.Dataset:
    """Transformed batches of 'train' or 'validation'; training: shuffled
    (files and examples, seeded), repeated; else one pass in file order."""
    files = (self.fn_args.train_files if split == 'train'
             else self.fn_args.eval_files)
    dataset = inputs.transformed_dataset(
        self.factory, files, self.transform_output, self.input_key,
        self.label_key, self.global_batch, shuffle=training,
        seed=self.config.training.seed, repeat=training, workers=self.workers,
        shuffle_buffer=self.config.training.shuffle_buffer)
    if not (training and self.augments):
      return dataset
    return _augmented(dataset, self.config.training)

  def extractor(self, module: modules.ModuleChoice, trainable=False):
    with self.strategy.scope():
      return model_lib.extractor_for(self.config, module, self.transform_size,
                                     trainable)

  def embed(self, extractor, name, module: modules.ModuleChoice) -> dict:
    """The frozen module's features of train and validation, computed once
    and streamed to sharded files (embeddings.py): {split: (folder, done)}.

    Through the embedding cache (embedding_cache.py): a cheap pass takes
    each example's key (a fingerprint of its raw input; nothing decoded),
    only examples no earlier run embedded with the same identity go through
    the Transform and the module, and they are written as one new segment;
    then each split's folder is assembled from the segments in an order set
    by the keys alone. So every worker of a cluster (each embeds what it
    does not find itself; only the chief writes to the cache) reads the
    same examples in the same order, as does a run with the cache on or
    off (float rounding aside: features embedded in other batches). With
    training.embedding_cache off, the new segment goes to a folder of this
    run's and nothing is shared."""
    folders = {split: os.path.join(self.embedding_dir, f'{name}-{split}')
               for split in ('train', 'validation')}
    out = {}
    for split, folder in folders.items():
      # A retry of a killed Trainer finds them complete and reads them.
      done = embeddings.read_done(folder)
      self.embeddings_reused[f'{name}-{split}'] = bool(done)
      if done:
        out[split] = (folder, done)
    if len(out) == len(folders):
      return out
    start = time.time()
    settings = self.config.training
    files = {'train': self.fn_args.train_files,
             'validation': self.fn_args.eval_files}
    labels = {'train': self.train_labels,
              'validation': self.validation_labels}
    shared = settings.embedding_cache
    root = (self.embedding_cache_root if shared else
            os.path.join(self.embedding_dir, f'{name}-segments'))
    cache = embedding_cache.EmbeddingCache(
        root, self.embedding_identity(module))
    # Only the chief writes to the shared cache; another worker keeps what
    # it embeds in its own (temporary) folder.
    writes_shared = shared and self.is_chief
    private = embedding_cache.EmbeddingCache(
        os.path.join(self.embedding_dir, f'{name}-private'),
        cache.identity) if shared and not writes_shared else cache
    segments = cache.complete_segments() if shared else []
    index = embedding_cache.Index(segments)
    keys = {split: self.example_keys(files[split]) for split in folders}
    key_seconds = time.time() - start
    # Embed each missing key once: its first position, train before
    # validation (the same image in both splits is embedded once).
    taken, wanted = set(), {}
    cached_before = {split: index.contains(keys[split]) for split in folders}
    if writes_shared:
      # What this run will read is in use from now on: another run's
      # cleanup leaves segments used within a day alone.
      cache.mark_used(sorted({index.segments[i][0] for split in folders
                              for i in np.unique(index.owners[index.find(
                                  keys[split][cached_before[split]])])}))
    for split in folders:
      missing = ~cached_before[split]
      first = np.zeros(len(missing), bool)
      for i in np.flatnonzero(missing):
        if keys[split][i] not in taken:
          taken.add(int(keys[split][i]))
          first[i] = True
      wanted[split] = first
    call = tf.function(lambda x: extractor(x, training=False))
    batches = ((k, call(x).numpy()) for split in folders
               for k, x in self.missing_examples(files[split], wanted[split]))
    embed_start = time.time()
    new_segment = private.write(batches)
    embed_seconds = time.time() - embed_start
    if new_segment:
      segments = segments + [
          (new_segment, embedding_cache.read_segment_done(new_segment))]
      index = embedding_cache.Index(segments)
    used = set()
    for split, folder in folders.items():
      if split not in out:
        # The spill is scratch: on this machine's disk, not the bucket.
        out[split] = (folder, embedding_cache.assemble(
            folder, keys[split], labels[split], index,
            tempfile.mkdtemp(prefix=f'hubpipe-{name}-{split}-spill-')))
      found = index.find(keys[split])
      used.update(index.segments[i][0] for i in np.unique(
          index.owners[found]))
    if writes_shared:
      cache.mark_used(sorted(used))
    if not shared:
      tf.io.gfile.rmtree(root)
    total = sum(len(k) for k in keys.values())
    embedded = int(sum(w.sum() for w in wanted.values()))
    self.embedding_stats[name] = {
        'examples': int(total),
        'embedded_now': embedded,
        # Examples (positions) whose features an earlier run computed.
        'from_cache': int(sum(c.sum() for c in cached_before.values())),
        'cache': cache.folder if shared else 'off',
        'seconds': round(time.time() - start, 2),
        # Of which: keys and look-up; embedding and the new segment.
        'key_seconds': round(key_seconds, 2),
        'embed_seconds': round(embed_seconds, 2)}
    logging.info('Trainer: %s embeddings: %s', name, self.embedding_stats[name])
    return out

  def embedding_identity(self, module: modules.ModuleChoice) -> dict:
    """What decides an example's features, for the cache's identity.

    The Transform graph is identified by the Transform step's code digest
    and the transformed input's spec, not by its SavedModel's bytes: two
    Transform runs of one config over different data write different
    saved_model.pb bytes (TensorFlow numbers its traced functions per
    process) and different label vocabularies, though they treat the input
    alike. The Transform's preprocessing_fn reads the input feature alone
    through its code (this digest; a Transform that ran on other code was
    keyed on that code, so it is rerun when the code changes) and the image
    size (in the spec). The module is identified by its content, not its
    handle, as are the preprocessor's; the dtype policy changes features."""
    spec = self.transform_output.transformed_feature_spec()[self.input_key]
    return {
        'modality': self.config.modality,
        'input_feature': self.input_key,
        'transform_code': code_version.digest('Transform'),
        'transformed_input': repr(spec),
        'extractor_code': code_version.digest_of(
            ('components/modeling/model.py',)),
        'module': embedding_cache.saved_model_digest(module.resolved),
        'preprocessor': (embedding_cache.saved_model_digest(
            module.resolved_preprocessor) if module.preprocessor else None),
        'input_size': module.input_size,
        'images_at': self.transform_size,
        'seq_length': (self.config.module.seq_length
                       if self.config.modality == 'text' else None),
        'dtype_policy': tf_keras.mixed_precision.global_policy().name,
        # Decoding, resizing and the kernels are the libraries': a new
        # image with another TensorFlow computes features anew.
        'libraries': {'tensorflow': tf.__version__,
                      'tensorflow_hub': hub.__version__,
                      'tensorflow_transform': tft.__version__},
    }

  def _raw_input_dataset(self, files, with_everything: bool):
    schema = self.transform_output.raw_metadata.schema
    if not with_everything:
      schema = inputs._only(schema, self.input_key)  # pylint: disable=protected-access
    return inputs.read(self.factory, files, schema, 1024)

  def example_keys(self, files) -> np.ndarray:
    """Every example's cache key, in `inputs.read` order (the labels'):
    only the input column is parsed, nothing decoded."""
    keys = [k.numpy() for k in self._raw_input_dataset(files, False).map(
        lambda batch: embedding_cache.example_keys(batch[self.input_key]))]
    return np.concatenate(keys) if keys else np.zeros(0, np.int64)

  def missing_examples(self, files, wanted: np.ndarray):
    """(keys, transformed inputs) batches of the examples at the `wanted`
    positions (read order). The filter comes before the Transform, so an
    image the cache holds is not even decoded."""
    if not wanted.any():
      return
    mask = tf.constant(wanted)
    tft_layer = self.transform_output.transform_features_layer()
    key = self.input_key
    dataset = (self._raw_input_dataset(files, True).unbatch().enumerate()
               .filter(lambda i, _: mask[i]).map(lambda _, raw: raw)
               .batch(self.config.training.batch_size)
               .map(lambda raw: (embedding_cache.example_keys(raw[key]),
                                 tft_layer(raw)[key]),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .prefetch(tf.data.AUTOTUNE))
    for keys, x in dataset:
      yield keys.numpy(), x

  def clean_embedding_cache(self) -> Optional[dict]:
    """The chief, after a successful export: ages out the cache."""
    settings = self.config.training
    if not (settings.embedding_cache and self.is_chief):
      return None
    return embedding_cache.cleanup(
        self.embedding_cache_root, settings.embedding_cache_max_age_days,
        settings.embedding_cache_max_segments)

  def fit_head(self, cached, name='head', base_model_dir=None, transform=None):
    """The head on cached embeddings (`embed`): train shuffled (seeded) and
    repeated, validation for early stopping and the reported accuracy."""
    extra = [self.tensorboard, self.steps] if name == 'head' else []
    seed = self.config.training.seed
    train = embeddings.dataset(*cached['train'], shuffle=True, seed=seed,
                               transform=transform)
    validation = embeddings.dataset(*cached['validation'], transform=transform)
    batched = lambda ds: inputs.data_sharded(ds.batch(self.global_batch),
                                             self.workers)
    init = lambda head: _warm_start(head, base_model_dir, 'head', self.module,
                                    self.class_names)
    return training.fit_head(
        self.strategy, batched(train.repeat()), batched(validation),
        self.steps_per_epoch(self.config.training.epochs),
        cached['train'][1]['shape'], self.train_labels, self.num_classes,
        self.config, _callbacks(self.config, self.checkpoint_dir, name, extra),
        name, init, validation_steps=self.fn_args.eval_steps or None)

  def fit_end_to_end(self, model, learning_rate, epochs, name):
    """Trains the module (what of it is trainable) and the head on examples."""
    with self.strategy.scope():
      model_lib.compile_for_training(model, learning_rate)
    validation = self.dataset('validation')
    with model_lib.keras_internals_unconverted():
      fitted = model.fit(
          self.dataset('train', training=True), epochs=epochs,
          steps_per_epoch=self.steps_per_epoch(epochs),
          validation_data=validation,
          validation_steps=self.fn_args.eval_steps or None,
          class_weight=training.class_weights(
              self.train_labels, self.num_classes,
              self.config.training.class_weight),
          callbacks=_callbacks(self.config, self.checkpoint_dir, name,
                               [self.tensorboard, self.steps]),
          verbose=2)
      accuracy = float(model.evaluate(
          validation, steps=self.fn_args.eval_steps or None, verbose=0)[1])
    return fitted.history, accuracy


def _train_head_on_frozen_module(t: _Training, report: dict):
  """feature_extraction: embeddings once, then the head on them."""
  extractor = t.extractor(t.module)
  start = time.time()
  cached = t.embed(extractor, 'module', t.module)
  report['embedding_seconds'] = round(time.time() - start, 2)
  head, accuracy, history = t.fit_head(cached, base_model_dir=t.base_model_dir)
  report['warm_start'] = head.warm_start
  with t.strategy.scope():
    served = model_lib.classifier(extractor, head)
  return served, head, accuracy, history


def _train_hybrid(t: _Training, report: dict):
  """hybrid: the head on the frozen module, then the module's top blocks too."""
  _, head, accuracy, history = _train_head_on_frozen_module(t, report)
  report['head_validation_accuracy'] = float(accuracy)
  extractor = t.extractor(t.module, trainable=t.config.model.unfreeze)
  report['unfrozen_variables'] = sorted(
      extractor.get_layer('hub_module').selected_variable_names)
  with t.strategy.scope():
    served = model_lib.classifier(extractor, head)
  second, accuracy = t.fit_end_to_end(
      served, t.config.training.fine_tune_learning_rate,
      t.config.training.fine_tune_epochs, 'hybrid')
  history = {**history, **{f'hybrid_{k}': v for k, v in second.items()}}
  return served, head, accuracy, history


def _train_fine_tune(t: _Training, report: dict):
  """fine_tune: the whole module and the head, end to end."""
  extractor = t.extractor(t.module, trainable=True)
  with t.strategy.scope():
    head = model_lib.head_for(t.config, extractor.output_shape[1:],
                              t.num_classes)
    served = model_lib.classifier(extractor, head)
    report['warm_start'] = _warm_start(served, t.base_model_dir, 'model',
                                       t.module, t.class_names)
  history, accuracy = t.fit_end_to_end(
      served, t.config.training.learning_rate, t.config.training.epochs,
      'fine_tune')
  return served, head, accuracy, history


def _train_no_reuse(t: _Training, report: dict):
  """The ModuleSelector found that reuse does not pay: the model trained
  from scratch (modeling/no_reuse.py), end to end, as it was measured."""
  texts = None
  if t.config.modality == 'text':
    # The bag of words learns its vocabulary from the training texts.
    texts = inputs.raw_column(t.factory, t.fn_args.train_files,
                              t.transform_output.raw_metadata.schema,
                              t.input_key)
    texts = [x.decode('utf-8').strip() for x in texts]
  with t.strategy.scope():
    served = no_reuse.build(
        t.config.modality,
        [*t.transform_size, 3] if t.transform_size else None, t.num_classes,
        train_texts=texts)
    if texts is None:
      report['warm_start'] = _warm_start(served, t.base_model_dir, 'model',
                                         t.module, t.class_names)
    else:
      # Its weights are indexed by this run's vocabulary: another run's
      # would load without complaint and mean other words.
      report['warm_start'] = ('skipped: the bag of words learns its '
                              'vocabulary from each run\'s training texts')
  history, accuracy = t.fit_end_to_end(
      served, t.config.training.learning_rate, t.config.training.epochs,
      'no_reuse')
  # The whole model is the "head": it is what a later run warm-starts.
  return served, served, accuracy, history


MODES = {'feature_extraction': _train_head_on_frozen_module,
         'hybrid': _train_hybrid,
         'fine_tune': _train_fine_tune}
# What the record and the report call the no-reuse model's training.
FROM_SCRATCH = 'from_scratch'


def _control_accuracy(t: _Training) -> float:
  """The value of reuse: the same head on the control module (e.g. the same
  architecture, randomly initialised), validation accuracy. A random
  module's features can be tiny (untrained batch norm), so they are
  standardised (train's mean and deviation) first, which only helps the
  control."""
  control_module = modules.ModuleChoice(
      handle=t.config.module.control_handle, input_size=t.module.input_size)
  control = t.extractor(control_module)
  cached = t.embed(control, 'control', control_module)
  mean, std = embeddings.moments(*cached['train'])
  mean, std = tf.constant(mean), tf.constant(std + 1e-12)
  return t.fit_head(cached, name='control_head',
                    transform=lambda x: (x - mean) / std)[1]


def run_fn(fn_args):
  """Trains the model as the config's integration mode says; exports it."""
  try:
    # Only hubpipe's code runs here: AutoGraph can leave tf_keras's
    # internals alone for the whole step (embedding, fits, export).
    with model_lib.keras_internals_unconverted():
      _train_and_export(fn_args)
  finally:
    # A local run executes the later components in this process: they must
    # not inherit the Trainer's mixed-precision policy.
    tf_keras.mixed_precision.set_global_policy('float32')


def _train_and_export(fn_args):
  t = _Training(fn_args)
  config = t.config
  logging.info('Trainer: module %s, %d classes, %s, strategy %s with %d '
               'replica(s)', t.module.resolved, t.num_classes, config.model.integration,
               strategy_lib.describe(t.strategy),
               t.strategy.num_replicas_in_sync)
  report = {
      'module': t.module.handle,
      'resolved_module': t.module.resolved,
      'selected_by': t.module.selected_by,
      'module_input_size': t.module.input_size,
      'preprocessor': t.module.resolved_preprocessor,
      'integration': config.model.integration,
      'num_classes': t.num_classes,
      'class_names': t.class_names,
      'train_examples': int(len(t.train_labels)),
      'validation_examples': int(len(t.validation_labels)),
      # Every accuracy here is on the validation split; the eval split is
      # the Evaluator's alone.
      'accuracy_split': 'validation',
      'epochs': config.training.epochs,
      'learning_rate': config.training.learning_rate,
      'strategy': strategy_lib.describe(t.strategy),
      'replicas': t.strategy.num_replicas_in_sync,
      'global_batch_size': t.global_batch,
      'worker': ({'task_type': t.role[0], 'task_id': t.role[1]}
                 if t.role[0] else None),
  }
  start = time.time()
  integration = (config.model.integration if t.module.reuses
                 else FROM_SCRATCH)
  report['integration'] = integration
  train = MODES[integration] if t.module.reuses else _train_no_reuse
  served, head, accuracy, history = train(t, report)
  report['training_seconds'] = round(time.time() - start, 2)
  if t.augments:
    report['augmentation'] = {
        'flip': config.training.augment_flip,
        'crop': config.training.augment_crop,
        'brightness': config.training.augment_brightness,
        'applied': ('none: the module is frozen and embedded once'
                    if integration == 'feature_extraction' else
                    'second stage (the unfrozen module and the head)'
                    if integration == 'hybrid' else 'every training batch')}
  report['validation_accuracy'] = float(accuracy)
  report['steps_per_epoch'] = t.steps.steps_per_epoch
  report['mixed_precision'] = tf_keras.mixed_precision.global_policy().name
  report['compute_dtypes'] = model_lib.compute_dtypes(served)
  report['epochs_run'] = len(next(iter(history.values()), []))
  if t.unvalidated_classes:
    report['classes_without_validation_examples'] = t.unvalidated_classes
  if t.embeddings_reused:
    report['embeddings_reused'] = t.embeddings_reused
  report['history'] = {k: [float(v) for v in vals]
                       for k, vals in history.items()}

  if config.module.control_handle and t.module.handle != config.module.handle:
    # The control is module.handle's twin; it says nothing about another module.
    logging.info('Trainer: control %s skipped: the ModuleSelector chose %s, '
                 'not module.handle %s', config.module.control_handle,
                 t.module.handle, config.module.handle)
  elif config.module.control_handle:
    report['control'] = {'module': config.module.control_handle,
                         'validation_accuracy': _control_accuracy(t),
                         'features': 'standardised'}
  if config.training.bag_of_words_baseline:
    schema = t.transform_output.raw_metadata.schema
    report['bag_of_words_baseline'] = {
        'model': 'tf-idf unigrams+bigrams, logistic regression',
        'validation_accuracy': training.bag_of_words_accuracy(
            inputs.raw_column(t.factory, fn_args.train_files, schema,
                              t.input_key),
            t.train_labels,
            inputs.raw_column(t.factory, fn_args.eval_files, schema,
                              t.input_key),
            t.validation_labels, seed=config.training.seed)}
  logging.info('Trainer report: %s', {k: v for k, v in report.items()
                                      if k != 'history'})

  # Multi-worker: every worker saves (collective ops), the chief's copy stays.
  role = t.role
  serving_dir = strategy_lib.output_dir(fn_args.serving_model_dir, *role)
  LAST_RECORD.clear()
  record = {
      'module_handle': t.module.handle,
      'module_input_size': t.module.input_size,
      'transform_size': t.transform_size,
      'preprocessor': t.module.preprocessor,
      'selected_by': t.module.selected_by,
      'integration': integration,
      'num_classes': t.num_classes,
      'class_names': t.class_names,
  }
  LAST_RECORD.update(export_lib.export(served, t.transform_output, t.input_key,
                                       t.label_key, serving_dir, record))
  # Frozen module: the head is all a later run needs; a module that trained
  # (fine_tune, hybrid) is saved whole as well.
  warm_start_dir = os.path.join(serving_dir, export_lib.WARM_START_DIR)
  head.save_weights(os.path.join(warm_start_dir, 'head'))
  if integration != 'feature_extraction':
    served.save_weights(os.path.join(warm_start_dir, 'model'))
  if not t.is_chief:
    tf.io.gfile.rmtree(os.path.dirname(serving_dir))
    return
  if t.embedding_stats:
    report['embedding_cache'] = t.embedding_stats
  cleaned = t.clean_embedding_cache()
  if cleaned is not None:
    report['embedding_cache_cleanup'] = cleaned
  tf.io.gfile.makedirs(fn_args.model_run_dir)
  with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, REPORT_FILE),
                         'w') as f:
    json.dump(report, f, indent=2)
  checkpoints.clear(t.checkpoint_dir)
