"""Model pieces: the Hub module layer, the classification head, the served model.

Models are built with tf_keras (Keras 2): hub.KerasLayer, TFMA and TFMOT need it.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_hub as hub
import tf_keras


def module_layer(handle: str, trainable: bool) -> hub.KerasLayer:
  return hub.KerasLayer(handle, trainable=trainable, name='hub_module')


def feature_extractor(handle: str, input_size) -> tf_keras.Model:
  """Images [N, H, W, 3] in [0, 1] -> the frozen module's feature vectors."""
  images = tf_keras.Input(shape=(*input_size, 3), name='image')
  features = module_layer(handle, trainable=False)(images)
  return tf_keras.Model(images, features, name='feature_extractor')


def head(input_dim: int, num_classes: int, hidden_units=(), dropout=0.0,
         name='head') -> tf_keras.Model:
  """The classification head on feature vectors; outputs logits."""
  features = tf_keras.Input(shape=(input_dim,), name='features')
  x = features
  for i, units in enumerate(hidden_units):
    x = tf_keras.layers.Dense(units, activation='relu', name=f'hidden_{i}')(x)
    if dropout:
      x = tf_keras.layers.Dropout(dropout)(x)
  if dropout and not hidden_units:
    x = tf_keras.layers.Dropout(dropout)(x)
  logits = tf_keras.layers.Dense(num_classes, name='logits')(x)
  return tf_keras.Model(features, logits, name=name)


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
                         image_key: str, label_key: str, export_dir: str):
  """Saves `model` with a serving signature on serialized raw tf.Examples.

  The Transform graph (decode, resize, scale) is inside the signature, so the
  served model predicts from the encoded image bytes as they are stored.
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
    probabilities = tf.nn.softmax(model(transformed[image_key], training=False))
    return {'probabilities': probabilities,
            'class_id': tf.argmax(probabilities, axis=-1)}

  model.save(export_dir, save_format='tf',
             signatures={'serving_default': serve_tf_examples})
