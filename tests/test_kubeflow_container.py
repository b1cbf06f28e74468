"""What the Kubeflow image would run, run here: compiled containers, locally.

No Docker engine or cluster runs on these machines. These tests take compiled
components' container commands and arguments, fill in the ExecutorInput the
way the KFP v2 driver and launcher do (tests/kfp_launcher.py) and run them in
subprocesses on real artifacts: the DataSnapshot and SnapshotExampleGen on a
tiny Fashion-MNIST folder and ImportSchemaGen on the curated schema, then
Transform on what they wrote; and the baseline step. (Whole runs of the
compiled spec: tests/test_kfp_scheduled_runs.py.)
"""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import yaml
from tfx.dsl.components.base import base_executor
from tfx.utils import import_utils

from hubpipe.components import assets
from hubpipe.components.transform.image import decode_and_resize
from hubpipe.kubeflow.runner import compile_pipeline
from hubpipe.pipeline import local_runner
from hubpipe.pipeline.config import REPO_ROOT, load_config

from kfp_launcher import (container_spec, executor_input, output_parameters,
                          produced_artifact, run_task)

SIZE = [32, 32]
TINY = {
    'name': 'tiny-kfp-container',
    'data.train_examples': 50,
    'data.eval_examples': 20,
    'module.input_size': SIZE,
    'beam.direct_running_mode': 'in_memory',
    'beam.direct_num_workers': 1,
}
TIMEOUT_S = 120


@pytest.fixture(scope='module')
def compiled(tmp_path_factory):
  """(spec dict, pipeline root, tiny data folder, work folder)."""
  work = tmp_path_factory.mktemp('kfp-container')
  config = load_config(None, TINY)
  data = local_runner.prepare_data(config)
  path = work / 'pipeline.yaml'
  # The image holds this repository at runner.IMAGE_SRC_DIR; here the
  # checkout plays that part (the curated schema is read from it).
  compile_pipeline(config, str(path), pipeline_root=str(work / 'root'),
                   data_root=data, src_dir=str(REPO_ROOT))
  with open(path) as f:
    return yaml.safe_load(f), str(work / 'root'), data, work


def _container_tasks(spec):
  tasks = spec['root']['dag']['tasks']
  executors = spec['deploymentSpec']['executors']
  return sorted(t for t, s in tasks.items() if 'container' in executors[
      spec['components'][s['componentRef']['name']]['executorLabel']])


def _env():
  env = dict(os.environ)
  env.update(TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2',
             HUBPIPE_DATA_DIR=str(assets.data_dir()))
  return env


def _run(spec, task, executor_in, cwd):
  process, output = run_task(spec, task, executor_in, _env(), str(cwd),
                             TIMEOUT_S)
  assert process.returncode == 0, (
      f'{task} container exited {process.returncode}:\n'
      f'{process.stderr[-4000:]}')
  assert output is not None, f'{task} wrote no ExecutorOutput'
  return output


def test_every_container_task_gets_its_inputs_from_kfp_v2(compiled):
  """Each container task's parameters resolve as the KFP v2 driver resolves
  them, the TFX entrypoint is told to read them where the launcher puts them
  (inputs.parameterValues, read only with an inputs spec), and its executor
  class imports."""
  spec, root, _, _ = compiled
  tasks = _container_tasks(spec)
  assert {'DataSnapshot', 'SnapshotExampleGen', 'Transform', 'Trainer',
          'Evaluator', 'Compressor', 'Pusher'} <= set(tasks)
  snapshot = {'DataSnapshot': {'examples': '{}', 'baseline': ''}}
  for task in tasks:
    wanted = spec['root']['dag']['tasks'][task].get('inputs', {}).get(
        'artifacts', {})
    made = executor_input(spec, task, {k: {'uri': f'{root}/x/{k}'}
                                       for k in wanted}, root,
                          produced_parameters=snapshot)
    assert made['inputs']['parameterValues'], task
    args = container_spec(spec, task)['args']
    assert '--json_serialized_inputs_spec_args' in args, (
        f'{task}: without an inputs spec the TFX entrypoint reads the '
        'deprecated inputs.parameters, which the KFP v2 launcher leaves empty')
    inputs_spec = json.loads(
        args[args.index('--json_serialized_inputs_spec_args') + 1])
    assert set(inputs_spec.get('parameters', {})) == set(
        made['inputs']['parameterValues']), task
    # The entrypoint imports the executor by this path.
    executor = import_utils.import_class_by_path(
        args[args.index('--executor_class_path') + 1])
    assert issubclass(executor, base_executor.BaseExecutor), task


def test_transform_container_writes_a_working_transform_graph(compiled):
  """The DataSnapshot, SnapshotExampleGen, ImportSchemaGen and Transform
  containers, in turn."""
  spec, root, data, work = compiled

  # DataSnapshot, on the tiny data folder compiled in as input_base.
  snap_in = executor_input(spec, 'DataSnapshot', {}, root)
  assert snap_in['inputs']['parameterValues']['input_base'] == data
  snap_out = _run(spec, 'DataSnapshot', snap_in, work)
  parameters = output_parameters(snap_in, snap_out)
  assert json.loads(parameters['examples'])['splits'] == {
      'train': ['train/*'], 'eval': ['eval/*']}
  assert parameters['baseline'] == ''

  # SnapshotExampleGen, on what the snapshot lists.
  gen_in = executor_input(spec, 'SnapshotExampleGen', {}, root,
                          produced_parameters={'DataSnapshot': parameters})
  gen_out = _run(spec, 'SnapshotExampleGen', gen_in, work)
  examples = produced_artifact(gen_in, gen_out, 'examples')
  # validation carved out of train (the data brings none).
  assert sorted(json.loads(examples['metadata']['split_names'])) == [
      'eval', 'train', 'validation']
  eval_files = glob.glob(os.path.join(examples['uri'], 'Split-eval', '*'))
  assert eval_files
  assert glob.glob(os.path.join(examples['uri'], 'Split-validation', '*'))

  # ImportSchemaGen, on the curated schema compiled in as schema_file.
  schema_in = executor_input(spec, 'ImportSchemaGen', {}, root)
  schema_out = _run(spec, 'ImportSchemaGen', schema_in, work)
  schema = produced_artifact(schema_in, schema_out, 'schema')
  with open(schema_in['inputs']['parameterValues']['schema_file']) as f:
    curated = f.read()
  with open(os.path.join(schema['uri'], 'schema.pbtxt')) as f:
    assert f.read() == curated

  transform_in = executor_input(spec, 'Transform',
                                {'examples': examples, 'schema': schema}, root)
  params = transform_in['inputs']['parameterValues']
  assert params['preprocessing_fn'] == (
      'hubpipe.components.transform.image.preprocessing_fn')
  assert json.loads(params['custom_config'])['config']['module'][
      'input_size'] == SIZE
  types = {k: v['artifacts'][0]['type']['instanceSchema'].split('\n')[0]
           for k, v in transform_in['inputs']['artifacts'].items()}
  assert types == {'examples': 'title: tfx.Examples',
                   'schema': 'title: tfx.Schema'}
  transform_out = _run(spec, 'Transform', transform_in, work)

  graph_uri = (transform_in['outputs']['artifacts']['transform_graph']
               ['artifacts'][0]['uri'])
  assert graph_uri.startswith(f'{root}/Transform/')
  assert os.path.isfile(
      os.path.join(graph_uri, 'transform_fn', 'saved_model.pb'))
  assert os.path.isdir(os.path.join(graph_uri, 'transformed_metadata'))
  written = transform_out['artifacts']['transform_graph']['artifacts'][0]
  assert written['uri'] == graph_uri
  assert os.path.exists(transform_in['outputs']['outputFile'])

  # The graph transforms a raw example from the examples the container wrote.
  record = next(iter(tf.data.TFRecordDataset(eval_files,
                                             compression_type='GZIP')))
  graph = tft.TFTransformOutput(graph_uri)
  raw = tf.io.parse_example(tf.reshape(record, [1]),
                            graph.raw_feature_spec())
  out = graph.transform_raw_features(raw, drop_unused_features=True)
  image = out['image']
  assert image.dtype == tf.float32
  assert image.shape.as_list() == [1] + SIZE + [3]
  pixels = image.numpy()
  assert pixels.min() >= 0.0 and pixels.max() <= 1.0
  assert pixels.max() > pixels.min()
  expected = decode_and_resize(tf.reshape(raw['image'], [-1]), *SIZE)
  np.testing.assert_allclose(pixels, expected.numpy(), atol=1e-6)
  np.testing.assert_array_equal(out['label'].numpy(),
                                tf.reshape(raw['label'], [-1]).numpy())


def _saved_model(path, value: float):
  """A tiny SavedModel standing in for a trained or pushed model."""
  module = tf.Module()
  module.value = tf.Variable(value)
  module.read = tf.function(lambda: module.value, input_signature=[])
  tf.saved_model.save(module, str(path))


def _value(model_dir) -> float:
  loaded = tf.saved_model.load(str(model_dir))  # kept alive while it is read
  return float(loaded.read())


def test_latest_pushed_model_container_hands_on_the_named_push(compiled):
  """The Evaluator's baseline where no resolver runs: nothing pushed (the
  candidate stands in), then the push the DataSnapshot named."""
  spec, root, _, work = compiled
  candidate = work / 'candidate'
  _saved_model(candidate / 'Format-Serving', 1.0)
  model = {'name': '7', 'uri': str(candidate), 'metadata': {}}

  def baseline(pushed_version):
    task_in = executor_input(
        spec, 'latest_pushed_model', {'model': model}, root,
        produced_parameters={'DataSnapshot': {'baseline': pushed_version}})
    assert task_in['inputs']['parameterValues']['pushed_version'] == (
        pushed_version)
    return produced_artifact(
        task_in, _run(spec, 'latest_pushed_model', task_in, work),
        'baseline_model')

  first = baseline('')
  assert first['metadata']['baseline_source'] == 'candidate'
  assert _value(os.path.join(first['uri'], 'Format-Serving')) == 1.0

  serving = work / 'serving'
  for version, value in ((5, 5.0), (12, 12.0)):
    _saved_model(serving / str(version), value)
  second = baseline(str(serving / '5'))
  assert second['metadata']['baseline_source'] == 'pushed'
  assert second['metadata']['baseline_path'] == str(serving / '5')
  assert _value(os.path.join(second['uri'], 'Format-Serving')) == 5.0
