"""Storage faults: the pipeline root, then the serving dir, fill up mid-run.

Each lives on a small tmpfs mounted for the test (mounting needs root, and
a container the right to mount; without, the test is skipped and says
why). A full disk must end the run
with an error that names the file it could not write and the fix, push
nothing and leave nothing half written; given space, the next run reuses what
completed and pushes once.
"""

import os
import subprocess

import pytest

from hubpipe.components.pusher import executor as pusher
from hubpipe.pipeline import local_runner
from hubpipe.pipeline.config import load_config

import reliability

MB = 1 << 20


def _mount(path, megabytes):
  os.makedirs(path, exist_ok=True)
  subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={megabytes}m', 'tmpfs',
                  path], check=True, capture_output=True)


def _resize(path, megabytes):
  subprocess.run(['mount', '-o', f'remount,size={megabytes}m', path],
                 check=True, capture_output=True)


@pytest.fixture
def small_disks(tmp_path):
  if os.geteuid() != 0:
    pytest.skip('mounting a tmpfs needs root (tried: mount -t tmpfs)')
  mounts = [str(tmp_path / 'root'), str(tmp_path / 'serving')]
  # Room for everything before the Trainer's model (about 0.5 MB), not for
  # the model (about 13 MB); the serving dir, not for one version.
  try:
    _mount(mounts[0], 8)
  except subprocess.CalledProcessError as err:  # a container without the right
    pytest.skip(f'mount -t tmpfs failed: {err.stderr.decode().strip()}')
  _mount(mounts[1], 4)
  yield mounts
  for path in mounts:
    subprocess.run(['umount', '-l', path], check=False)


def _versions_and_leftovers(serving_dir):
  names = os.listdir(serving_dir) if os.path.isdir(serving_dir) else []
  return pusher.versions(serving_dir), [n for n in names
                                        if not n.isdigit() or
                                        int(n) not in pusher.versions(
                                            serving_dir)]


def test_a_full_disk_stops_the_run_and_the_next_run_resumes(small_disks,
                                                             tmp_path):
  root, serving = small_disks
  config = load_config(None, {
      'name': 'full-disk', 'data.train_examples': 200,
      'data.eval_examples': 100, 'module.input_size': [32, 32],
      'training.epochs': 4, 'training.learning_rate': 0.01,
      'evaluation.min_accuracy': 0.2,
      'compression.techniques': ['dynamic_range'],
      'compression.calibration_examples': 50,
      'compression.validation_examples': 100,
      'compression.eval_examples': 100,
      'push.serving_dir': os.path.join(serving, 'full-disk'),
      'beam.direct_running_mode': 'in_memory'})
  workdir = str(tmp_path / 'work')
  run = lambda: local_runner.run(config, workdir, echo=lambda _: None,
                                 pipeline_root=os.path.join(root, 'pr'))
  serving_dir = config.resolve_path(config.push.serving_dir)

  # 1. The pipeline root fills up while the Trainer writes its model.
  first = run()
  assert first['status'] == 'failed'
  assert first['failed_step'] == 'Trainer'
  assert first['error'].startswith('storage full: ')
  assert 'No space left on device' in first['error']
  assert os.path.join(root, 'pr', 'Trainer') in first['error']
  assert 'Free space on that file system' in first['error']
  assert first['pushed'] is False
  assert _versions_and_leftovers(serving_dir) == ({}, [])

  # 2. Room for the model, not in the serving dir: the Pusher fails.
  _resize(root, 200)
  second = run()
  states = {c['name']: c['state'] for c in second['components']}
  assert states['Transform'] == 'cached' and states['Trainer'] == 'complete'
  assert second['status'] == 'failed'
  assert second['failed_step'] == 'Pusher'
  assert 'No space left on device' in second['error']
  assert serving in second['error']
  assert second['pushed'] is False
  # The copy it could not finish is gone, not left to fill the disk.
  assert _versions_and_leftovers(serving_dir) == ({}, [])

  # 3. Given space, the next run pushes the blessed model, once.
  _resize(serving, 100)
  third = run()
  assert third['status'] == 'succeeded', third.get('error')
  states = {c['name']: c['state'] for c in third['components']}
  assert states['Pusher'] == 'complete'
  assert {n for n, s in states.items() if s == 'complete'} == {'Pusher'}
  assert third['blessed'] is True and third['pushed'] is True
  versions, leftovers = _versions_and_leftovers(serving_dir)
  assert len(versions) == 1 and not leftovers
  for name in ('pipeline root full (Trainer)', 'serving dir full (Pusher)'):
    reliability.record_fault(name, recovered=True, versions_pushed=1,
                             half_written=0)
