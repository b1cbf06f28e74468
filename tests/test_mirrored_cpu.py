"""The Trainer's head training under MirroredStrategy on two CPU devices.

Two logical CPUs must be configured before TensorFlow starts, so this runs in
a subprocess; it checks the replica count, that the global batch scales with
the replicas (steps per epoch), and that training learns.
"""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, os
    os.environ['TF_USE_LEGACY_KERAS'] = '1'
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tf_keras
    from hubpipe.components.trainer import run
    from hubpipe.pipeline.config import load_config

    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    config = load_config(None, {'training.batch_size': 16, 'training.epochs': 8,
                                'training.learning_rate': 0.05})
    rng = np.random.RandomState(0)
    features = rng.rand(256, 10).astype('float32')
    labels = (features[:, 0] + features[:, 1] > 1.0).astype('int64')
    steps = []
    class Count(tf_keras.callbacks.Callback):
      def on_train_batch_end(self, batch, logs=None):
        steps.append(batch)
    head, accuracy, history = run._fit_head(
        strategy, features, labels, features, labels, 2, config,
        callbacks=[Count()])
    print(json.dumps({'replicas': strategy.num_replicas_in_sync,
                      'steps_per_epoch': len(steps) // 8,
                      'accuracy': accuracy,
                      'variable_devices': sorted({v.device for v in head.variables})}))
''')


def test_head_trains_under_mirrored_strategy_on_two_cpus():
  result = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out['replicas'] == 2
  # 256 examples, 16 per replica x 2 replicas = global batch 32.
  assert out['steps_per_epoch'] == 256 // 32
  assert out['accuracy'] > 0.8
