"""ExampleGen's writer: the same examples give the same files, whatever the
order Beam delivers them in."""

import os
import random

import apache_beam as beam
import pytest
import tensorflow as tf

from hubpipe.components.snapshot_example_gen import content_order
from hubpipe.components.snapshot_example_gen import validation_split


def _example(label, i):
  return tf.train.Example(features=tf.train.Features(feature={
      'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
      'x': tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[b'%d' % i * 20]))}))


# Class-sorted, as a delivery in class folders comes; one duplicate.
EXAMPLES = [_example(label, i) for label in range(3) for i in range(40)]
EXAMPLES.append(EXAMPLES[5])


def _write(examples, folder, seed=0, shard_bytes=1000):
  with beam.Pipeline() as p:
    _ = (p | beam.Create(examples)
         | content_order.WriteInContentOrder(str(folder), seed, shard_bytes))
  return sorted(os.listdir(folder))


def _records(path):
  return [r.numpy() for r in tf.data.TFRecordDataset(path, 'GZIP')]


def _contents(folder):
  return {name: (folder / name).read_bytes()
          for name in sorted(os.listdir(folder))}


def test_same_examples_in_any_order_give_byte_identical_files(tmp_path):
  shuffled = list(EXAMPLES)
  random.Random(1).shuffle(shuffled)
  names = _write(EXAMPLES, tmp_path / 'a')
  _write(shuffled, tmp_path / 'b')
  serialized = sum(len(e.SerializeToString()) for e in EXAMPLES)
  shards = content_order.shard_count(serialized, 1000)
  assert shards > 3
  assert names == [f'data_tfrecord-{i:05d}-of-{shards:05d}.gz'
                   for i in range(shards)]
  assert _contents(tmp_path / 'a') == _contents(tmp_path / 'b')
  # Every example once (the duplicate twice), read back as TFRecords.
  read = [r for name in names for r in _records(tmp_path / 'a' / name)]
  assert sorted(read) == sorted(e.SerializeToString() for e in EXAMPLES)
  # In hash order across the files: shard i holds the i-th range of hashes.
  hashes = [validation_split.hash_of(r, 0, content_order.SALT) for r in read]
  assert hashes == sorted(hashes)
  # A class-sorted delivery is spread over the files: the first file is not
  # all one class.
  first = {validation_split.label_of(r, 'label')
           for r in _records(tmp_path / 'a' / names[0])}
  assert len(first) > 1


def test_another_seed_another_order(tmp_path):
  _write(EXAMPLES, tmp_path / 'a', seed=0, shard_bytes=10 ** 6)
  _write(EXAMPLES, tmp_path / 'b', seed=1, shard_bytes=10 ** 6)
  (a,), (b,) = os.listdir(tmp_path / 'a'), os.listdir(tmp_path / 'b')
  one, two = _records(tmp_path / 'a' / a), _records(tmp_path / 'b' / b)
  assert sorted(one) == sorted(two) and one != two


def test_empty_split_is_one_empty_file(tmp_path):
  assert _write([], tmp_path / 'e') == ['data_tfrecord-00000-of-00001.gz']
  assert _records(tmp_path / 'e' / 'data_tfrecord-00000-of-00001.gz') == []


@pytest.mark.parametrize('data', [b'', b'x', b'\x00' * 300])
def test_framing_is_what_tensorflow_reads(tmp_path, data):
  path = tmp_path / 'r.tfrecord'
  path.write_bytes(content_order.tfrecord(data) * 2)
  assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == [data] * 2
