"""LatestPushedModel's executor, in process: the push it is told to hand on,
and what it hands on when nothing is pushed."""

import json
import os

import pytest
from tfx.types import standard_artifacts

from hubpipe.components.pushed_baseline import executor


def _push(serving, version):
  folder = serving / str(version)
  folder.mkdir(parents=True)
  (folder / 'saved_model.pb').write_bytes(b'model %d' % version)
  return str(folder)


def _run(tmp_path, pushed_version, model_uri=None):
  out = standard_artifacts.Model()
  out.uri = str(tmp_path / 'out')
  inputs = {}
  if model_uri:
    model = standard_artifacts.Model()
    model.uri = model_uri
    inputs['model'] = [model]
  executor.Executor().Do(inputs, {'baseline_model': [out]},
                         {'pushed_version': pushed_version})
  return out


def test_the_named_push_is_copied_as_a_model(tmp_path):
  serving = tmp_path / 'serving'
  _push(serving, 12)
  chosen = _push(serving, 9)  # the snapshot's choice, not the newest
  out = _run(tmp_path, chosen)
  assert out.get_string_custom_property('baseline_source') == 'pushed'
  assert out.get_string_custom_property('baseline_path') == chosen
  copied = tmp_path / 'out' / 'Format-Serving' / 'saved_model.pb'
  assert copied.read_bytes() == b'model 9'


def test_a_named_push_that_is_gone_stops_the_step(tmp_path):
  with pytest.raises(executor.BaselineMissingError, match='DataSnapshot state'):
    _run(tmp_path, str(tmp_path / 'serving' / '7'))


def test_nothing_pushed(tmp_path):
  # Without a stand-in the Model is empty, and says so.
  out = _run(tmp_path, '')
  assert out.get_string_custom_property('baseline_source') == 'none'
  assert not os.path.exists(tmp_path / 'out' / 'Format-Serving')
  # The output is never an empty folder (on object storage: none at all).
  assert json.loads((tmp_path / 'out' / executor.RECORD_FILE).read_text()) == {
      'baseline_source': 'none', 'baseline_path': ''}
  # With the candidate as stand-in, the candidate is handed on.
  candidate = tmp_path / 'candidate'
  (candidate / 'Format-Serving').mkdir(parents=True)
  (candidate / 'Format-Serving' / 'saved_model.pb').write_bytes(b'candidate')
  out = _run(tmp_path, '', str(candidate))
  assert out.get_string_custom_property('baseline_source') == 'candidate'
  assert (tmp_path / 'out' / 'Format-Serving' / 'saved_model.pb'
          ).read_bytes() == b'candidate'


def test_the_evaluator_leaves_out_a_stand_in_baseline(tmp_path, monkeypatch):
  """The Evaluator hands TFX's executor the pushed baseline, and no baseline
  when the candidate stood in (or nothing was there): TFMA then evaluates
  the candidate once."""
  from tfx.components.evaluator import executor as tfx_evaluator  # pylint: disable=g-import-not-at-top
  from hubpipe.components.evaluator import executor as evaluator
  seen = []
  monkeypatch.setattr(tfx_evaluator.Executor, 'Do',
                      lambda self, inputs, outputs, props: seen.append(
                          sorted(inputs)))
  candidate = tmp_path / 'candidate'
  (candidate / 'Format-Serving').mkdir(parents=True)
  (candidate / 'Format-Serving' / 'saved_model.pb').write_bytes(b'm')
  serving = tmp_path / 'serving'
  for name, pushed, model in (('pushed', _push(serving, 3), None),
                              ('candidate', '', str(candidate)),
                              ('none', '', None)):
    baseline = _run(tmp_path / name, pushed, model)
    assert evaluator.baseline_source(baseline) == name
    evaluator.Executor().Do({'model': [standard_artifacts.Model()],
                             'baseline_model': [baseline]}, {}, {})
  assert seen == [['baseline_model', 'model'], ['model'], ['model']]
  # Without the record, the custom property says; without either, the
  # baseline is kept and evaluated as it is.
  unknown = standard_artifacts.Model()
  unknown.uri = str(tmp_path / 'elsewhere')
  unknown.set_string_custom_property('baseline_source', 'candidate')
  assert evaluator.baseline_source(unknown) == 'candidate'
  unknown = standard_artifacts.Model()
  unknown.uri = str(tmp_path / 'elsewhere')
  assert evaluator.baseline_source(unknown) == 'unknown'
  evaluator.Executor().Do({'model': [standard_artifacts.Model()],
                           'baseline_model': [unknown]}, {}, {})
  assert seen[-1] == ['baseline_model', 'model']
