"""Strategy selection (pure) and building the default ones on CPU."""

import json

import pytest
import tensorflow as tf

from hubpipe.components.trainer import strategy


def test_auto_choice_by_hardware():
  assert strategy.choose('auto', num_gpus=0) == 'default'
  assert strategy.choose('auto', num_gpus=1) == 'one_device'
  assert strategy.choose('auto', num_gpus=4) == 'mirrored'
  assert strategy.choose('auto', num_gpus=4, tpu_address='grpc://1.2.3.4:8470') == 'tpu'


def test_auto_choice_multi_worker_from_tf_config():
  two = json.dumps({'cluster': {'worker': ['a:1', 'b:1']},
                    'task': {'type': 'worker', 'index': 0}})
  one = json.dumps({'cluster': {'worker': ['a:1']},
                    'task': {'type': 'worker', 'index': 0}})
  assert strategy.choose('auto', 0, tf_config=two) == 'multi_worker_mirrored'
  assert strategy.choose('auto', 0, tf_config=one) == 'default'
  with pytest.raises(ValueError, match='TF_CONFIG is not valid JSON'):
    strategy.choose('auto', 0, tf_config='{nope')
  with pytest.raises(ValueError, match='must be a JSON object like'):
    strategy.choose('auto', 0, tf_config='["a"]')


def test_a_bad_tf_config_stops_any_strategy(monkeypatch):
  """Not only `auto`: a named strategy also gets hubpipe's message, before
  TensorFlow's JSON error."""
  monkeypatch.setenv('TF_CONFIG', '{"cluster": {"worker": ["a:1" "b:1"]}}')
  with pytest.raises(ValueError, match='TF_CONFIG is not valid JSON.*"task"'):
    strategy.make('multi_worker_mirrored')


def test_explicit_choice_wins():
  assert strategy.choose('mirrored', num_gpus=0) == 'mirrored'


def test_build_on_cpu():
  # What each name builds; training with two replicas is executed in
  # test_mirrored_cpu.py (two logical CPUs) and test_multi_worker.py.
  assert strategy.describe(strategy.make('default')) == 'DefaultStrategy'
  mirrored = strategy.make('mirrored')
  assert strategy.describe(mirrored) == 'MirroredStrategy'
  assert isinstance(mirrored, tf.distribute.MirroredStrategy)


def test_precision_policy_by_hardware():
  assert strategy.precision_policy('tpu', 0) == 'mixed_bfloat16'
  assert strategy.precision_policy('mirrored', 2) == 'mixed_float16'
  assert strategy.precision_policy('default', 0) is None
  # Named: used on any hardware (tests train under it on CPU); off: none.
  assert strategy.precision_policy('default', 0, 'mixed_float16') == (
      'mixed_float16')
  assert strategy.precision_policy('tpu', 0, False) is None


@pytest.mark.parametrize('task_type, task_id, has_chief, chief', [
    (None, None, False, True), ('chief', 0, True, True),
    ('worker', 0, False, True), ('worker', 0, True, False),
    ('worker', 1, False, False), ('worker', 3, True, False),
    ('evaluator', 0, False, False)])
def test_only_the_chief_keeps_the_model(task_type, task_id, has_chief, chief):
  assert strategy.is_chief(task_type, task_id, has_chief) is chief
  path = strategy.output_dir('/root/Trainer/model/7/Format-Serving',
                             task_type, task_id, has_chief)
  if chief:
    assert path == '/root/Trainer/model/7/Format-Serving'
  else:
    assert path == (f'/root/Trainer/model/7/.workertemp_{task_type}_{task_id}'
                    '/Format-Serving')


def test_single_process_strategies_have_no_worker_role():
  assert strategy.worker_role(tf.distribute.get_strategy()) == (
      None, None, False)
