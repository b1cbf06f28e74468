"""Fitting: class weights, and a classification head on features.

The Trainer fits its head on the frozen module's streamed embeddings
(`fit_head`); the ModuleSelector fits its probes on embeddings in memory
(`fit_head_in_memory`): the same head, optimizer and loss, so a probe's
accuracy compares with the Trainer's.
"""

import os
from typing import Callable, Optional

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

from hubpipe.components.modeling import inputs
from hubpipe.components.modeling import model as model_lib


def class_weights(labels: np.ndarray, num_classes: int, mode: str):
  """None, or {class: weight} that gives every class the same total weight."""
  if mode == 'none':
    return None
  counts = np.bincount(labels, minlength=num_classes).astype('float64')
  present = counts > 0
  weights = np.zeros(num_classes)
  weights[present] = len(labels) / (present.sum() * counts[present])
  return {i: float(w) for i, w in enumerate(weights)}


def fit_head(strategy, train, validation, steps_per_epoch, feature_shape,
             train_labels, num_classes, config, callbacks=(), name='head',
             init: Optional[Callable] = None, validation_steps=None):
  """Fits a head (config.model) on batched datasets of (features, label):
  `train` repeated (steps_per_epoch steps an epoch), `validation` one pass
  (or validation_steps batches), with config.training's epochs, learning
  rate and class weights. init(head) -> str, if given, runs before training
  (a warm start) and its answer is `head.warm_start`. Returns (head,
  validation accuracy, history)."""
  with strategy.scope():
    head = model_lib.head_for(config, feature_shape, num_classes, name=name)
    head.warm_start = init(head) if init else 'off'
    model_lib.compile_for_training(head, config.training.learning_rate)
  with model_lib.keras_internals_unconverted():
    history = head.fit(train, epochs=config.training.epochs,
                       steps_per_epoch=steps_per_epoch,
                       validation_data=validation,
                       validation_steps=validation_steps,
                       class_weight=class_weights(
                           train_labels, num_classes,
                           config.training.class_weight),
                       callbacks=list(callbacks), verbose=2)
    _, accuracy = head.evaluate(validation, steps=validation_steps, verbose=0)
  return head, float(accuracy), history.history


def fit_head_in_memory(features, labels, validation_features,
                       validation_labels, num_classes, config, name='head',
                       strategy=None, callbacks=()):
  """`fit_head` on features held in memory (numpy), shuffled with
  config.training.seed."""
  strategy = strategy or tf.distribute.get_strategy()
  global_batch = config.training.batch_size * strategy.num_replicas_in_sync
  train = (tf.data.Dataset.from_tensor_slices((features, labels))
           .shuffle(len(labels), seed=config.training.seed)
           .repeat().batch(global_batch))
  validation = tf.data.Dataset.from_tensor_slices(
      (validation_features, validation_labels)).batch(global_batch)
  return fit_head(
      strategy, train, validation,
      inputs.steps_per_epoch(len(labels), global_batch), features.shape[1:],
      labels, num_classes, config, callbacks, name=name)


def augment(images: tf.Tensor, settings, seed: tf.Tensor) -> tf.Tensor:
  """A batch of images [B, H, W, 3] in [0, 1], changed at random as the
  config's training.augment_* keys say (see pipeline/config.py): flipped
  left-right, cropped and scaled back to H x W, brightened or darkened.
  Each image draws its own changes; `seed` (int64 [2], e.g. the training
  seed and the batch's number) makes the draws repeatable."""
  shape = tf.shape(images)
  batch, height, width = shape[0], shape[1], shape[2]
  seeds = tf.random.experimental.stateless_split(seed, 3)
  if settings.augment_flip:
    flip = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[0]) < 0.5
    images = tf.where(flip, tf.reverse(images, axis=[2]), images)
  if settings.augment_crop:
    cut = tf.random.stateless_uniform([batch, 4], seeds[1], 0.0,
                                      settings.augment_crop)
    boxes = tf.stack([cut[:, 0], cut[:, 1], 1.0 - cut[:, 2], 1.0 - cut[:, 3]],
                     axis=1)
    images = tf.image.crop_and_resize(images, boxes, tf.range(batch),
                                      tf.stack([height, width]))
  if settings.augment_brightness:
    delta = tf.random.stateless_uniform(
        [batch, 1, 1, 1], seeds[2], -settings.augment_brightness,
        settings.augment_brightness)
    images = tf.clip_by_value(images + delta, 0.0, 1.0)
  return images


def bag_of_words_accuracy(train_texts, train_labels, eval_texts, eval_labels,
                          seed=0) -> float:
  """The no-reuse reference for text: a bag-of-words logistic regression.

  Unigrams and bigrams, TF-IDF weighted (scikit-learn, already a TFX
  dependency), fit on `train_texts` and scored on `eval_texts`.
  """
  from sklearn.feature_extraction.text import TfidfVectorizer  # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  decode = lambda texts: [t.decode('utf-8') if isinstance(t, bytes) else t
                          for t in texts]
  vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
  train = vectorizer.fit_transform(decode(train_texts))
  classifier = LogisticRegression(max_iter=2000, C=4.0, random_state=seed)
  classifier.fit(train, train_labels)
  predicted = classifier.predict(vectorizer.transform(decode(eval_texts)))
  return float(np.mean(predicted == eval_labels))
