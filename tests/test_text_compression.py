"""The text model's TFLite tokenizer against the trained model's, and the
text models hubpipe does not convert (the pipeline run is in
test_text_pipeline)."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from hubpipe.components.compressor import techniques
from hubpipe.components.compressor import text_model
from hubpipe.components.hub_modules import resolve as hub_resolve
from hubpipe.components.modeling import measure
from hubpipe.components.modeling import model as model_lib

AWKWARD = np.array([t.encode() for t in [
    'CAF\u00c9 Na\u00efvet\u00e9 -- r\u00e9sum\u00e9!!!', '\u4e2d\u6587 ok \U0001f600',
    "it's\ta  (10/10) e-mail@x.com", ' '.join(['bleak'] * 60), '', '  ',
    '\u2026 \ufb01ne \uff26\uff55\uff4c\uff4c stra\u00dfe \u2122 \u00bd',
    'soft\u00adhyphen zero\u200dwidth \x00nul\r\x0bend', 'a' * 101]],
    object)


@pytest.fixture(scope='module')
def minilm_core():
  tf_keras.utils.set_random_seed(0)  # the head's initial weights
  extractor = model_lib.feature_extractor(
      'text', hub_resolve.resolve('minilm_l6_v2'),
      preprocessor=hub_resolve.resolve('minilm_l6_v2_preprocess'),
      seq_length=16, configured_handle='minilm_l6_v2',
      configured_preprocessor='minilm_l6_v2_preprocess')
  head = model_lib.head(384, 3)
  return tf_keras.Model(extractor.input, head(extractor.output))


def test_the_preprocessing_layer_names_its_preprocessor_as_configured(
    minilm_core):
  layer = minilm_core.get_layer(text_model.PREPROCESSING)
  config = layer.get_config()
  assert (config['preprocessor'], config['seq_length']) == (
      'minilm_l6_v2_preprocess', 16)
  copy = model_lib.BertPreprocessing.from_config(config)
  texts = tf.constant(AWKWARD)
  for key, value in layer(texts).items():
    np.testing.assert_array_equal(copy(texts)[key].numpy(), value.numpy())


def test_the_tflite_tokenizer_packs_as_the_trained_one(minilm_core):
  parts = text_model.bert_parts(minilm_core)
  assert parts['seq_length'] == 16 and len(parts['vocab']) == 30522
  text_model.check_same_tokens(minilm_core, AWKWARD)  # raises if not


def test_dynamic_range_keeps_the_tokenizer_at_under_a_third_of_the_size(
    minilm_core):
  float32 = techniques.to_tflite(minilm_core, 'float32')
  dynamic = techniques.to_tflite(minilm_core, 'dynamic_range')
  assert len(dynamic) < 0.3 * len(float32)
  assert text_model.ops_of(dynamic)['custom'] == [
      'FastBertNormalize', 'FastWordpieceTokenizeWithOffsets',
      'RaggedTensorToTensor']
  probabilities = {name: measure.tflite_predict(data, AWKWARD)
                   for name, data in (('float32', float32),
                                      ('dynamic', dynamic))}
  expected = tf.nn.softmax(minilm_core.predict(AWKWARD, verbose=0)).numpy()
  np.testing.assert_allclose(probabilities['float32'], expected, atol=1e-5)
  # int8 weights: close to the float model, not equal to it.
  difference = np.abs(probabilities['dynamic'] - expected)
  assert difference.max() > 0 and difference.mean() < 0.05


def test_another_vocabulary_is_caught_and_named(minilm_core):
  parts = dict(text_model.bert_parts(minilm_core))
  vocab = list(parts['vocab'])
  good, bad = vocab.index('good'), vocab.index('bad')
  vocab[good], vocab[bad] = vocab[bad], vocab[good]
  parts['vocab'] = vocab
  texts = np.array([b'a bleak film', b'a good film'], object)
  with pytest.raises(text_model.TextConversionError,
                     match=r"input_word_ids .* on 1 of 2 texts, e.g. b'a good film'"):
    text_model.check_same_tokens(minilm_core, texts, parts)


def test_a_model_on_tf_string_ops_gets_no_tflite():
  extractor = model_lib.feature_extractor(
      'text', hub_resolve.resolve('glove_6b_50d'),
      configured_handle='glove_6b_50d')
  core = tf_keras.Model(extractor.input,
                        model_lib.head(50, 2)(extractor.output))
  assert text_model.bert_parts(core) is None
  with pytest.raises(text_model.TextConversionError, match='BERT-style'):
    techniques.to_tflite(core, 'float32')
