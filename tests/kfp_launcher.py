"""What the open-source KFP v2 backend does with a compiled pipeline, for tests.

No Docker engine or cluster runs here, so this plays the part of the KFP v2
driver and launcher (kubeflow/pipelines backend/src/v2: driver/resolve.go
resolveInputs, driver/driver.go provisionOutputs and its cache check,
cacheutils GenerateCacheKey, component/launcher_v2.go compileCmdAndArgs and
uploadOutputArtifacts, component/importer_launcher.go):

- for one task: it resolves the task's inputs, provisions its outputs, builds
  the ExecutorInput, fills the container's placeholders and runs the
  container's command on this machine (`executor_input`, `run_task`);
- for a whole pipeline (`Backend.run`): every task in DAG order (or, with
  `parallelism`, every task as soon as its inputs are ready, as KFP starts
  them), artifacts and output parameters handed on as the launcher records
  them, importer nodes resolved, resolver nodes refused and
  `lifecycle.preCacheCheck` hooks not run (as on that backend), and KFP's cache rule: a task with caching on
  whose container, input artifacts (by their MLMD names), input parameter
  values and output spec match an earlier successful execution is not run;
  its recorded outputs are reused. The cache outlives runs (the cluster's
  ML Metadata), so successive `run()` calls are a schedule's runs.

Not a mock of the components: the real executors run in subprocesses from
their compiled commands; only the orchestrator is played. It fails where that
backend fails, e.g. on inputs it cannot resolve, rather than smoothing them
over.
"""

import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
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


def _parameter_value(task: str, name: str, spec: dict,
                     produced: Optional[dict] = None):
  """One task input parameter as the driver resolves it: a constant, or
  another task's output parameter (`produced`: task -> {key: value})."""
  upstream = spec.get('taskOutputParameter')
  if upstream is not None:
    producer, key = upstream['producerTask'], upstream['outputParameterKey']
    if producer not in (produced or {}):
      raise LauncherError(
          f'{task}.{name}: taskOutputParameter from {producer!r}, which has '
          'not run (or is not a task of this DAG)')
    if key not in produced[producer]:
      raise LauncherError(f'{task}.{name}: {producer} has no output '
                          f'parameter {key!r}')
    return produced[producer][key]
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
                   pipeline_root: str, salt: Optional[str] = None,
                   produced_parameters: Optional[dict] = None,
                   task_root: Optional[str] = None,
                   pod_tmp: Optional[str] = None) -> dict:
  """The ExecutorInput (JSON dict) the KFP v2 driver hands `task`'s container.

  input_artifacts: input name -> the RuntimeArtifact (dict) the producing task
  recorded, e.g. from `produced_artifact`; its type is taken from the
  producer's outputDefinitions when it has none. Output artifacts get URIs
  <pipeline_root>/<task>/<salt>/<output name> (or <task_root>/<output name>).
  The ExecutorOutput file and the output parameter files are where the
  driver puts them in the pod, /tmp/kfp_outputs/output_metadata.json and
  /tmp/kfp/outputs/<name>, with `pod_tmp` standing for the pod's /tmp (by
  default <task root>, for tests of one task).
  """
  spec = pipeline_spec_of(pipeline_spec)
  tspec = task_spec(spec, task)
  cspec = component_spec(spec, task)
  inputs_def = cspec.get('inputDefinitions', {})
  task_inputs = tspec.get('inputs', {})

  values = {name: _parameter_value(task, name, p, produced_parameters)
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

  task_root = task_root or (
      f'{pipeline_root.rstrip("/")}/{task}/{salt or uuid.uuid4()}')
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
              name: {'outputFile': f'{pod_tmp or task_root}/kfp/outputs/{name}'}
              for name in outputs_def.get('parameters', {})},
          'outputFile': (f'{pod_tmp}/kfp_outputs/output_metadata.json'
                         if pod_tmp else f'{task_root}/output_metadata.json'),
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
  as a dict, or None when the container wrote none). As the launcher does
  (prepareOutputFolders), the parent folder of each output artifact's local
  path exists before the container starts."""
  for artifacts in executor_in['outputs'].get('artifacts', {}).values():
    for artifact in artifacts['artifacts']:
      os.makedirs(os.path.dirname(artifact['uri']), exist_ok=True)
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


def output_parameters(executor_in: dict, executor_output: Optional[dict]
                      ) -> dict:
  """The task's output parameters as the launcher collects them: from the
  ExecutorOutput's parameterValues, else from each parameter's outputFile."""
  values = dict((executor_output or {}).get('parameterValues', {}))
  for name, spec in executor_in['outputs'].get('parameters', {}).items():
    if name not in values and os.path.exists(spec['outputFile']):
      with open(spec['outputFile']) as f:
        values[name] = f.read()
  return values


def _executor_kind(pipeline_spec: dict, task: str) -> str:
  spec = pipeline_spec_of(pipeline_spec)
  label = component_spec(spec, task).get('executorLabel')
  executor = spec['deploymentSpec']['executors'].get(label, {})
  for kind in ('container', 'importer', 'resolver'):
    if kind in executor:
      return kind
  raise LauncherError(f'{task}: executor {label} is neither a container, an '
                      'importer nor a resolver')


def _dependencies(pipeline_spec: dict) -> Dict[str, set]:
  """task -> the tasks it runs after (dependentTasks and the producers of its
  inputs)."""
  tasks = pipeline_spec_of(pipeline_spec)['root']['dag']['tasks']
  needs = {}
  for name, task in tasks.items():
    deps = set(task.get('dependentTasks', []))
    inputs = task.get('inputs', {})
    for artifact in inputs.get('artifacts', {}).values():
      deps.add(artifact['taskOutputArtifact']['producerTask'])
    for parameter in inputs.get('parameters', {}).values():
      if 'taskOutputParameter' in parameter:
        deps.add(parameter['taskOutputParameter']['producerTask'])
    unknown = deps - set(tasks)
    if unknown:
      raise LauncherError(f'{name} depends on {sorted(unknown)}, not tasks '
                          'of this DAG')
    needs[name] = deps
  return needs


def dag_order(pipeline_spec: dict) -> List[str]:
  """The tasks in an order that runs each after everything it depends on
  (dependentTasks and the producers of its inputs)."""
  needs = _dependencies(pipeline_spec)
  order, done = [], set()
  while len(order) < len(needs):
    ready = sorted(t for t in needs if t not in done and needs[t] <= done)
    if not ready:
      raise LauncherError(f'the DAG has a cycle among '
                          f'{sorted(set(needs) - done)}')
    order += ready
    done.update(ready)
  return order


def cache_key(pipeline_spec: dict, task: str, executor_in: dict) -> str:
  """KFP v2's cache key (cacheutils.GenerateCacheKey): the input artifacts'
  names, the input parameter values, the output artifacts without their URIs,
  the output parameters, and the container's image, command and arguments as
  compiled (placeholders unfilled)."""
  container = container_spec(pipeline_spec, task)
  inputs = executor_in['inputs']
  outputs = executor_in['outputs']
  key = {
      'inputArtifactNames': {
          name: [a['name'] for a in value['artifacts']]
          for name, value in inputs.get('artifacts', {}).items()},
      'inputParameterValues': inputs.get('parameterValues', {}),
      'outputArtifactsSpec': {
          name: {'name': name, 'type': value['artifacts'][0]['type']}
          for name, value in outputs.get('artifacts', {}).items()},
      'outputParametersSpec': sorted(outputs.get('parameters', {})),
      'containerSpec': {'image': container.get('image'),
                        'cmdArgs': list(container.get('command', [])) +
                                   list(container.get('args', []))},
  }
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class Backend:
  """The open-source KFP v2 backend, played for whole runs of one compiled
  pipeline (see the module docstring). `state_dir` holds its cache, the
  record of successful executions that survives between runs."""

  def __init__(self, pipeline_spec: dict, state_dir: str,
               env: Dict[str, str], cwd: str, task_timeout: float = 900,
               pipeline_root: Optional[str] = None,
               parallelism: Optional[int] = 1):
    """`pipeline_root`: as a run's runtime config sets it; default: the
    spec's defaultPipelineRoot (an error when it has none, as on KFP when
    neither is given and the deployment sets no default). `parallelism`:
    how many task containers run at once; KFP starts every task whose
    inputs are ready (None: no limit, as there); 1: one at a time, in
    `dag_order`."""
    self.spec = pipeline_spec_of(pipeline_spec)
    root = pipeline_root or self.spec.get('defaultPipelineRoot')
    if not root:
      raise LauncherError('no pipeline root: the spec has no '
                          'defaultPipelineRoot and none was given')
    self.pipeline_root = root.rstrip('/')
    self.env, self.cwd, self.task_timeout = env, cwd, task_timeout
    if parallelism is not None and parallelism < 1:
      raise ValueError(f'parallelism must be None or >= 1, not {parallelism}')
    self.parallelism = parallelism
    os.makedirs(state_dir, exist_ok=True)
    self._cache_path = os.path.join(state_dir, 'kfp_cache.json')
    self.runs = 0

  def _cache(self) -> dict:
    if not os.path.exists(self._cache_path):
      return {}
    with open(self._cache_path) as f:
      return json.load(f)

  def _remember(self, key: str, record: dict) -> None:
    cache = self._cache()
    cache[key] = record
    with open(self._cache_path, 'w') as f:
      json.dump(cache, f)

  def run(self, stop_after: Optional[str] = None) -> dict:
    """One run of the pipeline. Returns {'run_id', 'tasks': {task: {'state':
    'executed' | 'cached' | 'imported', 'seconds', 'artifacts',
    'parameters'}}}. A task that fails raises LauncherError with its log
    (once the tasks already running have ended; none is started after it).

    `stop_after`: a task; the run ends once it and what it depends on have
    run (the tasks after it are left out of the record), as a run
    terminated there would. For a test that asserts nothing after it."""
    self.runs += 1
    run_id = f'run-{self.runs}-{uuid.uuid4().hex[:8]}'
    name = self.spec['pipelineInfo']['name']
    needs = _dependencies(self.spec)
    pending = dag_order(self.spec)
    if stop_after is not None:
      if stop_after not in needs:
        raise LauncherError(f'stop_after: no task {stop_after!r}')
      wanted, todo = set(), [stop_after]
      while todo:
        task = todo.pop()
        if task not in wanted:
          wanted.add(task)
          todo += needs[task]
      pending = [t for t in pending if t in wanted]
    order = list(pending)
    artifacts, parameters, record = {}, {}, {}
    running = {}  # future -> (task, executor_in, cache key, start, pod_tmp)
    failure = None
    try:
      with concurrent.futures.ThreadPoolExecutor(
          max_workers=self.parallelism or len(order) or 1) as pool:
        failure = self._schedule(pending, needs, running, record, name,
                                 run_id, artifacts, parameters, pool)
    finally:
      for _, _, _, _, pod_tmp in running.values():
        shutil.rmtree(pod_tmp, ignore_errors=True)
    if failure:
      raise failure
    return {'run_id': run_id, 'tasks': {t: record[t] for t in order}}

  def _schedule(self, pending, needs, running, record, name, run_id,
                artifacts, parameters, pool) -> Optional[LauncherError]:
    """Runs the `pending` tasks (in dag_order), each once its dependencies
    are in `record`; returns the first failure, if any."""
    failure = None
    while pending or running:
      progress = False
      for task in list(pending):
        if failure or (self.parallelism and
                       len(running) >= self.parallelism):
          break
        if not needs[task] <= set(record):
          continue
        pending.remove(task)
        started = self._start(task, name, run_id, artifacts, parameters,
                              pool)
        progress = True
        if isinstance(started, dict):  # imported or cached: done now
          record[task] = started
        else:
          running[started[0]] = started[1:]
      if not running:
        if failure or not pending:
          break
        if not progress:
          raise LauncherError(f'{sorted(pending)} can never start')
        continue  # what was done at once (cached, imported) readies more
      finished, _ = concurrent.futures.wait(
          running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in sorted(finished, key=lambda f: running[f][0]):
        task, executor_in, key, start, pod_tmp = running.pop(future)
        try:
          process, output = future.result()
          produced = output_parameters(executor_in, output)
        finally:
          shutil.rmtree(pod_tmp, ignore_errors=True)
        if process.returncode != 0 or output is None:
          failure = failure or LauncherError(
              f'{task} (run {self.runs}) exited {process.returncode}'
              f'{"" if output is not None else " with no ExecutorOutput"}:\n'
              f'{process.stderr[-6000:]}')
          continue
        artifacts[task] = {
            out: produced_artifact(executor_in, output, out)
            for out in executor_in['outputs'].get('artifacts', {})}
        parameters[task] = produced
        if task_spec(self.spec, task).get('cachingOptions', {}).get(
            'enableCache'):
          self._remember(key, {'artifacts': artifacts[task],
                               'parameters': parameters[task]})
        record[task] = {'state': 'executed',
                        'seconds': round(time.time() - start, 1),
                        'artifacts': artifacts[task],
                        'parameters': parameters[task]}
    return failure

  def _start(self, task: str, name: str, run_id: str, artifacts: dict,
             parameters: dict, pool):
    """Starts `task` (its inputs are ready): returns its record when it is
    done at once (an importer, a cache hit), else (future, task,
    executor_in, cache key, start time, pod /tmp) of its running container."""
    tspec = task_spec(self.spec, task)
    kind = _executor_kind(self.spec, task)
    start = time.time()
    if kind == 'resolver':
      raise LauncherError(
          f'{task}: resolver nodes are rejected by the open-source KFP v2 '
          'backend (its Argo compiler has no resolver step)')
    inputs = {
        key: artifacts[source['taskOutputArtifact']['producerTask']][
            source['taskOutputArtifact']['outputArtifactKey']]
        for key, source in tspec.get('inputs', {}).get(
            'artifacts', {}).items()}
    if kind == 'importer':
      artifacts[task] = self._import(task, parameters)
      parameters[task] = {}
      return {'state': 'imported', 'seconds': 0.0,
              'artifacts': artifacts[task], 'parameters': {}}
    # TFX's ExampleGen driver hook: the open-source backend does not run it.
    # The pod's own /tmp: there only while the task runs.
    pod_tmp = tempfile.mkdtemp(prefix=f'pod-{task}-')
    executor_in = executor_input(
        self.spec, task, inputs, self.pipeline_root,
        produced_parameters=parameters,
        task_root=f'{self.pipeline_root}/{name}/{run_id}/{task}',
        pod_tmp=pod_tmp)
    key = f'{name}/{cache_key(self.spec, task, executor_in)}'
    cached = self._cache().get(key) if (
        tspec.get('cachingOptions', {}).get('enableCache')) else None
    if cached:
      shutil.rmtree(pod_tmp, ignore_errors=True)
      artifacts[task], parameters[task] = (cached['artifacts'],
                                           cached['parameters'])
      return {'state': 'cached', 'seconds': round(time.time() - start, 1),
              'artifacts': artifacts[task], 'parameters': parameters[task]}
    future = pool.submit(run_task, self.spec, task, executor_in, self.env,
                         self.cwd, self.task_timeout)
    return future, task, executor_in, key, start, pod_tmp

  def _import(self, task: str, parameters: dict) -> dict:
    """An importer node (importer_launcher): an artifact at the given URI,
    reused by URI when `reimport` is off."""
    importer = self.spec['deploymentSpec']['executors'][component_spec(
        self.spec, task)['executorLabel']]['importer']
    uri_spec = importer['artifactUri']
    if 'constant' in uri_spec:
      uri = uri_spec['constant']
    else:
      name = uri_spec['runtimeParameter']
      uri = _parameter_value(
          task, name, task_spec(self.spec, task)['inputs']['parameters'][name],
          parameters)
    artifact = {'uri': uri, 'type': importer['typeSchema'],
                'metadata': importer.get('metadata', {})}
    # Without reImport the importer reuses the artifact of that URI.
    artifact['name'] = str(zlib.crc32(uri.encode())) + (
        f'-{uuid.uuid4().hex[:8]}' if importer.get('reimport') else '')
    out = next(iter(component_spec(self.spec, task)['outputDefinitions'][
        'artifacts']))
    return {out: artifact}
