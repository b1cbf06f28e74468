"""Fault injection: `hubpipe run` SIGKILLed in each component in turn, then rerun.

One tiny DAG, one work dir. Each run is killed (SIGKILL to its process
group, as a node losing a pod) while the next component on the list is
executing, and the next run is the same command again; the last run is left
to finish. A component is caught while it runs either by ML Metadata (its
execution is RUNNING in this run) or, where the moment matters (mid-epoch,
mid-copy), at a pause point (components/faults.py). After each kill and each
rerun the test checks what a scheduler relies on:

- the killed component's execution never completed, and the rerun executes
  it again;
- every component that had completed in an earlier run is a cache hit, and
  the artifacts of completed executions are all still there;
- the serving dir never holds a numbered folder without a saved_model.pb
  (what a model server would try to load half written), and the whole chain
  pushes exactly one version, of the model the Evaluator blessed.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from hubpipe.components.pusher import executor as pusher
from hubpipe.pipeline import summary as summary_lib

import reliability

NAME = 'fault-chain'
CONFIG = f'''\
name: {NAME}
data:
  source: fashion_mnist
  train_examples: 200
  eval_examples: 100
  seed: 0
module:
  input_size: [32, 32]
model:
  integration: feature_extraction
training:
  epochs: 4
  learning_rate: 0.01
  batch_size: 32
evaluation:
  min_accuracy: 0.2
compression:
  techniques: [dynamic_range]
  calibration_examples: 50
  validation_examples: 100
  eval_examples: 100
  fine_tune_examples: 100
  pruning_epochs: 1
  max_accuracy_drop: 0.1
beam:
  direct_running_mode: in_memory
'''

# (component, pause point or None: killed once ML Metadata shows it RUNNING
# [, the signal: SIGKILL unless given; SIGTERM is how a pod is asked to stop])
KILL_POINTS = [
    ('SnapshotExampleGen', None),
    ('StatisticsGen', None),
    ('Transform', None),
    ('Trainer', 'trainer_mid_epoch'),
    ('Evaluator', None),
    ('Compressor', None),
    ('Pusher', 'pusher_mid_copy', signal.SIGTERM),
    ('Pusher', 'pusher_mid_copy'),
    ('Pusher', 'pusher_renamed'),
]
RUN_TIMEOUT_S = 600
DONE = ('complete', 'cached')


def _executions(metadata_path):
  """{execution id: (node, state)} of the pipeline's executions so far."""
  if not os.path.exists(metadata_path):
    return {}
  try:
    store = summary_lib.sqlite_store(metadata_path)
    out = {}
    for context in store.get_contexts_by_type('node'):
      if not context.name.startswith(NAME + '.'):
        continue
      node = context.name[len(NAME) + 1:]
      for e in store.get_executions_by_context(context.id):
        out[e.id] = (node, summary_lib.STATES.get(e.last_known_state, '?'))
    return out
  except Exception:  # pylint: disable=broad-except
    return {}  # the run is creating or writing the database; read again


def _serving_state(serving_dir):
  """(whole versions, numbered folders without saved_model.pb, hidden
  folders) under the serving dir."""
  if not os.path.isdir(serving_dir):
    return {}, [], []
  names = os.listdir(serving_dir)
  whole = pusher.versions(serving_dir)
  half = [n for n in names if n.isdigit() and int(n) not in whole]
  hidden = [n for n in names if n.startswith('.')]
  return whole, half, hidden


def _run_log_has(workdir, since, text):
  logs = os.path.join(workdir, 'logs')
  if not os.path.isdir(logs):
    return False
  for name in os.listdir(logs):
    path = os.path.join(logs, name)
    if os.path.getmtime(path) >= since:
      with open(path, errors='ignore') as f:
        if text in f.read():
          return True
  return False


def _start(config_file, workdir, pause=None):
  env = dict(os.environ)
  env.pop('HUBPIPE_PAUSE_AT', None)
  if pause:
    env['HUBPIPE_PAUSE_AT'] = pause
  return subprocess.Popen(
      [sys.executable, '-m', 'hubpipe.pipeline.cli', 'run', '--config',
       str(config_file), '--workdir', str(workdir)],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
      start_new_session=True)


def _kill_in(config_file, workdir, node, pause, kill=signal.SIGKILL):
  """Starts a run and SIGKILLs it (or sends `kill`) while `node` executes;
  returns the ids of the executions this run made, {id: (node, state)}
  after the kill, and the run's exit status."""
  metadata = os.path.join(workdir, 'metadata.sqlite')
  before = set(_executions(metadata))
  started = time.time()
  process = _start(config_file, workdir, pause)
  caught = False
  while time.time() - started < RUN_TIMEOUT_S and process.poll() is None:
    if pause:
      caught = _run_log_has(workdir, started, f'paused at {pause}')
    else:
      caught = any(n == node and s == 'running' and i not in before
                   for i, (n, s) in _executions(metadata).items())
    if caught:
      break
    time.sleep(0.1)
  if process.poll() is None:
    os.killpg(process.pid, kill)
  try:
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
  assert caught, (f'the run ended (status {process.returncode}) before it '
                  f'could be killed in {node}: {stderr[-2000:]}')
  return ({i: v for i, v in _executions(metadata).items() if i not in before},
          process.returncode)


def _output_uris(metadata_path, execution_ids):
  store = summary_lib.sqlite_store(metadata_path)
  outputs = [e.artifact_id for e in store.get_events_by_execution_ids(
      list(execution_ids)) if e.type in (e.OUTPUT, e.DECLARED_OUTPUT)]
  return [a.uri for a in store.get_artifacts_by_id(outputs)]


def _checkpoints(workdir):
  """The Trainer's saved epochs (BackupAndRestore folders) now."""
  root = os.path.join(workdir, 'pipeline_root', 'Trainer', 'checkpoints')
  return sorted(os.path.relpath(path, root)
                for path, _, files in os.walk(root) if files)


@pytest.fixture(scope='module')
def chain(tmp_path_factory):
  root = tmp_path_factory.mktemp('faults')
  config_file = root / 'config.yaml'
  config_file.write_text(CONFIG)
  workdir = root / 'work'
  serving_dir = str(workdir / 'serving' / NAME)
  metadata = str(workdir / 'metadata.sqlite')
  kills = []
  for node, pause, *kill in KILL_POINTS:
    kill = kill[0] if kill else signal.SIGKILL
    executions, returncode = _kill_in(config_file, workdir, node, pause, kill)
    with open(workdir / 'summary.json') as f:
      summary = json.load(f)
    kills.append({'node': node, 'pause': pause, 'executions': executions,
                  'signal': kill, 'returncode': returncode,
                  'summary': summary,
                  'serving': _serving_state(serving_dir),
                  'checkpoints': _checkpoints(workdir)})
  started = time.time()
  process = _start(config_file, workdir)
  try:
    _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
  finally:
    if process.poll() is None:  # timed out: no run left behind
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
  with open(workdir / 'summary.json') as f:
    final = json.load(f)
  return {'kills': kills, 'final': final, 'returncode': process.returncode,
          'checkpoints': _checkpoints(workdir),
          'stderr': stderr, 'metadata': metadata, 'serving_dir': serving_dir,
          'final_seconds': time.time() - started}


def _states(executions):
  return {node: state for node, state in executions.values()}


def _pushers_inputs(metadata_path):
  """{input key: artifact} of the last Pusher execution that completed."""
  store = summary_lib.sqlite_store(metadata_path)
  context = store.get_context_by_type_and_name('node', f'{NAME}.Pusher')
  done = [e for e in store.get_executions_by_context(context.id)
          if summary_lib.STATES.get(e.last_known_state) == 'complete']
  execution = max(done, key=lambda e: e.id)
  events = [e for e in store.get_events_by_execution_ids([execution.id])
            if e.type == e.INPUT]
  artifacts = {a.id: a for a in store.get_artifacts_by_id(
      [e.artifact_id for e in events])}
  return {e.path.steps[0].key: artifacts[e.artifact_id] for e in events}


def test_every_kill_is_recovered_with_one_blessed_version_and_nothing_lost(
    chain):
  """One test, so that the reliability table counts the kills only when
  every check below passed."""
  # 1. Each kill landed in its component; each rerun re-executed it and
  # took every step that had completed before from the cache.
  completed = set()  # nodes that completed in some earlier run
  runs = [k['executions'] for k in chain['kills']]
  runs.append({i: (c['name'], c['state'])
               for i, c in enumerate(chain['final']['components'])})
  for index, executions in enumerate(runs):
    states = _states(executions)
    if index < len(chain['kills']):
      node = chain['kills'][index]['node']
      # Killed mid-execution: the execution is RUNNING, never finished.
      assert states.get(node) == 'running', (node, states)
      kill = chain['kills'][index]
      if kill['signal'] == signal.SIGTERM:
        # Stopped as Ctrl-C stops it: the summary says where.
        assert kill['returncode'] == 130, kill['returncode']
        assert kill['summary']['status'] == 'interrupted'
        assert kill['summary']['failed_step'] == node
      else:
        # SIGKILLed: the summary is this run's, marked running.
        assert kill['returncode'] == -signal.SIGKILL
        assert kill['summary']['status'] == 'running'
    for done in completed:
      # What an earlier run completed is reused, not run again.
      assert states.get(done) == 'cached', (index, done, states)
    if index:
      previous = chain['kills'][index - 1]['node']
      # The component killed last time ran again (and completed, unless
      # this run was killed in it too).
      assert states.get(previous) in ('complete', 'running'), (previous,
                                                               states)
    completed |= {n for n, s in states.items() if s in DONE}
  # Killed mid-epoch, the Trainer had saved its first epoch (what the
  # rerun resumes from: tests/test_resume.py); once the model is exported,
  # the checkpoints are gone.
  trainer_kill, = [k for k in chain['kills'] if k['node'] == 'Trainer']
  assert any(c.split(os.sep)[1:2] == ['head'] for c in
             trainer_kill['checkpoints']), trainer_kill['checkpoints']
  assert not chain['checkpoints'], chain['checkpoints']
  final = chain['final']
  assert chain['returncode'] == 0, chain['stderr'][-3000:]
  assert final['status'] == 'succeeded'
  # Only the component killed last re-executed in the final run.
  ran = {c['name'] for c in final['components'] if c['state'] == 'complete'}
  assert ran == {'Pusher'}, ran

  # 2. Never a numbered folder without its saved_model.pb; one version in
  # the end, of the model the Pusher was handed on a positive blessing.
  for kill in chain['kills']:
    whole, half, hidden = kill['serving']
    assert not half, (kill['node'], kill['pause'], half)
    if kill['pause'] == 'pusher_mid_copy' and kill['signal'] == signal.SIGTERM:
      # Interrupted, the copy cleaned up after itself.
      assert not whole and not hidden, kill['serving']
    elif kill['pause'] == 'pusher_mid_copy':
      # SIGKILLed, the half-written copy is a hidden folder a model server
      # skips (removed by a later push once stale).
      assert not whole and len(hidden) == 1, kill['serving']
    if kill['pause'] == 'pusher_renamed':
      # Whole in place before ML Metadata knew: the rerun must not push again.
      assert len(whole) == 1, kill['serving']
  whole, half, _ = _serving_state(chain['serving_dir'])
  assert not half
  assert len(whole) == 1, whole
  assert final['blessed'] is True and final['pushed'] is True
  (_, folder), = whole.items()
  assert os.path.realpath(final['pushed_model']) == os.path.realpath(folder)
  inputs = _pushers_inputs(chain['metadata'])
  model, blessing = inputs['model'], inputs['model_blessing']
  assert blessing.custom_properties['blessed'].int_value == 1
  record = pusher.read_record(folder)
  assert record['source'] == model.uri
  assert record['blessing'] == blessing.uri
  handed = os.path.join(model.uri, 'Format-Serving')
  assert record['saved_model_sha256'] == pusher.digest(
      os.path.join(handed, 'saved_model.pb'))
  with open(os.path.join(handed, 'saved_model.pb'), 'rb') as a, open(
      os.path.join(folder, 'saved_model.pb'), 'rb') as b:
    assert a.read() == b.read()
  assert 'serving_default' in tf.saved_model.load(folder).signatures

  # 3. No artifact of a completed execution is lost.
  store_states = _executions(chain['metadata'])
  completed_ids = [i for i, (_, s) in store_states.items() if s == 'complete']
  uris = _output_uris(chain['metadata'], completed_ids)
  assert uris
  missing = [u for u in uris if not tf.io.gfile.exists(u)]
  assert not missing, missing

  for kill in chain['kills']:
    reliability.record_fault(
        kill['node'] + (f' ({kill["pause"]})' if kill['pause'] else '') +
        (' SIGTERM' if kill['signal'] == signal.SIGTERM else ''),
        recovered=True, versions_pushed=len(whole),
        half_written=len(kill['serving'][1]))
