"""End to end: the ModuleSelector in the DAG chooses the module the Trainer uses.

A tiny Fashion-MNIST run with three candidates: the pretrained MobileNetV1 at
another resolution than the Transform's, its randomly initialised twin, and a
text module that cannot serve an image task; and the no-reuse model.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from hubpipe.pipeline import local_runner
from hubpipe.pipeline import summary as summary_lib
from hubpipe.pipeline.config import load_config

TRANSFORM_SIZE = [48, 48]
TINY = {
    'name': 'tiny-select',
    # Not the winner: the Trainer and the Compressor must use the selector's
    # choice, not module.handle.
    'module.handle': 'mobilenet_v1_100_224_random',
    'data.train_examples': 200,
    'data.eval_examples': 100,
    'module.input_size': TRANSFORM_SIZE,
    'training.epochs': 3,
    'training.batch_size': 32,
    'evaluation.min_accuracy': 0.3,
    'compression.techniques': ['int8'],
    'compression.calibration_examples': 50,
    'compression.max_accuracy_drop': 0.2,
    'selection.candidates': [
        {'handle': 'mobilenet_v1_100_224', 'input_size': [64, 64]},
        'mobilenet_v1_100_224_random',
        'glove_6b_50d'],
    'selection.train_examples': 150,
    'selection.validation_examples': 100,
    'beam.direct_running_mode': 'in_memory',
}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('select') / 'work'
  config = load_config(None, TINY)
  return local_runner.run(config, str(workdir), echo=lambda _: None)


def test_selector_ranks_the_candidates_and_skips_the_misfit(run):
  assert run['status'] == 'succeeded', run.get('error')
  states = {c['name']: c['state'] for c in run['components']}
  assert states['ModuleSelector'] == 'complete'
  selection = run['module_selection']
  rows = {r['name']: r for r in selection['rows']}
  assert set(rows) == {'mobilenet_v1_100_224@64x64',
                       'mobilenet_v1_100_224_random', 'glove_6b_50d',
                       'no-reuse'}
  assert rows['glove_6b_50d']['rank'] is None
  assert 'text' in rows['glove_6b_50d']['skipped']
  pretrained = rows['mobilenet_v1_100_224@64x64']
  random = rows['mobilenet_v1_100_224_random']
  scratch = rows['no-reuse']  # a small CNN trained on the same 150 images
  assert pretrained['rank'] == 1
  assert pretrained['accuracy'] > max(random['accuracy'], scratch['accuracy'])
  assert scratch['input_size'] == TRANSFORM_SIZE
  assert scratch['parameters'] < 500_000 and scratch['latency_ms_b1'] > 0
  assert selection['decision']['reuse_pays'] is True
  assert pretrained['input_size'] == [64, 64]
  assert pretrained['resized_from'] == TRANSFORM_SIZE
  for row in (pretrained, random):
    assert row['latency_ms_b1'] > 0 and row['size_bytes'] > 0
    assert row['parameters'] > 3_000_000
  assert selection['decision']['chosen'] == 'mobilenet_v1_100_224@64x64'
  assert os.path.exists(selection['report_html'])
  text = summary_lib.render(run)
  assert 'module selector' in text and 'skipped' in text


def test_trainer_trains_with_the_chosen_module(run):
  training = run['training']
  assert training['selected_by'] == 'ModuleSelector'
  assert training['module'] == 'mobilenet_v1_100_224'
  assert training['module_input_size'] == [64, 64]
  assert 'control' not in training  # module.handle's twin, not the winner's
  # The served model takes raw image bytes; the Transform resizes them to
  # 48x48 and the model to the module's 64x64.
  served = tf.saved_model.load(run['pushed_model'])
  eval_file = os.path.join(run['input_base'], 'eval', 'data.tfrecord')
  record = next(iter(tf.data.TFRecordDataset(eval_file))).numpy()
  out = served.signatures['serving_default'](examples=tf.constant([record]))
  assert out['probabilities'].shape == (1, 10)


def test_compressor_rebuilds_the_selected_module(run):
  # The Compressor's rebuilt core scores on validation what the Trainer's
  # model scored there (the same split, all of it).
  assert run['compression']['reference_accuracy']['validation'] == pytest.approx(
      run['training']['validation_accuracy'], abs=0.011)
  variants = {v['name']: v for v in run['compression']['variants']}
  assert 'error' not in variants['int8'], variants['int8']
  interpreter = tf.lite.Interpreter(model_path=run['pushed_tflite'])
  interpreter.allocate_tensors()
  (inp,), (out,) = (interpreter.get_input_details(),
                    interpreter.get_output_details())
  assert list(inp['shape'][1:]) == [*TRANSFORM_SIZE, 3]
  interpreter.set_tensor(inp['index'], np.zeros(inp['shape'], np.float32))
  interpreter.invoke()
  assert interpreter.get_tensor(out['index']).shape[-1] == 10


# --------------------------------------------------------------------------
# No choice is made on eval: the same run on the same data with the eval
# labels poisoned trains the same model and makes the same choices; only the
# Evaluator's figures, and so the blessing, change.


def _poisoned_copy(input_base, out):
  """The run's data with every eval label moved to the next class."""
  for split in ('train', 'eval'):
    (out / split).mkdir(parents=True)
    source = os.path.join(input_base, split, 'data.tfrecord')
    with tf.io.TFRecordWriter(str(out / split / 'data.tfrecord')) as writer:
      for record in tf.data.TFRecordDataset(source):
        if split == 'train':  # byte for byte: the carve hashes the bytes
          writer.write(record.numpy())
          continue
        example = tf.train.Example.FromString(record.numpy())
        label = example.features.feature['label'].int64_list
        label.value[0] = (label.value[0] + 1) % 10
        writer.write(example.SerializeToString())


@pytest.fixture(scope='module')
def poisoned(run, tmp_path_factory):
  root = tmp_path_factory.mktemp('poisoned')
  _poisoned_copy(run['input_base'], root / 'data')
  # The same files as a TFRecord folder: the data section says so, which
  # changes nothing the Trainer computes.
  config = load_config(None, {**TINY, 'data.source': 'tfrecord',
                              'data.path': str(root / 'data')})
  return local_runner.run(config, str(root / 'work'), echo=lambda _: None)


def test_poisoned_eval_labels_change_the_blessing_and_nothing_chosen(
    run, poisoned):
  assert run['blessed'] is True and run['pushed'] is True
  # The Evaluator saw the poison: nothing blessed, nothing pushed.
  assert poisoned['status'] == 'not_blessed', poisoned.get('error')
  clean_accuracy = run['evaluation']['metrics']['sparse_categorical_accuracy']
  assert poisoned['evaluation']['metrics'][
      'sparse_categorical_accuracy'] < clean_accuracy - 0.2
  assert poisoned['blessed'] is False and poisoned['pushed'] is False
  # The selector ranked the same candidates with the same probe accuracies
  # (ExampleGen writes train and validation byte for byte as in the clean
  # run: the files follow the examples, not Beam).
  probes = lambda s: {r['name']: r.get('accuracy')
                      for r in s['module_selection']['rows']}
  assert probes(poisoned) == probes(run)
  assert (poisoned['module_selection']['decision']['chosen'] ==
          run['module_selection']['decision']['chosen'])
  # The Trainer made the same model: the same history, epoch by epoch
  # (early stopping and the reported figures watch validation).
  for key in ('module', 'module_input_size', 'validation_accuracy',
              'validation_examples', 'train_examples'):
    assert poisoned['training'][key] == run['training'][key], key
  assert poisoned['training']['history'].keys() == run['training'][
      'history'].keys()
  for key, values in run['training']['history'].items():
    assert poisoned['training']['history'][key] == values, key
