"""The Trainer's export is what later steps read: its core loads back as the
trained Keras model, the Model artifact carries the model record, and the
Compressor, reading that export, reproduces the Trainer's accuracy on the
same examples."""

import json

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts
from tfx.utils import path_utils

import trainer_inputs
from hubpipe.components.compressor import executor as compressor_executor
from hubpipe.components.compressor import policy
from hubpipe.components.modeling import export
from hubpipe.components.modeling import inputs
from hubpipe.components.modeling import measure
from hubpipe.pipeline.config import handoff, load_config
from hubpipe.pipeline.pipeline import TRAINER_SECTIONS


@pytest.fixture(scope='module')
def made(tmp_path_factory):
  root = tmp_path_factory.mktemp('export')
  return root, trainer_inputs.make_trainer_inputs(str(root / 'inputs'),
                                                  train=90, eval_=45)


def _config(mode):
  return load_config(None, {
      'name': f'export-{mode}', 'module.input_size': [32, 32],
      'module.control_handle': None, 'model.integration': mode,
      'model.unfreeze': 2, 'training.epochs': 3, 'training.fine_tune_epochs': 1,
      'training.batch_size': 16, 'training.learning_rate': 0.05,
      'training.fine_tune_learning_rate': 0.001,
      # All of validation and eval: the same examples the Trainer scored.
      'compression.techniques': ['dynamic_range', 'pruning', 'distillation'],
      'compression.pruning_epochs': 1, 'compression.distillation_epochs': 2,
      'compression.validation_examples': 1000,
      'compression.eval_examples': 1000})


@pytest.fixture(scope='module',
                params=['feature_extraction', 'fine_tune', 'hybrid'])
def trained(request, made):
  root, made_inputs = made
  mode = request.param
  config = _config(mode)
  model = trainer_inputs.trainer_do(
      made_inputs, str(root / mode),
      {k: v for k, v in config.to_dict().items() if k in TRAINER_SECTIONS})
  report = json.loads((root / mode / 'Trainer' / 'model_run' / '1' /
                       'training_report.json').read_text())
  return config, model, report


def test_the_model_artifact_carries_the_model_record(trained):
  config, model, report = trained
  assert model.get_string_custom_property('module_handle') == (
      config.module.handle)
  assert json.loads(model.get_string_custom_property('module_input_size')) == [
      32, 32]
  assert json.loads(model.get_string_custom_property('transform_size')) == [
      32, 32]
  assert model.get_string_custom_property('integration') == (
      config.model.integration)
  assert model.get_int_custom_property('num_classes') == report['num_classes']
  assert json.loads(model.get_string_custom_property('class_names')) == [
      str(i) for i in range(report['num_classes'])]
  assert model.get_string_custom_property('core_signature') == 'core'
  assert model.get_string_custom_property('selected_by') == 'config'


def test_the_core_loads_back_as_the_trained_model(trained, made):
  """The Keras core and the `core` signature give the logits behind the
  serving signature, and the Trainer's validation accuracy."""
  _, model, report = trained
  _, made_inputs = made
  serving_dir = path_utils.serving_model_path(model.uri)
  core = export.load_core(serving_dir)
  graph = made_inputs['transform_graph']
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  output = tft.TFTransformOutput(graph)
  x, y = inputs.transformed_sample(
      inputs.factory_for([trainer_inputs.examples_of(made_inputs)]),
      inputs.split_patterns([trainer_inputs.examples_of(made_inputs)], 'validation'), output,
      'image', 'label', 10000, seed=0)
  assert len(y) == report['validation_examples']
  assert measure.keras_accuracy(core, x, y) == pytest.approx(
      report['validation_accuracy'], abs=1e-3)
  loaded = tf.saved_model.load(serving_dir)
  logits = loaded.signatures['core'](image=tf.constant(x[:8]))['logits']
  np.testing.assert_allclose(logits.numpy(), core.predict(x[:8], verbose=0),
                             atol=1e-4)
  if report['integration'] == 'hybrid':
    layer = core.get_layer('hub_module')
    assert type(layer).__name__ == 'PartiallyTrainableKerasLayer'
    assert sorted(layer.selected_variable_names) == sorted(
        report['unfrozen_variables'])


def test_the_compressor_reproduces_the_trainers_accuracy(trained, made,
                                                         tmp_path):
  """The Compressor's Do on the Trainer's Model artifact: its uncompressed
  reference on validation is the Trainer's validation accuracy (the same
  examples), and it hands the record on to the model it pushes."""
  config, model, report = trained
  _, made_inputs = made
  graph = standard_artifacts.TransformGraph()
  graph.uri = made_inputs['transform_graph']
  blessing = standard_artifacts.ModelBlessing()
  blessing.uri = str(tmp_path / 'blessing_in')
  blessing.set_int_custom_property('blessed', 1)
  out_model = standard_artifacts.Model()
  out_model.uri = str(tmp_path / 'compressed')
  out_blessing = standard_artifacts.ModelBlessing()
  out_blessing.uri = str(tmp_path / 'push_blessing')
  report_artifact = standard_artifacts.Model()  # any artifact with a uri
  report_artifact.uri = str(tmp_path / 'report')
  compressor_executor.Executor().Do(
      {'model': [model], 'blessing': [blessing], 'transform_graph': [graph],
       'examples': [trainer_inputs.examples_of(made_inputs)]},
      {'compressed_model': [out_model], 'push_blessing': [out_blessing],
       'report': [report_artifact]},
      {'config': json.dumps(handoff(config, 'Compressor'))})
  compression = json.loads((tmp_path / 'report' /
                            policy.REPORT_JSON).read_text())
  assert compression['validation_examples'] == report['validation_examples']
  assert compression['reference_accuracy']['validation'] == pytest.approx(
      report['validation_accuracy'], abs=1e-3)
  assert compression['trained_model']['integration'] == report['integration']
  assert out_model.get_string_custom_property('module_handle') == (
      config.module.handle)
  float32 = next(r for r in compression['variants'] if r['name'] == 'float32')
  assert float32['validation_drop'] == pytest.approx(0.0, abs=1e-3)
  # Every technique works on the loaded model (pruning needs its module
  # layer to be a hub.KerasLayer, not a generic revived layer).
  assert [r['name'] for r in compression['variants']] == [
      'float32', 'dynamic_range', 'pruned', 'distilled']
  assert not [r for r in compression['variants'] if 'error' in r]


def test_class_names_come_from_the_examples_when_they_name_them(tmp_path):
  split = tmp_path / 'examples' / 'Split-train'
  split.mkdir(parents=True)
  patterns = [str(split / '*')]
  assert inputs.class_names(patterns, 3) == ['0', '1', '2']
  (tmp_path / 'examples' / 'classes.txt').write_text('circle\nsquare\nstripes\n')
  assert inputs.class_names(patterns, 3) == ['circle', 'square', 'stripes']
  # A file that does not match the data is not believed.
  assert inputs.class_names(patterns, 4) == ['0', '1', '2', '3']


def test_warm_start_reads_the_record_and_exports_from_before_it(tmp_path):
  """The push in service is a folder: its record (or, from an export made
  before the record, hubpipe_module.json) says what it was built on."""
  from hubpipe.components.modeling import modules  # pylint: disable=g-import-not-at-top
  from hubpipe.components.trainer import run  # pylint: disable=g-import-not-at-top
  (tmp_path / 'saved_model.pb').write_bytes(b'')
  (tmp_path / 'assets.extra').mkdir()
  (tmp_path / 'assets.extra' / 'hubpipe_module.json').write_text(json.dumps(
      {'handle': 'mobilenet_v1_100_224', 'input_size': [96, 96]}))
  same = modules.ModuleChoice('mobilenet_v1_100_224', [96, 96])
  other = modules.ModuleChoice('mobilenet_v1_100_224', [128, 128])
  # Matched: it goes on to look for the weights.
  assert run._warm_start(None, str(tmp_path), 'head', same) == (  # pylint: disable=protected-access
      f'skipped: {tmp_path} holds no head weights')
  assert 'built on mobilenet_v1_100_224 at [96, 96]' in run._warm_start(  # pylint: disable=protected-access
      None, str(tmp_path), 'head', other)
  export.write_record(str(tmp_path), {'module_handle': 'mobilenet_v1_100_224',
                                      'module_input_size': [128, 128]})
  assert run._warm_start(None, str(tmp_path), 'head', other) == (  # pylint: disable=protected-access
      f'skipped: {tmp_path} holds no head weights')
