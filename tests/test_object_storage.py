"""The whole DAG with its data, pipeline root and serving dir on object
storage: an S3 server (moto) on loopback, read and written through
TensorFlow's S3 filesystem (tensorflow-io) and Beam's (boto3), as on a
cluster's bucket. Run three times, as `hubpipe run` in a subprocess: the
first ingests, trains, gates and compresses, and is SIGKILLed in the middle
of its push; the second, the same command, reuses every step and pushes
again, under a new number, removing the unfinished version folder; the
third, with the same data, reuses every step and pushes nothing, its
snapshot state read back from the bucket."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import boto3
import pytest

from hubpipe.components import assets
from hubpipe.components import faults
from hubpipe.components.datasets import fashion_mnist

import reliability

BUCKET = 'hubpipe'
TIMEOUT_S = 900
CONFIG = f'''\
name: s3-tiny
data:
  source: tfrecord
  path: s3://{BUCKET}/data
module:
  input_size: [32, 32]
training:
  epochs: 4
  batch_size: 32
  learning_rate: 0.01
  warm_start: true
evaluation:
  min_accuracy: 0.2
compression:
  # One technique: the Compressor's reads and writes on the bucket (the
  # model, the examples, its report, the pushed .tflite) are the same for
  # any number of them; what each technique measures is tested elsewhere.
  techniques: [dynamic_range]
  calibration_examples: 50
  eval_examples: 60
  fine_tune_examples: 50
  max_accuracy_drop: 0.5
push:
  serving_dir: s3://{BUCKET}/serving/s3-tiny
beam:
  direct_running_mode: in_memory
  direct_num_workers: 1
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def s3(tmp_path_factory):
  """(environment for the clients, boto3 client) of a moto S3 server."""
  port = _free_port()
  log = open(tmp_path_factory.mktemp('moto') / 'moto.log', 'w')
  server = subprocess.Popen(
      [sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p',
       str(port)], stdout=log, stderr=subprocess.STDOUT)
  endpoint = f'http://127.0.0.1:{port}'
  env = {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing',
         'AWS_REGION': 'us-east-1', 'AWS_DEFAULT_REGION': 'us-east-1',
         # TensorFlow's S3 filesystem (tensorflow-io) ...
         'S3_ENDPOINT': endpoint, 'S3_USE_HTTPS': '0', 'S3_VERIFY_SSL': '0',
         # ... and boto3's, which Beam's S3 filesystem uses.
         'AWS_ENDPOINT_URL_S3': endpoint}
  try:
    deadline = time.time() + 30
    while True:
      try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        break
      except OSError:
        if time.time() > deadline or server.poll() is not None:
          raise RuntimeError('the moto S3 server did not start')
        time.sleep(0.2)
    client = boto3.client('s3', endpoint_url=endpoint, region_name='us-east-1',
                          aws_access_key_id='testing',
                          aws_secret_access_key='testing')
    client.create_bucket(Bucket=BUCKET)
    yield env, client
  finally:
    server.terminate()
    server.wait(timeout=30)
    log.close()


def _keys(client, prefix):
  keys = []
  for page in client.get_paginator('list_objects_v2').paginate(
      Bucket=BUCKET, Prefix=prefix):
    keys += [o['Key'] for o in page.get('Contents', [])]
  return keys


def _command(env, config, workdir):
  full = dict(os.environ, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2',
              HUBPIPE_DATA_DIR=str(assets.data_dir()), **env)
  full.pop(faults.PAUSE_ENV, None)
  return full, [
      sys.executable, '-c', 'from hubpipe.pipeline.cli import entry; entry()',
      'run', '--config', str(config), '--workdir', str(workdir),
      '--pipeline-root', f's3://{BUCKET}/root']


def _killed_mid_push(env, config, workdir):
  """Runs until the Pusher has copied all but saved_model.pb into the
  version folder (components/faults.py), then SIGKILLs the run."""
  full, command = _command(env, config, workdir)
  full[faults.PAUSE_ENV] = 'pusher_mid_copy'
  process = subprocess.Popen(command, env=full, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
  deadline = time.time() + TIMEOUT_S
  try:
    while time.time() < deadline and process.poll() is None:
      log = workdir / 'run.log'
      if log.exists() and 'paused at pusher_mid_copy' in log.read_text(
          errors='ignore'):
        return True
      time.sleep(0.2)
    return False
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def _hubpipe_run(env, config, workdir):
  full, command = _command(env, config, workdir)
  process = subprocess.run(command, env=full, capture_output=True, text=True,
                           timeout=TIMEOUT_S, check=False)
  assert process.returncode == 0, (
      f'hubpipe run exited {process.returncode}:\n{process.stdout[-3000:]}\n'
      f'{process.stderr[-3000:]}\n'
      + (workdir / 'run.log').read_text()[-5000:])
  with open(workdir / 'summary.json') as f:
    return json.load(f)


def test_whole_dag_on_object_storage(s3, tmp_path):
  env, client = s3
  local = fashion_mnist.prepare(150, 60, seed=5)
  for split in ('train', 'eval'):
    for name in os.listdir(local / split):
      client.upload_file(str(local / split / name), BUCKET,
                         f'data/{split}/{name}')
  config = tmp_path / 's3.yaml'
  config.write_text(CONFIG)
  workdir = tmp_path / 'work'

  assert _killed_mid_push(env, config, workdir), (
      (workdir / 'run.log').read_text()[-5000:])
  # Killed mid-push: the version folder has no saved_model.pb yet, so it
  # is no version a model server would load.
  half = _keys(client, 'serving/s3-tiny/')
  assert half and not any(k.endswith('/saved_model.pb') for k in half)
  assert len({k.split('/')[2] for k in half}) == 1

  first = _hubpipe_run(env, config, workdir)
  assert first['status'] == 'succeeded', first.get('error')
  states = {c['name']: c['state'] for c in first['components']}
  assert states.pop('Pusher') == 'complete'
  assert set(states.values()) == {'cached'}, states
  examples = first['examples']
  assert examples['train'] + examples['validation'] == 150
  assert examples['eval'] == 60 and examples['validation'] >= 10
  assert first['data_snapshot']['fingerprint']['files'] == 2
  assert first['compression']['variants']
  pushed = first['pushed_model']
  assert pushed.startswith(f's3://{BUCKET}/serving/s3-tiny/')
  version = pushed.rsplit('/', 1)[1]
  # The rerun removed the unfinished folder and pushed under a new number.
  unfinished = half[0].split('/')[2]
  assert int(version) > int(unfinished)
  assert not _keys(client, f'serving/s3-tiny/{unfinished}/')
  served = _keys(client, f'serving/s3-tiny/{version}/')
  assert f'serving/s3-tiny/{version}/saved_model.pb' in served
  assert f'serving/s3-tiny/{version}/model.tflite' in served
  # Every component with outputs (the AnomalyGate has none) wrote them to
  # the bucket, none to the work dir.
  written = {key.split('/')[1] for key in _keys(client, 'root/')}
  assert {c['name'] for c in first['components']} - {'AnomalyGate'} <= written
  assert not (workdir / 'pipeline_root').exists()
  reliability.record_fault('Pusher on object storage (pusher_mid_copy)',
                           recovered=True, versions_pushed=1, half_written=0)

  # The same data again: every step is reused, nothing new is pushed.
  second = _hubpipe_run(env, config, workdir)
  assert second['status'] == 'succeeded', second.get('error')
  assert {c['state'] for c in second['components']} == {'cached'}
  assert second['pushed_now'] is False
  versions = {k.split('/')[2] for k in _keys(client, 'serving/s3-tiny/')}
  assert versions == {version}
