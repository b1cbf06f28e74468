"""Trainer pieces: fine-tuning keeps batch norm in inference mode; the text reference."""

import numpy as np
import tensorflow as tf
import tf_keras

from hubpipe.components.hub_modules import resolve
from hubpipe.components.modeling import model as model_lib
from hubpipe.components.modeling.training import bag_of_words_accuracy


def _moving_stats(layer):
  return [v.numpy().copy() for v in layer.weights if 'moving' in v.name]


def test_fine_tune_trains_weights_but_keeps_batch_norm_statistics():
  handle = resolve.resolve('mobilenet_v1_100_224')
  extractor = model_lib.feature_extractor('image', handle, input_size=[32, 32],
                                          trainable=True)
  layer = extractor.get_layer('hub_module')
  assert isinstance(layer, model_lib.InferenceModeKerasLayer)
  head = model_lib.head(1024, 3)
  model = model_lib.classifier(extractor, head)
  model_lib.compile_for_training(model, 1e-3)
  stats_before = _moving_stats(layer)
  kernel = next(v for v in layer.trainable_weights if 'kernel' in v.name)
  kernel_before = kernel.numpy().copy()
  images = np.random.RandomState(0).rand(8, 32, 32, 3).astype('float32')
  model.fit(images, np.array([0, 1, 2, 0, 1, 2, 0, 1]), epochs=1, verbose=0)
  assert stats_before, 'the module has batch-norm statistics'
  for before, after in zip(stats_before, _moving_stats(layer)):
    np.testing.assert_array_equal(before, after)
  assert not np.allclose(kernel_before, kernel.numpy())


def test_feature_extraction_module_is_frozen():
  handle = resolve.resolve('mobilenet_v1_100_224')
  extractor = model_lib.feature_extractor('image', handle, input_size=[32, 32])
  assert extractor.trainable_weights == []


def test_bag_of_words_reference_learns_words():
  train = [b'a good film', b'good acting', b'really good', b'a bad film',
           b'bad acting', b'really bad'] * 3
  labels = np.array([1, 1, 1, 0, 0, 0] * 3)
  accuracy = bag_of_words_accuracy(train, labels, [b'good story', b'bad story'],
                                   np.array([1, 0]))
  assert accuracy == 1.0


def test_balanced_class_weights():
  from hubpipe.components.modeling.training import class_weights
  labels = np.array([0, 0, 0, 1])
  weights = class_weights(labels, 3, 'balanced')
  assert weights[0] * 3 == weights[1] * 1  # each present class weighs the same in total
  assert weights[2] == 0.0  # absent class
  assert class_weights(labels, 3, 'none') is None


def test_head_shapes_for_vectors_and_feature_maps():
  dense = model_lib.head(1024, 5)
  assert dense.output_shape == (None, 5)
  assert not any('conv' in layer.name for layer in dense.layers)
  conv = model_lib.head((3, 3, 1024), 5)
  assert conv.output_shape == (None, 5)
  assert conv.get_layer('conv_head').output_shape == (None, 3, 3, 256)


def test_keras_internals_are_not_autograph_converted_but_layer_calls_are():
  """hubpipe's fits keep AutoGraph out of tf_keras's own code (as TF keeps
  it out of `keras`), and only inside `keras_internals_unconverted`: a
  layer's `call` with Python control flow on tensors is still converted
  there, and a model's own `train_step` with it still works outside (the
  rule is not left set for the process)."""
  from tensorflow.python.autograph.core import config as autograph_config

  def keras_skipped():
    return any(isinstance(r, autograph_config.DoNotConvert)
               and r.matches('tf_keras.src.engine.training')
               for r in autograph_config.CONVERSION_RULES)

  class SignFlip(tf_keras.layers.Layer):

    def call(self, x):
      if tf.reduce_sum(x) > 0:  # a tensor condition: needs AutoGraph
        return x
      return -x

  x = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
  y = np.arange(16) % 2
  loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  inputs = tf_keras.Input((3,))
  model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(SignFlip()(inputs)))
  model.compile('sgd', loss)
  assert not keras_skipped()
  with model_lib.keras_internals_unconverted():
    assert keras_skipped()
    history = model.fit(x, y, epochs=2, verbose=0)
  assert not keras_skipped()
  assert len(history.history['loss']) == 2
  assert model.predict(-np.abs(x), verbose=0).shape == (16, 2)

  class OwnStep(tf_keras.Model):

    def train_step(self, data):
      features, labels = data
      with tf.GradientTape() as tape:
        value = self.compiled_loss(labels, self(features, training=True))
      if value > 0:  # AutoGraph must convert this train_step
        self.optimizer.minimize(value, self.trainable_variables, tape=tape)
      return {'loss': value}

  own = OwnStep(inputs, tf_keras.layers.Dense(2)(inputs))
  own.compile('sgd', loss)
  assert len(own.fit(x, y, epochs=1, verbose=0).history['loss']) == 1
