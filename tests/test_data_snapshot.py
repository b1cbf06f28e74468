"""The data snapshot: which files a run ingests, when that changes, and which
push it is measured against (components/data_snapshot/snapshot.py), and the
ExampleGen that ingests it."""

import json
import os
import time

import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from hubpipe.components.data_snapshot import snapshot
from hubpipe.components.snapshot_example_gen import executor as gen_executor


def _records(path, labels):
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for label in labels:
      example = tf.train.Example(features=tf.train.Features(feature={
          'label': tf.train.Feature(int64_list=tf.train.Int64List(
              value=[label]))}))
      writer.write(example.SerializeToString())


def _span(root, number, labels=(0, 1, 2)):
  for split in ('train', 'eval'):
    _records(root / f'span-{number}' / split / 'part-0.tfrecord', labels)


def test_spans_window_and_newest_eval(tmp_path):
  for number in (1, 2, 10, 3):  # numeric order, not text order
    _span(tmp_path, number)
  (tmp_path / 'span-x').mkdir()  # not a span
  (tmp_path / 'notes.txt').write_text('ignored')
  assert snapshot.list_spans(str(tmp_path), 'span-{SPAN}') == [1, 2, 3, 10]
  snap = snapshot.examples_snapshot(str(tmp_path), 'tfrecord', 'span-{SPAN}', 3)
  assert snap['spans'] == [2, 3, 10] and snap['span'] == 10
  assert snap['splits'] == {
      'train': ['span-2/train/*', 'span-3/train/*', 'span-10/train/*'],
      'eval': ['span-10/eval/*']}
  assert snap['fingerprint']['files'] == 4
  # Fewer spans than the window: all of them.
  assert snapshot.examples_snapshot(
      str(tmp_path), 'tfrecord', 'span-{SPAN}', 9)['spans'] == [1, 2, 3, 10]


def test_fingerprint_changes_with_the_files_and_only_then(tmp_path):
  _records(tmp_path / 'train' / 'a.tfrecord', [0, 1])
  _records(tmp_path / 'eval' / 'a.tfrecord', [0])
  first = snapshot.examples_snapshot(str(tmp_path))
  assert first['spans'] is None
  assert first['splits'] == {'train': ['train/*'], 'eval': ['eval/*']}
  again = json.loads(json.dumps(first, sort_keys=True))
  # The same files, listed again (after a JSON round trip): the same.
  assert snapshot.refingerprint(again) == first['fingerprint']
  # A new file, then a rewritten one: a new fingerprint each time.
  _records(tmp_path / 'train' / 'b.tfrecord', [2])
  added = snapshot.refingerprint(first)
  assert added != first['fingerprint'] and added['files'] == 3
  time.sleep(1.1)  # mtimes may be kept in whole seconds
  _records(tmp_path / 'train' / 'b.tfrecord', [3])
  assert snapshot.refingerprint(first) != added


def test_bad_data_roots_name_the_problem(tmp_path):
  with pytest.raises(snapshot.SnapshotError, match='is not a folder'):
    snapshot.examples_snapshot(str(tmp_path / 'missing'))
  with pytest.raises(snapshot.SnapshotError, match='span_pattern'):
    snapshot.examples_snapshot(str(tmp_path), 'tfrecord', 'span-{SPAN}', 2)
  _records(tmp_path / 'span-1' / 'train' / 'a.tfrecord', [0])
  with pytest.raises(snapshot.SnapshotError, match='span-1/eval'):
    snapshot.examples_snapshot(str(tmp_path), 'tfrecord', 'span-{SPAN}', 2)


def _push(serving, version):
  (serving / str(version)).mkdir(parents=True)
  (serving / str(version) / 'saved_model.pb').write_bytes(b'm')
  return str(serving / str(version))


def test_baseline_is_the_push_in_service_when_the_data_was_first_seen(tmp_path):
  serving, state = tmp_path / 'serving', str(tmp_path / 'state')
  _records(tmp_path / 'data' / 'train' / 'a.tfrecord', [0])
  _records(tmp_path / 'data' / 'eval' / 'a.tfrecord', [0])
  data = str(tmp_path / 'data')

  def baseline(identity='pipeline-1'):
    return snapshot.take(data, 'tfrecord', None, 1, str(serving), state,
                         identity)['baseline']

  assert snapshot.latest_version(str(serving)) is None
  assert baseline() == ''  # nothing pushed yet
  _push(serving, 100)
  (serving / '200').mkdir()  # a push still being written: no saved_model.pb
  # Same data, same pipeline: still what was in service when first seen.
  assert baseline() == ''
  # The pipeline changed (config or image): the push in service now.
  assert baseline('pipeline-2') == str(serving / '100')
  # New data: the push in service now, and it stays that for this data.
  _records(tmp_path / 'data' / 'train' / 'b.tfrecord', [1])
  assert baseline() == str(serving / '100')
  _push(serving, 300)
  assert baseline() == str(serving / '100')
  assert snapshot.latest_version(str(serving)) == str(serving / '300')


def test_example_gen_refuses_files_that_changed_after_the_snapshot(tmp_path):
  _records(tmp_path / 'train' / 'a.tfrecord', [0, 1])
  _records(tmp_path / 'eval' / 'a.tfrecord', [0])
  taken = json.dumps(snapshot.examples_snapshot(str(tmp_path)))
  _records(tmp_path / 'train' / 'late.tfrecord', [2])
  examples = standard_artifacts.Examples()
  examples.uri = str(tmp_path / 'out')
  with pytest.raises(gen_executor.SnapshotChangedError, match='files:3'):
    gen_executor.TFRecordExecutor().Do(
        {}, {'examples': [examples]},
        {'snapshot': taken, 'output_config': '{}',
         'output_data_format': 6, 'output_file_format': 5})
  assert not os.path.exists(tmp_path / 'out' / 'Split-train')


def test_example_gen_ingests_the_window(tmp_path):
  _span(tmp_path, 1, labels=(0, 0))
  _span(tmp_path, 2, labels=(1, 1, 1))
  _span(tmp_path, 3, labels=(2,))
  taken = json.dumps(snapshot.examples_snapshot(str(tmp_path), 'tfrecord',
                                                'span-{SPAN}', 2))
  examples = standard_artifacts.Examples()
  examples.uri = str(tmp_path / 'out')
  gen_executor.TFRecordExecutor().Do(
      {}, {'examples': [examples]},
      {'snapshot': taken, 'output_config': '{}', 'output_data_format': 6,
       'output_file_format': 5})

  def labels(split):
    files = tf.io.gfile.glob(str(tmp_path / 'out' / f'Split-{split}' / '*'))
    return sorted(tf.train.Example.FromString(r.numpy()).features.feature[
        'label'].int64_list.value[0] for r in tf.data.TFRecordDataset(
            files, compression_type='GZIP'))

  assert labels('train') == [1, 1, 1, 2]  # spans 2 and 3
  assert labels('eval') == [2]  # the newest span
  assert examples.span == 3
  assert json.loads(examples.get_string_custom_property('spans')) == [2, 3]
  assert examples.get_string_custom_property(
      'input_fingerprint').startswith('files:3,')
