"""Transform preprocessing for text classification.

The text goes to the module as a string: Hub text modules (and the BERT
preprocessing companions) tokenise in their own graph, so the same tokenisation
runs in training and in serving. Here the text is only made a dense [N] string
and stripped of surrounding white space.
"""

import tensorflow as tf

from hubpipe.components.transform import labels


def preprocessing_fn(inputs, custom_config):
  text_key = custom_config['input_feature']
  label_key = custom_config['label_feature']
  return {
      text_key: tf.strings.strip(tf.reshape(inputs[text_key], [-1])),
      label_key: labels.passthrough(inputs[label_key]),
  }
