"""Beam across a worker boundary: the tiny DAG on PortableRunner.

The test starts Beam's Python job service and an EXTERNAL SDK worker pool as
processes of their own, runs the DAG with `beam.runner: PortableRunner`
against them, and stops both by process id. The Beam steps (ExampleGen,
StatisticsGen, Transform, Evaluator) are submitted as jobs over the Fn API
and their code runs in SDK workers the pool starts: the same boundary a
Flink or Spark job server drives with EXTERNAL workers.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from hubpipe.pipeline import local_runner
from hubpipe.pipeline.config import load_config

BEAM_STEPS = ('SnapshotExampleGen', 'StatisticsGen', 'Transform', 'Evaluator')


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _wait_for_port(port, process, log, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert process.poll() is None, open(log).read()[-3000:]
    with socket.socket() as s:
      if s.connect_ex(('localhost', port)) == 0:
        return
    time.sleep(0.3)
  raise AssertionError(f'nothing listens on {port}: ' + open(log).read()[-3000:])


@pytest.fixture
def beam_services(tmp_path):
  """(job endpoint, worker pool address, job service log, worker pool log)."""
  # The pool starts each SDK worker as a bare `python`: this environment's.
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep +
             os.environ.get('PATH', ''))
  job_port, pool_port = _free_port(), _free_port()
  logs = tmp_path / 'job_service.log', tmp_path / 'worker_pool.log'
  commands = (
      [sys.executable, '-m',
       'apache_beam.runners.portability.local_job_service_main',
       f'--port={job_port}'],
      [sys.executable, '-m', 'apache_beam.runners.worker.worker_pool_main',
       f'--service_port={pool_port}'])
  processes = []
  try:
    for command, log in zip(commands, logs):
      processes.append(subprocess.Popen(
          command, env=env, stdout=open(log, 'w'), stderr=subprocess.STDOUT,
          start_new_session=True))
    for port, process, log in zip((job_port, pool_port), processes, logs):
      _wait_for_port(port, process, log)
    yield f'localhost:{job_port}', f'localhost:{pool_port}', *logs
  finally:
    for process in processes:  # the pool's SDK workers are in its group
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
      process.wait()


def test_the_dag_runs_on_portable_runner_with_external_workers(
    tmp_path, beam_services):
  job_endpoint, pool, job_log, pool_log = beam_services
  config = load_config(None, {
      'name': 'tiny-portable',
      'data.train_examples': 120, 'data.eval_examples': 60,
      'module.input_size': [32, 32], 'module.control_handle': None,
      'training.epochs': 1, 'training.batch_size': 32,
      'evaluation.min_accuracy': 0.0, 'evaluation.max_accuracy_drop': 1.0,
      'compression.enabled': False,
      'beam.runner': 'PortableRunner',
      'beam.extra_args': [f'--job_endpoint={job_endpoint}',
                          '--environment_type=EXTERNAL',
                          f'--environment_config={pool}'],
  })
  summary = local_runner.run(config, str(tmp_path / 'work'),
                             echo=lambda _: None)
  assert summary['status'] == 'succeeded', summary.get('error')
  states = {c['name']: c['state'] for c in summary['components']}
  assert all(states[step] == 'complete' for step in BEAM_STEPS), states
  assert summary['pushed_now'] is True
  examples = summary['examples']
  assert examples['train'] + examples['validation'] == 120
  assert examples['eval'] == 60 and examples['validation'] >= 10
  # Each Beam step was a job of the job service, done ...
  jobs = re.findall(r'Completed job in [\d.]+ seconds with state (\w+)',
                    job_log.read_text())
  assert jobs == ['DONE'] * len(BEAM_STEPS)
  # ... whose code ran in SDK workers the external pool started.
  workers = re.findall(r'Starting worker with command .*sdk_worker',
                       pool_log.read_text())
  assert len(workers) == len(BEAM_STEPS)
