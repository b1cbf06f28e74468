"""Writing a Keras image model as a TF Hub reusable SavedModel, shared by the
image module builders (mobilenet_v1, mobilenet_v2, efficientnet_lite).

The exported module follows the TF Hub reusable SavedModel API for image feature
vectors (and feature maps):

  * `obj.__call__(images, training=False)`: float32 images `[batch, H, W, 3]` with
    values in [0, 1] -> float32 features `[batch, D]` (or a feature map
    `[batch, h, w, D]`), traced for `training=True` and `training=False`;
  * `obj.variables`, `obj.trainable_variables`, `obj.regularization_losses`.

hubpipe's metadata (`name`, `modality`, `output`, `output_dim`, `input_size`,
`value_range`, `source`, `pretrained`) sits in `assets.extra/hubpipe_module.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
  import tf_keras

METADATA_PATH = Path('assets.extra') / 'hubpipe_module.json'


def export_feature_vector_module(keras_model: tf_keras.Model,
                                 export_dir: str | os.PathLike,
                                 native_input_size: int,
                                 *,
                                 name: str | None = None,
                                 source: str = 'unspecified',
                                 pretrained: bool = True) -> Path:
  """Writes keras_model as a TF Hub reusable SavedModel image feature module.

  Args:
    keras_model: a model from images `[batch, H, W, 3]` in [0, 1] to features
      `[batch, D]` (recorded as output "feature_vector") or to a feature map
      `[batch, h, w, D]` (recorded as output "feature_map"); with several outputs
      (as from `include_logits=True`) only the first one is exported.
    export_dir: the directory to write (created; must not hold another model).
    native_input_size: the image height and width the weights were trained on.
    name, source, pretrained: recorded in `assets.extra/hubpipe_module.json`;
      name defaults to the directory's name.

  Returns:
    export_dir as a Path.
  """
  import tensorflow as tf
  import tf_keras

  export_dir = Path(export_dir)
  model = keras_model
  if len(keras_model.outputs) > 1:
    model = tf_keras.Model(keras_model.inputs, keras_model.outputs[0])
  output_shape = model.outputs[0].shape
  output_kinds = {2: 'feature_vector', 4: 'feature_map'}
  if output_shape.rank not in output_kinds:
    raise ValueError(f'cannot export an output of shape {output_shape}: expected '
                     '[batch, D] or [batch, h, w, D]')
  output_kind = output_kinds[output_shape.rank]
  output_dim = int(output_shape[-1])

  # Keras layers need no AutoGraph conversion; skipping it cuts tracing and saving
  # MobileNet from tens of seconds to a few.
  @tf.function(autograph=False)
  def call(images, training=False):
    return model(images, training=training)

  images_spec = tf.TensorSpec([None, None, None, 3], tf.float32, name='images')
  for training in (False, True):
    call.get_concrete_function(images_spec, training=training)

  def traced_loss(i):
    loss = tf.function(lambda: model.losses[i], input_signature=[], autograph=False)
    loss.get_concrete_function()
    return loss

  obj = tf.train.Checkpoint()
  obj.__call__ = call
  obj.variables = list(model.variables)
  obj.trainable_variables = list(model.trainable_variables)
  obj.regularization_losses = [traced_loss(i) for i in range(len(model.losses))]
  tf.saved_model.save(obj, str(export_dir))

  metadata = {
      'name': name or export_dir.name,
      'modality': 'image',
      'output': output_kind,
      'output_dim': output_dim,
      'input_size': [native_input_size, native_input_size],
      'value_range': [0, 1],
      'source': source,
      'pretrained': bool(pretrained),
  }
  (export_dir / METADATA_PATH).parent.mkdir(parents=True, exist_ok=True)
  (export_dir / METADATA_PATH).write_text(json.dumps(metadata, indent=2) + '\n')
  return export_dir


def build(modules, name: str, force: bool, keras_model: Callable[[], 'tf_keras.Model'],
          native_input_size: int, source: str, pretrained: bool = True) -> Path:
  """`builds.build` for an image builder's registered module `name`:
  `keras_model()` exported with `export_feature_vector_module` into
  `data_dir()/'modules'/name`, once and atomically (no TensorFlow import
  when it is built)."""
  from hubpipe.components.hub_modules import builds  # pylint: disable=g-import-not-at-top

  def export(export_dir: Path) -> None:
    export_feature_vector_module(keras_model(), export_dir, native_input_size,
                                 name=name, source=source, pretrained=pretrained)

  return builds.build(modules, name, export, force)
