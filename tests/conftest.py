"""Test session set-up: Keras 2 for hub.KerasLayer/TFMA, before TensorFlow loads."""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def pytest_terminal_summary(terminalreporter):
  """The reliability table: what the fault-injection and bad-input tests saw
  (tests/reliability.py; only what passed its asserts is counted)."""
  import reliability  # pylint: disable=g-import-not-at-top
  faults = reliability.RESULTS['faults']
  bad = reliability.RESULTS['bad_inputs']
  if not faults and not bad:
    return
  write = terminalreporter.write_line
  terminalreporter.section('reliability')
  if faults:
    write(f'faults injected: {len(faults)}; runs recovered: '
          f'{sum(f["recovered"] for f in faults)}; versions pushed: at most '
          f'{max(f["versions_pushed"] for f in faults)} per chain of runs; '
          f'half-written versions seen: '
          f'{sum(f["half_written"] for f in faults)}')
    write('  faults: ' + ', '.join(f['name'] for f in faults))
  if bad:
    clear = [b for b in bad if b['outcome'] == 'clear_error']
    handled = [b for b in bad if b['outcome'] == 'handled']
    write(f'bad inputs tried: {len(bad)}; clear errors: {len(clear)}; '
          f'handled: {len(handled)}')
    write('  handled: ' + (', '.join(b['name'] for b in handled) or 'none'))
