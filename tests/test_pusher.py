"""hubpipe's Pusher, in process: a push is whole or absent, and a rerun of
a push that already happened does not push again."""

import json
import os
import time

import pytest
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from hubpipe.components.pusher import executor


def _model(root, name='model', content=b'graph'):
  model = standard_artifacts.Model()
  model.uri = str(root / name)
  serving = root / name / 'Format-Serving'
  (serving / 'variables').mkdir(parents=True)
  (serving / 'variables' / 'variables.index').write_bytes(b'index')
  (serving / 'model.tflite').write_bytes(b'tflite')
  (serving / 'saved_model.pb').write_bytes(content)
  return model


def _blessing(root, blessed=True, name='blessing'):
  blessing = standard_artifacts.ModelBlessing()
  blessing.uri = str(root / name)
  blessing.set_int_custom_property('blessed', int(blessed))
  return blessing


def _do(root, model, serving, blessed=True, blessing_name='blessing'):
  out = standard_artifacts.PushedModel()
  out.uri = str(root / f'pushed-{len(list(root.glob("pushed-*")))}')
  destination = pusher_pb2.PushDestination(
      filesystem=pusher_pb2.PushDestination.Filesystem(
          base_directory=str(serving)))
  executor.Executor().Do(
      {'model': [model],
       'model_blessing': [_blessing(root, blessed, blessing_name)]},
      {'pushed_model': [out]},
      {'push_destination': proto_utils.proto_to_json(destination)})
  return out


def test_a_push_is_one_whole_version_with_its_record(tmp_path):
  serving = tmp_path / 'serving'
  out = _do(tmp_path, _model(tmp_path), serving)
  assert out.get_int_custom_property('pushed') == 1
  version = out.get_string_custom_property('pushed_version')
  assert os.listdir(serving) == [version]
  folder = serving / version
  assert out.get_string_custom_property('pushed_destination') == str(folder)
  assert sorted(os.listdir(folder)) == ['model.tflite', 'push_record.json',
                                        'saved_model.pb', 'variables']
  record = json.loads((folder / 'push_record.json').read_text())
  assert record['source'] == str(tmp_path / 'model')
  assert record['saved_model_sha256'] == executor.digest(
      str(folder / 'saved_model.pb'))


def test_a_rerun_of_the_same_push_does_not_push_again(tmp_path):
  serving = tmp_path / 'serving'
  model = _model(tmp_path)
  first = _do(tmp_path, model, serving)
  again = _do(tmp_path, model, serving)
  assert len(os.listdir(serving)) == 1
  assert (again.get_string_custom_property('pushed_version') ==
          first.get_string_custom_property('pushed_version'))
  # Another model is pushed, after the newest, within the same second too.
  other = _do(tmp_path, _model(tmp_path, 'other', b'other graph'), serving)
  versions = sorted(int(v) for v in os.listdir(serving))
  assert len(versions) == 2
  assert other.get_string_custom_property('pushed_version') == str(versions[1])


def test_an_unblessed_model_is_not_pushed(tmp_path):
  serving = tmp_path / 'serving'
  out = _do(tmp_path, _model(tmp_path), serving, blessed=False)
  assert out.get_int_custom_property('pushed') == 0
  assert not serving.exists() or os.listdir(serving) == []


class _Killed(KeyboardInterrupt):
  """Stands for an interrupt (Ctrl-C, SIGTERM): not an Exception."""


def _die_at(point):
  def pause_point(name):
    if name == point:
      raise _Killed(name)
  return pause_point


def test_a_failed_copy_leaves_nothing(tmp_path, monkeypatch):
  """The copy fails halfway (a full disk): no version, no leftover; the
  next push succeeds."""
  serving = tmp_path / 'serving'
  model = _model(tmp_path)
  copied = []
  real_copy = executor.tf.io.gfile.copy

  def copy_then_die(src, dst, *args, **kwargs):
    if str(serving) in dst:  # the serving dir fills up after one file
      if copied:
        raise OSError(28, 'No space left on device', dst)
      copied.append(dst)
    return real_copy(src, dst, *args, **kwargs)

  monkeypatch.setattr(executor.tf.io.gfile, 'copy', copy_then_die)
  with pytest.raises(OSError, match='No space left'):
    _do(tmp_path, model, serving)
  monkeypatch.undo()
  assert copied and os.listdir(serving) == []
  out = _do(tmp_path, model, serving)
  assert os.listdir(serving) == [out.get_string_custom_property('pushed_version')]


def test_an_interrupted_push_cleans_up_and_a_killed_ones_leftover_goes_later(
    tmp_path, monkeypatch):
  """Interrupted mid-copy (Ctrl-C, SIGTERM): nothing is left. SIGKILLed,
  the hidden copy stays (tests/test_fault_injection.py kills a real run
  there): the next push pushes one version beside it, and removes it once
  it is an hour old."""
  serving = tmp_path / 'serving'
  model = _model(tmp_path)
  monkeypatch.setattr(executor.faults, 'pause_point',
                      _die_at('pusher_mid_copy'))
  with pytest.raises(_Killed):
    _do(tmp_path, model, serving)
  monkeypatch.undo()
  assert os.listdir(serving) == []
  # What a SIGKILL mid-copy leaves: a hidden folder, half written.
  left = f'{executor.ASIDE_PREFIX}{int(time.time())}-1-0123abcd'
  (serving / left / 'variables').mkdir(parents=True)
  out = _do(tmp_path, model, serving)
  version = out.get_string_custom_property('pushed_version')
  assert sorted(os.listdir(serving)) == sorted([version, left])
  assert executor.remove_stale_asides(str(serving), now=time.time()) == []
  removed = executor.remove_stale_asides(
      str(serving), now=time.time() + executor.STALE_ASIDE_SECONDS + 1)
  assert removed == [str(serving / left)]
  assert os.listdir(serving) == [version]


def test_on_object_storage_a_killed_push_is_redone_under_a_new_number(
    tmp_path, monkeypatch):
  """Object storage (no atomic rename; emulated on a local folder): the
  version folder is written in place, saved_model.pb last. Killed before
  it, the folder is no version; the rerun of the same model removes it and
  pushes under a new number (a model server may have given up on the old
  one). Another model's unfinished folder is left alone, numbered after."""
  serving = tmp_path / 'serving'
  model = _model(tmp_path)
  monkeypatch.setattr(executor, '_is_local', lambda path: False)
  with monkeypatch.context() as patch:
    patch.setattr(executor.faults, 'pause_point', _die_at('pusher_mid_copy'))
    with pytest.raises(_Killed):
      _do(tmp_path, model, serving)
  half, = os.listdir(serving)
  assert executor.versions(str(serving)) == {}
  assert not (serving / half / 'saved_model.pb').exists()
  assert (serving / half / 'variables' / 'variables.index').exists()
  out = _do(tmp_path, model, serving)
  version = out.get_string_custom_property('pushed_version')
  assert int(version) == int(half) + 1
  assert os.listdir(serving) == [version]
  assert (serving / version / 'saved_model.pb').read_bytes() == b'graph'
  assert executor.read_record(str(serving / version))['source'] == model.uri
  other = _model(tmp_path, 'other', content=b'other graph')
  with monkeypatch.context() as patch:
    patch.setattr(executor.faults, 'pause_point', _die_at('pusher_mid_copy'))
    with pytest.raises(_Killed):
      _do(tmp_path, other, serving)
  third = _model(tmp_path, 'third', content=b'third graph')
  out = _do(tmp_path, third, serving)
  assert int(out.get_string_custom_property('pushed_version')) == int(version) + 2
  assert sorted(os.listdir(serving)) == [version, str(int(version) + 1),
                                         str(int(version) + 2)]


def test_on_object_storage_a_push_that_lost_its_number_fails(tmp_path,
                                                             monkeypatch):
  """Two pushes took the same number (no rename to arbitrate): the one
  whose record was overwritten fails before its saved_model.pb."""
  serving = tmp_path / 'serving'
  monkeypatch.setattr(executor, '_is_local', lambda path: False)

  def another_push_writes_its_record(name):
    folder, = [serving / n for n in os.listdir(serving)]
    record = json.loads((folder / 'push_record.json').read_text())
    (folder / 'push_record.json').write_text(
        json.dumps({**record, 'push_id': 'someone else'}))

  monkeypatch.setattr(executor.faults, 'pause_point',
                      another_push_writes_its_record)
  with pytest.raises(RuntimeError, match='another push took version'):
    _do(tmp_path, _model(tmp_path), serving)
  folder, = os.listdir(serving)
  assert not (serving / folder / 'saved_model.pb').exists()


def test_a_model_pushed_before_a_later_push_is_not_pushed_again(tmp_path):
  """A rerun of a push that landed before its run was killed, after another
  model was pushed: not pushed again over the later one. The same model on
  a new blessing (a deliberate push of it) is pushed."""
  serving = tmp_path / 'serving'
  model = _model(tmp_path)
  first = _do(tmp_path, model, serving)
  _do(tmp_path, _model(tmp_path, 'other', b'other graph'), serving)
  again = _do(tmp_path, model, serving)
  assert again.get_int_custom_property('pushed') == 1  # it is in service
  assert (again.get_string_custom_property('pushed_version') ==
          first.get_string_custom_property('pushed_version'))
  assert len(os.listdir(serving)) == 2
  blessed_again = _do(tmp_path, model, serving, blessing_name='blessing-2')
  assert len(os.listdir(serving)) == 3
  assert int(blessed_again.get_string_custom_property('pushed_version')) == max(
      int(v) for v in os.listdir(serving))


def test_a_number_another_push_took_first_is_skipped(tmp_path, monkeypatch):
  """The rename onto a version another push created a moment before fails;
  the push takes the next number and leaves nothing behind."""
  serving = tmp_path / 'serving'
  real_rename = executor.tf.io.gfile.rename
  taken = []

  def rename(src, dst, *args, **kwargs):
    if not taken:  # another push lands on this number first
      os.makedirs(os.path.join(dst, 'variables'))
      open(os.path.join(dst, 'saved_model.pb'), 'wb').close()
      taken.append(os.path.basename(dst))
    return real_rename(src, dst, *args, **kwargs)

  monkeypatch.setattr(executor.tf.io.gfile, 'rename', rename)
  out = _do(tmp_path, _model(tmp_path), serving)
  version = out.get_string_custom_property('pushed_version')
  assert int(version) == int(taken[0]) + 1
  assert sorted(os.listdir(serving)) == sorted([taken[0], version])
  assert executor.read_record(str(serving / version))['version'] == version


def test_a_half_written_numbered_folder_is_skipped_not_overwritten(tmp_path):
  """A numbered folder without saved_model.pb (TFX's Pusher killed midway):
  not a version, and the next push numbers itself after it."""
  serving = tmp_path / 'serving'
  (serving / '9999999999').mkdir(parents=True)
  (serving / '9999999999' / 'model.tflite').write_bytes(b'half')
  assert executor.versions(str(serving)) == {}
  out = _do(tmp_path, _model(tmp_path), serving)
  assert out.get_string_custom_property('pushed_version') == '10000000000'
