"""Augmentation: random flips, crops and brightness on training batches when
the module trains, off by default, never inside the exported model."""

import json

import numpy as np
import pytest
import tensorflow as tf

import trainer_inputs
from hubpipe.components.modeling import export
from hubpipe.components.modeling import training
from hubpipe.pipeline.config import ConfigError, TrainingConfig, load_config
from hubpipe.pipeline.pipeline import TRAINER_SECTIONS


def _gradient_images(n=16, size=12):
  """Images that are dark on the left and bright on the right: a flip shows."""
  ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
  return np.tile(ramp[None, None, :, None], [n, size, 1, 3])


def _settings(**kwargs):
  return TrainingConfig(**kwargs)


def test_flip_mirrors_about_half_the_images_repeatably():
  images = _gradient_images()
  seed = tf.constant([42, 0], tf.int64)
  out = training.augment(images, _settings(augment_flip=True), seed).numpy()
  flipped = out[:, 0, 0, 0] > 0.5  # bright on the left
  assert 0 < flipped.sum() < len(images)
  np.testing.assert_array_equal(out[flipped], images[flipped][:, :, ::-1])
  np.testing.assert_array_equal(out[~flipped], images[~flipped])
  again = training.augment(images, _settings(augment_flip=True), seed).numpy()
  np.testing.assert_array_equal(out, again)
  other = training.augment(images, _settings(augment_flip=True),
                           tf.constant([42, 1], tf.int64)).numpy()
  assert not np.array_equal(out, other)


def test_crop_and_brightness_keep_the_shape_and_range():
  images = _gradient_images()
  settings = _settings(augment_crop=0.3, augment_brightness=0.2)
  out = training.augment(images, settings, tf.constant([0, 0], tf.int64)).numpy()
  assert out.shape == images.shape
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert not np.allclose(out, images)
  # Cropping a horizontal ramp keeps it a ramp: left darker than right.
  assert (out[:, :, 0].mean(axis=(1, 2)) < out[:, :, -1].mean(axis=(1, 2))).all()


def test_bad_augmentation_settings_stop_at_load():
  with pytest.raises(ConfigError, match='augment_crop'):
    load_config(None, {'training.augment_crop': 0.5})
  with pytest.raises(ConfigError, match='augment_brightness'):
    load_config(None, {'training.augment_brightness': -0.1})
  glove = 'pipeline/configs/rotten_tomatoes_glove.yaml'
  with pytest.raises(ConfigError, match='for images'):
    load_config(glove, {'training.augment_flip': True})


def test_the_trainer_augments_fine_tuning_and_exports_the_plain_model(
    tmp_path, monkeypatch):
  made = trainer_inputs.make_trainer_inputs(str(tmp_path / 'inputs'),
                                            train=48, eval_=24)
  traced = []

  def spy(images, settings, seed):
    traced.append(images.shape.as_list())
    return augment(images, settings, seed)

  augment = training.augment
  monkeypatch.setattr(training, 'augment', spy)
  config = load_config(None, {
      'name': 'augmented', 'module.input_size': [32, 32],
      'module.control_handle': None, 'model.integration': 'fine_tune',
      'training.epochs': 1, 'training.batch_size': 16,
      'training.learning_rate': 0.001, 'training.augment_flip': True,
      'training.augment_crop': 0.1, 'training.augment_brightness': 0.1})
  trainer_inputs.trainer_do(
      made, str(tmp_path / 'out'),
      {k: v for k, v in config.to_dict().items() if k in TRAINER_SECTIONS})
  report = json.loads((tmp_path / 'out' / 'Trainer' / 'model_run' / '1' /
                       'training_report.json').read_text())
  assert report['augmentation'] == {
      'flip': True, 'crop': 0.1, 'brightness': 0.1,
      'applied': 'every training batch'}
  assert traced and traced[0][1:] == [32, 32, 3]  # in the training input
  # The served model holds no random layer: the same input, the same answer.
  served = tf.saved_model.load(str(tmp_path / 'out' / 'Trainer' / 'model' /
                                   '1' / 'Format-Serving'))
  records = tf.constant(trainer_inputs.records(made)[:4])
  first = served.signatures['serving_default'](examples=records)
  second = served.signatures['serving_default'](examples=records)
  np.testing.assert_array_equal(first['probabilities'].numpy(),
                                second['probabilities'].numpy())
  assert not [layer for layer in export.load_core(
      str(tmp_path / 'out' / 'Trainer' / 'model' / '1' / 'Format-Serving')
  ).submodules if type(layer).__name__.startswith('Random')]
