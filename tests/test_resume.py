"""A killed Trainer resumes: a real SIGKILL mid-training, then a rerun.

The training script uses the Trainer's own checkpoint pieces (BackupAndRestore
in a folder keyed on the inputs, cached embeddings); the test kills it with
SIGKILL after its second epoch and runs it again.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import numpy as np

from hubpipe.components.trainer import checkpoints

SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    os.environ['TF_USE_LEGACY_KERAS'] = '1'
    import numpy as np
    import tf_keras
    from hubpipe.components.trainer import checkpoints, embeddings

    directory, progress = sys.argv[1], sys.argv[2]
    calls = []
    def embed():
      calls.append(1)
      x = np.random.RandomState(0).rand(64, 8).astype('float32')
      yield x, (x[:, 0] > 0.5).astype('int64')
    folder = os.path.join(directory, 'embeddings')
    done = embeddings.write(folder, embed())
    pairs = list(embeddings.dataset(folder, done).as_numpy_iterator())
    features = np.stack([p[0] for p in pairs])
    labels = np.array([p[1] for p in pairs])
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.Input((8,)), tf_keras.layers.Dense(2)])
    model.compile('adam', tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class Progress(tf_keras.callbacks.Callback):
      def on_epoch_begin(self, epoch, logs=None):
        with open(progress, 'a') as f:
          f.write(json.dumps({'begin': epoch, 'embedded': len(calls)}) + '\\n')
      def on_epoch_end(self, epoch, logs=None):
        time.sleep(0.5)

    history = model.fit(features, labels, epochs=6, verbose=0,
                        callbacks=[checkpoints.backup_callback(directory, 'head'),
                                   Progress()])
    with open(progress, 'a') as f:
      f.write(json.dumps({'done': len(history.history['loss'])}) + '\\n')
''')


def _lines(path):
  if not os.path.exists(path):
    return []
  return [json.loads(line) for line in open(path).read().splitlines()]


def test_killed_training_resumes_from_last_checkpoint(tmp_path):
  script = tmp_path / 'train.py'
  script.write_text(SCRIPT)
  directory, progress = str(tmp_path / 'ckpt'), str(tmp_path / 'progress.jsonl')
  process = subprocess.Popen([sys.executable, str(script), directory, progress])
  deadline = time.time() + 120
  while time.time() < deadline and not any(
      line.get('begin', -1) >= 3 for line in _lines(progress)):
    time.sleep(0.1)
  process.send_signal(signal.SIGKILL)
  process.wait()
  first = _lines(progress)
  assert not any('done' in line for line in first), 'killed before the end'
  killed_at = max(line['begin'] for line in first)

  open(progress, 'w').close()
  subprocess.run([sys.executable, str(script), directory, progress], check=True,
                 timeout=120)
  second = _lines(progress)
  begins = [line['begin'] for line in second if 'begin' in line]
  # Resumed at the epoch after the last one saved, not from epoch 0 (the
  # kill can land between an epoch's end, which saves, and the next begin)
  assert 0 < begins[0] <= killed_at + 1
  assert begins[-1] == 5
  # ... and the embeddings were not computed again.
  assert all(line['embedded'] == 0 for line in second if 'begin' in line)


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
  from hubpipe.components.trainer import embeddings
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
      'features-00002.tfrecord']}
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
  # A pass that was killed (no done.json) starts over.
  (tmp_path / 'train' / embeddings.DONE).unlink()
  assert embeddings.write(folder, batches()) == done and len(calls) == 2
