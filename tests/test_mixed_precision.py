"""Mixed precision, executed: the Trainer trains under a mixed policy on CPU
(forced by naming the policy) with the Hub module inside, exports, and the
served model answers in float32 with the accuracy training reported."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import trainer_inputs
from hubpipe.components.modeling import export
from hubpipe.pipeline.config import ConfigError, load_config
from hubpipe.pipeline.pipeline import TRAINER_SECTIONS

TIMEOUT = 420


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp('mixed_precision')
  made = trainer_inputs.make_trainer_inputs(str(root / 'inputs'), train=64,
                                            eval_=32)
  path = root / 'inputs.json'
  path.write_text(json.dumps(made))
  return root, str(path), made


# float16 where Keras scales the loss (LossScaleOptimizer) and module
# variables train: fine_tune, and hybrid's partly trainable module.
@pytest.mark.parametrize('policy,mode,head_dtype', [
    ('mixed_float16', 'fine_tune', 'float16'),
    ('mixed_float16', 'hybrid', 'float16'),
    ('mixed_bfloat16', 'feature_extraction', 'bfloat16'),
])
def test_trains_and_serves_under_a_mixed_policy(inputs, policy, mode,
                                                head_dtype):
  root, inputs_json, made = inputs
  config = load_config(None, {
      'name': f'mixed-{mode}', 'module.input_size': [32, 32],
      'module.control_handle': None, 'model.integration': mode,
      'model.hidden_units': [16], 'model.unfreeze': 2, 'training.epochs': 2,
      'training.fine_tune_epochs': 1,
      'training.batch_size': 16, 'training.mixed_precision': policy})
  config_json = root / f'{policy}.json'
  config_json.write_text(json.dumps(
      {k: v for k, v in config.to_dict().items() if k in TRAINER_SECTIONS}))
  output = root / policy
  # Its own process: a Keras policy is global to the process.
  result = subprocess.run(
      [sys.executable, trainer_inputs.__file__, inputs_json, str(output),
       str(config_json)], capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  # The later components of a local run (same process) get float32 back.
  assert json.loads(result.stdout.strip().splitlines()[-1]) == {
      'policy_after_trainer': 'float32'}
  trainer = output / 'Trainer'
  report = json.loads(
      (trainer / 'model_run' / '1' / 'training_report.json').read_text())
  assert report['mixed_precision'] == policy
  # The module computes in its SavedModel's float32, the head in the
  # policy's dtype, the logits in float32; the variables stay float32.
  assert report['compute_dtypes'] == {
      'module': 'float32', 'head': head_dtype, 'logits': 'float32',
      'variables': ['float32']}
  served = tf.saved_model.load(
      str(trainer / 'model' / '1' / 'Format-Serving')).signatures[
          'serving_default']
  records = trainer_inputs.records(made, 'validation')
  out = served(examples=tf.constant(records))
  assert out['probabilities'].dtype == tf.float32
  np.testing.assert_allclose(out['probabilities'].numpy().sum(axis=1), 1.0,
                             rtol=1e-5)
  accuracy = float(np.mean(out['class_id'].numpy() ==
                           np.array(made['validation_labels'])))
  # Served in float16/bfloat16 the head may round an example differently
  # than the Keras evaluation did; within one example of it.
  assert abs(accuracy - report['validation_accuracy']) <= 1 / len(records) + 1e-6
  # What the Compressor reads: the same model, computing in float32 (what
  # TFLite converts), answering as the served model does.
  core = export.load_core(str(trainer / 'model' / '1' / 'Format-Serving'))
  assert {layer.compute_dtype for layer in export._all_layers(core)  # pylint: disable=protected-access
          if layer.weights} == {'float32'}
  probabilities = tf.nn.softmax(core.predict(
      trainer_inputs.transformed_images(made, 'validation'), verbose=0))
  np.testing.assert_allclose(probabilities.numpy(),
                             out['probabilities'].numpy(), atol=0.02)


def test_mixed_precision_values_are_checked():
  assert load_config(None, {'training.mixed_precision': True}
                     ).training.mixed_precision is True
  for wrong in ('float16', 1, 0, 1.0):  # 1 == True, but not a setting
    with pytest.raises(ConfigError, match='mixed_float16, mixed_bfloat16'):
      load_config(None, {'training.mixed_precision': wrong})
