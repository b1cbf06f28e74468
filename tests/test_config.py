"""Config loading: defaults, and errors that name the key and what is allowed."""

import json

import pytest

from hubpipe.pipeline.config import ConfigError, REPO_ROOT, load_config


def _write(tmp_path, text):
  path = tmp_path / 'config.yaml'
  path.write_text(text)
  return str(path)


def test_default_demo_config_loads():
  config = load_config()
  assert config.data.source == 'fashion_mnist'
  assert config.module.handle == 'mobilenet_v1_100_224'
  assert config.module.input_size == [96, 96]
  assert config.schema_path.endswith('schemas/image_classification/schema.pbtxt')


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
  path = _write(tmp_path, 'training:\n  epoch: 3\n')
  with pytest.raises(ConfigError) as err:
    load_config(path)
  message = str(err.value)
  assert 'training.epoch' in message
  assert 'Did you mean "epochs"' in message
  assert 'batch_size' in message  # lists what is allowed


def test_a_removed_key_says_what_replaced_it(tmp_path):
  path = _write(tmp_path, 'kubeflow:\n  baseline: resolver\n')
  with pytest.raises(ConfigError, match='kubeflow.baseline" is no longer a '
                     'setting: the baseline is always the pushed model'):
    load_config(path)


def test_wrong_type_names_key_and_expected_type(tmp_path):
  path = _write(tmp_path, 'training:\n  batch_size: many\n')
  with pytest.raises(ConfigError, match=r'training.batch_size: expected an integer'):
    load_config(path)


def test_wrong_choice_lists_allowed_values(tmp_path):
  path = _write(tmp_path, 'training:\n  strategy: magic\n')
  with pytest.raises(ConfigError) as err:
    load_config(path)
  assert 'training.strategy' in str(err.value)
  assert 'mirrored' in str(err.value)


def test_folder_sources_need_a_path(tmp_path):
  path = _write(tmp_path, 'data:\n  source: image_folder\n')
  with pytest.raises(ConfigError, match='data.path: required'):
    load_config(path)


def test_input_size_must_be_two_sizes(tmp_path):
  path = _write(tmp_path, 'module:\n  input_size: [96]\n')
  with pytest.raises(ConfigError, match='module.input_size'):
    load_config(path)


def test_feature_names_must_be_in_the_schema(tmp_path):
  path = _write(tmp_path, 'data:\n  image_feature: pixels\n')
  with pytest.raises(ConfigError) as err:
    load_config(path)
  assert 'data.image_feature' in str(err.value)
  assert '"pixels"' in str(err.value)


def test_own_schema_with_own_feature_names(tmp_path):
  schema = (REPO_ROOT / 'schemas/image_classification/schema.pbtxt').read_text()
  (tmp_path / 'schema.pbtxt').write_text(
      schema.replace('"image"', '"pixels"').replace('"label"', '"target"'))
  path = _write(tmp_path, 'data:\n  image_feature: pixels\n  label_feature: target\n'
                '  schema: schema.pbtxt\n')
  config = load_config(path)
  assert config.schema_path == str(tmp_path / 'schema.pbtxt')


def test_not_yaml_and_missing_file(tmp_path):
  with pytest.raises(ConfigError, match='not valid YAML'):
    load_config(_write(tmp_path, 'data: [unclosed\n'))
  with pytest.raises(ConfigError, match='cannot read the config file'):
    load_config(str(tmp_path / 'nope.yaml'))


def test_overrides_are_validated(tmp_path):
  config = load_config(None, {'training.epochs': 2, 'data.train_examples': 30})
  assert config.training.epochs == 2 and config.data.train_examples == 30
  with pytest.raises(ConfigError, match='training.epochs: must be positive'):
    load_config(None, {'training.epochs': 0})


@pytest.mark.parametrize('text, key', [
    ('compression:\n  max_size_ratio: 0\n', 'compression.max_size_ratio'),
    ('compression:\n  selective_max_size_ratio: -0.3\n',
     'compression.selective_max_size_ratio'),
    ('compression:\n  max_float_layers: 0\n', 'compression.max_float_layers'),
])
def test_compression_limits_must_be_positive(tmp_path, text, key):
  with pytest.raises(ConfigError, match=key):
    load_config(_write(tmp_path, text))
  assert load_config(_write(
      tmp_path, 'compression:\n  selective_max_size_ratio: null\n')
  ).compression.selective_max_size_ratio is None


@pytest.mark.parametrize('text, message', [
    ('selection:\n  candidates: [{input_size: [64, 64]}]\n',
     r'selection.candidates\[0\]: expected a handle'),
    ('selection:\n  candidates: [{handle: m, size: [64, 64]}]\n',
     'unknown key "size"'),
    ('selection:\n  candidates: [{handle: m, input_size: [64]}]\n',
     r'selection.candidates\[0\].input_size'),
    ('selection:\n  objective: fastest\n', 'selection.objective'),
    ('selection:\n  objective: budget\n', 'needs selection.max_latency_ms'),
    ('selection:\n  max_size_mb: 0\n', 'selection.max_size_mb'),
])
def test_bad_selection_settings_name_the_key(tmp_path, text, message):
  with pytest.raises(ConfigError, match=message):
    load_config(_write(tmp_path, text))


def test_selection_configs_load():
  for name in ('fashion_mnist_select', 'rotten_tomatoes_select'):
    config = load_config(str(REPO_ROOT / 'pipeline' / 'configs' / f'{name}.yaml'))
    assert len(config.selection.candidates) >= 2


def test_each_step_is_handed_its_sections_validated():
  from hubpipe.pipeline.config import from_handoff, handoff
  config = load_config(None, {'compression.max_accuracy_drop': 0.02})
  trainer = handoff(config, 'Trainer', code='abc')
  assert set(trainer['config']) == {'name', 'modality', 'data', 'module',
                                    'model', 'training'}
  assert trainer['code'] == 'abc'
  compressor = from_handoff(json.dumps(handoff(config, 'Compressor')),
                            'Compressor')
  assert compressor.compression.max_accuracy_drop == 0.02
  assert compressor.to_dict().keys() == {'name', 'modality', 'data',
                                         'training', 'compression'}
  # A section the step is not handed cannot be read by mistake.
  with pytest.raises(ConfigError, match='not handed'):
    compressor.model.integration
  # Validated as load_config validates.
  bad = handoff(config, 'Trainer')
  bad['config']['training']['epochs'] = 0
  with pytest.raises(ConfigError, match='training.epochs'):
    from_handoff(bad, 'Trainer')
  with pytest.raises(ConfigError, match='does not read: beam, compression'):
    from_handoff({'config': config.to_dict()}, 'Trainer')


def test_the_text_transform_is_not_handed_the_module():
  from hubpipe.pipeline.config import handoff
  config = load_config(str(REPO_ROOT / 'pipeline' / 'configs' /
                           'rotten_tomatoes_glove.yaml'))
  assert 'module' not in handoff(config, 'Transform')['config']
  assert 'module' in handoff(load_config(), 'Transform')['config']


def test_the_transform_sizes_images_for_the_largest_candidate():
  """Without module.input_size, the image Transform is handed the selection
  candidates and writes images at the largest size any of them runs at, so
  that no candidate is upsampled from a smaller copy."""
  from hubpipe.components.modeling import modules
  from hubpipe.pipeline.config import from_handoff, handoff
  config = load_config()
  config.module.input_size = None
  config.selection.candidates = [
      {'handle': 'mobilenet_v1_100_224', 'input_size': [64, 80]},
      'mobilenet_v2_100_160',                    # its own size: 160x160
      {'handle': 'efficientnet_lite0_224', 'input_size': [96, 200]},
      'no_such_module']                          # skipped by the selector
  handed = handoff(config, 'Transform')['config']
  assert handed['selection'] == {'candidates': [
      {'handle': 'mobilenet_v1_100_224', 'input_size': [64, 80]},
      {'handle': 'mobilenet_v2_100_160', 'input_size': None},
      {'handle': 'efficientnet_lite0_224', 'input_size': [96, 200]},
      {'handle': 'no_such_module', 'input_size': None}]}
  assert handed['module'] == {'handle': 'mobilenet_v1_100_224'}
  transform = from_handoff({'config': handed}, 'Transform')
  assert modules.transform_size(transform) == [160, 200]
  # module.input_size fixes the size: the candidates are not handed over.
  config.module.input_size = [96, 96]
  assert 'selection' not in handoff(config, 'Transform')['config']
  assert modules.transform_size(
      from_handoff(handoff(config, 'Transform'), 'Transform')) == [96, 96]


@pytest.mark.parametrize('key,value,message', [
    ('embedding_cache_max_age_days', 0, 'must be positive'),
    ('embedding_cache_max_segments', 0, 'must be 1 or more'),
    ('embedding_cache_dir', ' ', 'must be a folder'),
])
def test_bad_embedding_cache_settings_name_the_key_and_the_fix(key, value,
                                                               message):
  with pytest.raises(ConfigError, match=f'training.{key}: {message}') as err:
    load_config(None, {f'training.{key}': value})
  assert 'embedding_cache' in str(err.value)


def test_only_the_trainer_is_handed_the_embedding_cache_settings():
  from hubpipe.pipeline.config import from_handoff, handoff
  config = load_config(None, {'training.embedding_cache': False,
                              'training.embedding_cache_max_segments': 5})
  assert config.training.embedding_cache is False
  trainer = from_handoff(handoff(config, 'Trainer'), 'Trainer')
  assert trainer.training.embedding_cache is False
  assert trainer.training.embedding_cache_max_segments == 5
  default = load_config()
  for step in ('ModuleSelector', 'Compressor'):
    # Changing the cache must not change (and so rerun) the other steps.
    assert handoff(config, step) == handoff(default, step)
