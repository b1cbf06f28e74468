"""Model pieces: the Hub module layer, the feature extractor, the head, the
classifier (transformed input in, logits out).

`extractor_for` is the one place a feature extractor is built from a config
and a module choice; the Trainer and the ModuleSelector both call it.
Models are built with tf_keras (Keras 2): hub.KerasLayer, TFMA and TFMOT need it.
The module layers are registered Keras classes, so an exported model loads
back as the same Keras model (export.load_core).
"""

import contextlib
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_hub as hub
import tf_keras


@contextlib.contextmanager
def keras_internals_unconverted():
  """Within it, AutoGraph does not transpile tf_keras's own code, as it
  never transpiles `keras` (TF 2.16's CONVERSION_RULES list `keras`, not
  `tf_keras`, the same Keras 2 code under its new name). The Trainer's
  step, the Compressor's variants and the selector's probe fits run in it
  (hubpipe's code only): the first trace of a training step
  otherwise rewrites some 2500 Keras and optimizer functions (the demo
  model made trainable: first step 18.3 s -> 5.4 s). Layers' `call`
  methods are still converted (Keras converts each itself); a model's own
  `train_step` override would not be, which is why this is scoped to
  hubpipe's calls, not set for the process (a local run executes every
  component, and Beam in memory, in one process). The rules are read when
  a step is traced, so what matters is that the first call is inside."""
  try:
    from tensorflow.python.autograph.core import config as autograph_config  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
    previous = autograph_config.CONVERSION_RULES
    rule = autograph_config.DoNotConvert('tf_keras')
  except (ImportError, AttributeError):  # another TensorFlow: no change
    yield
    return
  autograph_config.CONVERSION_RULES = (rule,) + tuple(previous)
  try:
    yield
  finally:
    autograph_config.CONVERSION_RULES = previous


class ConfiguredHandle:
  """For module layers: the layer's Keras config names the module as
  configured (an offline name, a URL or a folder), not the path it resolved
  to where the model was built, and `from_config` resolves it again where
  the model is loaded (another pod has its own TF Hub cache folder)."""

  configured_handle = None

  def get_config(self):
    config = super().get_config()
    if self.configured_handle:
      config['handle'] = self.configured_handle
    return config

  @classmethod
  def from_config(cls, config):
    from hubpipe.components.hub_modules import resolve as hub_resolve  # pylint: disable=g-import-not-at-top
    config = dict(config)
    configured = config['handle']
    config['handle'] = hub_resolve.resolve(configured)
    layer = cls(**config)
    layer.configured_handle = configured
    return layer


@tf_keras.utils.register_keras_serializable(package='hubpipe')
class ModuleLayer(ConfiguredHandle, hub.KerasLayer):
  """A frozen module (hub.KerasLayer) whose config names it as configured."""


@tf_keras.utils.register_keras_serializable(package='hubpipe')
class InferenceModeKerasLayer(ConfiguredHandle, hub.KerasLayer):
  """A hub.KerasLayer that always runs its module in inference mode.

  For fine-tuning: the weights train, but batch normalisation keeps using its
  moving statistics (and dropout stays off), the Keras transfer-learning
  practice: a small new data set would otherwise wreck the module's statistics.
  """

  def call(self, inputs, training=None):
    return super().call(inputs, training=False)


@tf_keras.utils.register_keras_serializable(package='hubpipe')
class BertPreprocessing(tf_keras.layers.Layer):
  """A BERT preprocessing companion as one layer: [N] strings -> the
  encoder's inputs ({'input_word_ids', 'input_mask', 'input_type_ids'},
  int32 [N, seq_length]) through its `tokenize` and `bert_pack_inputs`.

  Its config names the preprocessor as configured and the packing length,
  and `from_config` resolves the preprocessor again where the model is
  loaded, so an exported text model loads back as Keras (export.load_core).
  `vocab_file` is the WordPiece vocabulary the preprocessor was built with.
  """

  def __init__(self, preprocessor: str, seq_length: int, resolved=None,
               **kwargs):
    kwargs['trainable'] = False  # no weights: a vocabulary and the packing
    super().__init__(**kwargs)
    _register_text_ops()
    if resolved is None:
      from hubpipe.components.hub_modules import resolve as hub_resolve  # pylint: disable=g-import-not-at-top
      resolved = hub_resolve.resolve(preprocessor)
    self.preprocessor, self.seq_length = preprocessor, int(seq_length)
    self.vocab_file = os.path.join(resolved, 'assets', 'vocab.txt')
    self._module = hub.load(resolved)

  def call(self, text):
    tokens = self._module.tokenize(tf.reshape(text, [-1]))
    return self._module.bert_pack_inputs([tokens],
                                         seq_length=self.seq_length)

  def get_config(self):
    return {**super().get_config(), 'preprocessor': self.preprocessor,
            'seq_length': self.seq_length}


def module_layer(handle: str, trainable, name='hub_module',
                 configured_handle: str = None) -> hub.KerasLayer:
  """The module (`handle`: resolved) as a Keras layer; its config names it
  `configured_handle` (default: `handle`), see ConfiguredHandle.

  trainable: False (frozen), True (all of it, batch norm in inference mode),
  or a `partial.select_trainable` spec (the top blocks only, for hybrid).
  The layer computes in float32 whatever the global Keras policy: a SavedModel
  only has functions for the dtypes it was exported with, and under
  mixed_float16 Keras would otherwise cast its inputs to float16 ("Could not
  find matching concrete function").
  """
  if trainable is False:
    layer = ModuleLayer(handle, trainable=False, name=name, dtype='float32')
  elif trainable is True:
    layer = InferenceModeKerasLayer(handle, trainable=True, name=name,
                                    dtype='float32')
  else:
    from hubpipe.components.modeling import partial  # pylint: disable=g-import-not-at-top
    layer = partial.PartiallyTrainableKerasLayer(
        handle, trainable_spec=trainable, name=name, dtype='float32')
  layer.configured_handle = configured_handle or handle
  return layer


def feature_extractor(modality: str, handle: str, input_size=None,
                      preprocessor: str = None, seq_length: int = 128,
                      trainable=False, resize_from=None,
                      configured_handle: str = None,
                      configured_preprocessor: str = None) -> tf_keras.Model:
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
    return tf_keras.Model(
        inputs, module_layer(handle, trainable,
                             configured_handle=configured_handle)(images),
        name='feature_extractor')
  inputs = tf_keras.Input(shape=(), dtype=tf.string, name='text')
  if preprocessor is None:
    features = module_layer(handle, trainable,
                            configured_handle=configured_handle)(inputs)
  else:
    encoder_inputs = BertPreprocessing(
        configured_preprocessor or preprocessor, seq_length,
        resolved=preprocessor, name='bert_preprocessing')(inputs)
    outputs = module_layer(handle, trainable,
                           configured_handle=configured_handle)(encoder_inputs)
    features = outputs['pooled_output']
  return tf_keras.Model(inputs, features, name='feature_extractor')


def extractor_for(config, module, images_at=None, trainable=False
                  ) -> tf_keras.Model:
  """The feature extractor for `module` (a modules.ModuleChoice) as the
  config says: images at `images_at` (the Transform's size) resized to the
  size the module runs at; text through the module's preprocessor at
  module.seq_length."""
  return feature_extractor(
      config.modality, module.resolved, input_size=module.input_size,
      resize_from=images_at, preprocessor=module.resolved_preprocessor,
      seq_length=config.module.seq_length, trainable=trainable,
      configured_handle=module.handle,
      configured_preprocessor=module.preprocessor)


def head_for(config, feature_shape, num_classes: int, name='head'
             ) -> tf_keras.Model:
  """The head config.model describes, on features of `feature_shape`."""
  return head(feature_shape, num_classes, config.model.hidden_units,
              config.model.dropout, name=name)


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
  head's first layer with weights, and the logits (a model without a module,
  trained from scratch: its first layer with weights, and the logits)."""
  if 'hub_module' not in [layer.name for layer in served.layers]:
    first = next(layer for layer in served.layers if layer.weights)
    return {'model': first.compute_dtype,
            'logits': served.get_layer('logits').compute_dtype,
            'variables': _variable_dtypes(served)}
  module = served.get_layer('hub_module')
  head_model = served.layers[-1]
  first = next(layer for layer in head_model.layers if layer.weights)
  return {'module': module.compute_dtype, 'head': first.compute_dtype,
          'logits': head_model.get_layer('logits').compute_dtype,
          'variables': _variable_dtypes(served)}


def _variable_dtypes(model) -> list:
  # A TextVectorization's vocabulary is a weight without a dtype.
  return sorted({v.dtype.name for v in model.weights if hasattr(v, 'dtype')})


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
