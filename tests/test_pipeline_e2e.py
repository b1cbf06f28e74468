"""End to end: the whole DAG on a tiny Fashion-MNIST config, then again.

Bad data: tests/test_bad_inputs.py.

These run the real components (LocalDagRunner, Beam DirectRunner in
multi-process mode, the real pretrained MobileNetV1) on a few hundred examples.
"""

import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from PIL import Image

import reliability
from hubpipe.pipeline import code_version
from hubpipe.pipeline import local_runner
from hubpipe.pipeline.config import load_config

ALL_COMPONENTS = {
    'SnapshotExampleGen', 'StatisticsGen', 'ImportSchemaGen',
    'ExampleValidator', 'AnomalyGate', 'Transform', 'Trainer',
    'latest_pushed_model', 'Evaluator', 'Compressor', 'Pusher'}

TINY = {
    'name': 'tiny-e2e',
    'data.train_examples': 200,
    'data.eval_examples': 100,
    'module.input_size': [64, 64],
    'training.epochs': 3,
    'training.batch_size': 32,
    'evaluation.min_accuracy': 0.3,
    'compression.calibration_examples': 100,
    'compression.pruning_epochs': 1,
    'compression.distillation_epochs': 2,
    'compression.max_accuracy_drop': 0.05,
}


def _example(image_bytes, label=None):
  feature = {'image': tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[image_bytes]))}
  if label is not None:
    feature['label'] = label
  return tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('e2e') / 'work'
  config = load_config(None, TINY)
  lines = []
  summary = local_runner.run(config, str(workdir), echo=lines.append)
  return config, workdir, summary, lines


def test_run_is_blessed_and_pushed(first_run):
  _, workdir, summary, lines = first_run
  assert summary['status'] == 'succeeded', summary.get('error')
  assert {c['name'] for c in summary['components']} == ALL_COMPONENTS
  assert all(c['state'] == 'complete' for c in summary['components'])
  assert summary['blessed'] is True
  assert summary['pushed'] is True
  version = os.path.basename(summary['pushed_model'])
  assert version.isdigit(), 'TF Serving needs numbered version folders'
  assert os.path.exists(os.path.join(summary['pushed_model'], 'saved_model.pb'))
  # Progress was shown per component.
  assert sum('Trainer' in line for line in lines) == 1


def test_summary_has_its_fields(first_run):
  config, workdir, summary, _ = first_run
  with open(workdir / 'summary.json') as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(summary))
  # ExampleGen carved 10% of each class of train out as validation.
  assert written['examples'] == {'train': 180, 'validation': 20, 'eval': 100}
  assert written['validation_source'] == (
      'carved out of train: 0.1 of each class, seed 0')
  module = written['module']
  assert module['handle'] == config.module.handle
  assert module['integration'] == 'feature_extraction'
  assert module['input_size'] == [64, 64]
  assert module['output_kind'] == 'feature_vector' and module['output_dim'] == 1024
  assert written['training']['num_classes'] == 10
  training = written['training']
  assert training['validation_examples'] == 20
  assert training['accuracy_split'] == 'validation'
  # Pretrained features beat chance (0.1) by far, and beat the same head
  # on the randomly initialised twin: reuse pays.
  assert training['validation_accuracy'] >= 0.4
  assert training['validation_accuracy'] > (
      training['control']['validation_accuracy'])
  metrics = written['evaluation']['metrics']
  assert metrics['example_count'] == 100
  assert metrics['sparse_categorical_accuracy'] >= 0.3
  assert len(written['evaluation']['per_class_accuracy']) == 10
  assert written['baseline_model'] is None
  # The candidate stood in for the baseline and the Evaluator left it out:
  # TFMA evaluated one model, with no name (not 'candidate' and 'baseline').
  assert written['evaluation']['baseline_metrics'] == {}
  evaluation, = (workdir / 'pipeline_root' / 'Evaluator' / 'evaluation'
                 ).iterdir()
  assert {key.model_name
          for sliced in tfma.load_metrics(str(evaluation))
          for key in (kv.key for kv in sliced.metric_keys_and_values)} == {''}
  # The data snapshot the run ingested: the train and eval files, and the
  # classes.txt that names the classes.
  assert written['data_snapshot']['fingerprint']['files'] == 3
  assert training['class_names'][0] == 'T-shirt/top'
  assert written['data_snapshot']['spans'] is None
  for component in written['components']:
    assert component['seconds'] >= 0


def test_pushed_model_predicts_from_raw_image_bytes(first_run):
  _, _, summary, _ = first_run
  served = tf.saved_model.load(summary['pushed_model'])
  predict = served.signatures['serving_default']

  # The eval split as stored: PNG bytes + labels; predict without the labels.
  eval_file = os.path.join(summary['input_base'], 'eval', 'data.tfrecord')
  images, labels = [], []
  spec = {'image': tf.io.FixedLenFeature([], tf.string),
          'label': tf.io.FixedLenFeature([], tf.int64)}
  for record in tf.data.TFRecordDataset(eval_file):
    parsed = tf.io.parse_single_example(record, spec)
    images.append(parsed['image'].numpy())
    labels.append(int(parsed['label']))
  out = predict(examples=tf.constant([_example(b) for b in images]))
  probabilities = out['probabilities'].numpy()
  assert probabilities.shape == (100, 10)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(out['class_id'].numpy(),
                                probabilities.argmax(axis=1))
  # The served model is the evaluated one: same accuracy as TFMA measured.
  accuracy = float(np.mean(probabilities.argmax(axis=1) == np.array(labels)))
  # (the summary rounds metrics to 4 decimals)
  assert accuracy == pytest.approx(
      summary['evaluation']['metrics']['sparse_categorical_accuracy'], abs=1e-4)

  # A colour JPEG of another size works too: decode, resize, scale are inside.
  buffer = io.BytesIO()
  Image.fromarray(np.random.RandomState(0).randint(
      0, 255, (50, 70, 3), dtype=np.uint8)).save(buffer, format='JPEG')
  out = predict(examples=tf.constant([_example(buffer.getvalue())]))
  assert out['probabilities'].shape == (1, 10)


def _png(size=(28, 28)):
  buffer = io.BytesIO()
  Image.fromarray(np.zeros(size, dtype=np.uint8)).save(buffer, format='PNG')
  return buffer.getvalue()


BAD_REQUESTS = {
    # name: (the request's serialized examples, what the error must say)
    'bytes that are not a tf.Example': (
        [b'\xff\xfe\x00 not a proto'], 'are not serialized tf.Examples'),
    'an image sent without its tf.Example': (
        [_png()], 'are not serialized tf.Examples'),
    'a tf.Example cut short': ([_example(_png())[:-3]],
                               'are not serialized tf.Examples'),
    'an empty serialized string': ([b''], 'are empty strings'),
    'a tf.Example without the image': (
        [tf.train.Example(features=tf.train.Features(feature={
            'photo': tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[_png()]))})).SerializeToString()],
        'Feature: image (data type: string) is required'),
    'a tf.Example whose image is not an image': (
        [_example(b'hello')], 'Unknown image file format'),
    'a tf.Example whose image is empty': (
        [_example(b'')], 'have an empty feature `image`'),
    'a truncated PNG': ([_example(_png()[:30])], 'PNG'),
    'a batch mixing good and bad': (
        [_example(_png()), b'', _example(_png())],
        '[examples] [1] [are empty strings'),
}


@pytest.mark.parametrize('name', list(BAD_REQUESTS))
def test_a_bad_request_fails_with_an_error_and_the_model_serves_on(
    first_run, name):
  """Through the pushed model's signature: the request fails with a TF
  error that says what is wrong (not a crash, not a made-up prediction),
  and the same loaded model serves the next good request."""
  _, _, summary, _ = first_run
  served = _loaded(summary['pushed_model'])
  predict = served.signatures['serving_default']
  batch, says = BAD_REQUESTS[name]
  with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(says)):
    predict(examples=tf.constant(batch, dtype=tf.string))
  out = predict(examples=tf.constant([_example(_png())] * 2))
  assert out['probabilities'].shape == (2, 10)
  reliability.record_bad_input(f'serving: {name}', 'clear_error')


_LOADED = {}


def _loaded(path):
  """The pushed SavedModel, loaded once for the bad requests."""
  if path not in _LOADED:
    _LOADED[path] = tf.saved_model.load(path)
  return _LOADED[path]


def test_the_pushed_tflite_refuses_a_wrong_shaped_input(first_run):
  _, _, summary, _ = first_run
  interpreter = tf.lite.Interpreter(model_path=summary['pushed_tflite'])
  interpreter.allocate_tensors()
  inp, = interpreter.get_input_details()
  with pytest.raises(ValueError, match='Dimension mismatch'):
    interpreter.set_tensor(inp['index'], np.zeros([1, 32, 32, 3], np.float32))
  with pytest.raises(ValueError):
    interpreter.set_tensor(inp['index'], np.zeros(inp['shape'], np.uint8))
  interpreter.set_tensor(inp['index'], np.zeros(inp['shape'], np.float32))
  interpreter.invoke()
  reliability.record_bad_input('tflite: a wrong-shaped input', 'clear_error')


@pytest.mark.parametrize('how', ['truncated saved_model.pb',
                                 'variables deleted'])
def test_a_broken_pushed_baseline_stops_the_next_run(first_run, tmp_path, how):
  """The push the next run would be measured against is broken (here a
  copy of the first run's push, damaged): the run stops before the DAG,
  naming the folder and the fix, and pushes nothing (no blessing against
  a broken or substituted baseline)."""
  _, _, first, _ = first_run
  serving = tmp_path / 'serving'
  broken = serving / os.path.basename(first['pushed_model'])
  shutil.copytree(first['pushed_model'], broken)
  if how == 'variables deleted':
    shutil.rmtree(broken / 'variables')
  else:
    graph = broken / 'saved_model.pb'
    graph.write_bytes(graph.read_bytes()[:-1000])
  config = load_config(None, {**TINY, 'push.serving_dir': str(serving)})
  summary = local_runner.run(config, str(tmp_path / 'work'), echo=lambda _: None)
  assert summary['status'] == 'failed'
  assert summary['failed_step'] == 'data'  # the data snapshot, before the DAG
  assert f'the pushed model {broken}' in summary['error']
  assert 'Remove that version folder' in summary['error']
  assert not summary.get('components')  # nothing ran
  assert summary['pushed'] is False
  assert sorted(p.name for p in serving.iterdir()) == [broken.name]
  reliability.record_bad_input(f'run: baseline push with {how}', 'clear_error')


def test_compressor_measures_variants_and_pushes_the_chosen_tflite(first_run):
  config, _, summary, _ = first_run
  compression = summary['compression']
  names = [v['name'] for v in compression['variants']]
  assert names == ['float32', 'dynamic_range', 'float16', 'int8',
                   'int8_selective', 'pruned', 'distilled']
  for variant in compression['variants']:
    assert 'error' not in variant, variant
    assert variant['size_bytes'] > 0 and variant['latency_ms_b1'] > 0
  by_name = {v['name']: v for v in compression['variants']}
  assert by_name['int8']['size_ratio'] < 0.35
  assert by_name['pruned']['gzip_ratio'] < 0.9  # zeros compress
  assert by_name['distilled']['size_ratio'] < 0.2
  chosen = compression['decision']['chosen']
  assert by_name[chosen]['validation_drop'] <= config.compression.max_accuracy_drop
  # Each variant is measured on eval too (reported, not chosen on): the
  # float32 TFLite file scores what TFMA measured on the same 100 examples
  # (within one example).
  assert by_name['float32']['eval_accuracy'] == pytest.approx(
      summary['evaluation']['metrics']['sparse_categorical_accuracy'],
      abs=0.011)
  assert compression['eval_examples'] == 100
  assert compression['validation_examples'] == 20
  assert os.path.exists(compression['report_html'])
  # The pushed folder holds the SavedModel and, beside it, the chosen variant,
  # which takes the transformed images (here 64x64x3 in [0, 1]).
  assert summary['pushed_tflite'] == os.path.join(summary['pushed_model'],
                                                  'model.tflite')
  interpreter = tf.lite.Interpreter(model_path=summary['pushed_tflite'])
  interpreter.allocate_tensors()
  (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
  assert list(inp['shape'][1:]) == [64, 64, 3]
  interpreter.set_tensor(inp['index'], np.zeros(inp['shape'], np.float32))
  interpreter.invoke()
  assert interpreter.get_tensor(out['index']).shape[-1] == 10


def test_a_new_compression_policy_reuses_the_trained_model(first_run):
  config, workdir, first, _ = first_run
  # The same data and model config, and a compression policy nothing can
  # pass with on_no_pass: none: the model and its evaluation are reused (the
  # baseline stays what it was when this data arrived: none), the Compressor
  # runs again, and the blessed model must then not be pushed.
  config.compression.max_size_ratio = 0.001
  config.compression.on_no_pass = 'none'
  summary = local_runner.run(config, str(workdir), echo=lambda _: None)
  states = {c['name']: c['state'] for c in summary['components']}
  for name in ('SnapshotExampleGen', 'StatisticsGen', 'Transform', 'Trainer',
               'latest_pushed_model', 'Evaluator'):
    assert states[name] == 'cached', states
  assert states['Compressor'] == 'complete'
  assert summary['baseline_model'] is None
  assert summary['evaluation']['metrics'] == first['evaluation']['metrics']
  assert summary['blessed'] is True  # by the Evaluator ...
  assert summary['compression']['decision']['chosen'] is None  # ... but
  assert summary['pushed'] is False  # the Compressor's policy stops the push


def test_an_edit_to_the_trainer_code_retrains(first_run, monkeypatch):
  config, workdir, _, _ = first_run
  # What a changed components/trainer/ gives: another digest of the
  # Trainer's code (tests/test_code_version.py edits real files).
  real = code_version.digest
  monkeypatch.setattr(code_version, 'digest',
                      lambda step: 'edited' if step == 'Trainer' else real(step))
  summary = local_runner.run(config, str(workdir), echo=lambda _: None)
  states = {c['name']: c['state'] for c in summary['components']}
  for name in ('SnapshotExampleGen', 'StatisticsGen', 'Transform'):
    assert states[name] == 'cached', states
  assert states['Trainer'] == 'complete', states
  assert states['Evaluator'] == 'complete', states


def test_a_truncated_or_corrupt_shard_stops_the_run_at_example_gen(tmp_path):
  """A train shard cut short, another with a changed byte: the run stops at
  its first step naming both files and what to do, and pushes nothing."""
  data = tmp_path / 'data'
  for split, shards in (('train', 3), ('eval', 1)):
    (data / split).mkdir(parents=True)
    for shard in range(shards):
      with tf.io.TFRecordWriter(
          str(data / split / f'part-{shard}.tfrecord')) as writer:
        for i in range(10):
          label = tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2]))
          writer.write(_example(_png(), label))
  truncated = data / 'train' / 'part-1.tfrecord'
  truncated.write_bytes(truncated.read_bytes()[:-40])
  corrupt = data / 'train' / 'part-2.tfrecord'
  flipped = bytearray(corrupt.read_bytes())
  flipped[100] ^= 0xff
  corrupt.write_bytes(bytes(flipped))
  config_file = tmp_path / 'damaged.yaml'
  config_file.write_text(
      'name: damaged-shards\n'
      'data:\n  source: tfrecord\n  path: data\n'
      'module:\n  input_size: [32, 32]\n'
      'beam:\n  direct_running_mode: in_memory\n')
  config = load_config(str(config_file))
  summary = local_runner.run(config, str(tmp_path / 'work'), echo=lambda _: None)
  assert summary['status'] == 'failed'
  assert summary['failed_step'] == 'SnapshotExampleGen'
  error = summary['error']
  assert error.startswith('CorruptInputError: ')
  assert f'{truncated}: truncated' in error
  assert f'{corrupt}: corrupt' in error
  assert 'part-0' not in error
  assert 'delivered again' in error
  with open(tmp_path / 'work' / 'summary.json') as f:
    written = json.load(f)
  assert written['status'] == 'failed'
  assert written['failed_step'] == 'SnapshotExampleGen'
  assert summary['pushed'] is False
  serving = tmp_path / 'work' / 'serving' / 'damaged-shards'
  assert not serving.exists() or not any(
      p.name.isdigit() for p in serving.iterdir())
  reliability.record_bad_input('run: truncated and corrupt TFRecord shards',
                               'clear_error')
