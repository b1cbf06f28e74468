"""End to end on an image folder: the layout most users have.

Three classes of coloured images, JPEG and PNG, of different sizes; the class
count, image sizes and splits all come from the folder, not from constants.
"""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from hubpipe.pipeline import local_runner
from hubpipe.pipeline.config import load_config

COLOURS = {'blue': (20, 40, 220), 'green': (30, 200, 40), 'red': (220, 30, 30)}


def _make_folder(root, per_class=14):
  rng = np.random.RandomState(0)
  for name, colour in COLOURS.items():
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(per_class):
      size = (40 + 7 * i % 30, 36 + 5 * i % 40)
      pixels = np.clip(np.array(colour) + rng.randint(-30, 30, size + (3,)), 0, 255)
      image = Image.fromarray(pixels.astype(np.uint8))
      image.save(folder / (f'{i}.jpg' if i % 2 else f'{i}.png'))


def _config(tmp_path, module='', model=''):
  path = tmp_path / 'folder.yaml'
  path.write_text(
      'name: colours\n'
      'data:\n  source: image_folder\n  path: images\n  eval_fraction: 0.3\n'
      f'module:\n  input_size: [64, 64]\n{module}'
      f'model:\n{model or "  integration: feature_extraction"}\n'
      'training:\n  epochs: 5\n  batch_size: 8\n  learning_rate: 0.01\n'
      '  fine_tune_epochs: 1\n'
      'evaluation:\n  min_accuracy: 0.5\n'
      'compression:\n  techniques: [int8]\n  max_accuracy_drop: 0.2\n'
      'beam:\n  direct_running_mode: in_memory\n')
  return load_config(str(path))


def test_image_folder_runs_through_the_dag(tmp_path):
  # Also the hybrid mode on a feature-map module: a conv head is trained on
  # the frozen module's spatial features, then the top 2 blocks unfrozen.
  _make_folder(tmp_path / 'images')
  config = _config(tmp_path,
                   module='  handle: mobilenet_v1_100_224_feature_map\n',
                   model='  integration: hybrid\n  unfreeze: 2')
  summary = local_runner.run(config, str(tmp_path / 'work'), echo=lambda _: None)
  assert summary['status'] == 'succeeded', summary.get('error')
  assert summary['module']['output_kind'] == 'feature_map'
  training = summary['training']
  assert training['num_classes'] == 3
  assert training['integration'] == 'hybrid'
  assert {name.split('/')[0] for name in training['unfrozen_variables']} == {
      'conv_dw_13', 'conv_pw_13', 'conv_dw_13_bn', 'conv_pw_13_bn'}
  assert len(training['history']['hybrid_loss']) == 1
  # The Compressor rebuilt the hybrid model's core from its saved weights.
  variants = {v['name']: v for v in summary['compression']['variants']}
  assert set(variants) == {'float32', 'int8'}
  for split in ('validation', 'eval'):
    assert variants['float32'][f'{split}_drop'] == pytest.approx(0.0, abs=1e-6)
  assert sum(summary['examples'].values()) == 3 * 14
  assert summary['examples']['eval'] > 0
  assert summary['blessed'] and summary['pushed']

  predict = tf.saved_model.load(summary['pushed_model']).signatures['serving_default']
  raw = (tmp_path / 'images' / 'red' / '3.jpg').read_bytes()
  example = tf.train.Example(features=tf.train.Features(feature={
      'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[raw]))}))
  out = predict(examples=tf.constant([example.SerializeToString()]))
  assert out['probabilities'].shape == (1, 3)
  assert int(out['class_id'][0]) == sorted(COLOURS).index('red')
  # Class names end to end: the folder names, served and beside the .tflite.
  assert out['class_name'].numpy()[0].decode() == 'red'
  assert [n.decode() for n in out['all_classes'].numpy()[0]] == sorted(COLOURS)
  labels = Path(summary['pushed_model']) / 'labels.txt'
  assert labels.read_text().split() == sorted(COLOURS)
  assert summary['pushed_tflite']
