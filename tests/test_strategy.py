"""Strategy selection (pure) and building the default ones on CPU."""

import json

import pytest

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


def test_explicit_choice_wins():
  assert strategy.choose('mirrored', num_gpus=0) == 'mirrored'


def test_build_on_cpu():
  assert strategy.make('default').num_replicas_in_sync == 1
  assert strategy.make('mirrored').num_replicas_in_sync == 1


def test_precision_policy_by_hardware():
  assert strategy.precision_policy('tpu', 0) == 'mixed_bfloat16'
  assert strategy.precision_policy('mirrored', 2) == 'mixed_float16'
  assert strategy.precision_policy('default', 0) is None
