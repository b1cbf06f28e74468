"""ExampleGen's writer: the same examples give the same files, whatever the
order Beam delivers them in."""

import json
import os
import random

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import pytest
import tensorflow as tf
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from hubpipe.components.data_snapshot import snapshot
from hubpipe.components.image_folder_example_gen import component as image_component
from hubpipe.components.snapshot_example_gen import content_order
from hubpipe.components.snapshot_example_gen import executor as gen_executor
from hubpipe.components.snapshot_example_gen import validation_split


def _example(label, i):
  return tf.train.Example(features=tf.train.Features(feature={
      'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
      'x': tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[b'%d' % i * 20]))}))


# Class-sorted, as a delivery in class folders comes; one duplicate.
EXAMPLES = [_example(label, i) for label in range(3) for i in range(40)]
EXAMPLES.append(EXAMPLES[5])


def _write(examples, folder, seed=0, shard_bytes=1000, ranges=16,
           mode='in_memory', carve=None):
  options = PipelineOptions(direct_running_mode=mode, direct_num_workers=2)
  with beam.Pipeline(options=options) as p:
    _ = (p | beam.Create(examples)
         | content_order.WriteInContentOrder(
             str(folder), seed, str(folder) + '.spill', ranges, shard_bytes,
             carve))
  assert not os.path.exists(str(folder) + '.spill')  # removed
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
  # Another order, another runner mode (bundles in two worker processes),
  # another number of spill ranges (it follows an estimate of the size).
  assert _write(shuffled, tmp_path / 'b', mode='multi_processing',
                ranges=5) == names
  shards = len(names)
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
  _write(EXAMPLES, tmp_path / 'b', seed=1, shard_bytes=10 ** 6, ranges=1)
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


def test_each_shard_reads_exactly_the_ranges_that_overlap_it():
  spilled = [(0, 'a0', 400), (1, 'b1', 300), (1, 'a1', 300), (3, 'a3', 900),
             (2, 'a2', 100)]
  # 2000 bytes: two shards, each half of the hashes: ranges 0-1 and 2-3.
  assert content_order.plan(spilled, 4, 1000) == [
      (0, 2, ['a0', 'a1', 'b1']), (1, 2, ['a2', 'a3'])]
  # Three shards over four ranges: the middle one straddles two.
  assert [files for _, _, files in content_order.plan(spilled, 4, 700)] == [
      ['a0', 'a1', 'b1'], ['a1', 'a2', 'b1'], ['a2', 'a3']]
  assert content_order.plan([], 4, 1000) == [(0, 1, [])]
  for shards, ranges in ((3, 4), (7, 256), (1, 1), (256, 3)):
    covered = sorted({r for j in range(shards)
                      for r in content_order.ranges_of(j, shards, ranges)})
    assert covered == list(range(ranges))
  # Exact at the edges: the first and last hash of each shard.
  for j in range(7):
    low, high = content_order._bounds(j, 7)  # pylint: disable=protected-access
    for hashed in (low, high):
      assert content_order.part_of(hashed, 7) == j
      assert content_order.part_of(hashed, 256) in content_order.ranges_of(
          j, 7, 256)
  assert content_order.ranges_for(0) == 1
  assert content_order.ranges_for(10 * content_order.SHARD_BYTES) == 40
  assert content_order.ranges_for(10 ** 15) == content_order.MAX_RANGES


def test_the_carve_over_several_shards_is_the_carve_in_one(tmp_path):
  carve = lambda name: {'uri': str(tmp_path / name), 'fraction': 0.25,
                        'seed': 0, 'label_feature': 'label'}
  shuffled = list(EXAMPLES)
  random.Random(3).shuffle(shuffled)
  many = _write(EXAMPLES, tmp_path / 'train_many', carve=carve('val_many'))
  assert len(many) > 3
  assert sorted(os.listdir(tmp_path / 'val_many')) == many
  _write(shuffled, tmp_path / 'train_again', ranges=3,
         carve=carve('val_again'))
  _write(EXAMPLES, tmp_path / 'train_one', shard_bytes=10 ** 6,
         carve=carve('val_one'))
  every = lambda name: sorted(r for f in sorted(os.listdir(tmp_path / name))
                              for r in _records(tmp_path / name / f))
  assert every('val_many') == every('val_one')
  assert every('train_many') == every('train_one')
  assert _contents(tmp_path / 'val_many') == _contents(tmp_path / 'val_again')
  assert _contents(tmp_path / 'train_many') == _contents(
      tmp_path / 'train_again')
  assert len(set(every('val_one'))) == 30


def test_a_corrupt_spill_file_is_an_error(tmp_path):
  path = tmp_path / 'spill.tfrecord'
  path.write_bytes(content_order.tfrecord(b'abc')[:-2])
  with pytest.raises(IOError, match='truncated or corrupt'):
    list(content_order.read_tfrecords(str(path)))


# --------------------------------------------------------------------------
# SnapshotExampleGen's executors, as TFX runs them: the same data delivered
# in other files gives the same Examples, with validation carved.


def _tfrecords(path, examples):
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for example in examples:
      writer.write(example.SerializeToString())


def _ingest(executor, data, out, source='tfrecord'):
  taken = json.dumps(snapshot.examples_snapshot(str(data), source)[0])
  examples = standard_artifacts.Examples()
  examples.uri = str(out)
  props = {'snapshot': taken, 'output_config': '{}', 'output_data_format': 6,
           'output_file_format': 5, 'validation_fraction': 0.25,
           'label_feature': 'label', 'split_seed': 3}
  if source == 'image_folder':
    input_config, output_config = image_component.split_configs(str(data), 0)
    props['input_config'] = proto_utils.proto_to_json(input_config)
    props['output_config'] = proto_utils.proto_to_json(output_config)
  executor().Do({}, {'examples': [examples]}, props)
  return examples


def test_example_gen_writes_the_same_files_for_the_same_data(tmp_path):
  _tfrecords(tmp_path / 'one' / 'train' / 'all.tfrecord', EXAMPLES)
  _tfrecords(tmp_path / 'one' / 'eval' / 'e.tfrecord', EXAMPLES[:9])
  shuffled = list(EXAMPLES)
  random.Random(2).shuffle(shuffled)
  for i in range(3):  # the same examples, delivered in three files
    _tfrecords(tmp_path / 'two' / 'train' / f'{i}.tfrecord', shuffled[i::3])
  _tfrecords(tmp_path / 'two' / 'eval' / 'e.tfrecord', EXAMPLES[:9][::-1])
  one = _ingest(gen_executor.TFRecordExecutor, tmp_path / 'one',
                tmp_path / 'out1')
  two = _ingest(gen_executor.TFRecordExecutor, tmp_path / 'two',
                tmp_path / 'out2')
  for split in ('train', 'validation', 'eval'):
    folder = lambda out: tmp_path / out / f'Split-{split}'
    assert _contents(folder('out1')) == _contents(folder('out2')), split
  assert artifact_utils.decode_split_names(one.split_names) == [
      'train', 'eval', 'validation']
  assert one.get_string_custom_property('validation_source') == (
      'carved out of train: 0.25 of each class, seed 3')
  assert 'seed 3' in two.get_string_custom_property('record_order')
  validation = [r for f in tf.io.gfile.glob(
      str(tmp_path / 'out1' / 'Split-validation' / '*'))
                for r in _records(f)]
  # A quarter of each class's 40 distinct examples (a copy goes with its
  # original).
  assert len(set(validation)) == 30


def test_image_folder_executor_writes_in_content_order(tmp_path):
  from PIL import Image
  for label in ('cat', 'dog'):
    for split, count in (('train', 8), ('eval', 2)):
      folder = tmp_path / 'images' / split / label
      folder.mkdir(parents=True)
      for i in range(count):
        Image.new('RGB', (4, 4), (i * 20, len(label) * 30, 0)).save(
            folder / f'{i}.png')
  examples = _ingest(gen_executor.ImageFolderExecutor, tmp_path / 'images',
                     tmp_path / 'out', source='image_folder')
  counts = {split: sum(len(_records(f)) for f in tf.io.gfile.glob(
      str(tmp_path / 'out' / f'Split-{split}' / '*')))
            for split in ('train', 'validation', 'eval')}
  assert counts == {'train': 12, 'validation': 4, 'eval': 4}
  assert examples.has_custom_property('record_order')
  assert examples.get_string_custom_property('class_names')
