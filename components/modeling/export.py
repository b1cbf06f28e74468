"""The Trainer's export, and how later steps read it.

One SavedModel (the Model artifact's Format-Serving folder), saved by Keras:

  signature `serving_default`: serialized raw tf.Examples in (the Transform
      graph inside); out `probabilities` [N, K], `class_id` [N], `class_name`
      [N] (the record's class names: the label vocabulary, an image
      folder's names, else the ids) and `all_classes` [N, K] (every class
      name, the estimator convention by which TFMA maps class-name labels to
      ids): what TF Serving and the Evaluator call;
  signature `core` (CORE_SIGNATURE): the transformed input feature in
      (images [N, H, W, 3] in [0, 1] at the Transform's size; text [N]
      strings), `logits` [N, K] out: what a converter (TFLite) takes;
  the Keras classifier itself (the same core): `load_core` gives it back as
      the Keras model the Trainer trained, module layer and all, which is
      what the Compressor quantizes, prunes and distils;
  `assets.extra/hubpipe_model.json` (MODEL_RECORD): what the model is built
      on (module, sizes, integration, class names). TF Serving ignores
      assets.extra; a later run reads it to decide whether it can warm-start
      from the pushed model, and the Trainer's executor copies it onto the
      Model artifact's custom properties (`artifact_properties`), where the
      Compressor, ML Metadata and the KFP UI read it.
"""

import json
import os
from typing import Optional

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_hub as hub
import tf_keras

# Registers the module layers' Keras classes, which load_core needs.
from hubpipe.components.modeling import model as _model  # pylint: disable=unused-import
from hubpipe.components.modeling import partial as _partial  # pylint: disable=unused-import
from hubpipe.components.modeling.modules import NO_REUSE

CORE_SIGNATURE = 'core'
MODEL_RECORD = os.path.join('assets.extra', 'hubpipe_model.json')
# Inside each export: the weights a later run can warm-start from.
WARM_START_DIR = os.path.join('assets.extra', 'warm_start')
# The record's keys that become Model artifact custom properties.
PROPERTIES = ('module_handle', 'module_input_size', 'transform_size',
              'preprocessor', 'integration', 'num_classes', 'class_names',
              'input_feature', 'core_signature', 'selected_by')


def export(model: tf_keras.Model, tf_transform_output, input_key: str,
           label_key: str, export_dir: str, record: dict) -> dict:
  """Saves `model` (transformed input -> logits) with the two signatures
  and the model record (see the module docstring); returns the record.
  record['class_names'] (K names in id order) gives `class_name`; without
  it the names are the ids.

  The Transform graph is inside `serving_default`, so the served model
  predicts from the raw feature as stored: encoded image bytes, or text.
  """
  model.tft_layer = tf_transform_output.transform_features_layer()
  raw_spec = tf_transform_output.raw_feature_spec()
  raw_spec.pop(label_key, None)

  num_classes = int(model.outputs[0].shape[-1])
  names = list(record.get('class_names') or [str(i) for i in range(num_classes)])
  if len(names) != num_classes:
    raise ValueError(f'{len(names)} class names for a model of {num_classes} '
                     'classes')

  spec = model.inputs[0]
  # Images: the core takes [N, H, W, 3]; text: [N] strings.
  image_input = len(spec.shape) == 4

  @tf.function(input_signature=[
      tf.TensorSpec(shape=[None], dtype=tf.string, name='examples')])
  def serve_tf_examples(serialized):
    serialized = check_serialized_examples(serialized, input_key)
    raw = tf.io.parse_example(serialized, raw_spec)
    if image_input:
      raw[input_key] = check_encoded_images(raw[input_key], input_key)
    transformed = model.tft_layer(raw)
    probabilities = tf.nn.softmax(model(transformed[input_key], training=False))
    class_id = tf.argmax(probabilities, axis=-1)
    all_names = tf.constant(names)  # part of the serving graph
    return {'probabilities': probabilities,
            'class_id': class_id,
            'class_name': tf.gather(all_names, class_id),
            'all_classes': tf.tile(all_names[tf.newaxis],
                                   [tf.shape(class_id)[0], 1])}

  @tf.function(input_signature=[tf.TensorSpec(
      shape=[None, *spec.shape[1:]], dtype=spec.dtype, name=input_key)])
  def core(transformed):
    return {'logits': model(transformed, training=False)}

  model.save(export_dir, save_format='tf',
             signatures={'serving_default': serve_tf_examples,
                         CORE_SIGNATURE: core})
  record = {**record, 'input_feature': input_key,
            'core_signature': CORE_SIGNATURE}
  write_record(export_dir, record)
  return record


def _indices(bad: tf.Tensor) -> tf.Tensor:
  """The positions where `bad` [N] is true: which requests to name."""
  return tf.reshape(tf.where(bad), [-1])


def check_serialized_examples(serialized: tf.Tensor,
                              input_key: str) -> tf.Tensor:
  """`serialized` [N], once it is checked that each looks like a serialized
  tf.Example; else the request fails with an InvalidArgumentError naming the
  positions and what the signature takes.

  Checked on the wire format, before parsing: ParseExample's own error
  quotes the bytes it could not parse, which TF's Python error translation
  cannot decode when they are not UTF-8 (an image sent without its
  tf.Example), so a Python caller would get a UnicodeDecodeError instead.
  A serialized tf.Example starts with its `features` field: tag 0x0a, then
  the field's length (a varint) that must fit in what follows (protobuf
  serializers write an Example's one field so; a hand-built Example with
  an unknown field first is refused here, though ParseExample would take
  it). Bytes that pass are left to ParseExample."""
  # (No quotes in an Assert's strings: its message escapes them.)
  takes = ('the signature takes serialized tf.train.Example protos, each '
           f'with the feature `{input_key}`')
  length = tf.strings.length(serialized)
  empty = tf.equal(length, 0)
  # The first 6 bytes (zero-padded): the tag and up to 5 varint bytes.
  head = tf.io.decode_raw(serialized, tf.uint8, fixed_length=6)
  head = tf.cast(tf.reshape(head, [-1, 6]), tf.int64)
  declared = tf.zeros_like(length, tf.int64)
  header = tf.ones_like(length, tf.int64)
  going = tf.ones_like(empty)
  for k in range(1, 6):
    byte = head[:, k]
    declared += tf.where(going, tf.bitwise.left_shift(
        tf.bitwise.bitwise_and(byte, 0x7f), 7 * (k - 1)), 0)
    header += tf.cast(going, tf.int64)
    going = tf.logical_and(going, tf.bitwise.bitwise_and(byte, 0x80) > 0)
  example = (tf.equal(head[:, 0], 0x0a) & tf.logical_not(going)
             & (header + declared <= tf.cast(length, tf.int64)))
  not_example = tf.logical_and(tf.logical_not(empty),
                               tf.logical_not(example))
  checks = [
      tf.debugging.Assert(tf.logical_not(tf.reduce_any(empty)), [
          'examples', _indices(empty), f'are empty strings: {takes}.'],
                          summarize=10),
      tf.debugging.Assert(tf.logical_not(tf.reduce_any(not_example)), [
          'examples', _indices(not_example),
          f'are not serialized tf.Examples ({takes}: the input goes in '
          'that feature of a tf.Example, not on its own).'], summarize=10)]
  with tf.control_dependencies(checks):
    return tf.identity(serialized)


def check_encoded_images(encoded: tf.Tensor, input_key: str) -> tf.Tensor:
  """`encoded` (the parsed image feature), once it is checked that none is
  empty (the decoder would say only "Input is empty."); what is not an
  image, the decoder names ("Unknown image file format")."""
  empty = tf.equal(tf.strings.length(tf.reshape(encoded, [-1])), 0)
  check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(empty)), [
      'examples', _indices(empty),
      f'have an empty feature `{input_key}`: it holds the encoded image '
      '(JPEG, PNG, GIF or BMP bytes).'], summarize=10)
  with tf.control_dependencies([check]):
    return tf.identity(encoded)


def write_record(export_dir: str, record: dict) -> None:
  path = os.path.join(export_dir, MODEL_RECORD)
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)


# What exports made before the model record held: {handle, input_size}.
LEGACY_RECORD = os.path.join('assets.extra', 'hubpipe_module.json')


def read_record(export_dir: str) -> Optional[dict]:
  """The model record of an export (from an export made before the record,
  the module and size it held); None when it has neither (not made by
  hubpipe's Trainer)."""
  path = os.path.join(export_dir, MODEL_RECORD)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)
  legacy = os.path.join(export_dir, LEGACY_RECORD)
  if tf.io.gfile.exists(legacy):
    with tf.io.gfile.GFile(legacy) as f:
      old = json.load(f)
    return {'module_handle': old.get('handle'),
            'module_input_size': old.get('input_size')}
  return None


def artifact_properties(record: dict) -> dict:
  """{name: str or int} for the Model artifact's custom properties: strings
  and integers as they are, lists as JSON, None left out."""
  out = {}
  for key in PROPERTIES:
    value = record.get(key)
    if value is None:
      continue
    if isinstance(value, int) and not isinstance(value, bool):
      out[key] = value
    elif isinstance(value, str):
      out[key] = value
    else:
      out[key] = json.dumps(value)
  return out


def load_core(export_dir: str) -> tf_keras.Model:
  """The exported classifier as the Keras model the Trainer trained
  (transformed input -> logits), module layer included, computing in
  float32 (a model trained under a mixed-precision policy is rebuilt in
  float32: what TFLite converts and what the later steps measure)."""
  if not tf.io.gfile.exists(os.path.join(export_dir, 'saved_model.pb')):
    raise ValueError(f'no SavedModel in {export_dir}.')
  loaded = tf_keras.models.load_model(
      export_dir, compile=False, custom_objects={'KerasLayer': hub.KerasLayer})
  if not isinstance(loaded, tf_keras.Model):
    raise ValueError(f'{export_dir} holds no Keras model: was it exported by '
                     'hubpipe\'s Trainer?')
  try:
    module = loaded.get_layer('hub_module')
  except ValueError:
    module = None
  handle = (read_record(export_dir) or {}).get('module_handle', 'unknown')
  if not isinstance(module, hub.KerasLayer) and handle != NO_REUSE:
    raise ValueError(
        f'{export_dir}: the model\'s module ({handle}) could not be loaded '
        f'here, so Keras revived its layer without it '
        f'({type(module).__name__}). Make {handle} reachable from this '
        'machine (an offline module name is built from its package; a URL '
        'needs the network or a TFHUB_CACHE_DIR holding it; a folder must '
        'exist here) and run the step again.')
  # The graph from input to logits only: the export also tracks the
  # Transform layer (for serving_default), which is no part of the core.
  core = tf_keras.Model(loaded.inputs, loaded.outputs, name='classifier')
  if any(_mixed(layer) for layer in _all_layers(core)):
    core = _in_float32(core)
  return core


def _policy(layer) -> str:
  return getattr(getattr(layer, 'dtype_policy', None), 'name', 'float32')


def _mixed(layer) -> bool:
  """Whether the layer computes under a mixed-precision policy (not a
  layer whose dtype is its data's: a TextVectorization's string)."""
  return _policy(layer).startswith('mixed')


def _all_layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, tf_keras.Model):
      yield from _all_layers(layer)


def _in_float32(model: tf_keras.Model) -> tf_keras.Model:
  """A copy of `model` whose layers all compute in float32, same weights."""
  def clone(layer):
    if isinstance(layer, tf_keras.Model):
      return tf_keras.models.clone_model(layer, clone_function=clone)
    config = layer.get_config()
    if _mixed(layer):
      config['dtype'] = 'float32'
    return layer.__class__.from_config(config)
  copy = tf_keras.models.clone_model(model, clone_function=clone)
  copy.set_weights(model.get_weights())
  return copy
