"""CSV text with class names as labels, end to end.

Real Rotten Tomatoes snippets written as a CSV with a split column and the
labels "fresh" / "rotten": TFX's CSV parsing in the ExampleGen, the split
column routing rows, the Transform's label vocabulary, the Evaluator mapping
the names to ids, and a served model that answers with class names.
"""

import csv

import numpy as np
import pytest
import tensorflow as tf

from hubpipe.components.datasets import rotten_tomatoes
from hubpipe.pipeline import local_runner
from hubpipe.pipeline.config import ConfigError, REPO_ROOT, load_config

NAMES = ('rotten', 'fresh')  # rotten_tomatoes' ids 0 and 1
# A field with a comma, quotes and a line break: CSV quoting, as TFX parses it.
AWKWARD = 'A "tour de force", they said;\nit is not.'


def _write_csv(path, rows, header=('text', 'label', 'split')):
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


@pytest.fixture(scope='module')
def reviews():
  corpus = rotten_tomatoes.load_corpus()
  rng = np.random.default_rng(0)
  picked = rng.permutation(len(corpus.texts))[:240]
  rows = [(corpus.texts[i], NAMES[int(corpus.labels[i])]) for i in picked]
  rows[0] = (AWKWARD, rows[0][1])
  splits = ['eval'] * 60 + ['validation'] * 30 + ['train'] * 150
  return [(text, label, split) for (text, label), split in zip(rows, splits)]


@pytest.fixture(scope='module')
def run(tmp_path_factory, reviews):
  root = tmp_path_factory.mktemp('csv')
  data = root / 'data'
  data.mkdir()
  # Two files at the data root, the split column routes their rows.
  _write_csv(data / 'part-1.csv', reviews[:100])
  _write_csv(data / 'part-2.csv', reviews[100:])
  config = load_config(
      str(REPO_ROOT / 'pipeline/configs/rotten_tomatoes_glove.yaml'),
      {'beam.direct_running_mode': 'in_memory', 'name': 'csv-reviews',
       'data.source': 'csv', 'data.path': str(data),
       'data.split_feature': 'split', 'data.label_type': 'string',
       'training.epochs': 5, 'training.bag_of_words_baseline': False,
       'evaluation.min_accuracy': 0.4})
  summary = local_runner.run(config, str(root / 'work'), echo=lambda _: None)
  assert summary['status'] == 'succeeded', summary.get('error')
  return summary, reviews


def _serve(model_dir, texts):
  predict = tf.saved_model.load(model_dir).signatures['serving_default']
  examples = [tf.train.Example(features=tf.train.Features(feature={
      'text': tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[t.encode()]))})).SerializeToString() for t in texts]
  return predict(examples=tf.constant(examples))


def test_the_split_column_routes_the_rows(run):
  summary, _ = run
  assert summary['examples'] == {'train': 150, 'validation': 30, 'eval': 60}


def test_the_served_model_answers_with_class_names(run):
  summary, reviews = run
  training = summary['training']
  assert training['num_classes'] == 2
  assert sorted(training['class_names']) == sorted(NAMES)
  eval_rows = [r for r in reviews if r[2] == 'eval']
  out = _serve(summary['pushed_model'], [text for text, _, _ in eval_rows])
  names = [n.decode() for n in out['class_name'].numpy()]
  ids = out['class_id'].numpy()
  assert set(names) <= set(NAMES)
  # class_name is class_id's name, by the order the model was trained in.
  assert names == [training['class_names'][i] for i in ids]
  assert out['all_classes'].shape == (len(eval_rows), 2)
  # The Evaluator mapped the string labels to the same ids (TFMA reads
  # all_classes): its accuracy is the served names' agreement with the labels.
  accuracy = np.mean([n == label for n, (_, label, _) in zip(names, eval_rows)])
  assert accuracy == pytest.approx(
      summary['evaluation']['metrics']['sparse_categorical_accuracy'], abs=1e-4)
  assert accuracy > 0.5


def test_a_csv_for_images_or_a_stray_split_column_is_refused(tmp_path):
  with pytest.raises(ConfigError, match='csv" holds text'):
    load_config(None, {'data.source': 'csv', 'data.path': str(tmp_path)})
  glove = str(REPO_ROOT / 'pipeline/configs/rotten_tomatoes_glove.yaml')
  with pytest.raises(ConfigError, match='split_feature: a split column'):
    load_config(glove, {'data.split_feature': 'split'})
  with pytest.raises(ConfigError, match='label_type'):
    load_config(glove, {'data.label_type': 'names'})
  with pytest.raises(ConfigError, match='data.path: required'):
    load_config(glove, {'data.source': 'csv'})


def test_rows_without_a_known_split_stop_the_run(tmp_path, reviews):
  data = tmp_path / 'data'
  data.mkdir()
  rows = [(t, y, s if i else 'holdout') for i, (t, y, s) in enumerate(reviews)]
  _write_csv(data / 'reviews.csv', rows[:80])
  config = load_config(
      str(REPO_ROOT / 'pipeline/configs/rotten_tomatoes_glove.yaml'),
      {'beam.direct_running_mode': 'in_memory', 'data.source': 'csv',
       'data.path': str(data), 'data.split_feature': 'split',
       'data.label_type': 'string'})
  summary = local_runner.run(config, str(tmp_path / 'work'), echo=lambda _: None)
  assert summary['status'] == 'failed'
  assert "'holdout': 1" in summary['error'] and 'train, validation, eval' in summary['error']


def test_named_text_columns_stay_text_and_must_exist(tmp_path):
  """Class names that look like numbers stay names; a column the config
  names but the files lack stops the ExampleGen, naming both."""
  import json

  import apache_beam as beam
  from apache_beam.testing.util import assert_that, equal_to
  from hubpipe.components.snapshot_example_gen import executor

  path = tmp_path / 'reviews.csv'
  _write_csv(path, [('1999', '0'), ('good', '1'), ('bad', '0')],
             header=('text', 'label'))
  files = json.dumps([str(path)])

  def read(columns):
    return executor._ReadCsvFiles(
        {'string_columns': json.dumps(columns)}, files)

  def kinds(example):
    return tuple(example.features.feature[k].WhichOneof('kind')
                 for k in ('text', 'label'))

  with beam.Pipeline() as pipeline:
    inferred = pipeline | 'Inferred' >> read([]) | 'K1' >> beam.Map(kinds)
    assert_that(inferred, equal_to([('bytes_list', 'int64_list')] * 3),
                label='AsInferred')
    named = (pipeline | 'Named' >> read(['text', 'label'])
             | 'K2' >> beam.Map(kinds))
    assert_that(named, equal_to([('bytes_list', 'bytes_list')] * 3),
                label='AsNamed')
  with pytest.raises(ValueError, match='no column sentiment .*data.label_feature'):
    with beam.Pipeline() as pipeline:
      _ = pipeline | read(['text', 'sentiment'])
