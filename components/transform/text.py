"""Transform preprocessing for text classification.

The text goes to the module as a string: Hub text modules (and the BERT
preprocessing companions) tokenise in their own graph, so the same tokenisation
runs in training and in serving. Here the text is only made a dense [N] string
and stripped of surrounding white space.
"""

import tensorflow as tf

from hubpipe.components.transform import labels
from hubpipe.pipeline.config import from_handoff


def preprocessing_fn(inputs, custom_config):
  """custom_config: the Transform's hand-off (pipeline/config.py)."""
  config = from_handoff(custom_config, 'Transform')
  text_key = config.input_feature
  label_key = config.data.label_feature
  return {
      text_key: tf.strings.strip(tf.reshape(inputs[text_key], [-1])),
      label_key: labels.class_ids(inputs[label_key]),
  }
