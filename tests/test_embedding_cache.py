"""The embedding cache (components/trainer/embedding_cache.py): keys,
segments, the assembled folder's order, cleanup, identity. Seconds, no
pipeline (the rolling window through the pipeline: test_span_retraining)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from hubpipe.components.trainer import embedding_cache as ec
from hubpipe.components.trainer import embeddings

DAY = ec.DAY_S


def _features(keys):
  """Features that say which key they belong to (4 floats)."""
  keys = np.asarray(keys, np.int64)
  return np.stack([keys % 1000, keys % 7, keys % 13, np.ones(len(keys))],
                  axis=1).astype(np.float32)


def _batches(keys, size=3):
  keys = np.asarray(keys, np.int64)
  for i in range(0, len(keys), size):
    yield keys[i:i + size], _features(keys[i:i + size])


def _read_folder(folder, done):
  xs, ys = [], []
  for x, y in embeddings.dataset(folder, done).batch(100):
    xs.append(x.numpy())
    ys.append(y.numpy())
  return np.concatenate(xs), np.concatenate(ys)


def test_keys_are_content_fingerprints():
  raw = tf.constant([[b'png-a'], [b'png-b'], [b'png-a']])
  keys = ec.example_keys(raw).numpy()
  assert keys.dtype == np.int64 and keys.shape == (3,)
  assert keys[0] == keys[2] != keys[1]
  assert ec.example_keys(tf.constant([b'png-a'])).numpy()[0] == keys[0]


@pytest.mark.parametrize('root', ['local', 'ram'])
def test_assembled_folder_does_not_depend_on_what_the_cache_held(
    tmp_path, monkeypatch, root):
  """One segment or two (a duplicate key in both), the folder is the same:
  same order, features of each key, labels from the caller (a relabel)."""
  monkeypatch.setattr(embeddings, 'SHARD_EXAMPLES', 4)  # several shards
  base = str(tmp_path) if root == 'local' else f'ram://{tmp_path}'
  split_keys = np.array([50, 7, 1234, 7, 99, 3000, 12, 8, 401, 77], np.int64)
  labels = np.arange(len(split_keys)) % 3
  one = ec.EmbeddingCache(os.path.join(base, 'one'), {'module': 'm'})
  one.write(_batches(np.unique(split_keys)))
  two = ec.EmbeddingCache(os.path.join(base, 'two'), {'module': 'm'})
  two.write(_batches([50, 7, 1234, 12]))   # an earlier run
  two.write(_batches([7, 99, 3000, 8, 401, 77]))  # this run (7 again)
  results = []
  for cache in (one, two):
    index = ec.Index(cache.complete_segments())
    assert index.contains(split_keys).all()
    folder = os.path.join(base, 'out', cache.digest + cache.folder[-3:])
    done = ec.assemble(folder, split_keys, labels, index,
                       os.path.join(base, 'spill'))
    assert done['count'] == len(split_keys) and len(done['shards']) == 3
    assert not tf.io.gfile.exists(os.path.join(base, 'spill'))
    results.append(_read_folder(folder, done))
  (x1, y1), (x2, y2) = results
  np.testing.assert_array_equal(x1, x2)
  np.testing.assert_array_equal(y1, y2)
  order = ec.assembly_order(split_keys, labels)
  np.testing.assert_array_equal(x1, _features(split_keys[order]))
  np.testing.assert_array_equal(y1, labels[order])


def test_a_segment_without_done_is_ignored(tmp_path):
  cache = ec.EmbeddingCache(str(tmp_path), {'module': 'm'})
  cache.write(_batches([1, 2, 3]))
  killed = ec.write_segment(cache.segments_folder, _batches([4, 5]))
  tf.io.gfile.remove(os.path.join(killed, ec.DONE))  # as if killed
  index = ec.Index(cache.complete_segments())
  assert len(index.segments) == 1
  np.testing.assert_array_equal(index.contains([1, 4, 3, 5]),
                                [True, False, True, False])
  assert ec.write_segment(cache.segments_folder, iter([])) is None


def _age(folder, name, days_ago, now):
  with tf.io.gfile.GFile(os.path.join(folder, name), 'w') as f:
    json.dump({'time': now - days_ago * DAY}, f)


def test_cleanup_by_age_count_and_incomplete(tmp_path):
  now = 1_000_000_000.0
  root = str(tmp_path)
  cache = ec.EmbeddingCache(root, {'module': 'm'})
  segments = [cache.write(_batches([i]), now=now - 40 * DAY)
              for i in range(5)]
  # Last used 1..4 days ago, and one 40 days ago.
  for days, segment in zip((1, 2, 3, 4), segments):
    cache.mark_used([segment], now=now - days * DAY)
  cache.mark_used([], now=now)
  fresh_killed = ec.write_segment(cache.segments_folder, _batches([9]),
                                  now=now - 3600)
  old_killed = ec.write_segment(cache.segments_folder, _batches([10]),
                                now=now - 2 * DAY)
  for folder in (fresh_killed, old_killed):
    tf.io.gfile.remove(os.path.join(folder, ec.DONE))
  stale = ec.EmbeddingCache(root, {'module': 'old'})
  stale.write(_batches([1]), now=now - 60 * DAY)
  stale.mark_used([], now=now - 31 * DAY)

  removed = ec.cleanup(root, max_age_days=30, max_segments=3, now=now)
  assert removed == {'identities': 1, 'segments': 2, 'incomplete': 1}
  assert not tf.io.gfile.exists(stale.folder)
  left = sorted(ec._children(cache.segments_folder))  # pylint: disable=protected-access
  expected = sorted(os.path.basename(s) for s in
                    (segments[0], segments[1], segments[2], fresh_killed))
  assert left == expected  # the 3 most recent, and the live-looking one
  assert len(cache.complete_segments()) == 3


def test_identity_follows_module_content_size_and_transform(tmp_path):
  module = tmp_path / 'module'
  (module / 'variables').mkdir(parents=True)
  (module / 'saved_model.pb').write_bytes(b'graph')
  (module / 'variables' / 'variables.index').write_bytes(b'weights v1')
  before = ec.saved_model_digest(str(module))
  assert ec.saved_model_digest(str(module)) == before
  (module / 'variables' / 'variables.index').write_bytes(b'weights v2')
  assert ec.saved_model_digest(str(module)) != before
  parts = {'module': before, 'input_size': [96, 96],
           'transform_code': 'abc', 'dtype_policy': 'float32'}
  digests = {ec.identity_digest(parts)}
  for key, value in (('module', 'other'), ('input_size', [64, 64]),
                     ('transform_code', 'abd'),
                     ('dtype_policy', 'mixed_float16')):
    digests.add(ec.identity_digest({**parts, key: value}))
  assert len(digests) == 5
  assert ec.identity_digest(dict(reversed(list(parts.items())))) in digests


def test_cleanup_leaves_what_a_run_used_within_a_day(tmp_path):
  """Over the count but used (or listed by a run still reading) within a
  day: kept, so two overlapping runs cannot pull a segment from under
  each other; a day later the count applies."""
  now = 1_000_000_000.0
  cache = ec.EmbeddingCache(str(tmp_path), {'module': 'm'})
  segments = [cache.write(_batches([i]), now=now - 3600) for i in range(4)]
  cache.mark_used(segments, now=now - 3600)
  assert ec.cleanup(str(tmp_path), 30, 2, now=now)['segments'] == 0
  assert len(cache.complete_segments()) == 4
  assert ec.cleanup(str(tmp_path), 30, 2, now=now + 2 * DAY)['segments'] == 2


def test_module_digest_covers_assets_and_needs_a_graph(tmp_path):
  module = tmp_path / 'module'
  (module / 'variables').mkdir(parents=True)
  (module / 'assets').mkdir()
  (module / 'saved_model.pb').write_bytes(b'graph')
  (module / 'variables' / 'variables.index').write_bytes(b'index')
  (module / 'assets' / 'vocab.txt').write_text('a\nb\n')
  before = ec.saved_model_digest(str(module))
  (module / 'assets' / 'vocab.txt').write_text('a\nc\n')
  assert ec.saved_model_digest(str(module)) != before
  (module / 'saved_model.pb').unlink()
  with pytest.raises(ValueError, match='no saved_model.pb'):
    ec.saved_model_digest(str(module))


def test_cache_settings_do_not_change_the_models_identity():
  from hubpipe.pipeline.config import load_config
  from hubpipe.pipeline.pipeline import pipeline_identity
  base = pipeline_identity(load_config())
  for key, value in (('training.embedding_cache', False),
                     ('training.embedding_cache_max_age_days', 3),
                     ('training.embedding_cache_dir', '/tmp/elsewhere')):
    assert pipeline_identity(load_config(None, {key: value})) == base, key
  assert pipeline_identity(load_config(None, {'training.epochs': 3})) != base
