"""Every executor reads and writes artifacts through TFX's / TensorFlow's
filesystem layer (tfx.dsl.io.fileio, tf.io.gfile), never through Python's own
file calls, which only see POSIX folders: a pipeline root is often gs:// or
s3://, where `open()` or `os.path.exists` on an artifact URI fails or lies.

The scan covers the code that runs inside components and the run summary,
which reads artifacts back. Left out, each for a stated reason: the offline
module builders and module-handle resolution (hub_modules: local build and
TF Hub cache folders, never artifact URIs; gs:// handles go through
tensorflow_hub), the bundled data sets and asset downloads (datasets,
assets.py: written on the launching machine at build time), and storage.py
(looks for the machine's own ~/.aws/credentials).
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_ARTIFACT_IO = ('components/hub_modules/', 'components/datasets/',
                   'components/assets.py', 'components/storage.py')
SCANNED = sorted(
    p for p in list((REPO / 'components').rglob('*.py')) +
    [REPO / 'pipeline' / 'summary.py']
    if not str(p.relative_to(REPO)).startswith(NOT_ARTIFACT_IO))

# module -> functions of it that touch the local file system only.
POSIX_ONLY = {
    'os': {'listdir', 'makedirs', 'mkdir', 'remove', 'unlink', 'rename',
           'replace', 'walk', 'stat', 'scandir', 'rmdir'},
    'os.path': {'exists', 'isdir', 'isfile', 'getsize', 'getmtime', 'lexists'},
    'shutil': {'copy', 'copy2', 'copyfile', 'copytree', 'rmtree', 'move'},
    'glob': {'glob', 'iglob'},
}


def _dotted(node) -> str:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return f'{_dotted(node.value)}.{node.attr}'
  return ''


def posix_file_calls(source: str):
  """(line, call) of each Python-only file call in `source`."""
  found = []
  for node in ast.walk(ast.parse(source)):
    # `from os import path, listdir` and the like would hide the calls.
    if isinstance(node, ast.ImportFrom) and node.module in POSIX_ONLY and any(
        a.name in POSIX_ONLY[node.module] or a.name == 'path'
        for a in node.names):
      found.append((node.lineno, f'from {node.module} import ...'))
    if not isinstance(node, ast.Call):
      continue
    name = _dotted(node.func)
    module, _, function = name.rpartition('.')
    if name == 'open' or function in POSIX_ONLY.get(module, ()):
      found.append((node.lineno, name))
    elif name in ('Path', 'pathlib.Path'):
      found.append((node.lineno, name))
  return sorted(found)


def test_the_scan_finds_what_it_looks_for():
  source = ('import os, shutil, glob\n'
            'from os import path\n'
            'with open(uri) as f: pass\n'
            'os.path.exists(uri)\n'
            'shutil.copytree(a, b)\n'
            'glob.glob(p)\n'
            'Path(uri).read_text()\n'
            'fileio.open(uri)\n'
            'tf.io.gfile.exists(uri)\n'
            'Image.open(io.BytesIO(b))\n')
  assert [call for _, call in posix_file_calls(source)] == [
      'from os import ...', 'open', 'os.path.exists', 'shutil.copytree',
      'glob.glob', 'Path']


def test_scan_covers_every_executor():
  names = {str(p.relative_to(REPO)) for p in SCANNED}
  for executor in (REPO / 'components').rglob('executor.py'):
    assert str(executor.relative_to(REPO)) in names
  assert 'components/anomaly_gate/component.py' in names


@pytest.mark.parametrize('path', SCANNED, ids=lambda p: str(p.relative_to(REPO)))
def test_no_python_file_calls_on_artifacts(path):
  found = posix_file_calls(path.read_text())
  assert not found, (
      f'{path.relative_to(REPO)} uses Python file calls, which fail on '
      f'gs:// and s3:// artifact URIs: {found}. Use tfx.dsl.io.fileio or '
      'tf.io.gfile.')
