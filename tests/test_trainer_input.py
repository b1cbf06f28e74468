"""The Trainer's input: shuffled batches from class-sorted files, stratified
seeded samples, TFX's TrainArgs.num_steps honoured."""

import numpy as np
import pytest
from tfx.components.trainer import fn_args_utils
from tfx.proto import trainer_pb2
from tfx.types import standard_artifacts
from google.protobuf import json_format

import trainer_inputs
from hubpipe.components.modeling import inputs
from hubpipe.components.trainer import run
from hubpipe.pipeline.config import handoff, load_config

CLASSES = 3
TRAIN = 90


@pytest.fixture(scope='module')
def sorted_inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp('sorted')
  made = trainer_inputs.make_trainer_inputs(str(root), train=TRAIN, eval_=30,
                                            classes=CLASSES, class_sorted=True)
  assert made['train_labels'] == sorted(made['train_labels'])
  return root, made


def _examples(made):
  return trainer_inputs.examples_of(made)


def _training(root, made, train_steps=None, **overrides):
  """The Trainer's own `_Training`, from the FnArgs TFX's Trainer makes."""
  config = load_config(None, {'module.input_size': [32, 32],
                              'training.batch_size': 8, **overrides})
  schema = standard_artifacts.Schema()
  schema.uri = made['schema']
  graph = standard_artifacts.TransformGraph()
  graph.uri = made['transform_graph']
  fn_args = fn_args_utils.get_common_fn_args(
      {'examples': [_examples(made)], 'transform_graph': [graph],
       'schema': [schema]},
      {'train_args': json_format.MessageToJson(trainer_pb2.TrainArgs(
          splits=['train'], num_steps=train_steps)),
       'eval_args': json_format.MessageToJson(trainer_pb2.EvalArgs(
           splits=['validation']))})
  fn_args.custom_config = handoff(config, 'Trainer')
  fn_args.model_run_dir = str(root / 'Trainer' / 'model_run' / '1')
  fn_args.serving_model_dir = str(root / 'Trainer' / 'model' / '1')
  fn_args.hyperparameters = None
  fn_args.transform_output = fn_args.transform_graph_path  # as GenericExecutor
  return run._Training(fn_args)  # pylint: disable=protected-access


def test_training_batches_from_class_sorted_files_are_mixed(sorted_inputs):
  root, made = sorted_inputs
  t = _training(root, made)
  batches = [labels.numpy() for _, labels in
             t.dataset('train', training=True).take(t.steps_per_epoch(1))]
  # In file order the first 3 batches of 8 would all be class 0.
  assert all(len(set(b)) >= 2 for b in batches[:3]), batches[:3]
  seen = np.concatenate(batches)
  assert t.steps_per_epoch(1) == int(np.ceil(TRAIN / 8))
  # One epoch's worth of steps covers (about) every class equally.
  assert set(seen) == set(range(CLASSES))
  # The same seed, the same order; another seed, another.
  again = [labels.numpy() for _, labels in
           _training(root, made).dataset('train', training=True).take(3)]
  np.testing.assert_array_equal(np.concatenate(again),
                                np.concatenate(batches[:3]))
  other = [labels.numpy() for _, labels in _training(
      root, made, **{'training.seed': 7}).dataset('train', training=True).take(3)]
  assert not np.array_equal(np.concatenate(other), np.concatenate(batches[:3]))
  # Validation: one pass, every example once, in the order the label pass
  # read them (positions agree whatever the batch size).
  validation = np.concatenate(
      [labels.numpy() for _, labels in t.dataset('validation')])
  assert sorted(validation) == sorted(made['validation_labels'])
  np.testing.assert_array_equal(validation, t.validation_labels)


def test_train_steps_from_tfx_are_honoured(sorted_inputs):
  root, made = sorted_inputs
  t = _training(root, made, train_steps=20, **{'training.epochs': 4})
  assert t.steps_per_epoch(4) == 5  # 20 steps over 4 epochs
  assert _training(root, made).steps_per_epoch(4) == 12  # ceil(90 / 8)


def test_samples_are_seeded_stratified_and_cover_every_class(sorted_inputs):
  _, made = sorted_inputs
  config = load_config(None, {'module.input_size': [32, 32]})
  import tensorflow_transform as tft
  output = tft.TFTransformOutput(made['transform_graph'])
  x, y = inputs.sample([_examples(made)], 'train', output, config, 12)
  assert x.shape == (12, 32, 32, 3)
  # From class-sorted files the first 12 would all be class 0; the sample
  # takes each class in its share of the split.
  labels = np.array(made['train_labels'])
  share = np.bincount(labels, minlength=CLASSES) * 12 / len(labels)
  counts = np.bincount(y, minlength=CLASSES)
  assert counts.sum() == 12 and np.all(np.abs(counts - share) < 1), counts
  x2, y2 = inputs.sample([_examples(made)], 'train', output, config, 12)
  np.testing.assert_array_equal(y, y2)
  np.testing.assert_array_equal(x, x2)
  config.training.seed = 5
  x3, _ = inputs.sample([_examples(made)], 'train', output, config, 12)
  assert not np.array_equal(x, x3)


def test_stratified_indices():
  labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
  picked = inputs.stratified_indices(labels, 20, seed=0)
  assert len(picked) == 20 and len(set(picked)) == 20
  assert np.bincount(labels[picked]).tolist() == [16, 3, 1]
  # Fewer than there are: everything, in order.
  np.testing.assert_array_equal(inputs.stratified_indices(labels, 500, 0),
                                np.arange(100))
  # Every class gets one when the limit allows, even a rare one, and the
  # limit still holds.
  rare = np.array([0] * 990 + [1] * 5 + [2] * 5)
  picked = inputs.stratified_indices(rare, 10, seed=3)
  assert len(picked) == 10
  assert np.bincount(rare[picked]).tolist() == [8, 1, 1]
