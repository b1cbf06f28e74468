"""A killed Trainer resumes: a real SIGKILL mid-training, then a rerun.

The Trainer is hubpipe's run_fn under the Trainer's executor in a process of
its own (tests/trainer_inputs.py); the test kills it with SIGKILL once an
epoch is saved (BackupAndRestore, in a folder keyed on the inputs) and runs
the same command again.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import tensorflow as tf

import trainer_inputs
from hubpipe.components.trainer import checkpoints
from hubpipe.components.trainer import embeddings
from hubpipe.pipeline.config import load_config
from hubpipe.pipeline.pipeline import TRAINER_SECTIONS

EPOCHS = 150


def _trainer(root, made, config_json):
  """One Trainer process: TFX's GenericExecutor with hubpipe's run_fn."""
  return subprocess.Popen(
      [sys.executable, trainer_inputs.__file__, str(root / 'inputs.json'),
       str(root / 'out'), str(config_json)],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
      start_new_session=True)


def test_killed_run_fn_resumes_from_its_last_epoch(tmp_path):
  """SIGKILL the real Trainer (run_fn) once its head has finished an epoch,
  run it again: it reuses the streamed embeddings and resumes at the saved
  epoch instead of starting over."""
  made = trainer_inputs.make_trainer_inputs(str(tmp_path / 'inputs'),
                                            train=96, eval_=48)
  (tmp_path / 'inputs.json').write_text(json.dumps(made))
  config = load_config(None, {
      'module.input_size': [32, 32], 'module.control_handle': None,
      'training.batch_size': 8, 'training.epochs': EPOCHS, 'training.learning_rate': 0.01})
  config_json = tmp_path / 'config.json'
  config_json.write_text(json.dumps(
      {k: v for k, v in config.to_dict().items() if k in TRAINER_SECTIONS}))
  checkpoints_root = tmp_path / 'out' / 'Trainer' / 'checkpoints'

  process = _trainer(tmp_path, made, config_json)
  deadline = time.time() + 300
  saved = []
  while time.time() < deadline and process.poll() is None and not saved:
    # BackupAndRestore's checkpoint, complete (its state file names it),
    # once the head's first epoch ends.
    saved = [d for d in glob.glob(str(checkpoints_root / '*' / 'head' / '**'),
                                  recursive=True)
             if os.path.isdir(d) and tf.train.latest_checkpoint(d)]
    time.sleep(0.05)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()
  assert saved, 'the Trainer never saved an epoch: ' + (
      process.stderr.read()[-2000:])
  assert not (tmp_path / 'out' / 'Trainer' / 'model_run' / '1' /
              'training_report.json').exists(), 'killed before the end'
  done = glob.glob(str(checkpoints_root / '*' / 'embeddings' / '*' /
                       embeddings.DONE))
  assert len(done) == 2  # train and validation, complete

  second = _trainer(tmp_path, made, config_json)
  _, err = second.communicate(timeout=600)
  assert second.returncode == 0, err[-3000:]
  report = json.loads((tmp_path / 'out' / 'Trainer' / 'model_run' / '1' /
                       'training_report.json').read_text())
  # Resumed: fewer epochs ran than configured (Keras' history holds only
  # those), and the embeddings were read, not written again.
  assert 0 < report['epochs_run'] < EPOCHS
  assert report['embeddings_reused'] == {'module-train': True,
                                         'module-validation': True}
  # Exported, and the checkpoint folder is gone.
  assert not os.listdir(checkpoints_root)


def test_checkpoint_dir_is_stable_for_the_same_inputs(tmp_path):
  def args(execution, epochs):
    return types.SimpleNamespace(
        train_files=['/root/ExampleGen/examples/1/Split-train/*'],
        eval_files=['/root/ExampleGen/examples/1/Split-eval/*'],
        transform_output='/root/Transform/transform_graph/5',
        model_run_dir=f'/root/Trainer/model_run/{execution}',
        custom_config={'config': {'training': {'epochs': epochs}}})
  first = checkpoints.checkpoint_dir(args(7, 10))
  assert first.startswith('/root/Trainer/checkpoints/')
  assert checkpoints.checkpoint_dir(args(8, 10)) == first  # a retry
  assert checkpoints.checkpoint_dir(args(8, 20)) != first  # another config


def test_embeddings_are_streamed_to_shards_once(tmp_path, monkeypatch):
  monkeypatch.setattr(embeddings, 'SHARD_EXAMPLES', 4)
  calls = []

  def batches():
    calls.append(1)
    for start in range(0, 10, 3):
      x = np.arange(start, min(start + 3, 10), dtype='float32')
      yield np.stack([x, -x], axis=1).reshape(-1, 1, 2), x.astype('int64')

  folder = str(tmp_path / 'train')
  done = embeddings.write(folder, batches())
  assert done == {'count': 10, 'shape': [1, 2], 'shards': [
      'features-00000.tfrecord', 'features-00001.tfrecord',
      'features-00002.tfrecord'], 'encoding': embeddings.RAW_RECORD}
  assert embeddings.write(folder, batches()) == done and len(calls) == 1
  pairs = list(embeddings.dataset(folder, done).as_numpy_iterator())
  assert [int(y) for _, y in pairs] == list(range(10))
  np.testing.assert_array_equal(pairs[3][0], [[3.0, -3.0]])
  mean, std = embeddings.moments(folder, done)
  np.testing.assert_allclose(mean, [[4.5, -4.5]])
  np.testing.assert_allclose(std, [[np.std(np.arange(10))] * 2], rtol=1e-5)
  shuffled = [int(y) for _, y in embeddings.dataset(
      folder, done, shuffle=True, seed=1).as_numpy_iterator()]
  assert sorted(shuffled) == list(range(10)) and shuffled != list(range(10))
  # A folder of the older encoding (tf.train.Example rows) is still read.
  old = tmp_path / 'old'
  old.mkdir()
  with tf.io.TFRecordWriter(str(old / 'features-00000.tfrecord')) as writer:
    for features, label in pairs:
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          'features': tf.train.Feature(float_list=tf.train.FloatList(
              value=features.reshape(-1))),
          'label': tf.train.Feature(int64_list=tf.train.Int64List(
              value=[int(label)]))})).SerializeToString())
  old_done = {'count': 10, 'shape': [1, 2],
              'shards': ['features-00000.tfrecord']}
  again = list(embeddings.dataset(str(old), old_done).as_numpy_iterator())
  np.testing.assert_array_equal([x for x, _ in again], [x for x, _ in pairs])
  assert [int(y) for _, y in again] == list(range(10))
  # A pass that was killed (no done.json) starts over.
  (tmp_path / 'train' / embeddings.DONE).unlink()
  assert embeddings.write(folder, batches()) == done and len(calls) == 2
