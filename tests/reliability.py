"""What the reliability tests saw, for the table `make test` prints (conftest.py).

Tests record an outcome only after their asserts passed; a failed test
records nothing, and fails the suite.
"""

RESULTS = {'faults': [], 'bad_inputs': []}


def record_bad_input(name, outcome):
  """outcome: 'clear_error' (stopped with a message naming problem and fix)
  or 'handled' (the input was accepted and used correctly)."""
  assert outcome in ('clear_error', 'handled'), outcome
  RESULTS['bad_inputs'].append({'name': name, 'outcome': outcome})


def record_fault(name, recovered, versions_pushed, half_written):
  RESULTS['faults'].append({'name': name, 'recovered': recovered,
                            'versions_pushed': versions_pushed,
                            'half_written': half_written})
