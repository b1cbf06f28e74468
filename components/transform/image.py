"""Transform preprocessing for image classification.

Decodes the encoded image bytes (PNG or JPEG, grayscale or colour), resizes them
to the Hub module's input size and scales them to [0, 1], the value range of TF
Hub image modules. The Transform graph is applied in the Trainer's input
pipeline and baked into the served model, so serving takes the same raw bytes.
"""

import tensorflow as tf

from hubpipe.components.transform import labels


def decode_and_resize(encoded: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """[N] encoded images -> [N, height, width, 3] float32 in [0, 1]."""

  def one(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    return tf.image.resize(image, [height, width], antialias=True)

  images = tf.map_fn(
      one, encoded,
      fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
  return tf.clip_by_value(images, 0.0, 1.0)


def preprocessing_fn(inputs, custom_config):
  image_key = custom_config['input_feature']
  label_key = custom_config['label_feature']
  height, width = custom_config['input_size']
  encoded = tf.reshape(inputs[image_key], [-1])
  return {
      image_key: decode_and_resize(encoded, height, width),
      label_key: labels.passthrough(inputs[label_key]),
  }
