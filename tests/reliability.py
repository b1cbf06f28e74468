"""What the reliability tests found, for a terminal summary (conftest).

Tests record a row only after its asserts passed:
  record_bad_input(name, outcome): a bad input ended in a clear error
      ('clear_error') or was handled ('handled') (tests/test_bad_inputs.py);
  record_fault(name, recovered, versions_pushed, half_written): an injected
      fault, whether the next run recovered, how many versions it pushed and
      how many half-written leftovers it found.
"""

OUTCOMES = ('clear_error', 'handled')

RESULTS = {'faults': [], 'bad_inputs': []}


def record_bad_input(name: str, outcome: str) -> None:
  if outcome not in OUTCOMES:
    raise ValueError(f'outcome must be one of {OUTCOMES}, not {outcome!r}')
  RESULTS['bad_inputs'].append({'name': name, 'outcome': outcome})


def record_fault(name: str, recovered: bool, versions_pushed: int,
                 half_written: int) -> None:
  RESULTS['faults'].append({'name': name, 'recovered': bool(recovered),
                            'versions_pushed': int(versions_pushed),
                            'half_written': int(half_written)})
