"""End to end on text: Rotten Tomatoes snippets through the same DAG.

Frozen GloVe (feature extraction) and fine-tuned MiniLM with its WordPiece
preprocessing companion inside the served model, each next to a bag-of-words
reference fit on the same split; MiniLM compressed to TFLite with its
tokenizer inside (and a distilled student), the pushed .tflite read in the
documented interpreter; and a module that does not fit the data.
"""

import functools
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import reliability
from hubpipe.components.compressor import text_model
from hubpipe.pipeline import local_runner
from hubpipe.pipeline import summary as summary_lib
from hubpipe.pipeline.config import REPO_ROOT, load_config

IN_MEMORY = {'beam.direct_running_mode': 'in_memory'}


@functools.lru_cache(maxsize=1)
def _serving_signature(model_dir):
  """The served model's signature, loaded once for the checks of one test."""
  import tensorflow_text  # pylint: disable=unused-import  (BERT preprocessing ops)
  return tf.saved_model.load(model_dir).signatures['serving_default']


def _predict_texts(model_dir, texts):
  predict = _serving_signature(model_dir)
  examples = [tf.train.Example(features=tf.train.Features(feature={
      'text': tf.train.Feature(bytes_list=tf.train.BytesList(value=[t]))}))
              .SerializeToString() for t in texts]
  return predict(examples=tf.constant(examples))


def _eval_split(summary):
  spec = {'text': tf.io.FixedLenFeature([], tf.string),
          'label': tf.io.FixedLenFeature([], tf.int64)}
  texts, labels = [], []
  for record in tf.data.TFRecordDataset(f'{summary["input_base"]}/eval/data.tfrecord'):
    parsed = tf.io.parse_single_example(record, spec)
    texts.append(parsed['text'].numpy())
    labels.append(int(parsed['label']))
  return texts, np.array(labels)


def _check_served_model(summary):
  texts, labels = _eval_split(summary)
  out = _predict_texts(summary['pushed_model'], texts)
  assert out['probabilities'].shape == (len(texts), 2)
  accuracy = np.mean(out['class_id'].numpy() == labels)
  assert accuracy == pytest.approx(  # the summary rounds to 4 decimals
      summary['evaluation']['metrics']['sparse_categorical_accuracy'], abs=1e-4)


def _check_bad_requests(model_dir):
  """Bad requests fail with a TF error that says what is wrong, and the
  same loaded model serves the next good one."""
  predict = tf.saved_model.load(model_dir).signatures['serving_default']
  good = tf.train.Example(features=tf.train.Features(feature={
      'text': tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[b'a fine film']))})).SerializeToString()
  other = tf.train.Example(features=tf.train.Features(feature={
      'review': tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[b'a fine film']))})).SerializeToString()
  for name, batch, says in (
      ('bytes that are not a tf.Example', [b'\xff\xfe junk'],
       'are not serialized tf.Examples'),
      ('the text sent without its tf.Example', [b'a fine film'],
       'are not serialized tf.Examples'),
      ('an empty serialized string', [good, b''], '[examples] [1] [are empty'),
      ('a tf.Example without the text', [other],
       'Feature: text (data type: string) is required')):
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(says)):
      predict(examples=tf.constant(batch))
    assert predict(examples=tf.constant([good]))['probabilities'].shape == (
        1, 2)
    reliability.record_bad_input(f'serving text: {name}', 'clear_error')


def test_frozen_glove_with_bag_of_words_reference(tmp_path):
  config = load_config(
      str(REPO_ROOT / 'pipeline/configs/rotten_tomatoes_glove.yaml'),
      {**IN_MEMORY, 'data.train_examples': 150, 'data.eval_examples': 60,
       'training.epochs': 5, 'evaluation.min_accuracy': 0.4})
  summary = local_runner.run(config, str(tmp_path / 'work'), echo=lambda _: None)
  assert summary['status'] == 'succeeded', summary.get('error')
  examples = summary['examples']
  assert examples['train'] + examples['validation'] == 150
  assert abs(examples['validation'] - 15) <= 2  # 10% of each of 2 classes
  assert examples['eval'] == 60
  assert summary['module']['output_kind'] == 'feature_vector'
  training = summary['training']
  assert training['num_classes'] == 2
  # The no-reuse reference is scored on the validation split, as the model.
  bow = training['bag_of_words_baseline']['validation_accuracy']
  assert training['validation_examples'] == examples['validation']
  assert bow * examples['validation'] == pytest.approx(
      round(bow * examples['validation']))
  assert summary['blessed'] and summary['pushed']
  _check_served_model(summary)
  _check_bad_requests(summary['pushed_model'])
  # GloVe tokenizes with TF string ops over a lookup table: no TFLite
  # variant, said so, and the SavedModel pushed alone.
  compression = summary['compression']
  assert compression['decision']['chosen'] == 'uncompressed'
  assert 'BERT-style' in compression['skipped']
  assert not compression['variants']
  assert 'compressor: skipped: hubpipe converts BERT-style' in (
      summary_lib.render(summary))
  assert not os.path.exists(f'{summary["pushed_model"]}/model.tflite')


# Raw strings the tokenizer inside the .tflite must treat as the trained
# model's does: accents, case, punctuation runs, CJK, an emoji, a long text
# cut at seq_length, whitespace, and nothing at all.
AWKWARD_TEXTS = [
    '\u2026 \ufb01ne \uff26\uff55\uff4c\uff4c stra\u00dfe \u2122 \u00bd',  # NFKC forms
    'soft\u00adhyphen zero\u200dwidth \x00nul\r\x0bend',  # format, control
    'CAF\u00c9 Na\u00efvet\u00e9 -- r\u00e9sum\u00e9 of a so-so film!!!',
    '\u4e2d\u6587\u5b57\u5e55 subtitles \U0001f600 ok',
    "it's   a\tcharming ,   if\nslight , comedy ... 10/10 (really)",
    ' '.join(['unremittingly bleak'] * 40), '   ', '']


def _documented_interpreter(tflite_bytes):
  """The interpreter as README says to build it, not hubpipe's own helper."""
  import tensorflow_text  # pylint: disable=g-import-not-at-top
  from tensorflow.lite.python.interpreter import InterpreterWithCustomOps  # pylint: disable=g-import-not-at-top
  return InterpreterWithCustomOps(
      model_content=tflite_bytes,
      custom_op_registerers=tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS)


def _tflite_probabilities(tflite_bytes, texts):
  interpreter = _documented_interpreter(tflite_bytes)
  tensor = interpreter.get_input_details()[0]['index']
  interpreter.resize_tensor_input(tensor, [len(texts)])
  interpreter.allocate_tensors()
  interpreter.set_tensor(tensor, np.array([t.encode() if isinstance(t, str)
                                           else t for t in texts], object))
  interpreter.invoke()
  return interpreter.get_tensor(
      interpreter.get_output_details()[0]['index'])


def test_fine_tuned_minilm_serves_raw_text_and_compresses(tmp_path):
  config = load_config(
      str(REPO_ROOT / 'pipeline/configs/rotten_tomatoes_minilm.yaml'),
      {**IN_MEMORY, 'data.train_examples': 400, 'data.eval_examples': 60,
       'module.seq_length': 32, 'training.epochs': 2, 'training.batch_size': 16,
       'training.learning_rate': 0.0001, 'evaluation.min_accuracy': 0.0,
       # float16 is pushed (no drop allowed): a faithful copy, so the ids
       # must equal the SavedModel's; dynamic_range is converted and run in
       # test_text_compression.
       'compression.techniques': ['float16', 'int8', 'int8_selective',
                                  'pruning', 'distillation'],
       'compression.calibration_examples': 32,
       # The student's size is asserted, not what it learns.
       'compression.distillation_epochs': 1,
       'compression.max_accuracy_drop': 0.0})
  summary = local_runner.run(config, str(tmp_path / 'work'), echo=lambda _: None)
  assert summary['status'] == 'succeeded', summary.get('error')
  assert summary['module']['preprocessor'] == 'minilm_l6_v2_preprocess'
  assert summary['training']['integration'] == 'fine_tune'
  assert len(summary['training']['history']['loss']) == 2
  assert summary['pushed']
  _check_served_model(summary)

  # The Compressor ran for text: the whole model, tokenizer inside, in each
  # TFLite mode, and a distilled student; image-only techniques left out.
  compression = summary['compression']
  by_name = {v['name']: v for v in compression['variants']}
  assert sorted(by_name) == ['distilled', 'float16', 'float32', 'int8']
  for row in by_name.values():
    assert not row.get('error'), row
  assert by_name['int8']['size_ratio'] < 0.3
  distilled = by_name['distilled']
  assert distilled['teacher_parameters'] > 22_000_000  # MiniLM-L6 and head
  assert distilled['parameters'] * 10 <= distilled['teacher_parameters']
  chosen = compression['decision']['chosen']
  assert chosen == 'float16', compression['decision']['reason']
  assert compression['left_out'] == {'int8_selective': 'image models only',
                                     'pruning': 'image models only'}
  printed = summary_lib.render(summary)
  assert 'left out: pruning (image models only)' in printed
  assert '(+ model.tflite: the float16 variant)' in printed

  # The pushed .tflite, in the interpreter built the documented way, reads
  # raw strings and gives the SavedModel's class ids.
  folder = summary['pushed_model']
  with open(f'{folder}/model.tflite', 'rb') as f:
    tflite_bytes = f.read()
  with open(f'{folder}/labels.txt') as f:
    assert f.read().splitlines() == ['rotten', 'fresh']
  # Builtins and TF Text's kernels only: no Flex delegate needed.
  assert text_model.ops_of(tflite_bytes) == compression['tflite_ops']
  assert compression['tflite_ops']['flex'] == []
  assert compression['tflite_ops']['custom'] == [
      'FastBertNormalize', 'FastWordpieceTokenizeWithOffsets',
      'RaggedTensorToTensor']
  texts, labels = _eval_split(summary)
  texts = texts + [t.encode() for t in AWKWARD_TEXTS]
  served = _predict_texts(folder, texts)
  probabilities = _tflite_probabilities(tflite_bytes, texts)
  assert probabilities.shape == (len(texts), 2)
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-4)
  np.testing.assert_array_equal(np.argmax(probabilities, -1),
                                served['class_id'].numpy())
  # And it is the variant the report measured: its accuracy on the eval
  # split (all of it sampled) is the report's.
  accuracy = np.mean(np.argmax(probabilities[:len(labels)], -1) == labels)
  assert compression['eval_examples'] == len(labels)
  assert accuracy == pytest.approx(by_name[chosen]['eval_accuracy'], abs=1e-9)


def test_module_that_does_not_fit_stops_before_anything_runs(tmp_path):
  config = load_config(
      str(REPO_ROOT / 'pipeline/configs/rotten_tomatoes_glove.yaml'),
      {'module.handle': 'mobilenet_v1_100_224'})
  summary = local_runner.run(config, str(tmp_path / 'work'), echo=lambda _: None)
  assert summary['status'] == 'failed'
  assert summary['error'].startswith('module: ')
  assert 'mobilenet_v1_100_224 (image module' in summary['error']
  assert 'modality "text"' in summary['error']
  assert summary['components'] == []
