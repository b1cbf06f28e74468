"""Module inspection and the compatibility check against the config."""

import pytest

from hubpipe.components.hub_modules import inspect
from hubpipe.pipeline.config import load_config
from test_module_handles import _tiny_module


def test_describe_the_image_module():
  info = inspect.describe('mobilenet_v1_100_224')
  assert info.modality == 'image'
  assert info.inputs == {'input': {'dtype': 'float32',
                                   'shape': [None, None, None, 3]}}
  assert info.output_kind == inspect.FEATURE_VECTOR and info.output_dim == 1024
  assert info.input_size == [224, 224] and info.value_range == [0, 1]
  assert info.has_training_argument and info.fine_tunable
  assert 3_000_000 < info.parameters < 3_500_000
  assert info.size_bytes > 10_000_000


def test_describe_a_module_without_metadata(tmp_path):
  info = inspect.describe(_tiny_module(tmp_path / 'm', (None, 64, 64, 3)))
  assert info.modality == 'image'
  assert info.input_size == [64, 64]
  assert info.output_kind == inspect.FEATURE_VECTOR and info.output_dim == 8
  assert info.parameters == 24
  assert not info.fine_tunable  # no trainable_variables: not a reusable SavedModel


def test_image_module_on_text_config_names_both_sides():
  config = load_config(None, {'modality': 'text', 'data.source': 'rotten_tomatoes'})
  with pytest.raises(inspect.IncompatibleModule) as err:
    inspect.check_compatible(inspect.describe('mobilenet_v1_100_224'), config)
  message = str(err.value)
  assert 'mobilenet_v1_100_224 (image module' in message
  assert 'modality "text"' in message and 'rotten_tomatoes' in message


def test_feature_map_gets_a_conv_head_and_a_sequence_is_refused(tmp_path):
  maps = _tiny_module(tmp_path / 'maps', output='map')
  info = inspect.describe(maps)
  assert info.output_kind == inspect.FEATURE_MAP
  inspect.check_compatible(info, load_config(None, {'module.handle': maps}))
  sequence = _tiny_module(tmp_path / 'sequence', output='sequence')
  config = load_config(None, {'module.handle': sequence})
  with pytest.raises(inspect.IncompatibleModule, match='outputs a sequence'):
    inspect.check_compatible(inspect.describe(sequence), config)


def test_fixed_input_size_must_match(tmp_path):
  path = _tiny_module(tmp_path / 'fixed', (None, 224, 224, 3))
  config = load_config(None, {'module.handle': path, 'module.input_size': [96, 96]})
  with pytest.raises(inspect.IncompatibleModule, match=r'fixed 224x224 .* \[96, 96\]'):
    inspect.check_compatible(inspect.describe(path), config)
  ok = load_config(None, {'module.handle': path, 'module.input_size': None})
  inspect.check_compatible(inspect.describe(path), ok)


def test_compatible_default_config():
  config = load_config()
  inspect.check_compatible(inspect.describe(config.module.handle), config)
