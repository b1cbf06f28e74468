"""Label handling shared by every modality's preprocessing_fn.

Labels pass through as integer class ids. Their set of values is recorded as a
Transform vocabulary, so the Trainer learns the class count from the data, not
from a constant.
"""

import tensorflow as tf
import tensorflow_transform as tft

from hubpipe.components.modeling import LABEL_VOCABULARY


def passthrough(label: tf.Tensor) -> tf.Tensor:
  label = tf.reshape(label, [-1])
  tft.vocabulary(tf.strings.as_string(label), vocab_filename=LABEL_VOCABULARY)
  return label
