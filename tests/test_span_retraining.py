"""Scheduled retraining, locally: new data arrives as span folders.

Run 1 sees span-1; span-2 arrives; run 2 ingests it, trains on the latest two
spans, warm-starts from the first push and is evaluated against it; run 3,
with no new data, reuses every step and pushes nothing. (The same three runs
on the compiled Kubeflow spec: tests/test_kfp_scheduled_runs.py.) Then span-3
arrives and the window moves to spans 2 and 3: through the embedding cache the
Trainer embeds only span-3's new images, and the same run with the cache off
(embedding everything) trains a head of the same validation accuracy.
"""

import os
import shutil

import tensorflow as tf

from hubpipe.components.datasets import fashion_mnist
from hubpipe.pipeline import local_runner
from hubpipe.pipeline import summary as summary_lib
from hubpipe.pipeline.config import load_config


def _add_span(root, number, seed):
  source = fashion_mnist.prepare(150, 60, seed=seed)
  for split in ('train', 'eval'):
    shutil.copytree(source / split, root / f'span-{number}' / split)


def _images(root, number):
  """The raw image bytes of a span's train split."""
  out = set()
  for record in tf.data.TFRecordDataset(
      str(root / f'span-{number}' / 'train' / 'data.tfrecord')):
    example = tf.train.Example.FromString(record.numpy())
    out.add(example.features.feature['image'].bytes_list.value[0])
  return out


def _versions(summary):
  serving = os.path.dirname(summary['pushed_model'])
  return sorted(v for v in os.listdir(serving) if v.isdigit())


def test_three_runs_over_growing_spans(tmp_path):
  spans = tmp_path / 'spans'
  _add_span(spans, 1, seed=1)
  config_file = tmp_path / 'spans.yaml'
  config_file.write_text(
      'name: span-retraining\n'
      'data:\n  source: tfrecord\n  path: spans\n'
      '  span_pattern: span-{SPAN}\n  latest_spans: 2\n'
      'module:\n  input_size: [64, 64]\n'
      'training:\n  epochs: 8\n  batch_size: 32\n  learning_rate: 0.01\n'
      '  warm_start: true\n'
      'evaluation:\n  min_accuracy: 0.2\n  max_accuracy_drop: 0.3\n'
      'compression:\n  enabled: false\n'
      'beam:\n  direct_running_mode: in_memory\n')
  config = load_config(str(config_file))
  workdir = str(tmp_path / 'work')

  first = local_runner.run(config, workdir, echo=lambda _: None)
  assert first['status'] == 'succeeded', first.get('error')
  assert first['trained_on_spans'] == [1]
  assert first['data_snapshot']['spans'] == [1]
  assert first['baseline_model'] is None
  assert first['training']['warm_start'] == 'skipped: nothing pushed yet'
  assert first['pushed']

  _add_span(spans, 2, seed=2)
  second = local_runner.run(config, workdir, echo=lambda _: None)
  assert second['status'] == 'succeeded', second.get('error')
  assert second['blessed'] is True
  states = {c['name']: c['state'] for c in second['components']}
  assert states['SnapshotExampleGen'] == 'complete'  # the new span ingested
  assert second['trained_on_spans'] == [1, 2]
  # 150 per span, two spans; 10% of each class carved out as validation.
  assert (second['training']['train_examples'] +
          second['training']['validation_examples']) == 300
  assert second['training']['warm_start'].startswith('from ')
  # Run 1 embedded span-1 (train and validation alike): only span-2's new
  # images are embedded now.
  new_in_2 = _images(spans, 2) - _images(spans, 1)
  cache_2 = second['training']['embedding_cache']['module']
  assert cache_2['examples'] == 300
  assert cache_2['embedded_now'] == len(new_in_2)
  assert cache_2['from_cache'] == 300 - len(new_in_2)
  # Evaluated on the newest span, against the model the first run pushed.
  assert second['baseline_model'] == first['pushed_model']
  assert second['evaluation']['baseline_metrics']['example_count'] == 60
  assert second['pushed'] and first['pushed_model'] != second['pushed_model']
  assert len(_versions(second)) == 2

  # No new data: every step is reused and nothing new is pushed.
  third = local_runner.run(config, workdir, echo=lambda _: None)
  assert third['status'] == 'succeeded', third.get('error')
  assert {c['state'] for c in third['components']} == {'cached'}, \
      third['components']
  assert third['trained_on_spans'] == [1, 2]
  assert third['pushed_now'] is False and second['pushed_now'] is True
  assert 'nothing new' in summary_lib.render(third)
  assert len(_versions(second)) == 2

  # span-3 arrives; the window is spans 2 and 3. Warm start off, so that the
  # run with the cache and the one without start from the same head.
  _add_span(spans, 3, seed=3)
  fourth = {}
  for cache in (True, False):
    variant = load_config(str(config_file), {
        'training.warm_start': False, 'training.embedding_cache': cache})
    fourth[cache] = local_runner.run(variant, workdir, echo=lambda _: None)
    assert fourth[cache]['status'] == 'succeeded', fourth[cache].get('error')
    assert fourth[cache]['trained_on_spans'] == [2, 3]
  with_cache = fourth[True]['training']['embedding_cache']['module']
  new_in_3 = _images(spans, 3) - _images(spans, 2) - _images(spans, 1)
  assert with_cache['examples'] == 300
  assert with_cache['embedded_now'] == len(new_in_3)
  assert with_cache['from_cache'] == 300 - len(new_in_3)
  without = fourth[False]['training']['embedding_cache']['module']
  assert without['cache'] == 'off' and without['embedded_now'] == len(
      _images(spans, 2) | _images(spans, 3))
  assert abs(fourth[True]['training']['validation_accuracy'] -
             fourth[False]['training']['validation_accuracy']) <= 0.005
