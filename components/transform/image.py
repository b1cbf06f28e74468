"""Transform preprocessing for image classification.

Decodes the encoded image bytes (PNG or JPEG, grayscale or colour), resizes them
to the Hub module's input size and scales them to [0, 1], the value range of TF
Hub image modules. The label passes through as an integer class id; its set of
values is recorded as a vocabulary so the Trainer learns the class count from
the data, not from a constant.

The Transform graph is applied in the Trainer's input pipeline and baked into
the served model, so serving takes the same raw encoded bytes.
"""

import tensorflow as tf
import tensorflow_transform as tft

LABEL_VOCABULARY = 'label_values'


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
  image_key = custom_config['image_feature']
  label_key = custom_config['label_feature']
  height, width = custom_config['input_size']
  encoded = tf.reshape(inputs[image_key], [-1])
  label = tf.reshape(inputs[label_key], [-1])
  # Records the set of class ids seen in the data (read by the Trainer).
  tft.vocabulary(tf.strings.as_string(label), vocab_filename=LABEL_VOCABULARY)
  return {
      image_key: decode_and_resize(encoded, height, width),
      label_key: label,
  }
