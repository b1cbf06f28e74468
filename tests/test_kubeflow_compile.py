"""`hubpipe compile --target kubeflow`: the local DAG, compiled for KFP v2.

The compiled file is loaded back with kfp and read as KFP's PipelineSpec
proto; the tests check the images, the commands, the resources in both field
styles, the DAG edges, and that the Beam and strategy settings reach the
components.
"""

import json
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp import components as kfp_components
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from hubpipe.kubeflow import runner
from hubpipe.kubeflow.entrypoint import TFX_ENTRYPOINT
from hubpipe.pipeline import cli
from hubpipe.pipeline.config import ConfigError, config_from_dict, load_config

IMAGE = 'registry.example.com/ml/hubpipe:test'
REPO = Path(__file__).resolve().parents[1]


def _spec(path) -> pipeline_spec_pb2.PipelineSpec:
  with open(path) as f:
    return json_format.ParseDict(yaml.safe_load(f),
                                 pipeline_spec_pb2.PipelineSpec())


def _container(spec, component):
  executors = json_format.MessageToDict(spec.deployment_spec)['executors']
  return executors[f'{component}_executor']['container']


def _parameter(spec, task, name):
  value = json_format.MessageToDict(
      spec.root.dag.tasks[task].inputs.parameters[name])['runtimeValue']
  # Schema 2.0 writes constantValue {stringValue}; 2.1 writes constant.
  return value['constant'] if 'constant' in value else value[
      'constantValue']['stringValue']


def _with(config, **sections):
  raw = config.to_dict()
  for section, values in sections.items():
    raw[section] = {**raw[section], **values}
  return config_from_dict(raw, config.source_path)


@pytest.fixture(scope='module')
def default_compiled(tmp_path_factory):
  """The default demo config through the CLI, as a user runs it."""
  out = tmp_path_factory.mktemp('kfp')
  path = out / 'pipeline.yaml'
  assert cli.main(['compile', '--target', 'kubeflow', '--output', str(path),
                   '--image', IMAGE, '--pipeline-root',
                   str(out / 'root')]) == 0
  return path


def test_kfp_loads_the_compiled_pipeline(default_compiled):
  component = kfp_components.load_component_from_file(str(default_compiled))
  assert component.name == load_config().name
  spec = _spec(default_compiled)
  assert set(spec.root.dag.tasks) >= {
      'DataSnapshot', 'SnapshotExampleGen', 'StatisticsGen', 'ImportSchemaGen',
      'ExampleValidator', 'AnomalyGate', 'Transform', 'Trainer', 'Evaluator',
      'Compressor', 'Pusher'}


def test_every_component_runs_in_the_image_with_hubpipes_entrypoint(
    default_compiled):
  spec = _spec(default_compiled)
  executors = json_format.MessageToDict(spec.deployment_spec)['executors']
  containers = {name: e['container'] for name, e in executors.items()
                if 'container' in e}
  assert len(containers) >= 10
  for name, container in containers.items():
    assert container['image'] == IMAGE, name
    # TFX's entry point, wrapped: Beam's 0 workers become the pod's CPUs.
    assert list(kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD) == [
        'python', '-m', TFX_ENTRYPOINT]
    assert container['command'] == ['python', '-m', runner.ENTRYPOINT], name
    assert '--direct_num_workers=0' in container['args'], name
  trainer = _container(spec, 'Trainer')
  # TFX's Trainer with hubpipe's executor (GenericExecutor, then the model
  # record onto the Model artifact).
  assert trainer['args'][:2] == ['--executor_class_path',
                                 'hubpipe.components.trainer.executor.Executor']
  assert _container(spec, 'Compressor')['args'][1] == (
      'hubpipe.components.compressor.executor.Executor')
  # TFX's Evaluator with hubpipe's executor (a stand-in baseline left out),
  # still given Beam's arguments.
  evaluator = _container(spec, 'Evaluator')['args']
  assert evaluator[:2] == ['--executor_class_path',
                           'hubpipe.components.evaluator.executor.Executor']
  assert '--direct_num_workers=0' in evaluator


def test_trainer_requests_a_gpu_in_both_field_styles(default_compiled):
  trainer = _container(_spec(default_compiled), 'Trainer')['resources']
  # Deprecated numeric fields (older KFP backends) ...
  assert trainer['accelerator']['type'] == 'nvidia.com/gpu'
  assert trainer['accelerator']['count'] == '1'  # int64 in proto JSON
  assert trainer['cpuLimit'] == 8.0
  assert trainer['memoryLimit'] == pytest.approx(32 * 2**30 / 1e9)
  # ... and the current string fields.
  assert trainer['accelerator']['resourceType'] == 'nvidia.com/gpu'
  assert trainer['accelerator']['resourceCount'] == '1'
  assert trainer['resourceCpuLimit'] == '8'
  assert trainer['resourceMemoryLimit'] == '32Gi'
  assert trainer['resourceCpuRequest'] == '8'


def test_other_components_get_their_own_or_the_default_resources(
    default_compiled):
  spec = _spec(default_compiled)
  transform = _container(spec, 'Transform')['resources']
  assert (transform['resourceCpuLimit'], transform['resourceMemoryLimit']) == (
      '4', '16Gi')
  schema_gen = _container(spec, 'ImportSchemaGen')['resources']
  assert (schema_gen['resourceCpuLimit'], schema_gen['cpuLimit']) == ('2', 2.0)
  for component in ('ImportSchemaGen', 'Transform', 'Evaluator', 'Pusher'):
    assert 'accelerator' not in _container(spec, component)['resources']


def test_dag_edges_follow_the_local_dag(default_compiled):
  tasks = _spec(default_compiled).root.dag.tasks
  after = {name: set(task.dependent_tasks) for name, task in tasks.items()}
  assert after['SnapshotExampleGen'] == {'DataSnapshot'}
  assert after['StatisticsGen'] == {'SnapshotExampleGen'}
  assert after['ExampleValidator'] == {'StatisticsGen', 'ImportSchemaGen'}
  assert after['AnomalyGate'] == {'ExampleValidator'}
  assert {'AnomalyGate', 'SnapshotExampleGen', 'ImportSchemaGen'} <= after[
      'Transform']
  assert {'Transform', 'SnapshotExampleGen'} <= after['Trainer']
  assert after['Evaluator'] >= {'Trainer', 'latest_pushed_model'}
  assert after['latest_pushed_model'] == {'Trainer', 'DataSnapshot'}
  assert {'Evaluator', 'Trainer', 'Transform'} <= after['Compressor']
  assert after['Pusher'] == {'Compressor'}


def test_bundled_data_is_read_from_the_image(default_compiled):
  input_base = _parameter(_spec(default_compiled), 'DataSnapshot',
                          'input_base')
  assert input_base.startswith(runner.IMAGE_DATA_DIR + '/datasets/')
  assert 'fashion_mnist-5000-2000-seed0' in input_base


@pytest.mark.parametrize('runner_name, extra', [
    ('FlinkRunner', ['--flink_master=flink-jobmanager:8081',
                     '--environment_type=EXTERNAL',
                     '--environment_config=localhost:50000']),
    ('DataflowRunner', ['--project=acme-ml', '--region=europe-west4',
                        '--temp_location=gs://acme/tmp']),
])
def test_beam_arguments_reach_the_data_components(tmp_path, runner_name,
                                                  extra):
  config = _with(load_config(),
                 beam={'runner': runner_name, 'extra_args': extra},
                 training={'strategy': 'multi_worker_mirrored'})
  path = tmp_path / 'pipeline.yaml'
  runner.compile_pipeline(config, str(path), pipeline_root=str(tmp_path))
  spec = _spec(path)
  for component in ('StatisticsGen', 'Transform', 'Evaluator'):
    args = _container(spec, component)['args']
    assert f'--runner={runner_name}' in args, component
    assert all(a in args for a in extra), component
    assert not any(a.startswith('--direct_') for a in args), component
  # The strategy settings reach the Trainer in the compiled pipeline.
  custom = json.loads(_parameter(spec, 'Trainer', 'custom_config'))
  assert custom['config']['training']['strategy'] == 'multi_worker_mirrored'
  # The embedding cache sits under the compiled pipeline root, not under a
  # run's artifact folder (which holds the KFP run's id): scheduled runs
  # share it.
  assert custom['config']['training']['embedding_cache_dir'] == (
      f'{tmp_path}/Trainer/embedding_cache')


def test_direct_runner_on_every_cpu_by_default(monkeypatch):
  from hubpipe.pipeline.pipeline import beam_pipeline_args
  # 0: the pod's entry point makes it the pod's CPUs (tests/test_cpus.py).
  args = beam_pipeline_args(load_config())
  assert args[:3] == [
      '--runner=DirectRunner', '--direct_running_mode=multi_processing',
      '--direct_num_workers=0']
  # A dependency flag, so that TFX does not build and leave behind an sdist
  # of itself at every Beam step (DirectRunner stages nothing).
  from tfx.utils import dependency_utils

  def build_ephemeral_package():
    raise AssertionError('TFX would build an sdist of itself')

  monkeypatch.setattr(dependency_utils, 'build_ephemeral_package',
                      build_ephemeral_package)
  assert dependency_utils.make_beam_dependency_flags(args) == args


def test_resource_quantities_convert_for_the_deprecated_fields():
  spec = runner.resource_spec({'cpu': '500m', 'memory': '512Mi',
                               'accelerator': 'cloud-tpus.google.com/v3',
                               'accelerator_count': 8})
  assert spec.cpu_limit == 0.5 and spec.resource_cpu_limit == '500m'
  assert spec.memory_limit == pytest.approx(512 * 2**20 / 1e9)
  assert spec.resource_memory_limit == '512Mi'
  assert (spec.accelerator.type, spec.accelerator.count) == (
      'cloud-tpus.google.com/v3', 8)
  assert (spec.accelerator.resource_type, spec.accelerator.resource_count) == (
      'cloud-tpus.google.com/v3', '8')


@pytest.mark.parametrize('resources, message', [
    ({'Trainr': {'cpu': '4'}}, 'no component named Trainr'),
])
def test_unknown_component_names_the_pipeline_components(tmp_path, resources,
                                                         message):
  config = _with(load_config(), kubeflow={'resources': resources})
  with pytest.raises(ConfigError, match=message) as err:
    runner.compile_pipeline(config, str(tmp_path / 'p.yaml'),
                            pipeline_root=str(tmp_path))
  assert 'Trainer' in str(err.value)


@pytest.mark.parametrize('text, message', [
    ('kubeflow:\n  resources:\n    Trainer: {cpu: four}\n',
     'not a Kubernetes quantity'),
    ('kubeflow:\n  resources:\n    Trainer: {cpu: 2Gi}\n',
     'not a Kubernetes quantity'),
    ('kubeflow:\n  resources:\n    Trainer: {memory: 500m}\n',
     'not a Kubernetes quantity'),
    ('kubeflow:\n  resources:\n    Trainer: {accelerator: nvidia.com/gpu}\n',
     'set accelerator and accelerator_count together'),
    ('kubeflow:\n  resources:\n    Trainer: {gpus: 1}\n', 'unknown key "gpus"'),
    ('beam:\n  runner: SparkRuner\n', 'beam.runner'),
])
def test_bad_kubeflow_settings_stop_at_load(tmp_path, text, message):
  path = tmp_path / 'c.yaml'
  path.write_text(text)
  with pytest.raises(ConfigError, match=message):
    load_config(str(path))


def test_compile_refuses_what_the_cluster_cannot_use(tmp_path, capsys):
  assert cli.main(['compile', '--output', str(tmp_path / 'p.yaml')]) == 2
  assert '--pipeline-root' in capsys.readouterr().err
  assert cli.main(['compile', '--output', str(tmp_path / 'p.json'),
                   '--pipeline-root', str(tmp_path)]) == 2
  assert '.yaml' in capsys.readouterr().err
  local = tmp_path / 'images'
  local.mkdir()
  config = _with(load_config(), data={'source': 'image_folder',
                                      'path': str(local)})
  with pytest.raises(ConfigError, match='cannot read'):
    runner.compile_pipeline(config, str(tmp_path / 'p.yaml'),
                            pipeline_root=str(tmp_path))


def test_dockerfile_matches_the_runner_and_the_lock():
  """No Docker engine here: check what the image is built with instead."""
  root = runner.IMAGE_DATA_DIR  # where compiled pipelines read bundled data
  dockerfile = (REPO / 'kubeflow' / 'Dockerfile').read_text()
  makefile = (REPO / 'Makefile').read_text()
  assert f'HUBPIPE_DATA_DIR={root}' in dockerfile
  assert 'TF_USE_LEGACY_KERAS=1' in dockerfile
  assert 'TFHUB_CACHE_DIR=' in dockerfile
  assert '-c constraints.txt' in dockerfile
  # The same post-lock installs as the Makefile (tensorflow-hub, -text).
  for pin in ('pip==24.2', 'tensorflow-hub==0.16.1', 'tensorflow-text==2.16.1'):
    assert pin in dockerfile and pin in makefile, pin
  assert 'hubpipe modules build --all' in dockerfile
  for config in runner.IMAGE_CONFIGS:
    assert f'hubpipe assets --config {config}' in dockerfile, config
  users = [line.split()[1] for line in dockerfile.splitlines()
           if line.startswith('USER ')]
  assert users and users[-1] not in ('root', '0')


def test_hubpipe_schedule_sends_the_compiled_pipeline(default_compiled,
                                                      monkeypatch, tmp_path,
                                                      capsys):
  """`hubpipe schedule` on the compiled demo, against a fake KFP API server."""
  import kfp
  from fake_kfp_server import FakeKfpServer
  monkeypatch.setattr(kfp.Client, '_LOCAL_KFP_CONTEXT',
                      str(tmp_path / 'no-context.json'))
  with FakeKfpServer() as server:
    monkeypatch.setenv('KFP_ENDPOINT', server.url)
    assert cli.main(['schedule', '--cron', '30 2 * * 1-5', '--package',
                     str(default_compiled), '--experiment', 'retraining']) == 0
    bodies = [body for method, path, body in server.requests
              if (method, path) == ('POST', '/apis/v2beta1/recurringruns')]
  assert len(bodies) == 1
  body = bodies[0]
  assert body['trigger'] == {'cron_schedule': {'cron': '0 30 2 * * 1-5'}}
  assert (body['no_catchup'], body['max_concurrency'], body['mode']) == (
      True, 1, 'ENABLE')
  assert body['pipeline_spec'] == yaml.safe_load(default_compiled.read_text())
  assert body['display_name'] == f'{load_config().name} (scheduled)'
  assert 'scheduled' in capsys.readouterr().out


def test_pods_read_the_curated_schema_from_the_image(default_compiled):
  spec = _spec(default_compiled)
  schema = f'{runner.IMAGE_SRC_DIR}/schemas/image_classification/schema.pbtxt'
  assert _parameter(spec, 'ImportSchemaGen', 'schema_file') == schema
  assert _parameter(spec, 'AnomalyGate', 'schema_path') == schema
  assert f'WORKDIR {runner.IMAGE_SRC_DIR}' in (
      REPO / 'kubeflow' / 'Dockerfile').read_text()


def test_bundled_data_the_image_lacks_is_refused(tmp_path):
  config = load_config(str(REPO / 'pipeline' / 'configs' /
                           'rotten_tomatoes_glove.yaml'))  # 10000 / 2500
  with pytest.raises(ConfigError, match='--data-root'):
    runner.compile_pipeline(config, str(tmp_path / 'p.yaml'),
                            pipeline_root=str(tmp_path))
  # With the data on cluster storage, it compiles.
  runner.compile_pipeline(config, str(tmp_path / 'p.yaml'),
                          pipeline_root=str(tmp_path),
                          data_root='gs://acme/rotten-tomatoes')
  assert _parameter(_spec(tmp_path / 'p.yaml'), 'DataSnapshot',
                    'input_base') == 'gs://acme/rotten-tomatoes'


def test_compiled_pipeline_runs_no_resolver_nodes(default_compiled):
  """The open-source KFP v2 backend rejects resolver executors: the baseline
  and the span window come from the DataSnapshot, a container step."""
  executors = json_format.MessageToDict(
      _spec(default_compiled).deployment_spec)['executors']
  assert all('container' in e for e in executors.values())


def test_only_the_snapshot_is_taken_afresh_every_run(default_compiled):
  tasks = _spec(default_compiled).root.dag.tasks
  assert not tasks['DataSnapshot'].caching_options.enable_cache
  assert all(task.caching_options.enable_cache
             for name, task in tasks.items() if name != 'DataSnapshot')
  # ExampleGen and the baseline steps take its outputs as runtime
  # parameters, from the task as the DAG names it.
  for task, parameter, output in (
      ('SnapshotExampleGen', 'snapshot', 'examples'),
      ('latest_pushed_model', 'pushed_version', 'baseline')):
    source = tasks[task].inputs.parameters[parameter].task_output_parameter
    assert (source.producer_task, source.output_parameter_key) == (
        'DataSnapshot', output)
  # The file still loads in kfp after the edit.
  assert kfp_components.load_component_from_file(str(default_compiled))


def test_s3_storage_is_refused_for_kubeflow(tmp_path):
  """TFX's container entrypoint does not load TensorFlow's S3 filesystem:
  said at compile time, not in the first pod."""
  for kwargs in ({'data_root': 's3://acme/data'},
                 {'pipeline_root': 's3://acme/root'}):
    with pytest.raises(ConfigError, match='s3:// is not supported on Kubeflow'):
      runner.compile_pipeline(load_config(), str(tmp_path / 'p.yaml'),
                              **{'pipeline_root': str(tmp_path), **kwargs})


def test_modules_on_this_machine_are_refused(tmp_path):
  local = str(tmp_path / 'my_module')
  config = _with(load_config(), module={'handle': local})
  with pytest.raises(ConfigError, match=r'module.handle: .* gs://'):
    runner.compile_pipeline(config, str(tmp_path / 'p.yaml'),
                            pipeline_root=str(tmp_path))
  config = _with(load_config(), selection={'candidates': [
      'mobilenet_v1_100_224', {'handle': local, 'input_size': [64, 64]}]})
  with pytest.raises(ConfigError, match=r'selection.candidates\[1\]'):
    runner.compile_pipeline(config, str(tmp_path / 'p.yaml'),
                            pipeline_root=str(tmp_path))
