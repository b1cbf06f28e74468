"""Scheduled retraining, run as the open-source KFP v2 backend runs it.

The pipeline is compiled with `hubpipe compile` (KubeflowV2DagRunner) and
every task of the compiled spec is run from its compiled container command,
each once its inputs are ready (independent tasks at once, as KFP starts
them), with KFP's cache rule (tests/kfp_launcher.Backend): the real
components, only the orchestrator is played. Three scheduled runs over span
folders, then a plain data root whose files change.
"""

import os
import shutil

import pytest
import yaml

from hubpipe.components import assets
from hubpipe.components.datasets import fashion_mnist
from hubpipe.kubeflow.runner import compile_pipeline
from hubpipe.pipeline.config import REPO_ROOT, load_config

from kfp_launcher import Backend

CONFIG = '''\
name: {name}
data:
  source: tfrecord
  path: {data}
  {spans}
module:
  input_size: [32, 32]
training:
  epochs: 6
  batch_size: 32
  learning_rate: 0.01
  warm_start: true
evaluation:
  min_accuracy: 0.2
  max_accuracy_drop: 0.3
compression:
  enabled: false
beam:
  direct_running_mode: in_memory
  direct_num_workers: 1
'''


def _add_span(root, number, seed, ready=True):
  source = fashion_mnist.prepare(150, 60, seed=seed)
  for split in ('train', 'eval'):
    shutil.copytree(source / split, root / f'span-{number}' / split)
  if ready:
    (root / f'span-{number}' / '_READY').write_text('')


def _env():
  env = dict(os.environ)
  env.update(TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONWARNINGS='ignore', HUBPIPE_DATA_DIR=str(assets.data_dir()))
  return env


def _backend(tmp_path, name, data, spans):
  config_file = tmp_path / f'{name}.yaml'
  config_file.write_text(CONFIG.format(
      name=name, data=data,
      spans=('span_pattern: span-{SPAN}\n  latest_spans: 2\n'
             '  ready_marker: _READY') if spans else ''))
  config = load_config(str(config_file))
  root = tmp_path / 'root'
  compiled = tmp_path / f'{name}.yaml.compiled.yaml'
  compile_pipeline(config, str(compiled), pipeline_root=str(root),
                   data_root=str(data), src_dir=str(REPO_ROOT))
  with open(compiled) as f:
    spec = yaml.safe_load(f)
  # The root the runs use is the one compiled into the spec.
  assert spec['defaultPipelineRoot'] == str(root)
  # Every ready task at once, as KFP starts them: each task is a process
  # that loads TensorFlow first, and a few of them (the snapshot, the schema
  # import, the warm-start lookup) do not wait for one another.
  return (Backend(spec, str(tmp_path / 'kfp-state'), _env(), str(tmp_path),
                  parallelism=None),
          f'{root}/serving/{name}')


def _states(run):
  return {task: r['state'] for task, r in run['tasks'].items()}


def _versions(serving):
  return sorted(v for v in os.listdir(serving) if v.isdigit()) if (
      os.path.isdir(serving)) else []


def _examples(run):
  return run['tasks']['SnapshotExampleGen']['artifacts']['examples']


def test_three_scheduled_runs_over_spans(tmp_path):
  spans = tmp_path / 'spans'
  _add_span(spans, 1, seed=1)
  backend, serving = _backend(tmp_path, 'kfp-spans', spans, spans=True)

  # Run 1: span-1 only, nothing pushed yet: gated by the floor, pushed.
  first = backend.run()
  assert set(_states(first).values()) == {'executed'}
  examples = _examples(first)['metadata']
  assert examples['spans'] == '[1]' and examples['span'] == 1
  assert first['tasks']['DataSnapshot']['parameters']['baseline'] == ''
  assert first['tasks']['latest_pushed_model']['artifacts'][
      'baseline_model']['metadata']['baseline_source'] == 'candidate'
  assert _versions(serving) and len(_versions(serving)) == 1
  v1 = os.path.join(serving, _versions(serving)[0])

  # span-2 arrives. Run 2 ingests it, trains on spans 1-2, warm-starts from
  # and is gated against run 1's push, and pushes version 2.
  _add_span(spans, 2, seed=2)
  second = backend.run()
  states = _states(second)
  for task in ('DataSnapshot', 'SnapshotExampleGen', 'StatisticsGen',
               'Transform', 'latest_pushed_model_for_warm_start', 'Trainer',
               'latest_pushed_model', 'Evaluator', 'Pusher'):
    assert states[task] == 'executed', (task, states)
  assert states['ImportSchemaGen'] == 'cached'
  examples = _examples(second)['metadata']
  assert examples['spans'] == '[1, 2]' and examples['span'] == 2
  assert second['tasks']['DataSnapshot']['parameters']['baseline'] == v1
  baseline = second['tasks']['latest_pushed_model']['artifacts'][
      'baseline_model']['metadata']
  assert (baseline['baseline_source'], baseline['baseline_path']) == (
      'pushed', v1)
  model_run = second['tasks']['Trainer']['artifacts']['model_run']['uri']
  with open(os.path.join(model_run, 'training_report.json')) as f:
    report = yaml.safe_load(f)
  # 150 per span, two spans; 10% of each class carved out as validation.
  assert report['train_examples'] + report['validation_examples'] == 300
  assert report['validation_examples'] == 30
  assert report['warm_start'].startswith('from ')
  blessing = second['tasks']['Evaluator']['artifacts']['blessing']['metadata']
  assert blessing['blessed'] == 1
  assert len(_versions(serving)) == 2

  # Run 3, no new data (span-3 is still being written: no ready marker):
  # only the snapshot runs; every other step is a cache hit and nothing new
  # is pushed.
  _add_span(spans, 3, seed=3, ready=False)
  third = backend.run()
  states = _states(third)
  assert states.pop('DataSnapshot') == 'executed'
  assert set(states.values()) == {'cached'}, states
  assert third['tasks']['Pusher']['artifacts'] == (
      second['tasks']['Pusher']['artifacts'])
  assert len(_versions(serving)) == 2


def test_a_plain_data_root_whose_files_change_retrains(tmp_path):
  data = tmp_path / 'data'
  source = fashion_mnist.prepare(150, 60, seed=3)
  for split in ('train', 'eval'):
    shutil.copytree(source / split, data / split)
  backend, serving = _backend(tmp_path, 'kfp-plain', data, spans=False)
  first = backend.run()
  assert len(_versions(serving)) == 1

  # New files land under the same root: the next scheduled run ingests them.
  extra = fashion_mnist.prepare(150, 60, seed=4)
  for name in os.listdir(extra / 'train'):
    shutil.copy(extra / 'train' / name, data / 'train' / f'new-{name}')
  # Up to the retrained model: what follows it (the baseline lookup, the
  # Evaluator against the first push, the Pusher) is the same steps on the
  # same kind of inputs as the span test's second run, which asserts on them.
  second = backend.run(stop_after='Trainer')
  states = _states(second)
  assert states['SnapshotExampleGen'] == 'executed'
  assert states['Trainer'] == 'executed'
  fingerprints = [_examples(r)['metadata']['input_fingerprint']
                  for r in (first, second)]
  assert fingerprints[0] != fingerprints[1]
  model_run = second['tasks']['Trainer']['artifacts']['model_run']['uri']
  with open(os.path.join(model_run, 'training_report.json')) as f:
    report = yaml.safe_load(f)
  assert report['train_examples'] + report['validation_examples'] == 300
