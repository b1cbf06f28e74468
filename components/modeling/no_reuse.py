"""The no-reuse candidate: a model trained from scratch on the task's data.

Reuse pays only when a module beats what the task's own data teaches a small
model. The ModuleSelector measures this model beside the modules (on the same
samples, fitted the same way: the config's epochs, batch size, learning rate
and seed) and, when it wins, the Trainer trains it and nothing is reused:

  image: a small CNN, three stages of two 3x3 convolutions (32, 64, 128
      channels; the first of each with stride 2), batch norm and ReLU, global
      average pooling, dense logits: about 0.29M weights, on the transformed
      images at the Transform's size, trained end to end;
  text: a bag-of-words logistic regression, TF-IDF over unigrams and bigrams
      (Keras' TextVectorization; its vocabulary, at most MAX_TOKENS entries,
      and document frequencies adapted on the training texts) and one dense
      layer.

Each takes the transformed input feature (as a module's feature extractor
does) and returns logits, so the Trainer's export, the Evaluator and the
Compressor handle it like any other model. `HANDLE` names it where a module
handle would go (the selector's choice, the model record).
"""

import os
from typing import Optional, Sequence

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
import tf_keras

from hubpipe.components.modeling.modules import NO_REUSE as HANDLE
MAX_TOKENS = 20000
DESCRIPTION = {
    'image': 'small CNN from scratch (3 stages, 32-64-128 channels)',
    'text': 'bag-of-words logistic regression (TF-IDF, unigrams + bigrams)',
}


def small_cnn(input_shape, num_classes: int,
              widths: Sequence[int] = (32, 64, 128),
              resize_to: Optional[Sequence[int]] = None,
              name: str = 'small_cnn') -> tf_keras.Model:
  """A small CNN trained from scratch: images in, logits out.

  [optional resize to `resize_to`] -> per width: 3x3 conv stride 2 + batch
  norm + ReLU, then a 3x3 conv stride 1 + batch norm + ReLU -> global average
  pool -> dense logits. With the defaults about 0.29M weights (MobileNetV1 has
  3.2M). `resize_to` cuts the compute when the input resolution exceeds the
  content's.
  """
  inputs = tf_keras.Input(shape=tuple(input_shape), name='image')
  x = inputs
  if resize_to:
    x = tf_keras.layers.Resizing(*resize_to, name='resize')(x)
  for i, width in enumerate(widths):
    for j, stride in enumerate((2, 1)):
      x = tf_keras.layers.Conv2D(width, 3, strides=stride, padding='same',
                                 use_bias=False, name=f'conv{i}_{j}')(x)
      # momentum 0.9: the moving statistics settle within the few hundred
      # steps a short training takes (Keras' 0.99 needs thousands).
      x = tf_keras.layers.BatchNormalization(momentum=0.9, name=f'bn{i}_{j}')(x)
      x = tf_keras.layers.ReLU(name=f'relu{i}_{j}')(x)
  x = tf_keras.layers.GlobalAveragePooling2D(name='pool')(x)
  logits = tf_keras.layers.Dense(num_classes, name='logits', dtype='float32')(x)
  return tf_keras.Model(inputs, logits, name=name)


def bag_of_words(train_texts, num_classes: int,
                 max_tokens: int = MAX_TOKENS) -> tf_keras.Model:
  """TF-IDF (unigrams and bigrams, lower-cased, punctuation stripped) adapted
  on `train_texts`, then one dense layer: strings in, logits out."""
  vectorize = tf_keras.layers.TextVectorization(
      max_tokens=max_tokens, ngrams=2, output_mode='tf_idf',
      name='tf_idf')
  vectorize.adapt(tf.constant(np.asarray(train_texts, dtype=object)),
                  batch_size=1024)
  texts = tf_keras.Input(shape=(), dtype=tf.string, name='text')
  logits = tf_keras.layers.Dense(num_classes, name='logits', dtype='float32')(
      vectorize(texts))
  return tf_keras.Model(texts, logits, name='bag_of_words')


def build(modality: str, input_shape, num_classes: int,
          train_texts=None) -> tf_keras.Model:
  """The no-reuse model for `modality`: the small CNN on images of
  `input_shape` [H, W, 3], or the bag of words adapted on `train_texts`."""
  if modality == 'image':
    return small_cnn(input_shape, num_classes, name='no_reuse_cnn')
  if train_texts is None or not len(train_texts):
    raise ValueError('the bag-of-words model needs training texts to adapt on')
  return bag_of_words(train_texts, num_classes)
