"""The hubpipe command line: bad configs stop before anything runs."""

import json
import subprocess
import sys


def _hubpipe(*args):
  return subprocess.run([sys.executable, '-m', 'hubpipe.pipeline.cli', *args],
                        capture_output=True, text=True, timeout=120)


def test_bad_config_exits_2_naming_the_key(tmp_path):
  config = tmp_path / 'bad.yaml'
  config.write_text('training:\n  strategy: warp\n')
  result = _hubpipe('run', '--config', str(config), '--workdir', str(tmp_path / 'w'))
  assert result.returncode == 2
  assert 'training.strategy' in result.stderr
  assert 'multi_worker_mirrored' in result.stderr
  # Nothing ran; the work dir holds the summary of why (and the work dir's
  # lock file), nothing else.
  written = sorted(p.name for p in (tmp_path / 'w').iterdir())
  assert written == ['.lock', 'summary.json']
  summary = json.loads((tmp_path / 'w' / 'summary.json').read_text())
  assert summary['status'] == 'failed'
  assert summary['failed_step'] == 'config'
  assert 'training.strategy' in summary['error']
  assert summary['pushed'] is False


def test_unknown_command_is_refused():
  result = _hubpipe('fly')
  assert result.returncode == 2
  assert 'invalid choice' in result.stderr
