"""Concurrent local runs: one run per work dir, each with its own log and
summary; different work dirs side by side.

Real `hubpipe run` processes on a tiny Fashion-MNIST config: run A holds work
dir 1; B on the same dir stops at once naming A; C runs in work dir 2 at the
same time as A; D on work dir 1 with --wait starts when A ends, on one CPU
(A had them all), and must still reuse every step of A: Beam's worker count
is resolved when each step runs, not written into what TFX caches on. Then E,
which fails before its DAG starts, must not report D's components as its own.
"""

import json
import os
import subprocess
import sys
import time

import yaml

from hubpipe.pipeline import cpus
from hubpipe.pipeline import summary as summary_lib
from hubpipe.pipeline import workdir_lock

TIMEOUT = 900
CONFIG = {
    'name': 'tiny-concurrent',
    'modality': 'image',
    'data': {'source': 'fashion_mnist', 'train_examples': 120,
             'eval_examples': 60},
    'module': {'handle': 'mobilenet_v1_100_224', 'input_size': [32, 32],
               'control_handle': None},
    'training': {'epochs': 1, 'batch_size': 32},
    'evaluation': {'min_accuracy': 0.0, 'max_accuracy_drop': 1.0},
    'compression': {'enabled': False},
    # direct_num_workers: 0 (the default), one per CPU the run may use.
    'beam': {'direct_running_mode': 'in_memory'},
}
HUBPIPE = [sys.executable, '-m', 'hubpipe.pipeline.cli', 'run']


def _start(config, workdir, log, *extra, cpus=None):
  return subprocess.Popen(
      HUBPIPE + ['--config', str(config), '--workdir', str(workdir), *extra],
      stdout=open(log, 'w'), stderr=subprocess.STDOUT,
      preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)


def _wait(process, log, timeout=TIMEOUT):
  try:
    code = process.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    raise
  assert code == 0, open(log).read()[-4000:]


def _holder_pid(workdir):
  try:
    return json.loads((workdir / workdir_lock.LOCK_FILE).read_text()).get('pid')
  except (OSError, ValueError):
    return None


def test_one_run_per_work_dir_and_work_dirs_side_by_side(tmp_path):
  config = tmp_path / 'tiny.yaml'
  config.write_text(yaml.safe_dump(CONFIG))
  dir1, dir2 = tmp_path / 'work1', tmp_path / 'work2'

  a = _start(config, dir1, tmp_path / 'a.out')
  deadline = time.time() + 300
  while _holder_pid(dir1) != a.pid and a.poll() is None:
    assert time.time() < deadline, 'run A never took its work dir'
    time.sleep(0.2)
  c = _start(config, dir2, tmp_path / 'c.out')  # another work dir: runs now

  # B: the same work dir while A holds it stops at once, naming A.
  b = subprocess.run(HUBPIPE + ['--config', str(config), '--workdir',
                                str(dir1)], capture_output=True, text=True,
                     timeout=300)
  assert b.returncode == workdir_lock.EXIT_BUSY, b.stderr[-3000:]
  assert f'in use by hubpipe run pid {a.pid}' in b.stderr
  assert '--wait' in b.stderr and '--workdir' in b.stderr

  # D: --wait queues behind A; it may use one CPU.
  d = _start(config, dir1, tmp_path / 'd.out', '--wait', cpus={0})
  deadline = time.time() + 300
  while 'waiting for it' not in (tmp_path / 'd.out').read_text():
    assert d.poll() is None and time.time() < deadline, (
        (tmp_path / 'd.out').read_text()[-3000:])
    time.sleep(0.2)
  assert a.poll() is None, 'A ended before D could queue behind it'

  _wait(a, tmp_path / 'a.out')
  _wait(c, tmp_path / 'c.out')
  _wait(d, tmp_path / 'd.out')

  # A's and D's runs each have their own log; B, refused, wrote none.
  logs1 = sorted(os.listdir(dir1 / 'logs'))
  assert len(logs1) == 2
  assert {name.rsplit('-', 1)[1] for name in logs1} == {
      f'{a.pid}.log', f'{d.pid}.log'}
  assert os.readlink(dir1 / 'run.log') == os.path.join('logs', logs1[-1])
  assert 'tiny-concurrent' in (dir1 / 'logs' / logs1[0]).read_text()

  # D's summary is D's run: the second one in ML Metadata, all cached.
  d_summary = json.loads((dir1 / 'summary.json').read_text())
  runs = sorted(summary_lib.run_ids(str(dir1 / 'metadata.sqlite')))
  assert len(runs) == 2
  assert d_summary['log'].endswith(f'-{d.pid}.log')
  assert d_summary['beam']['workers'] == 1
  states = {c['name']: c['state'] for c in d_summary['components']}
  for step in ('SnapshotExampleGen', 'StatisticsGen', 'Transform', 'Trainer',
               'Evaluator'):
    assert states[step] == 'cached', states
  assert d_summary['pushed_now'] is False  # nothing new to push
  # C ran in its own work dir at the same time, and pushed its model.
  c_summary = json.loads((dir2 / 'summary.json').read_text())
  assert c_summary['status'] == 'succeeded', c_summary.get('error')
  assert c_summary['pushed_now'] is True
  assert c_summary['beam']['workers'] == cpus.available_cpus()
  assert len(summary_lib.run_ids(str(dir2 / 'metadata.sqlite'))) == 1

  # E fails before its DAG starts: its summary has no components (not D's).
  bad = dict(CONFIG, module=dict(CONFIG['module'],
                                 handle=str(tmp_path / 'no-such-module')))
  bad_config = tmp_path / 'bad.yaml'
  bad_config.write_text(yaml.safe_dump(bad))
  e = subprocess.run(HUBPIPE + ['--config', str(bad_config), '--workdir',
                                str(dir1)], capture_output=True, text=True,
                     timeout=300)
  assert e.returncode != 0
  e_summary = json.loads((dir1 / 'summary.json').read_text())
  assert e_summary['status'] == 'failed'
  assert 'no-such-module' in e_summary['error']
  assert e_summary['components'] == []
  assert len(summary_lib.run_ids(str(dir1 / 'metadata.sqlite'))) == 2
