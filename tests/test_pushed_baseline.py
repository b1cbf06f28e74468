"""LatestPushedModel's executor, in process: which push it picks, and what it
hands on when nothing is pushed."""

import os

from tfx.types import standard_artifacts

from hubpipe.components.pushed_baseline import executor


def _push(serving, version, complete=True):
  folder = serving / str(version)
  folder.mkdir(parents=True)
  if complete:
    (folder / 'saved_model.pb').write_bytes(b'model %d' % version)


def _run(tmp_path, serving, model_uri=None):
  out = standard_artifacts.Model()
  out.uri = str(tmp_path / 'out')
  inputs = {}
  if model_uri:
    model = standard_artifacts.Model()
    model.uri = model_uri
    inputs['model'] = [model]
  executor.Executor().Do(inputs, {'baseline_model': [out]},
                         {'serving_dir': str(serving)})
  return out


def test_the_newest_complete_numbered_push(tmp_path):
  serving = tmp_path / 'serving'
  for version in (9, 10, 2):  # numeric order, not text order
    _push(serving, version)
  _push(serving, 11, complete=False)  # still being written
  (serving / 'latest').mkdir()
  assert executor.latest_version(str(serving)) == str(serving / '10')
  out = _run(tmp_path, serving)
  assert out.get_string_custom_property('baseline_source') == 'pushed'
  copied = tmp_path / 'out' / 'Format-Serving' / 'saved_model.pb'
  assert copied.read_bytes() == b'model 10'


def test_nothing_pushed(tmp_path):
  serving = tmp_path / 'no-serving-yet'
  assert executor.latest_version(str(serving)) is None
  # Without a stand-in the Model is empty, and says so.
  out = _run(tmp_path, serving)
  assert out.get_string_custom_property('baseline_source') == 'none'
  assert not os.path.exists(tmp_path / 'out' / 'Format-Serving')
  # With the candidate as stand-in, the candidate is handed on.
  candidate = tmp_path / 'candidate'
  (candidate / 'Format-Serving').mkdir(parents=True)
  (candidate / 'Format-Serving' / 'saved_model.pb').write_bytes(b'candidate')
  out = _run(tmp_path, serving, str(candidate))
  assert out.get_string_custom_property('baseline_source') == 'candidate'
  assert (tmp_path / 'out' / 'Format-Serving' / 'saved_model.pb'
          ).read_bytes() == b'candidate'
