"""A digest of the code each step runs: an edit changes it, nothing else does."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubpipe.pipeline import code_version


def _copy(tmp_path):
  root = tmp_path / 'hubpipe'
  for path in code_version.files_of(
      {p for paths in code_version.STEPS.values() for p in paths}):
    target = root / path.relative_to(code_version.ROOT)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target)
  return root


def test_an_edit_changes_the_digest_of_the_steps_that_run_it(tmp_path):
  root = _copy(tmp_path)
  before = {step: code_version.digest_of(paths, root)
            for step, paths in code_version.STEPS.items()}
  # The same files give the same digest (and the installed package's).
  assert before == {step: code_version.digest_of(paths, root)
                    for step, paths in code_version.STEPS.items()}
  assert before['Trainer'] == code_version.digest('Trainer')
  run = root / 'components' / 'trainer' / 'run.py'
  run.write_text(run.read_text() + '\n# an edit\n')
  after = {step: code_version.digest_of(paths, root)
           for step, paths in code_version.STEPS.items()}
  changed = {step for step in before if before[step] != after[step]}
  # The Trainer's own code is the Trainer's alone.
  assert changed == {'Trainer'}
  # The modeling library is what the Trainer, the selector and the
  # Compressor share.
  model = root / 'components' / 'modeling' / 'model.py'
  model.write_text(model.read_text() + '\n# an edit\n')
  again = {step: code_version.digest_of(paths, root)
           for step, paths in code_version.STEPS.items()}
  assert {step for step in after if after[step] != again[step]} == {
      'Trainer', 'ModuleSelector', 'Compressor'}
  # An edit to the validation carve ingests again.
  carve = root / 'components' / 'snapshot_example_gen' / 'validation_split.py'
  carve.write_text(carve.read_text() + '\n# an edit\n')
  assert code_version.digest_of(code_version.STEPS['ExampleGen'], root) != (
      before['ExampleGen'])
  # An edit to the image preprocessing_fn reruns the Transform (and the
  # Trainer, whose input pipeline runs the Transform graph's code).
  image = root / 'components' / 'transform' / 'image.py'
  image.write_text(image.read_text() + '\n# an edit\n')
  again = {step: code_version.digest_of(paths, root)
           for step, paths in code_version.STEPS.items()}
  assert again['Transform'] != after['Transform']
  assert again['Trainer'] != after['Trainer']
  # A new file counts too; a cache folder does not.
  (root / 'components' / 'transform' / '__pycache__').mkdir(exist_ok=True)
  (root / 'components' / 'transform' / '__pycache__' / 'x.py').write_text('1')
  assert code_version.digest_of(code_version.STEPS['Transform'], root) == (
      again['Transform'])
  (root / 'components' / 'transform' / 'video.py').write_text('1')
  assert code_version.digest_of(code_version.STEPS['Transform'], root) != (
      again['Transform'])


@pytest.mark.parametrize('step', sorted(code_version.ENTRY_MODULES))
def test_the_digest_covers_every_hubpipe_module_the_step_imports(step):
  script = (
      'import importlib, json, sys\n'
      f'for name in {code_version.ENTRY_MODULES[step]!r}:\n'
      '  importlib.import_module(name)\n'
      'print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items()\n'
      '  if n.startswith("hubpipe") and getattr(m, "__file__", None))))\n')
  result = subprocess.run([sys.executable, '-c', script], capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert result.returncode == 0, result.stderr[-2000:]
  imported = {Path(f).resolve() for f in
              json.loads(result.stdout.strip().splitlines()[-1])}
  covered = {p.resolve() for p in code_version.files_of(
      code_version.STEPS[step])}
  assert imported and not imported - covered, sorted(
      str(p) for p in imported - covered)
