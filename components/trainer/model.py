"""Model pieces: the Hub module layer, the classification head, the served model.

Models are built with tf_keras (Keras 2): hub.KerasLayer, TFMA and TFMOT need it.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_hub as hub
import tf_keras


class InferenceModeKerasLayer(hub.KerasLayer):
  """A hub.KerasLayer that always runs its module in inference mode.

  For fine-tuning: the weights train, but batch normalisation keeps using its
  moving statistics (and dropout stays off), the Keras transfer-learning
  practice: a small new data set would otherwise wreck the module's statistics.
  """

  def call(self, inputs, training=None):
    return super().call(inputs, training=False)


def module_layer(handle: str, trainable, name='hub_module') -> hub.KerasLayer:
  """The module as a Keras layer.

  trainable: False (frozen), True (all of it, batch norm in inference mode),
  or a `partial.select_trainable` spec (the top blocks only, for hybrid).
  The layer computes in float32 whatever the global Keras policy: a SavedModel
  only has functions for the dtypes it was exported with, and under
  mixed_float16 Keras would otherwise cast its inputs to float16 ("Could not
  find matching concrete function").
  """
  if trainable is False:
    return hub.KerasLayer(handle, trainable=False, name=name, dtype='float32')
  if trainable is True:
    return InferenceModeKerasLayer(handle, trainable=True, name=name,
                                   dtype='float32')
  from hubpipe.components.trainer import partial  # pylint: disable=g-import-not-at-top
  return partial.PartiallyTrainableKerasLayer(handle, trainable_spec=trainable,
                                              name=name, dtype='float32')


def feature_extractor(modality: str, handle: str, input_size=None,
                      preprocessor: str = None, seq_length: int = 128,
                      trainable=False, resize_from=None) -> tf_keras.Model:
  """Transformed input -> the module's feature vector.

  image: [N, H, W, 3] floats in [0, 1] at `input_size`, or at `resize_from`
  (the Transform's size) resized bilinearly to `input_size` in the model, when
  the module runs at another size than the Transform writes (a module chosen
  by the ModuleSelector); text: [N] strings. A BERT-style text encoder gets
  its preprocessing companion in front (tokenize, then pack to `seq_length`),
  and its pooled output is the feature vector.
  """
  if modality == 'image':
    source = list(resize_from or input_size)
    inputs = tf_keras.Input(shape=(*source, 3), name='image')
    images = inputs
    if source != list(input_size):
      images = tf_keras.layers.Resizing(*input_size, interpolation='bilinear',
                                        name='resize', dtype='float32')(inputs)
    return tf_keras.Model(inputs, module_layer(handle, trainable)(images),
                          name='feature_extractor')
  inputs = tf_keras.Input(shape=(), dtype=tf.string, name='text')
  if preprocessor is None:
    features = module_layer(handle, trainable)(inputs)
  else:
    _register_text_ops()
    loaded = hub.load(preprocessor)
    tokens = hub.KerasLayer(loaded.tokenize, name='tokenize')(inputs)
    encoder_inputs = hub.KerasLayer(
        loaded.bert_pack_inputs, arguments={'seq_length': seq_length},
        name='bert_pack_inputs')([tokens])
    outputs = module_layer(handle, trainable)(encoder_inputs)
    features = outputs['pooled_output']
  return tf_keras.Model(inputs, features, name='feature_extractor')


def _register_text_ops():
  """BERT preprocessing models use TF Text ops; importing it registers them."""
  import tensorflow_text  # pylint: disable=g-import-not-at-top,unused-import


def head(input_shape, num_classes: int, hidden_units=(), dropout=0.0,
         name='head') -> tf_keras.Model:
  """The classification head on the module's output; outputs logits.

  A feature vector [D] gets dense layers. A feature map [H, W, C] gets a small
  convolutional head first (3x3 conv, global average pooling), so the spatial
  structure the module kept is used rather than averaged away up front.
  """
  input_shape = tuple(input_shape) if not isinstance(input_shape, int) else (
      input_shape,)
  features = tf_keras.Input(shape=input_shape, name='features')
  x = features
  if len(input_shape) == 3:
    x = tf_keras.layers.Conv2D(256, 3, padding='same', activation='relu',
                               name='conv_head')(x)
    x = tf_keras.layers.GlobalAveragePooling2D(name='pool')(x)
  for i, units in enumerate(hidden_units):
    x = tf_keras.layers.Dense(units, activation='relu', name=f'hidden_{i}')(x)
    if dropout:
      x = tf_keras.layers.Dropout(dropout)(x)
  if dropout and not hidden_units:
    x = tf_keras.layers.Dropout(dropout)(x)
  # float32 logits, also under a mixed-precision policy (stable softmax/loss).
  logits = tf_keras.layers.Dense(num_classes, name='logits', dtype='float32')(x)
  return tf_keras.Model(features, logits, name=name)


def compute_dtypes(served: tf_keras.Model) -> dict:
  """The dtype each part of `classifier(...)` computes in: the module, the
  head's first layer with weights, and the logits."""
  module = served.get_layer('hub_module')
  head_model = served.layers[-1]
  first = next(layer for layer in head_model.layers if layer.weights)
  return {'module': module.compute_dtype, 'head': first.compute_dtype,
          'logits': head_model.get_layer('logits').compute_dtype,
          'variables': sorted({v.dtype.name for v in served.weights})}


def compile_for_training(model: tf_keras.Model, learning_rate: float):
  model.compile(
      optimizer=tf_keras.optimizers.Adam(learning_rate),
      loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=[tf_keras.metrics.SparseCategoricalAccuracy(name='accuracy')])


def classifier(extractor: tf_keras.Model, head_model: tf_keras.Model
               ) -> tf_keras.Model:
  """Module + head: transformed images in, logits out."""
  return tf_keras.Model(extractor.input, head_model(extractor.output),
                        name='classifier')


def export_serving_model(model: tf_keras.Model, tf_transform_output,
                         input_key: str, label_key: str, export_dir: str):
  """Saves `model` with a serving signature on serialized raw tf.Examples.

  The Transform graph (decode, resize, scale; or text clean-up) is inside the
  signature, so the served model predicts from the raw feature as stored:
  encoded image bytes, or text.
  Outputs: `probabilities` [N, classes] and `class_id` [N].
  """
  model.tft_layer = tf_transform_output.transform_features_layer()
  raw_spec = tf_transform_output.raw_feature_spec()
  raw_spec.pop(label_key, None)

  @tf.function(input_signature=[
      tf.TensorSpec(shape=[None], dtype=tf.string, name='examples')])
  def serve_tf_examples(serialized):
    raw = tf.io.parse_example(serialized, raw_spec)
    transformed = model.tft_layer(raw)
    probabilities = tf.nn.softmax(model(transformed[input_key], training=False))
    return {'probabilities': probabilities,
            'class_id': tf.argmax(probabilities, axis=-1)}

  model.save(export_dir, save_format='tf',
             signatures={'serving_default': serve_tf_examples})
