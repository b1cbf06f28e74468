"""The data snapshot: which files a run ingests, when that changes, and which
push it is measured against (components/data_snapshot/snapshot.py), and the
ExampleGen that ingests it."""

import json
import os
import pathlib
import re
import shutil
import time

import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

import reliability
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
  """span-<number> with train/ and eval/ files (`number` as written)."""
  for split in ('train', 'eval'):
    _records(root / f'span-{number}' / split / 'part-0.tfrecord', labels)


def test_spans_window_and_newest_eval(tmp_path):
  for number in ('1', '2', '10', '03'):  # numeric order; padding allowed
    _span(tmp_path, number)
  (tmp_path / 'span-x').mkdir()  # not a span
  (tmp_path / 'notes.txt').write_text('ignored')
  assert snapshot.list_spans(str(tmp_path), 'span-{SPAN}') == {
      1: 'span-1', 2: 'span-2', 3: 'span-03', 10: 'span-10'}
  snap, waiting = snapshot.examples_snapshot(str(tmp_path), 'tfrecord',
                                             'span-{SPAN}', 3)
  assert waiting == []
  assert snap['spans'] == [2, 3, 10] and snap['span'] == 10
  assert snap['splits'] == {
      'train': ['span-2/train/*', 'span-03/train/*', 'span-10/train/*'],
      'eval': ['span-10/eval/*']}
  assert snap['fingerprint']['files'] == 4
  # Fewer spans than the window: all of them.
  assert snapshot.examples_snapshot(
      str(tmp_path), 'tfrecord', 'span-{SPAN}', 9)[0]['spans'] == [1, 2, 3, 10]
  # Two folders for one span: which one is meant is not guessed.
  _span(tmp_path, '0010')
  with pytest.raises(snapshot.SnapshotError, match='two folders for span 10'):
    snapshot.list_spans(str(tmp_path), 'span-{SPAN}')


def test_ready_marker_holds_back_a_delivery_in_progress(tmp_path):
  _span(tmp_path, 1)
  (tmp_path / 'span-1' / '_SUCCESS').write_text('')

  def take():
    return snapshot.take(str(tmp_path), 'tfrecord', 'span-{SPAN}', 3,
                         str(tmp_path / 'serving'), str(tmp_path / 'state'),
                         'pipeline-1', ready_marker='_SUCCESS')

  before = take()
  assert json.loads(before['examples'])['spans'] == [1]
  assert before['waiting'] == []
  # span-2 is being written: it waits, and what later steps cache on does
  # not change, so the run is a cache hit rather than a retrain.
  _span(tmp_path, 2)
  during = take()
  assert during['waiting'] == [2]
  assert (during['examples'], during['baseline']) == (
      before['examples'], before['baseline'])
  (tmp_path / 'span-2' / '_SUCCESS').write_text('')
  after = take()
  assert json.loads(after['examples'])['spans'] == [1, 2]
  assert after['waiting'] == []
  # Without spans, the data root itself must hold the marker.
  plain = tmp_path / 'plain'
  _records(plain / 'train' / 'a.tfrecord', [0])
  _records(plain / 'eval' / 'a.tfrecord', [0])
  with pytest.raises(snapshot.SnapshotError, match='not complete'):
    snapshot.examples_snapshot(str(plain), ready_marker='_SUCCESS')
  (plain / '_SUCCESS').write_text('')
  assert snapshot.examples_snapshot(str(plain), ready_marker='_SUCCESS')[0][
      'fingerprint']['files'] == 2


def test_fingerprint_changes_with_the_files_and_only_then(tmp_path):
  _records(tmp_path / 'train' / 'a.tfrecord', [0, 1])
  _records(tmp_path / 'eval' / 'a.tfrecord', [0])
  first, _ = snapshot.examples_snapshot(str(tmp_path))
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


@pytest.fixture(scope='module')
def tiny_saved_model(tmp_path_factory):
  """A SavedModel with one variable: a push the baseline check loads."""
  folder = tmp_path_factory.mktemp('tiny_saved_model') / 'model'
  module = tf.Module()
  module.weights = tf.Variable(tf.range(1000, dtype=tf.float32))
  module.serve = tf.function(lambda x: x * module.weights,
                             input_signature=[tf.TensorSpec([], tf.float32)])
  tf.saved_model.save(module, str(folder))
  return folder


@pytest.fixture
def push(tiny_saved_model):
  def push(serving, version):
    shutil.copytree(tiny_saved_model, serving / str(version))
    return str(serving / str(version))
  return push


def test_baseline_is_the_push_in_service_when_the_data_arrived(tmp_path,
                                                                push):
  serving, state = tmp_path / 'serving', str(tmp_path / 'state')
  _records(tmp_path / 'data' / 'train' / 'a.tfrecord', [0])
  _records(tmp_path / 'data' / 'eval' / 'a.tfrecord', [0])
  data = str(tmp_path / 'data')

  def baseline(identity='pipeline-1'):
    return snapshot.take(data, 'tfrecord', None, 1, str(serving), state,
                         identity)['baseline']

  assert snapshot.latest_version(str(serving)) is None
  assert baseline() == ''  # nothing pushed yet
  v100 = push(serving, 100)  # the first run's push
  (serving / '200').mkdir()  # a push still being written: no saved_model.pb
  # Same data, same pipeline: the same baseline as the run before, so that
  # run's results are reused and nothing new is pushed.
  assert baseline() == ''
  # The pipeline changed (what shapes the model, or the image): the push in
  # service now.
  assert baseline('pipeline-2') == v100
  assert baseline('pipeline-2') == v100
  # New data: the push in service now, and it stays that for this data,
  # even once this data's own model is pushed.
  _records(tmp_path / 'data' / 'train' / 'b.tfrecord', [1])
  assert baseline('pipeline-2') == v100
  v300 = push(serving, 300)
  assert baseline('pipeline-2') == v100
  # The data put back as it was: the model in service is measured again.
  os.remove(tmp_path / 'data' / 'train' / 'b.tfrecord')
  assert baseline('pipeline-2') == v300
  # The recorded push deleted: the newest one there.
  _records(tmp_path / 'data' / 'train' / 'c.tfrecord', [1])
  assert baseline('pipeline-2') == v300
  v400 = push(serving, 400)
  shutil.rmtree(v300)
  assert baseline('pipeline-2') == v400
  assert snapshot.latest_version(str(serving)) == v400


def test_example_gen_refuses_files_that_changed_after_the_snapshot(tmp_path):
  _records(tmp_path / 'train' / 'a.tfrecord', [0, 1])
  _records(tmp_path / 'eval' / 'a.tfrecord', [0])
  taken = json.dumps(snapshot.examples_snapshot(str(tmp_path))[0])
  _records(tmp_path / 'train' / 'late.tfrecord', [2])
  examples = standard_artifacts.Examples()
  examples.uri = str(tmp_path / 'out')
  with pytest.raises(gen_executor.SnapshotChangedError, match='files:3'):
    gen_executor.TFRecordExecutor().Do(
        {}, {'examples': [examples]},
        {'snapshot': taken, 'output_config': '{}',
         'output_data_format': 6, 'output_file_format': 5})
  assert not os.path.exists(tmp_path / 'out' / 'Split-train')


def test_example_gen_refuses_files_that_change_while_it_reads(
    tmp_path, monkeypatch):
  _records(tmp_path / 'train' / 'a.tfrecord', [0, 1])
  _records(tmp_path / 'eval' / 'a.tfrecord', [0])
  taken = json.dumps(snapshot.examples_snapshot(str(tmp_path))[0])
  real = snapshot.refingerprint
  calls = []

  def refingerprint(snap, check=False):
    calls.append(1)
    if len(calls) == 2:  # the check after reading: a file was rewritten
      _records(tmp_path / 'train' / 'a.tfrecord', [5, 6, 7])
    return real(snap, check)

  monkeypatch.setattr(snapshot, 'refingerprint', refingerprint)
  examples = standard_artifacts.Examples()
  examples.uri = str(tmp_path / 'out')
  with pytest.raises(gen_executor.SnapshotChangedError,
                     match='while this run read them'):
    gen_executor.TFRecordExecutor().Do(
        {}, {'examples': [examples]},
        {'snapshot': taken, 'output_config': '{}',
         'output_data_format': 6, 'output_file_format': 5})
  assert len(calls) == 2
  assert not examples.has_custom_property('input_fingerprint')


def test_example_gen_ingests_the_window(tmp_path):
  _span(tmp_path, 1, labels=(0, 0))
  _span(tmp_path, 2, labels=(1, 1, 1))
  _span(tmp_path, 3, labels=(2,))
  # A sub-folder under train/ is not read.
  _records(tmp_path / 'span-3' / 'train' / 'old' / 'x.tfrecord', [9])
  taken = json.dumps(snapshot.examples_snapshot(str(tmp_path), 'tfrecord',
                                                'span-{SPAN}', 2)[0])
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


def test_a_validation_folder_is_ingested_as_the_validation_split(tmp_path):
  plain = tmp_path / 'plain'
  for split in ('train', 'validation', 'eval'):
    _records(plain / split / 'a.tfrecord', [0, 1])
  snap, _ = snapshot.examples_snapshot(str(plain))
  assert snap['splits'] == {'train': ['train/*'], 'eval': ['eval/*'],
                            'validation': ['validation/*']}
  assert snap['fingerprint']['files'] == 3
  # Spans: the newest span's validation/ folder, when it has one.
  _span(tmp_path / 'spans', 1)
  _span(tmp_path / 'spans', 2)
  _records(tmp_path / 'spans' / 'span-2' / 'validation' / 'v.tfrecord', [1])
  snap, _ = snapshot.examples_snapshot(str(tmp_path / 'spans'), 'tfrecord',
                                       'span-{SPAN}', 2)
  assert snap['splits']['validation'] == ['span-2/validation/*']
  _records(tmp_path / 'spans3' / 'span-1' / 'validation' / 'v.tfrecord', [1])
  _span(tmp_path / 'spans3', 1)
  _span(tmp_path / 'spans3', 2)  # the newest brings none: ExampleGen carves
  snap, _ = snapshot.examples_snapshot(str(tmp_path / 'spans3'), 'tfrecord',
                                       'span-{SPAN}', 2)
  assert 'validation' not in snap['splits']


def _damage(path, how):
  data = bytearray(path.read_bytes())
  if how == 'truncated':
    data = data[:-5]  # a copy that stopped inside the last record
  else:
    data[30] ^= 0xff  # a byte changed inside the first record
  path.write_bytes(bytes(data))


@pytest.mark.parametrize('how', ['truncated', 'corrupt'])
def test_example_gen_names_a_truncated_or_corrupt_file(tmp_path, how):
  _records(tmp_path / 'train' / 'a.tfrecord', list(range(10)))
  _records(tmp_path / 'train' / 'b.tfrecord', list(range(10)))
  _records(tmp_path / 'eval' / 'a.tfrecord', [0, 1])
  _damage(tmp_path / 'train' / 'b.tfrecord', how)
  taken = json.dumps(snapshot.examples_snapshot(str(tmp_path))[0])
  examples = standard_artifacts.Examples()
  examples.uri = str(tmp_path / 'out')
  with pytest.raises(gen_executor.CorruptInputError) as raised:
    gen_executor.TFRecordExecutor().Do(
        {}, {'examples': [examples]},
        {'snapshot': taken, 'output_config': '{}',
         'output_data_format': 6, 'output_file_format': 5})
  message = str(raised.value)
  bad = str(tmp_path / 'train' / 'b.tfrecord')
  assert f'{bad}: {how}' in message
  assert ('ends inside record 10' if how == 'truncated'
          else 'record 1 fails its checksum') in message
  assert 'a.tfrecord' not in message  # the intact files are not named
  assert 'delivered again' in message
  # The run's summary reports the innermost exception: this one.
  assert raised.value.__cause__ is None and raised.value.__context__ is None
  reliability.record_bad_input(f'input: a {how} TFRecord shard', 'clear_error')


def _break(folder, how):
  folder = pathlib.Path(folder)
  if how == 'truncated saved_model.pb':
    graph = folder / 'saved_model.pb'
    graph.write_bytes(graph.read_bytes()[:-100])
  elif how == 'empty saved_model.pb':
    (folder / 'saved_model.pb').write_bytes(b'')
  elif how == 'variables deleted':
    shutil.rmtree(folder / 'variables')
  elif how == 'truncated variables':
    data, = (folder / 'variables').glob('variables.data-*')
    data.write_bytes(data.read_bytes()[:-100])
  else:  # a changed byte in the variables
    data, = (folder / 'variables').glob('variables.data-*')
    changed = bytearray(data.read_bytes())
    changed[len(changed) // 2] ^= 0xff
    data.write_bytes(bytes(changed))


BROKEN = {'truncated saved_model.pb': 'does not parse',
          'empty saved_model.pb': 'holds no graph',
          'variables deleted': 'variables (variables/variables.index) are missing',
          'truncated variables': 'do not read back',
          'corrupt variables': 'do not read back'}


@pytest.mark.parametrize('how', list(BROKEN))
def test_a_broken_baseline_push_stops_the_snapshot(tmp_path, push, how):
  """The newest push does not load: the run stops before anything is
  trained or measured, naming the folder and the fix; once that folder is
  removed, the push before it is the baseline."""
  serving, state = tmp_path / 'serving', str(tmp_path / 'state')
  _records(tmp_path / 'data' / 'train' / 'a.tfrecord', [0])
  _records(tmp_path / 'data' / 'eval' / 'a.tfrecord', [0])
  data = str(tmp_path / 'data')
  v1 = push(serving, 1)
  v2 = push(serving, 2)
  _break(v2, how)
  with pytest.raises(snapshot.BrokenBaselineError) as raised:
    snapshot.take(data, 'tfrecord', None, 1, str(serving), state, 'p')
  message = str(raised.value)
  assert f'the pushed model {v2}' in message
  assert BROKEN[how] in message
  assert 'Remove that version folder' in message
  # Not recorded: the next run looks again.
  assert not os.path.exists(os.path.join(state, snapshot.LAST_SNAPSHOT))
  shutil.rmtree(v2)
  assert snapshot.take(data, 'tfrecord', None, 1, str(serving), state,
                       'p')['baseline'] == v1
  # A kept baseline broken since: the same error.
  _break(v1, how)
  with pytest.raises(snapshot.BrokenBaselineError, match=re.escape(v1)):
    snapshot.take(data, 'tfrecord', None, 1, str(serving), state, 'p')
  reliability.record_bad_input(f'baseline push: {how}', 'clear_error')
