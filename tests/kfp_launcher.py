"""What the KFP v2 backend does around one compiled container task, for tests.

No Docker engine or cluster runs here, so this plays the part of the KFP v2
driver and launcher (kubeflow/pipelines backend/src/v2: driver/resolve.go
resolveInputs, driver/driver.go provisionOutputs, component/launcher_v2.go
compileCmdAndArgs and uploadOutputArtifacts) for one task of a compiled
pipeline spec: it resolves the task's inputs, provisions its outputs, builds
the ExecutorInput, fills the container's placeholders and runs the container's
command on this machine. It fails where that backend fails, e.g. on inputs it
cannot resolve, rather than smoothing them over.
"""

import json
import os
import subprocess
import sys
import uuid
import zlib
from typing import Dict, List, Optional

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

EXECUTOR_INPUT = '{{$}}'


class LauncherError(RuntimeError):
  """The KFP v2 backend could not run this task as compiled."""


def pipeline_spec_of(compiled: dict) -> dict:
  """The PipelineSpec of a compiled file (a bare spec or a PipelineJob)."""
  return compiled.get('pipelineSpec', compiled)


def task_spec(pipeline_spec: dict, task: str) -> dict:
  tasks = pipeline_spec_of(pipeline_spec)['root']['dag']['tasks']
  if task not in tasks:
    raise LauncherError(f'no task {task!r}; the DAG has {sorted(tasks)}')
  return tasks[task]


def component_spec(pipeline_spec: dict, task: str) -> dict:
  spec = pipeline_spec_of(pipeline_spec)
  return spec['components'][task_spec(spec, task)['componentRef']['name']]


def container_spec(pipeline_spec: dict, task: str) -> dict:
  spec = pipeline_spec_of(pipeline_spec)
  label = component_spec(spec, task)['executorLabel']
  return spec['deploymentSpec']['executors'][label]['container']


def _parameter_value(task: str, name: str, spec: dict):
  """One task input parameter as the driver resolves it (a constant)."""
  runtime = spec.get('runtimeValue')
  if runtime is None:
    raise LauncherError(
        f'{task}.{name}: only runtimeValue parameters are resolved here, '
        f'not {sorted(spec)}')
  if 'constant' in runtime:
    return runtime['constant']
  # Pipeline spec 2.0.0 writes runtimeValue.constantValue; the KFP v2 driver
  # only reads runtimeValue.constant and stops with "param runtime value spec
  # of type *pipelinespec.ValueOrRuntimeParameter_ConstantValue not
  # implemented".
  raise LauncherError(
      f'{task}.{name}: runtimeValue holds {sorted(runtime)}, not "constant"; '
      'the KFP v2 backend cannot resolve a pipeline spec 2.0.0 parameter '
      '(compile with KubeflowV2DagRunnerConfig(use_pipeline_spec_2_1=True)).')


def _check_parameter(task: str, name: str, value, parameter_type: str):
  """The driver's type check and conversion (handleParamTypeValidation...)."""
  if parameter_type == 'STRING':
    return value if isinstance(value, str) else json.dumps(value)
  expected = {'NUMBER_INTEGER': (int, float), 'NUMBER_DOUBLE': (int, float),
              'BOOLEAN': (bool,), 'LIST': (list,), 'STRUCT': (dict,)}
  if parameter_type not in expected:
    raise LauncherError(
        f'{task}.{name}: parameterType {parameter_type!r} is not one the '
        'KFP v2 backend checks (a pipeline spec 2.0.0 "type"?)')
  if isinstance(value, bool) != (parameter_type == 'BOOLEAN') or (
      not isinstance(value, expected[parameter_type])):
    raise LauncherError(f'{task}.{name}: input parameter type mismatch: '
                        f'expect {parameter_type}, got {value!r}')
  return value


def executor_input(pipeline_spec: dict, task: str, input_artifacts: dict,
                   pipeline_root: str, salt: Optional[str] = None) -> dict:
  """The ExecutorInput (JSON dict) the KFP v2 driver hands `task`'s container.

  input_artifacts: input name -> the RuntimeArtifact (dict) the producing task
  recorded, e.g. from `produced_artifact`; its type is taken from the
  producer's outputDefinitions when it has none. Output artifacts get URIs
  <pipeline_root>/<task>/<salt>/<output name>, and the ExecutorOutput file is
  <pipeline_root>/<task>/<salt>/output_metadata.json, as the driver lays
  them out (output parameter files go there too, not under /tmp/kfp).
  """
  spec = pipeline_spec_of(pipeline_spec)
  tspec = task_spec(spec, task)
  cspec = component_spec(spec, task)
  inputs_def = cspec.get('inputDefinitions', {})
  task_inputs = tspec.get('inputs', {})

  values = {name: _parameter_value(task, name, p)
            for name, p in task_inputs.get('parameters', {}).items()}
  for name, definition in inputs_def.get('parameters', {}).items():
    if name not in values:
      if 'defaultValue' in definition:
        values[name] = definition['defaultValue']
      elif not definition.get('isOptional'):
        raise LauncherError(f'{task}.{name}: neither value nor default value '
                            'provided for non-optional parameter')
      else:
        continue
    values[name] = _check_parameter(task, name, values[name],
                                    definition.get('parameterType'))

  wanted = task_inputs.get('artifacts', {})
  if set(input_artifacts) != set(wanted):
    raise LauncherError(f'{task}: input artifacts {sorted(input_artifacts)} '
                        f'given, the task takes {sorted(wanted)}')
  artifacts = {}
  for name, source in wanted.items():
    artifact = dict(input_artifacts[name])
    if 'type' not in artifact:
      producer = source['taskOutputArtifact']
      outputs = component_spec(spec, producer['producerTask'])[
          'outputDefinitions']['artifacts']
      artifact['type'] = outputs[producer['outputArtifactKey']]['artifactType']
    artifacts[name] = {'artifacts': [artifact]}

  task_root = f'{pipeline_root.rstrip("/")}/{task}/{salt or uuid.uuid4()}'
  outputs_def = cspec.get('outputDefinitions', {})
  result = {
      'inputs': {'parameterValues': values, 'artifacts': artifacts},
      'outputs': {
          'artifacts': {
              name: {'artifacts': [{'name': name,
                                    'uri': f'{task_root}/{name}',
                                    'type': o['artifactType']}]}
              for name, o in outputs_def.get('artifacts', {}).items()},
          'parameters': {
              name: {'outputFile': f'{task_root}/outputs/{name}'}
              for name in outputs_def.get('parameters', {})},
          'outputFile': f'{task_root}/output_metadata.json',
      },
  }
  # It must be an ExecutorInput as the backend serialises it: parse strictly.
  json_format.ParseDict(result, pipeline_spec_pb2.ExecutorInput())
  return result


def container_command(pipeline_spec: dict, task: str, executor_in: dict,
                      python: str = sys.executable) -> List[str]:
  """The task's container command and args with the placeholders filled in
  (compileCmdAndArgs); the image's `python` becomes `python`."""
  container = container_spec(pipeline_spec, task)
  text = json.dumps(executor_in)
  placeholders = {}
  for name, artifacts in executor_in['inputs']['artifacts'].items():
    placeholders[f"{{{{$.inputs.artifacts['{name}'].uri}}}}"] = (
        artifacts['artifacts'][0]['uri'])

  def fill(arg):
    arg = arg.replace(EXECUTOR_INPUT, text)
    for key, value in placeholders.items():
      arg = arg.replace(key, value)
    return arg

  command = [python if c == 'python' else c for c in container['command']]
  return command + [fill(a) for a in container.get('args', [])]


def run_task(pipeline_spec: dict, task: str, executor_in: dict,
             env: Dict[str, str], cwd: str, timeout: float):
  """Runs the task's container command here; returns (process, ExecutorOutput
  as a dict, or None when the container wrote none)."""
  process = subprocess.run(
      container_command(pipeline_spec, task, executor_in), env=env, cwd=cwd,
      capture_output=True, text=True, timeout=timeout, check=False)
  path = executor_in['outputs']['outputFile']
  output = None
  if os.path.exists(path):
    with open(path) as f:
      output = json.load(f)
    json_format.ParseDict(output, pipeline_spec_pb2.ExecutorOutput())
  return process, output


def produced_artifact(executor_in: dict, executor_output: Optional[dict],
                      name: str) -> dict:
  """Output `name` as downstream tasks receive it: the provisioned artifact
  with the container's ExecutorOutput merged in (mergeRuntimeArtifacts)."""
  artifact = json.loads(json.dumps(
      executor_in['outputs']['artifacts'][name]['artifacts'][0]))
  produced = ((executor_output or {}).get('artifacts', {}).get(name, {})
              .get('artifacts') or [{}])[0]
  if produced.get('uri'):
    artifact['uri'] = produced['uri']
  artifact.setdefault('metadata', {}).update(produced.get('metadata', {}))
  # Downstream it is the MLMD artifact: its name is its id.
  artifact['name'] = str(zlib.crc32(artifact['uri'].encode()))
  return artifact
