"""The validation split: carved out of train per class, seeded, as ExampleGen
writes train."""

import collections
import os
import shutil
import tempfile

import apache_beam as beam
import tensorflow as tf

from hubpipe.components.snapshot_example_gen import content_order
from hubpipe.components.snapshot_example_gen import validation_split


def _example(label, i):
  return tf.train.Example(features=tf.train.Features(feature={
      'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
      'x': tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))}))


# Class 0: 40 examples, 1: 12, 2: 3, 3: 1 (cannot give one up).
SIZES = {0: 40, 1: 12, 2: 3, 3: 1}
EXAMPLES = [_example(label, i) for label, n in SIZES.items()
            for i in range(n)]


def _carve(examples, seed, fraction=0.25):
  """ExampleGen's writer with the carve: (train, validation) records."""
  folder = tempfile.mkdtemp()
  try:
    with beam.Pipeline() as p:
      _ = (p | beam.Create(examples)
           | content_order.WriteInContentOrder(
               os.path.join(folder, 'train'), seed,
               os.path.join(folder, 'spill'), carve={
                   'uri': os.path.join(folder, 'validation'),
                   'fraction': fraction, 'seed': seed,
                   'label_feature': 'label'}))
    assert not os.path.exists(os.path.join(folder, 'spill'))
    return {split: [r.numpy() for r in tf.data.TFRecordDataset(
        tf.io.gfile.glob(os.path.join(folder, split, '*')), 'GZIP')]
            for split in ('train', 'validation')}
  finally:
    shutil.rmtree(folder)


def _run(seed, fraction=0.25):
  return _carve(EXAMPLES, seed, fraction)


def _labels(serialized):
  return collections.Counter(
      tf.train.Example.FromString(s).features.feature['label'].int64_list.value[0]
      for s in serialized)


def test_each_class_gives_its_share_to_validation_and_nothing_is_lost():
  out = _run(seed=0)
  validation = _labels(out['validation'])
  assert validation == {0: 10, 1: 3, 2: 1}   # 25%, at least 1, none of 1
  assert _labels(out['train']) == {0: 30, 1: 9, 2: 2, 3: 1}
  everything = sorted(out['train'] + out['validation'])
  assert everything == sorted(e.SerializeToString() for e in EXAMPLES)


def test_the_same_seed_gives_the_same_split_another_seed_another():
  first = sorted(_run(seed=0)['validation'])
  assert sorted(_run(seed=0)['validation']) == first
  assert sorted(_run(seed=1)['validation']) != first


def test_serialized_records_are_carved_like_examples():
  assert validation_split.label_of(EXAMPLES[0].SerializeToString(),
                                   'label') == validation_split.label_of(
                                       EXAMPLES[0], 'label')
  assert validation_split.hash_of(EXAMPLES[0].SerializeToString(), 3) == (
      validation_split.hash_of(EXAMPLES[0], 3))
  assert validation_split.label_of(EXAMPLES[0], 'missing') == ''


def test_identical_records_go_together_and_a_class_keeps_one_in_train():
  copies = [_example(5, 0)] * 6 + [_example(5, 1)]
  out = _carve(copies, seed=0, fraction=0.5)
  # Two distinct records: one each way, copies with their original.
  train, validation = _labels(out['train']), _labels(out['validation'])
  assert train[5] >= 1 and validation[5] >= 1
  assert train[5] + validation[5] == 7


def test_count_for():
  assert [validation_split.count_for(n, 0.1) for n in (0, 1, 2, 9, 10, 26)] == [
      0, 0, 1, 1, 1, 3]
  assert validation_split.count_for(4, 0.9) == 3
