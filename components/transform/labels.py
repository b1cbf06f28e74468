"""Label handling shared by every modality's preprocessing_fn.

Class ids (integer labels) pass through; the set of values is recorded as a
Transform vocabulary (LABEL_VOCABULARY), so the Trainer learns the class
count from the data, not from a constant. Class names (string labels) become
ids through a vocabulary the Transform computes over the training data
(LABEL_NAMES: one name a line, the line number is the id). The names are
ordered by their fingerprint, not by frequency, so that new data with the
same classes keeps every class's id. Names are taken exactly as they are
(" fresh" is not "fresh"), as the Evaluator compares them. A name the
vocabulary does not hold (a class that appears only in eval) maps to -1.
"""

import tensorflow as tf
import tensorflow_transform as tft

from hubpipe.components.modeling import LABEL_NAMES
from hubpipe.components.modeling import LABEL_VOCABULARY


def class_ids(label: tf.Tensor) -> tf.Tensor:
  """[N] class ids (int64) from class ids or class names."""
  label = tf.reshape(label, [-1])
  if label.dtype == tf.string:
    return tft.compute_and_apply_vocabulary(
        label, default_value=-1, fingerprint_shuffle=True,
        vocab_filename=LABEL_NAMES)
  tft.vocabulary(tf.strings.as_string(label), vocab_filename=LABEL_VOCABULARY)
  return label
