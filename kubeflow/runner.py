"""Compiles the hubpipe DAG for Kubeflow Pipelines (KFP v2), with resources.

The same `create_pipeline(config)` the local runner runs is compiled here with
TFX's KubeflowV2DagRunner into a KFP pipeline spec (YAML) that kfp uploads,
runs and schedules. Only the runner and the resources differ from a local run:

- every component runs in one image (kubeflow/Dockerfile), which holds the
  pinned stack, hubpipe, the offline modules and the bundled data sets;
- per-component CPU, memory and accelerators come from `kubeflow.resources` in
  the config and are set on each component as a KFP `ResourceSpec` in both the
  deprecated numeric fields and the current string fields, so old and current
  KFP backends both read the request;
- the Beam components get `beam_pipeline_args` from the config's `beam`
  section (DirectRunner in the pod, one worker per CPU of the pod's limit,
  resolved by kubeflow/entrypoint.py; or a Flink / Spark / Dataflow cluster);
- ML Metadata is the cluster's: no connection config is compiled in;
- a DataSnapshot step starts every run with KFP's cache off: it fingerprints
  the data root (with span folders: the latest N spans) and picks the push
  to gate against, and hands both on as task output parameters, so
  ExampleGen and every step after it cache on what the data really is (the
  open-source backend runs neither TFX's ExampleGen driver nor resolvers).
"""

import dataclasses
import os
import re
from typing import Dict, Optional

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import yaml  # pylint: disable=g-import-not-at-top
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx
from tfx.dsl.components.base import base_component

from hubpipe.components import assets
from hubpipe.components.data_snapshot.component import DataSnapshot
from hubpipe.pipeline.config import BUNDLED as BUNDLED_DATA
from hubpipe.pipeline.config import REPO_ROOT, Config, ConfigError, load_config
from hubpipe.kubeflow.entrypoint import TFX_ENTRYPOINT

# Where kubeflow/Dockerfile builds the offline modules and the bundled data
# (its HUBPIPE_DATA_DIR), and where it puts this repository (its WORKDIR):
# compiled pipelines read the bundled data and the curated schemas there.
IMAGE_DATA_DIR = '/opt/hubpipe/data'
IMAGE_SRC_DIR = '/opt/hubpipe/src'
# Every step's command (TFX's container entry point, wrapped).
ENTRYPOINT = 'hubpipe.kubeflow.entrypoint'
# The configs whose bundled data kubeflow/Dockerfile prepares in the image.
IMAGE_CONFIGS = ('pipeline/configs/fashion_mnist.yaml',
                 'pipeline/configs/rotten_tomatoes_minilm.yaml')
DEFAULT = 'default'

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec

_UNITS = {'': 1.0, 'k': 1e3, 'M': 1e6, 'G': 1e9, 'T': 1e12, 'P': 1e15,
          'Ki': 2.0**10, 'Mi': 2.0**20, 'Gi': 2.0**30, 'Ti': 2.0**40,
          'Pi': 2.0**50}


def cpu_cores(quantity: str) -> float:
  """A Kubernetes CPU quantity ('4', '0.5', '500m') in cores."""
  text = str(quantity)
  return float(text[:-1]) / 1000 if text.endswith('m') else float(text)


def memory_gb(quantity: str) -> float:
  """A Kubernetes memory quantity ('16G', '16Gi', '512Mi') in GB (10^9 bytes),
  the unit of ResourceSpec's deprecated memory fields."""
  match = re.fullmatch(r'(\d+(?:\.\d+)?)([a-zA-Z]*)', str(quantity))
  if not match or match.group(2) not in _UNITS:
    raise ConfigError(f'"{quantity}" is not a memory quantity (e.g. 16G, 16Gi).')
  return float(match.group(1)) * _UNITS[match.group(2)] / 1e9


def resource_spec(spec: Dict) -> ResourceSpec:
  """A ResourceSpec from {cpu, memory, accelerator, accelerator_count}, with
  limits and requests set in both the deprecated and the current fields."""
  resources = ResourceSpec()
  if spec.get('cpu') is not None:
    cpu = str(spec['cpu'])
    resources.cpu_limit = resources.cpu_request = cpu_cores(cpu)
    resources.resource_cpu_limit = resources.resource_cpu_request = cpu
  if spec.get('memory') is not None:
    memory = str(spec['memory'])
    resources.memory_limit = resources.memory_request = memory_gb(memory)
    resources.resource_memory_limit = memory
    resources.resource_memory_request = memory
  if spec.get('accelerator'):
    count = int(spec.get('accelerator_count', 1))
    resources.accelerator.type = resources.accelerator.resource_type = (
        spec['accelerator'])
    resources.accelerator.count = count
    resources.accelerator.resource_count = str(count)
  return resources


def apply_resources(pipeline: tfx.dsl.Pipeline, resources: Dict) -> Dict:
  """Sets each component's platform config from `resources` (component id or
  'default'); returns {component id: the spec applied}."""
  ids = [c.id for c in pipeline.components]
  unknown = sorted(set(resources) - set(ids) - {DEFAULT})
  if unknown:
    raise ConfigError(f'kubeflow.resources: no component named '
                      f'{", ".join(unknown)}; the pipeline has: '
                      f'{", ".join(ids)} (or use "{DEFAULT}").')
  applied = {}
  for component in pipeline.components:
    spec = {**resources.get(DEFAULT, {}), **resources.get(component.id, {})}
    # Resolvers and importers run in the KFP driver, not in a container.
    if spec and isinstance(component, base_component.BaseComponent):
      component.with_platform_config(resource_spec(spec))
      applied[component.id] = spec
  return applied


def _same_data(a: Config, b: Config) -> bool:
  keys = ('source', 'train_examples', 'eval_examples', 'seed', 'label_feature')
  return (all(getattr(a.data, k) == getattr(b.data, k) for k in keys) and
          a.input_feature == b.input_feature)


def cluster_data_root(config: Config, data_root: Optional[str]) -> str:
  """The examples' root as the cluster sees it."""
  root = data_root or config.kubeflow.data_root
  if root:
    return root
  if config.data.source in BUNDLED_DATA:
    # The image holds the bundled data of the configs it was built with
    # (IMAGE_CONFIGS), under the same path below its data dir as here; nothing
    # is fetched or written on this machine.
    if not any(_same_data(config, load_config(str(REPO_ROOT / c)))
               for c in IMAGE_CONFIGS):
      raise ConfigError(
          f'data: the image holds the bundled {config.data.source} data only '
          f'as {", ".join(IMAGE_CONFIGS)} prepare it, not with these counts, '
          'seed or feature names. Add this config to the image (the '
          'Dockerfile\'s `hubpipe assets` line and IMAGE_CONFIGS), or copy '
          'the data to storage the cluster reads and pass --data-root.')
    from hubpipe.pipeline import local_runner
    local = os.path.abspath(local_runner.bundled_data(config, path_only=True))
    base = os.path.abspath(assets.data_dir())
    return os.path.join(IMAGE_DATA_DIR, os.path.relpath(local, base))
  path = config.resolve_path(config.data.path)
  if '://' not in path:
    raise ConfigError(
        f'data.path: {path} is a folder on this machine, which the cluster '
        'cannot read. Copy the data to storage the cluster reads (gs://, '
        'a volume mounted in the pods) and pass --data-root or set '
        'kubeflow.data_root.')
  return path


def cluster_schema_path(config: Config, src_dir: str = IMAGE_SRC_DIR) -> str:
  """The schema file as the pods see it: a schema in this repository is read
  from the image's copy; any other must be on storage the cluster reads."""
  path = config.schema_path
  if '://' in path:
    return path
  local = os.path.abspath(path)
  shipped = str(REPO_ROOT / 'schemas') + os.sep  # what the image copies
  if local.startswith(shipped):
    return os.path.join(src_dir, os.path.relpath(local, REPO_ROOT))
  raise ConfigError(
      f'data.schema: {path} is a file on this machine, which the cluster '
      'cannot read. Copy it to storage the cluster reads (gs://) and '
      'point data.schema there, or add it to the image.')


def check_cluster_storage(uris: Dict[str, str]) -> None:
  """Storage the pods can use: not s3:// yet. TFX's container entrypoint
  never loads tensorflow-io, which TensorFlow needs for s3://, and
  tensorflow-io 0.37.1 aborts every process that used S3 at exit
  (tensorflow/io#2039), which KFP would take for a failed step. Local runs
  (`hubpipe run --pipeline-root s3://...`) handle both."""
  for what, uri in uris.items():
    if uri and uri.startswith('s3://'):
      raise ConfigError(
          f'{what} {uri}: s3:// is not supported on Kubeflow yet (TFX\'s '
          'container entrypoint does not load TensorFlow\'s S3 filesystem). '
          'Use gs:// or a volume mounted in the pods; s3:// works for local '
          'runs (hubpipe run --pipeline-root).')


def check_cluster_modules(config: Config) -> None:
  """Module handles the pods can load: offline names (built into the image),
  URLs and gs:// paths; not folders on this machine."""
  from hubpipe.components.hub_modules import resolve as hub_resolve
  handles = [('module.handle', config.module.handle),
             ('module.control_handle', config.module.control_handle),
             ('module.preprocessor', config.module.preprocessor)]
  for i, candidate in enumerate(config.selection.candidates):
    spec = candidate if isinstance(candidate, dict) else {'handle': candidate}
    handles += [(f'selection.candidates[{i}]', spec.get('handle')),
                (f'selection.candidates[{i}].preprocessor',
                 spec.get('preprocessor'))]
  for where, handle in handles:
    if handle and hub_resolve.kind(handle) == 'local':
      raise ConfigError(
          f'{where}: {handle} is a folder on this machine, which the pods '
          'cannot load. Copy the module to storage the cluster reads and use '
          'its gs:// path, or use a tfhub.dev / Kaggle URL or an offline '
          'module (`hubpipe modules list`).')


def _fix_spec(path: str, never_cache, pipeline_root: str) -> None:
  """Mends the compiled file where TFX 1.16's KubeflowV2DagRunner writes
  what the KFP v2 backend cannot run:

  - KFP's cache is turned off for `never_cache` tasks (TFX compiles one cache
    setting for all steps): a step that looks at what is outside the
    pipeline now (the DataSnapshot) has the same inputs every run, and a
    cached result would hand on last week's data;
  - a runtime parameter taken from another task's output
    (`channel.future()[0].value`) names its producer `<id>_task`, a task
    that does not exist (the tasks are named `<id>`): the driver would fail
    to resolve it;
  - the pipeline root is written as the spec's `defaultPipelineRoot` (TFX
    leaves it out of a bare spec, and KFP would put the artifacts under its
    own default root instead);
  - each step runs hubpipe's entry point (kubeflow/entrypoint.py), TFX's
    own after it has turned `--direct_num_workers=0` into the pod's CPU
    limit.
  """
  with open(path) as f:
    text = f.read()
  header = ''.join(line for line in text.splitlines(keepends=True)
                   if line.startswith('#'))
  spec = yaml.safe_load(text)
  spec['defaultPipelineRoot'] = pipeline_root
  tasks = spec['root']['dag']['tasks']
  for task in never_cache:
    tasks[task].pop('cachingOptions', None)
  for executor in spec['deploymentSpec']['executors'].values():
    container = executor.get('container', {})
    if container.get('command') == ['python', '-m', TFX_ENTRYPOINT]:
      container['command'] = ['python', '-m', ENTRYPOINT]
  for task in tasks.values():
    for parameter in task.get('inputs', {}).get('parameters', {}).values():
      producer = parameter.get('taskOutputParameter', {})
      name = producer.get('producerTask', '')
      if name and name not in tasks and name.endswith('_task') and (
          name[:-len('_task')] in tasks):
        producer['producerTask'] = name[:-len('_task')]
  with open(path, 'w') as f:
    f.write(header)
    yaml.safe_dump(spec, f, sort_keys=True)


def compile_pipeline(config: Config, output: str, image: Optional[str] = None,
                     pipeline_root: Optional[str] = None,
                     data_root: Optional[str] = None,
                     src_dir: str = IMAGE_SRC_DIR) -> Dict:
  """Writes the KFP pipeline spec for `config` to `output` (.yaml); returns
  what was compiled (image, roots, resources per component, components).

  `src_dir` is where the image holds this repository (tests that run the
  compiled commands on this machine pass the checkout)."""
  from hubpipe.pipeline import local_runner
  from hubpipe.pipeline.pipeline import (STEP, create_pipeline,
                                         pipeline_identity)

  if not output.endswith(('.yaml', '.yml')):
    raise ConfigError(f'--output {output}: the pipeline file must end in '
                      '.yaml (what kfp uploads).')
  image = image or config.kubeflow.image
  root = pipeline_root or config.kubeflow.pipeline_root
  if not root:
    raise ConfigError('no pipeline root: pass --pipeline-root or set '
                      'kubeflow.pipeline_root (e.g. gs://BUCKET/hubpipe).')
  check_cluster_modules(config)
  # A mismatched module stops the compile here; the facts themselves (image
  # size, preprocessor) are worked out again in the pods that need them.
  local_runner.check_module(config)
  config = dataclasses.replace(config, data=dataclasses.replace(
      config.data, schema=cluster_schema_path(config, src_dir)))
  serving_dir = (config.kubeflow.serving_dir or
                 f'{root.rstrip("/")}/serving/{config.name}')
  input_base = cluster_data_root(config, data_root)
  check_cluster_storage({'pipeline root': root, 'serving dir': serving_dir,
                         'data root': input_base})
  pipeline = create_pipeline(
      config, pipeline_root=root, input_base=input_base,
      serving_dir=serving_dir,
      identity=pipeline_identity(config, image), snapshot=STEP)
  applied = apply_resources(pipeline, config.kubeflow.resources)
  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      # Pipeline spec 2.1: parameters as runtimeValue.constant plus the
      # inputs spec in the container arguments, which is what the KFP v2
      # driver resolves and TFX's container entrypoint then reads.
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
          default_image=image, use_pipeline_spec_2_1=True),
      output_dir=os.path.dirname(os.path.abspath(output)),
      output_filename=os.path.basename(output))
  runner.run(pipeline)
  _fix_spec(output, [c.id for c in pipeline.components
                     if isinstance(c, DataSnapshot)], root)
  return {'output': os.path.abspath(output), 'image': image,
          'pipeline_root': root, 'serving_dir': serving_dir,
          'components': [c.id for c in pipeline.components],
          'resources': applied}
