"""Outcomes of the reliability tests, for the reliability table (issue 18).

Tests call these after their asserts: a fault injected into a run (a kill,
a storage failure) and whether the pipeline recovered; a bad input (a
malformed request, a corrupt artifact) and how it was met.
"""

RESULTS = {'faults': [], 'bad_inputs': []}

BAD_INPUT_OUTCOMES = ('clear_error', 'handled')


def record_bad_input(name, outcome):
  """`outcome`: 'clear_error' (refused with an error that says what is
  wrong) or 'handled' (served, or skipped with a warning)."""
  if outcome not in BAD_INPUT_OUTCOMES:
    raise ValueError(f'outcome {outcome!r}: one of {BAD_INPUT_OUTCOMES}')
  RESULTS['bad_inputs'].append({'name': name, 'outcome': outcome})


def record_fault(name, recovered, versions_pushed, half_written):
  """A fault injected into a run: whether the next run recovered, how many
  versions were pushed, and whether anything half-written was left."""
  RESULTS['faults'].append({'name': name, 'recovered': bool(recovered),
                            'versions_pushed': versions_pushed,
                            'half_written': bool(half_written)})
