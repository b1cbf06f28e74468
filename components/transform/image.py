"""Transform preprocessing for image classification.

Decodes the encoded image bytes (PNG or JPEG, grayscale or colour), resizes them
to the Hub module's input size and scales them to [0, 1], the value range of TF
Hub image modules. The Transform graph is applied in the Trainer's input
pipeline and baked into the served model, so serving takes the same raw bytes.
"""

import tensorflow as tf

from hubpipe.components.modeling import modules
from hubpipe.components.transform import labels
from hubpipe.pipeline.config import from_handoff


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
  """custom_config: the Transform's hand-off (pipeline/config.py): images
  are written at module.input_size, else at the size module.handle is made
  for (the module is inspected here, in the Transform's own process)."""
  config = from_handoff(custom_config, 'Transform')
  image_key = config.input_feature
  label_key = config.data.label_feature
  height, width = modules.transform_size(config)
  encoded = tf.reshape(inputs[image_key], [-1])
  return {
      image_key: decode_and_resize(encoded, height, width),
      label_key: labels.class_ids(inputs[label_key]),
  }
