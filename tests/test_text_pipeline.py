"""End to end on text: Rotten Tomatoes snippets through the same DAG.

Frozen GloVe (feature extraction) and fine-tuned MiniLM with its WordPiece
preprocessing companion inside the served model, each next to a bag-of-words
reference fit on the same split; and a module that does not fit the data.
"""

import numpy as np
import pytest
import tensorflow as tf

from hubpipe.pipeline import local_runner
from hubpipe.pipeline.config import REPO_ROOT, load_config

IN_MEMORY = {'beam.direct_running_mode': 'in_memory'}


def _predict_texts(model_dir, texts):
  import tensorflow_text  # pylint: disable=unused-import  (BERT preprocessing ops)
  predict = tf.saved_model.load(model_dir).signatures['serving_default']
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


def test_fine_tuned_minilm_serves_raw_text(tmp_path):
  config = load_config(
      str(REPO_ROOT / 'pipeline/configs/rotten_tomatoes_minilm.yaml'),
      {**IN_MEMORY, 'data.train_examples': 48, 'data.eval_examples': 24,
       'module.seq_length': 24, 'training.epochs': 1, 'training.batch_size': 16,
       'evaluation.min_accuracy': 0.0})
  summary = local_runner.run(config, str(tmp_path / 'work'), echo=lambda _: None)
  assert summary['status'] == 'succeeded', summary.get('error')
  assert summary['module']['preprocessor'] == 'minilm_l6_v2_preprocess'
  assert summary['training']['integration'] == 'fine_tune'
  assert len(summary['training']['history']['loss']) == 1
  assert summary['pushed']
  _check_served_model(summary)


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
