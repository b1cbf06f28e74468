"""How the ModuleSelector ranks its candidates, as pure functions (no TF).

A row is one candidate, a dict with at least `name`; a probed row also has
`accuracy` (the linear probe's validation accuracy), `latency_ms_b1` (CPU, per
example, batch 1) and `size_bytes` (the module on disk, None if unknown). A
row with `skipped` (the reason) was not probed: it ranks last, with rank None.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

OBJECTIVES = ('accuracy', 'budget', 'weighted')


def _probed(row: Dict) -> bool:
  return not row.get('skipped')


def _dominates(a: Dict, b: Dict) -> bool:
  return (a['accuracy'] >= b['accuracy'] and
          a['latency_ms_b1'] <= b['latency_ms_b1'] and
          (a['accuracy'] > b['accuracy'] or
           a['latency_ms_b1'] < b['latency_ms_b1']))


def pareto_front(rows: Sequence[Dict]) -> List[str]:
  """Names of the probed rows that no other is at least as good as on both
  probe accuracy (higher) and latency (lower), and better on one; fastest
  first. The choices worth making are on it; the others are beaten."""
  probed = [r for r in rows if _probed(r)]
  front = [r for r in probed if not any(_dominates(o, r) for o in probed)]
  return [r['name'] for r in sorted(front, key=lambda r: (r['latency_ms_b1'],
                                                          -r['accuracy']))]


def over_budget(row: Dict, max_latency_ms: Optional[float] = None,
                max_size_mb: Optional[float] = None) -> List[str]:
  """Why a probed row is over the budget ([] when it is within)."""
  reasons = []
  if max_latency_ms is not None and row['latency_ms_b1'] > max_latency_ms:
    reasons.append(f'latency {row["latency_ms_b1"]:.2f} ms > '
                   f'{max_latency_ms:g} ms')
  if max_size_mb is not None:
    if row.get('size_bytes') is None:
      reasons.append('size on disk unknown')
    elif row['size_bytes'] / 1e6 > max_size_mb:
      reasons.append(f'size {row["size_bytes"] / 1e6:.1f} MB > '
                     f'{max_size_mb:g} MB')
  return reasons


def score_rows(rows: Sequence[Dict], objective: str,
               max_latency_ms: Optional[float] = None,
               max_size_mb: Optional[float] = None,
               latency_weight: float = 0.0,
               size_weight: float = 0.0) -> List[Dict]:
  """Copies of the rows with 'score', 'within_budget' and 'over_budget'.

  The score is the probe accuracy, except for 'weighted': accuracy less
  latency_weight per doubling of latency over the fastest probed row, less
  size_weight per doubling of size over the smallest one. Skipped rows get
  None for all three.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f'objective "{objective}" is not one of '
                     f'{", ".join(OBJECTIVES)}.')
  probed = [r for r in rows if _probed(r)]
  min_latency = min((r['latency_ms_b1'] for r in probed), default=None)
  sizes = [r['size_bytes'] for r in probed if r.get('size_bytes')]
  min_size = min(sizes, default=None)
  scored = []
  for row in rows:
    row = dict(row)
    if not _probed(row):
      row.update(score=None, within_budget=None, over_budget=None)
      scored.append(row)
      continue
    score = row['accuracy']
    if objective == 'weighted':
      # max() guards a zero latency timing (a clock too coarse to see it).
      score -= latency_weight * math.log2(
          max(row['latency_ms_b1'], 1e-9) / max(min_latency, 1e-9))
      if row.get('size_bytes'):  # unknown size: no size penalty
        score -= size_weight * math.log2(row['size_bytes'] / min_size)
    reasons = over_budget(row, max_latency_ms, max_size_mb)
    row.update(score=score, within_budget=not reasons, over_budget=reasons)
    scored.append(row)
  return scored


def _budget_text(max_latency_ms, max_size_mb) -> str:
  limits = ([f'latency <= {max_latency_ms:g} ms'] if max_latency_ms is not None
            else []) + ([f'size <= {max_size_mb:g} MB']
                        if max_size_mb is not None else [])
  return ', '.join(limits) or 'no limits'


def _figures(row: Dict) -> str:
  size = ('size unknown' if row.get('size_bytes') is None
          else f'{row["size_bytes"] / 1e6:.1f} MB')
  return (f'probe accuracy {row["accuracy"]:.4f}, '
          f'{row["latency_ms_b1"]:.2f} ms/example, {size}')


def choose(rows: Sequence[Dict], objective: str = 'accuracy',
           max_latency_ms: Optional[float] = None,
           max_size_mb: Optional[float] = None,
           latency_weight: float = 0.0,
           size_weight: float = 0.0) -> Tuple[List[Dict], Dict]:
  """(rows ranked best first, {'chosen': name or None, 'reason': text}).

  Each ranked row has 'rank' (1 = chosen; None when skipped), 'score',
  'within_budget' and 'pareto'. Ties go to the lower latency, then to the
  earlier candidate in the config. The 'budget' objective never fails a run:
  with no candidate within the budget, the most accurate one is chosen and the
  reason says so.
  """
  scored = score_rows(rows, objective, max_latency_ms, max_size_mb,
                      latency_weight, size_weight)
  front = set(pareto_front(rows))
  order = {id(r): i for i, r in enumerate(scored)}

  def key(r):
    tie_break = (r['latency_ms_b1'], order[id(r)])
    if objective == 'weighted':
      return (-round(r['score'], 9),) + tie_break
    if objective == 'budget':
      return (not r['within_budget'], -r['accuracy']) + tie_break
    return (-r['accuracy'],) + tie_break

  probed = sorted((r for r in scored if _probed(r)), key=key)
  skipped = [r for r in scored if not _probed(r)]
  for rank, row in enumerate(probed, 1):
    row.update(rank=rank, pareto=row['name'] in front)
  for row in skipped:
    row.update(rank=None, pareto=False)
  ranked = probed + skipped
  if not probed:
    return ranked, {'chosen': None,
                    'reason': f'every one of the {len(rows)} candidates was '
                              'skipped; nothing to choose'}
  best = probed[0]
  count = f'{len(probed)} probed candidate{"s" if len(probed) > 1 else ""}'
  if objective == 'weighted':
    reason = (f'{best["name"]}: the best weighted score ({best["score"]:.4f}) '
              f'of {count}, with latency_weight {latency_weight:g} and '
              f'size_weight {size_weight:g} per doubling ({_figures(best)})')
  elif objective == 'budget':
    budget = _budget_text(max_latency_ms, max_size_mb)
    within = sum(1 for r in probed if r['within_budget'])
    if best['within_budget']:
      reason = (f'{best["name"]}: the most accurate of the {within} of '
                f'{count} within the budget ({budget}; {_figures(best)})')
    else:
      reason = (f'no candidate is within the budget ({budget}); chose the '
                f'most accurate anyway so that the run goes on: '
                f'{best["name"]} ({_figures(best)}; '
                f'{"; ".join(best["over_budget"])}). Raise the budget or add '
                'cheaper candidates')
  else:
    reason = (f'{best["name"]}: the highest probe accuracy of {count} '
              f'({_figures(best)})')
  if len(probed) > 1 and key(probed[1])[:-2] == key(best)[:-2]:
    reason += (f'; tied with {probed[1]["name"]}, chosen for '
               + ('its lower latency'
                  if best['latency_ms_b1'] < probed[1]['latency_ms_b1']
                  else 'coming first in selection.candidates'))
  return ranked, {'chosen': best['name'], 'reason': reason}
