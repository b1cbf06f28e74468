"""Module handles: offline names, local folders, URLs (offline: fail fast), TFHUB_CACHE_DIR."""

import hashlib
import time

import pytest
import tensorflow as tf

from hubpipe.components.hub_modules import resolve


def _tiny_module(path, input_shape=(None, None, None, 3), output='vector'):
  """A minimal TF2 SavedModel with a __call__ (image in)."""

  class Tiny(tf.Module):

    def __init__(self):
      super().__init__()
      self.kernel = tf.Variable(tf.ones([3, 8]))

    @tf.function(input_signature=[tf.TensorSpec(input_shape, tf.float32)])
    def __call__(self, images):
      maps = tf.einsum('nhwc,cd->nhwd', images, self.kernel)
      if output == 'vector':
        return tf.reduce_mean(maps, axis=[1, 2])
      if output == 'sequence':
        return tf.reshape(maps, [tf.shape(maps)[0], -1, 8])
      return maps

  tf.saved_model.save(Tiny(), str(path))
  return str(path)


def test_kinds():
  assert resolve.kind('mobilenet_v1_100_224') == 'offline'
  assert resolve.kind('https://tfhub.dev/google/imagenet/x/5') == 'url'
  assert resolve.kind('https://www.kaggle.com/models/google/x/tf2/y/1') == 'url'
  assert resolve.kind('gs://bucket/module') == 'gcs'
  assert resolve.kind('/some/folder') == 'local'


def test_local_folder(tmp_path):
  path = _tiny_module(tmp_path / 'm')
  assert resolve.resolve(path) == path
  (tmp_path / 'empty').mkdir()
  with pytest.raises(resolve.ModuleNotFound, match='no saved_model.pb'):
    resolve.resolve(str(tmp_path / 'empty'))
  with pytest.raises(resolve.ModuleNotFound, match='mobilenet_v1_100_224'):
    resolve.resolve(str(tmp_path / 'missing'))


def test_unreachable_url_fails_fast_with_the_fix(tmp_path, monkeypatch):
  monkeypatch.setenv('TFHUB_CACHE_DIR', str(tmp_path / 'cache'))
  # Nothing listens on loopback port 1: the probe is refused at once, as a
  # machine without network is; no traffic leaves the machine.
  handle = 'https://127.0.0.1:1/google/some-module/5'
  start = time.monotonic()
  with pytest.raises(resolve.ModuleUnavailable) as err:
    resolve.resolve(handle)
  assert time.monotonic() - start < resolve.PROBE_TIMEOUT_S + 1
  message = str(err.value)
  assert 'module.handle' in message and 'local copy' in message
  assert hashlib.sha1(handle.encode()).hexdigest() in message


def test_url_in_tfhub_cache_resolves_offline(tmp_path, monkeypatch):
  cache = tmp_path / 'cache'
  monkeypatch.setenv('TFHUB_CACHE_DIR', str(cache))
  handle = 'https://127.0.0.1:1/google/cached-module/1'
  digest = hashlib.sha1(handle.encode()).hexdigest()
  _tiny_module(cache / digest)
  assert resolve.resolve(handle) == str(cache / digest)


def test_offline_module_by_name_builds_once():
  first = resolve.resolve('mobilenet_v1_100_224')
  assert resolve.resolve('mobilenet_v1_100_224') == first
  assert resolve.metadata(first)['input_size'] == [224, 224]
