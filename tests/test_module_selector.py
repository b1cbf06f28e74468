"""The ModuleSelector: ranking, candidates, probing on a tiny module, report.

Probing runs on a tiny Hub image module exported in the test (the same path
as the offline MobileNet, at a fraction of the cost); the incompatible
candidate is the offline text module glove_6b_50d.
"""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import tf_keras
from tfx import types
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from hubpipe.components.hub_modules import mobilenet_v1
from hubpipe.components.module_selector import executor
from hubpipe.components.module_selector import ranking
from hubpipe.components.module_selector import report as report_lib
from hubpipe.components.module_selector.component import ModuleSelection
from hubpipe.pipeline import code_version
from hubpipe.components.module_selector.component import ModuleSelector
from hubpipe.pipeline.config import Config, SelectionConfig, TrainingConfig, handoff

from toy_images import toy_images

SIZE = 16
CLASSES = 3


def _row(name, accuracy, latency, size_mb):
  return {'name': name, 'accuracy': accuracy, 'latency_ms_b1': latency,
          'size_bytes': int(size_mb * 1e6)}


ROWS = [_row('big', 0.90, 40.0, 17.0), _row('small', 0.86, 5.0, 4.0),
        _row('mid', 0.88, 10.0, 8.0), _row('slow_bad', 0.85, 50.0, 20.0),
        {'name': 'broken', 'handle': 'broken', 'skipped': 'ModuleNotFound: x'}]


def _names(ranked):
  return [r['name'] for r in ranked]


# --------------------------------------------------------------------------
# Ranking (pure)


def test_pareto_front_leaves_out_dominated_and_skipped_rows():
  assert ranking.pareto_front(ROWS) == ['small', 'mid', 'big']
  # Equal on both counts: neither dominates the other.
  twins = [_row('a', 0.8, 2.0, 1), _row('b', 0.8, 2.0, 1),
           _row('c', 0.8, 3.0, 1)]
  assert ranking.pareto_front(twins) == ['a', 'b']


def test_accuracy_objective_and_skipped_rows_last():
  ranked, decision = ranking.choose(ROWS, 'accuracy')
  assert _names(ranked) == ['big', 'mid', 'small', 'slow_bad', 'broken']
  assert [r['rank'] for r in ranked] == [1, 2, 3, 4, None]
  assert decision['chosen'] == 'big'
  assert 'highest probe accuracy' in decision['reason']
  assert [r['pareto'] for r in ranked] == [True, True, True, False, False]
  assert ranked[-1]['score'] is None and ranked[-1]['within_budget'] is None
  assert ranked[0]['score'] == 0.90
  assert all(r['within_budget'] for r in ranked[:4])  # no limits set


def test_accuracy_ties_go_to_lower_latency_then_list_order():
  rows = [_row('slow', 0.9, 8.0, 1), _row('fast', 0.9, 4.0, 1),
          _row('fast_too', 0.9, 4.0, 1), _row('worse', 0.8, 1.0, 1)]
  ranked, decision = ranking.choose(rows, 'accuracy')
  assert _names(ranked) == ['fast', 'fast_too', 'slow', 'worse']
  assert 'tied with fast_too' in decision['reason']
  assert 'coming first' in decision['reason']
  ranked, decision = ranking.choose([rows[0], rows[1]], 'accuracy')
  assert decision['chosen'] == 'fast'
  assert 'lower latency' in decision['reason']


def test_budget_objective_best_within_the_budget():
  ranked, decision = ranking.choose(ROWS, 'budget', max_latency_ms=12.0)
  assert _names(ranked)[:4] == ['mid', 'small', 'big', 'slow_bad']
  assert decision['chosen'] == 'mid'
  assert [r['within_budget'] for r in ranked[:4]] == [True, True, False, False]
  assert ranked[2]['over_budget'] == ['latency 40.00 ms > 12 ms']
  assert 'within the budget' in decision['reason']
  _, decision = ranking.choose(ROWS, 'budget', max_latency_ms=12.0,
                               max_size_mb=5.0)
  assert decision['chosen'] == 'small'


def test_budget_with_nothing_within_chooses_the_most_accurate_anyway():
  ranked, decision = ranking.choose(ROWS, 'budget', max_latency_ms=1.0)
  assert decision['chosen'] == 'big'
  assert not any(r['within_budget'] for r in ranked[:4])
  assert 'no candidate is within the budget' in decision['reason']
  assert 'latency <= 1 ms' in decision['reason']


def test_weighted_objective_changes_the_winner():
  # Without weights it is plain accuracy.
  _, decision = ranking.choose(ROWS, 'weighted')
  assert decision['chosen'] == 'big'
  ranked, decision = ranking.choose(ROWS, 'weighted', latency_weight=0.01)
  # small: 0.86; mid: 0.88 - 0.01 * log2(2) = 0.87; big: 0.90 - 0.03 = 0.87.
  assert decision['chosen'] == 'mid'
  scores = {r['name']: r['score'] for r in ranked}
  assert scores['small'] == pytest.approx(0.86)
  assert scores['mid'] == pytest.approx(0.87)
  assert scores['big'] == pytest.approx(0.87)
  assert _names(ranked)[:3] == ['mid', 'big', 'small']  # tie: lower latency
  _, decision = ranking.choose(ROWS, 'weighted', size_weight=0.02)
  # mid: 0.88 - 0.02 * log2(8 / 4) = 0.86 ties small (0.86), which is faster.
  assert decision['chosen'] == 'small'


def test_unknown_objective_is_refused():
  with pytest.raises(ValueError, match='objective "fastest"'):
    ranking.score_rows(ROWS, 'fastest')


# --------------------------------------------------------------------------
# Candidates


def test_candidate_specs_normalise_the_config():
  config = Config(selection=SelectionConfig(candidates=[
      'mobilenet_v1_100_224',
      {'handle': 'mobilenet_v1_100_224', 'input_size': [128, 128]},
      {'handle': 'minilm_l6_v2',
       'preprocessor': 'minilm_l6_v2_preprocess'},
      {'handle': 'minilm_l6_v2', 'preprocessor': '/other/preprocess'},
      'mobilenet_v1_100_224']))
  specs = executor.candidate_specs(config)
  assert specs == [
      {'name': 'mobilenet_v1_100_224', 'handle': 'mobilenet_v1_100_224',
       'input_size': None, 'preprocessor': None},
      {'name': 'mobilenet_v1_100_224@128x128',
       'handle': 'mobilenet_v1_100_224', 'input_size': [128, 128],
       'preprocessor': None},
      {'name': 'minilm_l6_v2', 'handle': 'minilm_l6_v2',
       'input_size': None, 'preprocessor': 'minilm_l6_v2_preprocess'},
      {'name': 'minilm_l6_v2#2', 'handle': 'minilm_l6_v2',
       'input_size': None, 'preprocessor': '/other/preprocess'},
      # selection.no_reuse (on by default): the model trained from scratch.
      {'name': 'no-reuse', 'handle': 'no-reuse', 'input_size': None,
       'preprocessor': None}]


def test_no_candidates_means_the_configured_module():
  config = Config()
  config.module.input_size = [160, 160]
  config.selection.no_reuse = False
  assert executor.candidate_specs(config) == [
      {'name': 'mobilenet_v1_100_224@160x160',
       'handle': 'mobilenet_v1_100_224', 'input_size': [160, 160],
       'preprocessor': None}]


def test_a_fixed_size_module_is_probed_at_its_size():
  fixed = SimpleNamespace(inputs={'images': {'dtype': 'float32',
                                             'shape': [None, 224, 224, 3]}})
  any_size = SimpleNamespace(inputs={'images': {'dtype': 'float32',
                                                'shape': [None, None, None, 3]}})
  text = SimpleNamespace(inputs={'input': {'dtype': 'string', 'shape': [None]}})
  assert executor._fixed_size(fixed) == [224, 224]
  assert executor._fixed_size(any_size) is None
  assert executor._fixed_size(text) is None


def test_an_unsized_candidate_runs_at_the_size_the_transform_made_room_for():
  """The selector and the Transform share the rule: without module.input_size
  the Transform writes the largest size a candidate is made for, and each
  unsized candidate runs at its own; with it, at module.input_size."""
  from hubpipe.components.modeling import modules
  made_for_224 = SimpleNamespace(input_size=[224, 224])
  config = Config(selection=SelectionConfig(candidates=[
      'mobilenet_v1_100_224', {'handle': 'mobilenet_v2_100_160',
                               'input_size': [96, 96]}]))
  assert modules.own_size(config, made_for_224) == [224, 224]
  assert modules.transform_size(config) == [224, 224]
  assert modules.own_size(config, SimpleNamespace(input_size=None)) is None
  config.module.input_size = [64, 64]
  assert modules.own_size(config, made_for_224) is None
  assert modules.transform_size(config) == [64, 64]


# --------------------------------------------------------------------------
# Probing on a tiny module


def _toy_data(n, seed, signal=0.4):
  return toy_images(n, seed, SIZE, CLASSES, signal)


@pytest.fixture(scope='module')
def toy():
  return _toy_data(192, 0) + _toy_data(96, 1)


@pytest.fixture(scope='module')
def tiny_handle(tmp_path_factory):
  """A Hub image feature-vector module (random weights) that takes any size
  and declares 20x20 as its native one."""
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input(shape=(None, None, 3))
  x = tf_keras.layers.Conv2D(16, 3, strides=2, padding='same')(inputs)
  x = tf_keras.layers.ReLU(6.0)(x)
  x = tf_keras.layers.Conv2D(32, 1)(x)
  x = tf_keras.layers.ReLU(6.0)(x)
  outputs = tf_keras.layers.GlobalAveragePooling2D()(x)
  path = tmp_path_factory.mktemp('modules') / 'tiny'
  mobilenet_v1.export_feature_vector_module(
      tf_keras.Model(inputs, outputs), path, native_input_size=20,
      pretrained=False)
  return str(path)


@pytest.fixture(scope='module')
def blind_handle(tmp_path_factory):
  """The same module behind a fixed 1x1 convolution that sums the colour
  channels: blind to what the classes differ in."""
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input(shape=(None, None, 3))
  x = tf_keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer='ones',
                             trainable=False)(inputs)
  x = tf_keras.layers.Conv2D(16, 3, strides=2, padding='same')(x)
  x = tf_keras.layers.ReLU(6.0)(x)
  outputs = tf_keras.layers.GlobalAveragePooling2D()(x)
  path = tmp_path_factory.mktemp('modules') / 'blind'
  mobilenet_v1.export_feature_vector_module(
      tf_keras.Model(inputs, outputs), path, native_input_size=SIZE,
      pretrained=False)
  return str(path)


def _config(candidates=()):
  config = Config(training=TrainingConfig(epochs=10, batch_size=32,
                                          learning_rate=0.05),
                  # The no-reuse row has tests of its own (test_no_reuse.py).
                  selection=SelectionConfig(candidates=list(candidates),
                                            no_reuse=False))
  return config


def _probe(config, toy, log=None):
  train_x, train_y, eval_x, eval_y = toy
  # As if the Transform wrote the toy images at module.input_size (a unit
  # test's 16x16, below what a config allows): a candidate without an
  # input_size runs at it, whatever size its module is made for.
  config.module.input_size = [SIZE, SIZE]
  lines = []
  rows = executor.probe_candidates(
      executor.candidate_specs(config), train_x, train_y, eval_x, eval_y,
      config, CLASSES, [SIZE, SIZE], log=log or lines.append)
  return rows, lines


def test_probe_two_sizes_and_skips_what_cannot_be_probed(tiny_handle,
                                                         blind_handle, toy):
  config = _config([tiny_handle, 'glove_6b_50d',
                    {'handle': tiny_handle, 'input_size': [24, 24]},
                    '/no/such/module', blind_handle])
  rows, lines = _probe(config, toy)
  assert [r['name'] for r in rows] == [tiny_handle, 'glove_6b_50d',
                                       f'{tiny_handle}@24x24',
                                       '/no/such/module', blind_handle]
  bare, glove, larger, missing, blind = rows
  assert glove['skipped'].startswith('IncompatibleModule: ')
  assert 'modality "image"' in glove['skipped']
  assert missing['skipped'].startswith('ModuleNotFound: ')
  for row in (bare, larger):
    assert 'skipped' not in row
    assert row['latency_ms_b1'] > 0
    assert row['parameters'] == 16 * 27 + 16 + 32 * 16 + 32
    assert row['size_bytes'] > 0 and row['feature_shape'] == [32]
  # Without an input_size, a module that takes any size runs at the
  # Transform's size (not its declared 20x20): no resize.
  assert bare['input_size'] == [SIZE, SIZE] and bare['resized_from'] is None
  assert larger['input_size'] == [24, 24]
  assert larger['resized_from'] == [SIZE, SIZE]
  # The probe measures what a module's features are worth.
  assert bare['accuracy'] > 0.9 and larger['accuracy'] > 0.9
  assert blind['accuracy'] < 0.6
  assert len(lines) == 5 and 'skipped' in lines[1]
  ranked, decision = ranking.choose(rows, 'accuracy')
  assert decision['chosen'] in (bare['name'], larger['name'])
  assert ranked[2]['name'] == blind_handle
  assert [r['rank'] for r in ranked][3:] == [None, None]


def test_a_single_candidate(tiny_handle, toy):
  rows, _ = _probe(_config([tiny_handle]), toy)
  assert len(rows) == 1 and rows[0]['accuracy'] > 0.6
  _, decision = ranking.choose(rows, 'budget', max_latency_ms=1e6)
  assert decision['chosen'] == tiny_handle


def test_every_candidate_failing_is_a_clear_error(tiny_handle, toy,
                                                  monkeypatch):
  def broken_timer(*args, **kwargs):
    raise RuntimeError('timer broke')
  monkeypatch.setattr(executor.measure, 'keras_latency', broken_timer)
  config = _config(['/no/such/module', 'glove_6b_50d', tiny_handle])
  with pytest.raises(executor.ModuleSelectionError) as caught:
    _probe(config, toy)
  message = str(caught.value)
  assert 'none of the 3 candidates' in message
  assert '- /no/such/module: ModuleNotFound' in message
  assert '- glove_6b_50d: IncompatibleModule' in message
  assert f'- {tiny_handle}: probing failed: RuntimeError: timer broke' in message
  assert 'Fix selection.candidates' in message


# --------------------------------------------------------------------------
# Report, outputs, component


def _report(ranked, decision):
  return {'policy': {'objective': 'budget', 'max_latency_ms': 12.0,
                     'max_size_mb': None, 'latency_weight': 0.0,
                     'size_weight': 0.0},
          'transform_size': [224, 224], 'train_examples': 1000,
          'validation_examples': 500, 'num_classes': 10, 'rows': ranked,
          'pareto': ranking.pareto_front(ranked), 'decision': decision,
          'selector_seconds': 12.5}


def test_report_page_has_every_row_the_plot_and_the_decision(tmp_path):
  ranked, decision = ranking.choose(ROWS, 'budget', max_latency_ms=12.0)
  report = _report(ranked, decision)
  page = report_lib.render_html(report)
  assert page.count('<tr') == len(ROWS) + 1
  for name in ('big', 'small', 'mid', 'slow_bad', 'broken'):
    assert f'<td>{name}</td>' in page
  assert 'skipped: ModuleNotFound: x' in page
  assert 'over budget: latency 40.00 ms &gt; 12 ms' in page
  assert '<svg' in page and 'class="front"' in page
  assert page.count('<circle') == 4  # the skipped row has no point
  assert page.count('#c0392b') == 1  # the chosen one
  assert 'Decision: mid' in page and 'budget; max_latency_ms 12' in page
  report_lib.write(report, str(tmp_path))
  saved = json.loads((tmp_path / report_lib.REPORT_JSON).read_text())
  assert saved['decision']['chosen'] == 'mid'
  assert (tmp_path / report_lib.REPORT_HTML).read_text() == page


def test_executor_outputs_what_the_trainer_reads(tiny_handle, toy, tmp_path,
                                                 monkeypatch):
  """Do, with the sample given: properties, report, and the one file the
  TFX Trainer reads into fn_args.hyperparameters."""
  train_x, train_y, eval_x, eval_y = toy
  # The probes rank on validation; eval is not read at all.
  samples = {'train': (train_x, train_y), 'validation': (eval_x, eval_y)}
  monkeypatch.setattr(executor.inputs, 'sample',
                      lambda examples, split, *args: samples[split])
  monkeypatch.setattr(executor.tft, 'TFTransformOutput', lambda uri: uri)
  monkeypatch.setattr(executor.inputs, 'num_classes', lambda output: CLASSES)
  monkeypatch.setattr(executor.inputs, 'images_at',
                      lambda output, key: [SIZE, SIZE])
  config = _config([{'handle': tiny_handle, 'input_size': [24, 24]},
                    '/no/such/module'])
  selection = ModuleSelection()
  selection.uri = str(tmp_path / 'selection')
  hyperparameters = standard_artifacts.HyperParameters()
  hyperparameters.uri = str(tmp_path / 'hyperparameters')
  graph = standard_artifacts.TransformGraph()
  graph.uri = str(tmp_path / 'graph')
  executor.Executor().Do(
      {'examples': [], 'transform_graph': [graph]},
      {'selection': [selection], 'best_hyperparameters': [hyperparameters]},
      {'config': json.dumps(handoff(config, 'ModuleSelector'))})
  name = f'{tiny_handle}@24x24'
  assert selection.get_string_custom_property('chosen_name') == name
  assert selection.get_string_custom_property('chosen_handle') == tiny_handle
  assert selection.get_string_custom_property('chosen_input_size') == '[24, 24]'
  assert selection.get_string_custom_property('chosen_preprocessor') == ''
  assert 'highest probe accuracy' in selection.get_string_custom_property(
      'decision')
  assert selection.get_float_custom_property('selector_seconds') > 0
  report = json.loads((tmp_path / 'selection' /
                       report_lib.REPORT_JSON).read_text())
  assert [r['name'] for r in report['rows']] == [name, '/no/such/module']
  # What tfx.components.trainer.executor.GenericExecutor._GetFnArgs does.
  path = io_utils.get_only_uri_in_dir(hyperparameters.uri)
  assert json.loads(io_utils.read_string_file(path)) == {
      'module_handle': tiny_handle, 'input_size': [24, 24],
      'preprocessor': None, 'selected_by': 'ModuleSelector'}


def test_component_wires_inputs_outputs_and_config():
  channel = lambda t: types.Channel(type=t)
  config = dataclasses.asdict(SelectionConfig())
  component = ModuleSelector(
      examples=channel(standard_artifacts.Examples),
      schema=channel(standard_artifacts.Schema),
      transform_graph=channel(standard_artifacts.TransformGraph),
      config={'config': {'selection': config}})
  assert set(component.outputs) == {'selection', 'best_hyperparameters'}
  assert component.outputs['selection'].type_name == 'hubpipe.ModuleSelection'
  assert component.outputs['best_hyperparameters'].type_name == 'HyperParameters'
  params = json.loads(component.exec_properties['config'])
  # 'code': the digest of the selector's source (pipeline/code_version.py).
  assert params == {'config': {'selection': config},
                    'code': code_version.digest('ModuleSelector')}
