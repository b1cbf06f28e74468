"""Multi-worker training, executed: two Trainer processes on loopback.

Each process runs the Trainer's executor (TFX's GenericExecutor) with hubpipe's run_fn (what a Trainer
pod, or each replica of a TFJob / Vertex AI worker pool, runs) with a
two-worker TF_CONFIG on free localhost ports, on one shared tiny Transform
output. `training.strategy: auto` must pick MultiWorkerMirroredStrategy; the
test checks the replica count, the global batch (steps per epoch), that only
the chief's model is kept, and that the exported model scores on the eval
split what training reported.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import trainer_inputs
from hubpipe.pipeline.config import load_config
from hubpipe.pipeline.pipeline import TRAINER_SECTIONS

# Not multiples of the global batch (16): the last batch is partial. The
# splits are three files of uneven size, as ExampleGen writes them.
TRAIN, EVAL, BATCH = 90, 45, 8
TIMEOUT = 420  # seconds per two-worker run; both processes are killed after.


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multi_worker')
  made = trainer_inputs.make_trainer_inputs(str(root / 'inputs'), train=TRAIN,
                                            eval_=EVAL)
  path = root / 'inputs.json'
  path.write_text(json.dumps(made))
  return root, str(path), made


def _run_two_workers(root, inputs_json, mode, overrides):
  config = load_config(None, {
      'name': f'multi-worker-{mode}', 'module.input_size': [32, 32],
      'module.control_handle': None, 'model.integration': mode,
      'training.batch_size': BATCH, 'training.strategy': 'auto', **overrides})
  config_json = root / f'{mode}.json'
  config_json.write_text(json.dumps(
      {k: v for k, v in config.to_dict().items() if k in TRAINER_SECTIONS}))
  output = root / mode
  workers = [f'localhost:{port}' for port in _free_ports(2)]
  processes, logs = [], []
  for index in range(2):
    env = dict(os.environ, TF_CONFIG=json.dumps({
        'cluster': {'worker': workers},
        'task': {'type': 'worker', 'index': index}}))
    log = open(root / f'{mode}-worker-{index}.log', 'w')
    logs.append(log)
    processes.append(subprocess.Popen(
        [sys.executable, trainer_inputs.__file__, inputs_json, str(output),
         str(config_json)], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True))
  try:
    codes = [p.wait(timeout=TIMEOUT) for p in processes]
  finally:
    for p in processes:  # a worker waiting for a dead peer would hang CI
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for log in logs:
      log.close()
  for index, code in enumerate(codes):
    assert code == 0, (f'worker {index} exited {code}:\n' + (
        root / f'{mode}-worker-{index}.log').read_text()[-4000:])
  return output


def _served_accuracy(model_dir, made):
  served = tf.saved_model.load(model_dir).signatures['serving_default']
  records = trainer_inputs.records(made, 'validation')
  predicted = served(examples=tf.constant(records))['class_id'].numpy()
  return float(np.mean(predicted == np.array(made['validation_labels'])))


# feature_extraction: the features are embedded apart from their labels, so
# it must also learn (chance is 1/3; one process gets 0.67 here).
# fine_tune: examples and labels travel together; a few steps only.
@pytest.mark.parametrize('mode,overrides,at_least', [
    ('feature_extraction', {'training.epochs': 10,
                            'training.learning_rate': 0.05}, 0.5),
    ('fine_tune', {'training.epochs': 2, 'training.learning_rate': 0.001}, 0),
])
def test_two_workers_train_one_model(inputs, mode, overrides, at_least):
  root, inputs_json, made = inputs
  output = _run_two_workers(root, inputs_json, mode, overrides)
  trainer = output / 'Trainer'
  report = json.loads(
      (trainer / 'model_run' / '1' / 'training_report.json').read_text())
  assert report['strategy'] == 'MultiWorkerMirroredStrategy'
  assert report['replicas'] == 2
  # The global batch is the per-replica batch times the replicas: 96
  # examples take 6 steps an epoch, not 12.
  assert report['global_batch_size'] == 2 * BATCH
  assert report['steps_per_epoch'] == math.ceil(TRAIN / (2 * BATCH))
  assert report['worker'] == {'task_type': 'worker', 'task_id': 0}
  # One model: the chief's. Worker 1 saved beside it and removed its copy.
  model_dir = trainer / 'model' / '1'
  assert sorted(os.listdir(model_dir)) == ['Format-Serving']
  # The checkpoint folder (shared by both workers) is gone once exported.
  assert not os.listdir(trainer / 'checkpoints')
  # The kept model scores on validation what training reported.
  accuracy = _served_accuracy(str(model_dir / 'Format-Serving'), made)
  assert accuracy == pytest.approx(report['validation_accuracy'], abs=1e-6)
  assert accuracy >= at_least
