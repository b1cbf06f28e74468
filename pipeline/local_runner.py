"""Runs the hubpipe DAG on this machine: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner.

Layout of a work dir:
  metadata.sqlite    ML Metadata (the record of every run; enables caching)
  pipeline_root/     artifacts, one folder per component and execution
  serving/<name>/    pushed models, one numbered version folder per push
  logs/<start>.log   the full log of each run (UTC start time and pid)
  run.log            a link to the last run's log
  summary.json       the summary of the last run
  .lock              held by the run in progress (pipeline/workdir_lock.py)
"""

import dataclasses
import errno
import importlib
import json
import logging
import os
import re
import time
from typing import Callable, Optional

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from hubpipe.components.assets import AssetError  # pylint: disable=g-import-not-at-top
from hubpipe.components.hub_modules.inspect import IncompatibleModule
from hubpipe.components.hub_modules.resolve import ModuleNotFound, ModuleUnavailable
from hubpipe.pipeline import summary as summary_lib
from hubpipe.pipeline import workdir_lock
from hubpipe.pipeline.config import BUNDLED as BUNDLED_DATA
from hubpipe.pipeline.config import Config, ConfigError


ModuleError = (IncompatibleModule, ModuleNotFound, ModuleUnavailable)


@dataclasses.dataclass
class Inputs:
  """What is checked before the DAG starts: the data's root, and the
  module's facts for the summary (the steps work them out themselves,
  modeling/modules.py)."""
  input_base: str
  input_size: Optional[list]
  preprocessor: Optional[str]
  module: dict


def bundled_data(config: Config, path_only: bool = False) -> str:
  """The folder of a bundled data set: fetched and written once (idempotent),
  or with `path_only` where it is (or would be) written, without writing."""
  data = config.data
  dataset = importlib.import_module(f'hubpipe.components.datasets.{data.source}')
  return str(dataset.prepare(
      data.train_examples, data.eval_examples, seed=data.seed,
      path_only=path_only,
      **{f'{config.modality}_feature': config.input_feature,
         'label_feature': data.label_feature}))


def prepare_data(config: Config) -> str:
  """The examples' root for `config`: a bundled data set is fetched and written
  (idempotent); a folder named in data.path is checked. Returns its path."""
  data = config.data
  if data.source in BUNDLED_DATA:
    return bundled_data(config)
  input_base = config.resolve_path(data.path)
  if '://' not in input_base and not os.path.isdir(input_base):
    raise ConfigError(
        f'data.path: {input_base} is not a folder. Point data.path at the '
        'folder that holds the data (a relative path is read from the '
        "config file's folder).")
  # What the folder holds (train/ and eval/ files, span folders, a ready
  # marker) is checked by the data snapshot, as on a cluster.
  return input_base


def check_module(config: Config):
  """Resolves (offline modules are built on first use), inspects and checks
  the config's modules, so a mismatch stops the run before any component, not
  in the Trainer. Returns (input_size, preprocessor, module facts) for the
  summary; the steps work them out themselves, by the same rules
  (modeling/modules.py)."""
  from hubpipe.components.hub_modules import inspect as inspect_lib
  from hubpipe.components.hub_modules import resolve as hub_resolve
  from hubpipe.components.modeling import modules
  info = inspect_lib.describe(config.module.handle)
  inspect_lib.check_compatible(info, config)
  if config.module.control_handle:
    inspect_lib.check_compatible(
        inspect_lib.describe(config.module.control_handle), config)
  preprocessor = modules.preprocessor_for(
      config.module.handle, config.module.preprocessor, info)
  if preprocessor:
    hub_resolve.resolve(preprocessor)
  input_size = None
  if config.modality == 'image':
    input_size = modules.transform_size(config, info)
  facts = {k: v for k, v in info.to_dict().items()
           if k in ('kind', 'modality', 'output_kind', 'output_dim',
                    'parameters', 'trainable_parameters', 'size_bytes')}
  return input_size, preprocessor, facts


def prepare_inputs(config: Config) -> Inputs:
  """Prepares the data and checks the module against the config, before any component runs.

  A missing or incompatible module, or a data folder that is not there, stops
  the run here with a message naming the problem and the fix.
  """
  input_base = prepare_data(config)
  return Inputs(input_base, *check_module(config))


class _Progress(logging.Handler):
  """Turns LocalDagRunner's log lines into one progress line per component."""

  def __init__(self, echo: Callable[[str], None], total: int):
    super().__init__(logging.INFO)
    self._echo, self._total, self._done = echo, total, 0
    self._started = {}
    self._cached = set()

  def emit(self, record):
    message = record.getMessage()
    if message.startswith('Component ') and message.endswith(' is running.'):
      node = message[len('Component '):-len(' is running.')]
      self._started[node] = time.time()
      self._current = node
    elif message.startswith('A cached execution'):
      self._cached.add(getattr(self, '_current', None))
    elif message.startswith('Component ') and message.endswith(' is finished.'):
      node = message[len('Component '):-len(' is finished.')]
      self._done += 1
      took = time.time() - self._started.get(node, time.time())
      state = 'cached' if node in self._cached else f'{took:6.1f} s'
      self._echo(f'  [{self._done:2d}/{self._total}] {node:<32} {state}')


def run(config: Config, workdir: str,
        echo: Callable[[str], None] = print,
        pipeline_root: Optional[str] = None, wait: bool = False) -> dict:
  """Runs the DAG for `config` in `workdir`; returns (and writes) the summary.

  Artifacts go to `pipeline_root` (default <workdir>/pipeline_root; a gs://
  or s3:// URI works too); ML Metadata, the logs and summary.json stay in
  `workdir`. One run holds a work dir at a time: another run's raises
  workdir_lock.WorkdirBusy before it writes anything (or, with `wait`, it
  starts when the holder ends)."""
  workdir = os.path.abspath(workdir)
  with workdir_lock.hold(workdir, config.source_path, wait=wait, echo=echo):
    return _run_holding(config, workdir, echo, pipeline_root)


# logs/ keeps the logs of this many runs.
KEEP_LOGS = 50


def _run_log(workdir: str) -> str:
  """A new log file for this run under logs/ (the oldest beyond KEEP_LOGS
  go); run.log links to it where the file system has links."""
  stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
  folder = os.path.join(workdir, 'logs')
  path = os.path.join(folder, f'{stamp}-{os.getpid()}.log')
  os.makedirs(folder, exist_ok=True)
  for old in sorted(os.listdir(folder))[:-(KEEP_LOGS - 1) or None]:
    os.remove(os.path.join(folder, old))
  link = os.path.join(workdir, 'run.log')
  temporary = f'{link}.{os.getpid()}'
  try:
    if os.path.lexists(temporary):
      os.remove(temporary)
    os.symlink(os.path.relpath(path, workdir), temporary)
    os.replace(temporary, link)  # also replaces a run.log file of old versions
  except OSError as err:
    logging.warning('run.log: cannot link it to %s (%s)', path, err)
  return path


def _run_holding(config: Config, workdir: str, echo, pipeline_root) -> dict:
  from tfx import v1 as tfx
  from hubpipe.components import storage
  from hubpipe.pipeline import cpus
  from hubpipe.components.data_snapshot import snapshot as snapshot_lib
  from hubpipe.pipeline.pipeline import (BEAM_MODE_ENV, BEAM_WORKERS_ENV,
                                         create_pipeline, pipeline_identity,
                                         running_mode_for, snapshot_parameters)

  metadata_path = os.path.join(workdir, 'metadata.sqlite')
  serving_dir = (config.resolve_path(config.push.serving_dir) if
                 config.push.serving_dir else
                 os.path.join(workdir, 'serving', config.name))
  summary_path = os.path.join(workdir, 'summary.json')
  result = {
      'status': 'running', 'config': config.source_path, 'workdir': workdir,
      'module': {'handle': config.module.handle,
                 'integration': config.model.integration},
      'summary_path': summary_path,
  }
  start = time.time()
  # This run's executions are those of the pipeline run ML Metadata records
  # next; not the latest run, which may not be this one (a failure before
  # the DAG starts records none).
  runs_before = summary_lib.run_ids(metadata_path)
  log_path = _run_log(workdir)
  result['log'] = log_path
  result['pid'] = os.getpid()
  try:
    # Until this run ends: a run killed outright leaves this, not the
    # summary of the run before it.
    summary_lib.write(result, summary_path)
  except Exception:  # pylint: disable=broad-except
    pass  # reported with the final summary, if that fails too
  log_handler = logging.FileHandler(log_path, mode='w')
  log_handler.setFormatter(logging.Formatter(
      '%(asctime)s %(levelname)s %(name)s: %(message)s'))
  root = logging.getLogger()
  previous_level = root.level
  root.setLevel(logging.INFO)
  # TFX logs through absl, whose own level defaults to WARNING until flags
  # are parsed (as under pytest); the progress lines come from its INFO lines.
  from absl import logging as absl_logging
  previous_absl = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  # The full log goes to run.log; the console shows progress and errors only.
  # (A handler on the root logger also stops libraries' basicConfig() calls.)
  quieted = [(h, h.level) for h in root.handlers]
  for handler, _ in quieted:
    handler.setLevel(logging.ERROR)
  root.addHandler(log_handler)
  progress = None
  try:
    inputs = prepare_inputs(config)
    result['module'].update(input_size=inputs.input_size,
                            preprocessor=inputs.preprocessor, **inputs.module)
    result['input_base'] = inputs.input_base
    pipeline_root = pipeline_root or os.path.join(workdir, 'pipeline_root')
    storage.enable([pipeline_root, serving_dir, inputs.input_base])
    # This process is the orchestrator: it takes the data snapshot (what to
    # ingest, which push to measure against) that a compiled pipeline's
    # DataSnapshot step takes on the cluster, and hands it in as constants.
    snapshot = snapshot_lib.take(**snapshot_parameters(
        config, inputs.input_base, pipeline_root, serving_dir,
        pipeline_identity(config)))
    result['data_snapshot'] = _snapshot_summary(snapshot)
    if snapshot['waiting']:
      logging.warning('data snapshot: spans %s have no %s file yet; left for '
                      'a later run', snapshot['waiting'],
                      config.data.ready_marker)
    pipeline = create_pipeline(
        config, pipeline_root=pipeline_root,
        input_base=inputs.input_base, serving_dir=serving_dir,
        metadata_connection_config=(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(
                metadata_path)),
        snapshot={k: snapshot[k] for k in ('examples', 'baseline')},
        local=True)
    # What `beam.direct_num_workers: 0` resolves to when each Beam step
    # runs: the CPUs this process may use (a container's limit), not Beam's
    # one per core of the machine.
    os.environ[BEAM_WORKERS_ENV] = str(cpus.available_cpus())
    # `direct_running_mode: auto`: by the size of the input this run ingests.
    mode = running_mode_for(
        config, int(result['data_snapshot']['fingerprint']['bytes']))
    os.environ[BEAM_MODE_ENV] = mode
    result['beam'] = {'runner': config.beam.runner}
    if config.beam.runner == 'DirectRunner':
      result['beam'].update(
          running_mode=mode, configured_mode=config.beam.direct_running_mode,
          workers=config.beam.direct_num_workers or cpus.available_cpus())
    progress = _Progress(echo, len(pipeline.components))
    root.addHandler(progress)
    echo(f'hubpipe: running "{config.name}" ({len(pipeline.components)} '
         f'components) in {workdir}; full log in {log_path}')
    tfx.orchestration.LocalDagRunner().run(pipeline)
    result['status'] = 'succeeded'
  except ConfigError as err:
    result.update(status='failed', failed_step='config', error=f'config: {err}')
  except snapshot_lib.SnapshotError as err:
    result.update(status='failed', failed_step='data', error=f'data: {err}')
  except storage.StorageError as err:
    result.update(status='failed', failed_step='storage',
                  error=f'storage: {err}')
  except ModuleError + (AssetError,) as err:
    result.update(status='failed', failed_step='module', error=f'module: {err}')
  except Exception as err:  # pylint: disable=broad-except
    # The traceback goes to the run's log; the console gets the summary.
    logging.warning('run failed', exc_info=True)
    result.update(status='failed', error=_explain(err))
  except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (cli.py), as a pod is stopped
    logging.warning('run interrupted', exc_info=True)
    result.update(status='interrupted', error=(
        'interrupted (SIGINT or SIGTERM): run the same command again; the '
        'steps that completed are reused'))
  finally:
    if progress is not None:
      root.removeHandler(progress)
    root.removeHandler(log_handler)
    log_handler.close()
    for handler, level in quieted:
      handler.setLevel(level)
    root.setLevel(previous_level)
    absl_logging.set_verbosity(previous_absl)
  result['wall_seconds'] = round(time.time() - start, 1)
  try:
    result.update(summary_lib.collect(metadata_path, config.name,
                                      config.data.label_feature,
                                      exclude_runs=runs_before))
  except Exception as err:  # pylint: disable=broad-except
    result['summary_error'] = f'could not read ML Metadata: {err}'
  failed = [c['name'] for c in result.get('components', [])
            if c['state'] == 'failed']
  if failed:
    result['failed_component'] = result['failed_step'] = failed[0]
  elif (result['status'] in ('failed', 'interrupted') and
        'failed_step' not in result):
    # Failed in the DAG without an execution marked failed (the
    # orchestrator itself): the step is the one that was running.
    running = [c['name'] for c in result.get('components', [])
               if c['state'] not in ('complete', 'cached')]
    result['failed_step'] = running[0] if running else 'pipeline'
  if result['status'] == 'succeeded' and result.get('blessed') is False:
    result['status'] = 'not_blessed'
  try:
    summary_lib.write(result, summary_path)
  except Exception as err:  # pylint: disable=broad-except
    # A full work dir must not hide why the run failed: the caller still
    # has the summary (the CLI prints it).
    result['summary_error'] = f'could not write {summary_path}: {err}'
    echo(f'hubpipe: {result["summary_error"]}')
  return result


# The failed steps for which `hubpipe run` exits with status 2: the config,
# or the module it names, is wrong, and running again cannot help. A
# failure at the data snapshot (data not yet delivered), in storage or in a
# component exits with 1.
CONFIG_ERRORS = ('config', 'module')


def record_failure(workdir: str, config_path: Optional[str], step: str,
                   error: str) -> Optional[dict]:
  """Writes summary.json for a run that stopped before it could start (a
  config that does not load), unless another run holds the work dir (its
  summary is not this one's to overwrite). Returns the summary written."""
  workdir = os.path.abspath(workdir)
  result = {'status': 'failed', 'failed_step': step, 'error': error,
            'config': config_path, 'workdir': workdir, 'pushed': False,
            'summary_path': os.path.join(workdir, 'summary.json')}
  try:
    with workdir_lock.hold(workdir, config_path):
      summary_lib.write(result, result['summary_path'])
  except workdir_lock.WorkdirBusy:
    return None
  return result


def _snapshot_summary(snapshot: dict) -> dict:
  """What the summary records of the data snapshot."""
  examples = json.loads(snapshot['examples'])
  return {'spans': examples['spans'], 'fingerprint': examples['fingerprint'],
          'waiting_spans': snapshot.get('waiting') or None,
          'baseline': snapshot['baseline'] or None}


_FULL = ('No space left on device', 'Disk quota exceeded',
         'database or disk is full')


def _storage_full(err: BaseException) -> bool:
  return (getattr(err, 'errno', None) in (errno.ENOSPC, errno.EDQUOT) or
          any(text in str(err) for text in _FULL))


def _explain(err: Exception) -> str:
  """The root cause of a component failure, without the traceback."""
  seen = err
  while (seen.__cause__ or seen.__context__) not in (None, seen):
    seen = seen.__cause__ or seen.__context__
  if _storage_full(seen):
    # TF names the file it could not write; its op's name is noise here.
    detail = re.sub(r'\{\{function_node [^}]*\}\}\s*', '', str(seen)).strip()
    return (f'storage full: {detail}. Free space on that file system, or '
            'give the run a larger one (--pipeline-root, --workdir, '
            'push.serving_dir), and run again: the steps that completed are '
            'reused.')
  if type(seen).__name__ == 'FutureTimeoutError':  # gRPC: nobody answered
    return ('FutureTimeoutError: a gRPC connection timed out; with a portable '
            'Beam runner, check that the job endpoint in beam.extra_args '
            '(--job_endpoint, --flink_master) is up and reachable.')
  return f'{type(seen).__name__}: {seen}'
