"""The Trainer's head training under MirroredStrategy on two CPU devices.

Two logical CPUs must be configured before TensorFlow starts, so this runs in
a subprocess; it checks the replica count, that the global batch scales with
the replicas (steps per epoch), and that training learns.
"""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, os
    os.environ['TF_USE_LEGACY_KERAS'] = '1'
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tf_keras
    from hubpipe.components.modeling import training
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
    head, accuracy, history = training.fit_head_in_memory(
        features, labels, features, labels, 2, config, strategy=strategy,
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


RUN_FN_SCRIPT = textwrap.dedent('''
    import json, os, sys
    os.environ['TF_USE_LEGACY_KERAS'] = '1'
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tf_keras
    from hubpipe.components.trainer import strategy as strategy_lib

    def two_cpus(name, mixed_precision=False):
      tf_keras.mixed_precision.set_global_policy('float32')
      return tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])

    # What training.strategy: mirrored builds on a machine with two GPUs.
    strategy_lib.make = two_cpus
    sys.path.insert(0, sys.argv[1])
    import trainer_inputs
    with open(sys.argv[2]) as f:
      made = json.load(f)
    with open(sys.argv[4]) as f:
      config = json.load(f)
    trainer_inputs.trainer_do(made, sys.argv[3], config)
''')


@pytest.mark.parametrize('mode', ['feature_extraction', 'fine_tune'])
def test_run_fn_trains_with_two_replicas(tmp_path_factory, mode):
  """hubpipe's run_fn, through TFX's GenericExecutor, under a two-replica
  MirroredStrategy: global batch, steps, the embedding pass, the export."""
  import math
  import os
  import numpy as np
  import tensorflow as tf
  import trainer_inputs
  from hubpipe.pipeline.config import load_config
  from hubpipe.pipeline.pipeline import TRAINER_SECTIONS
  root = tmp_path_factory.mktemp(f'mirrored-{mode}')
  made = trainer_inputs.make_trainer_inputs(str(root / 'inputs'), train=90,
                                            eval_=45)
  (root / 'inputs.json').write_text(json.dumps(made))
  config = load_config(None, {
      'module.input_size': [32, 32], 'model.integration': mode,
      'training.batch_size': 8, 'training.epochs': 4 if mode == 'fine_tune' else 10,
      'training.learning_rate': 0.001 if mode == 'fine_tune' else 0.05})
  (root / 'config.json').write_text(json.dumps(
      {k: v for k, v in config.to_dict().items() if k in TRAINER_SECTIONS}))
  result = subprocess.run(
      [sys.executable, '-c', RUN_FN_SCRIPT, os.path.dirname(__file__),
       str(root / 'inputs.json'), str(root / 'out'), str(root / 'config.json')],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  trainer = root / 'out' / 'Trainer'
  report = json.loads((trainer / 'model_run' / '1' /
                       'training_report.json').read_text())
  assert report['replicas'] == 2 and report['global_batch_size'] == 16
  assert report['steps_per_epoch'] == math.ceil(90 / 16)
  served = tf.saved_model.load(str(trainer / 'model' / '1' / 'Format-Serving'))
  predicted = served.signatures['serving_default'](examples=tf.constant(
      trainer_inputs.records(made, 'validation')))['class_id'].numpy()
  accuracy = float(np.mean(predicted == np.array(made['validation_labels'])))
  assert accuracy == pytest.approx(report['validation_accuracy'], abs=1e-6)
  if mode == 'feature_extraction':
    assert accuracy >= 0.5  # chance: 1/3
