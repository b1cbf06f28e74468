"""The Compressor's acceptance policy and its report, as pure functions.

Each measured variant is a row (dict) with at least: name,
validation_accuracy and validation_drop (against the uncompressed model, in
accuracy points as a fraction, on the validation sample: what the policy
chooses on), eval_accuracy and eval_drop (the same on the eval sample:
reported, never used to choose), size_bytes, size_ratio (against the float32 TFLite reference) and
latency_ms_b1; a row with `candidate: False` (e.g. the float32 reference)
is shown but never chosen. `choose` picks what the Pusher gets; `render_html` writes the
page a user reads.
"""

import html
import json
from typing import Dict, List, Optional, Sequence

from hubpipe.components import report_svg

UNCOMPRESSED = 'uncompressed'


def passes(row: Dict, max_accuracy_drop: float,
           max_size_ratio: Optional[float] = None,
           max_latency_ms: Optional[float] = None) -> List[str]:
  """Why `row` fails the policy ([] when it passes)."""
  reasons = []
  if row.get('error'):
    return [f'failed: {row["error"]}']
  if row['validation_drop'] > max_accuracy_drop + 1e-9:
    reasons.append(f'validation accuracy drop {row["validation_drop"]:.4f} > '
                   f'{max_accuracy_drop:.4f}')
  if max_size_ratio is not None and row['size_ratio'] > max_size_ratio:
    reasons.append(f'size ratio {row["size_ratio"]:.2f} > {max_size_ratio:.2f}')
  if max_latency_ms is not None and row['latency_ms_b1'] > max_latency_ms:
    reasons.append(f'latency {row["latency_ms_b1"]:.2f} ms > '
                   f'{max_latency_ms:.2f} ms')
  return reasons


def choose(rows: Sequence[Dict], max_accuracy_drop: float,
           max_size_ratio: Optional[float] = None,
           max_latency_ms: Optional[float] = None,
           on_no_pass: str = UNCOMPRESSED) -> Dict:
  """The decision: the smallest passing variant that is not slower than the
  float32 TFLite reference (more than 10%), else the smallest passing one.

  Returns {'chosen': name or None, 'reason': text, 'failures': {name: [..]}}.
  With no passing variant, `on_no_pass` decides: 'uncompressed' pushes the
  trained model as it is, 'none' pushes nothing.
  """
  failures = {r['name']: passes(r, max_accuracy_drop, max_size_ratio,
                                max_latency_ms) for r in rows}
  passing = [r for r in rows if not failures[r['name']]
             and r.get('candidate', True)]
  # A smaller file that runs slower than the float32 reference (dynamic-range
  # kernels under XNNPACK, say) is a poor trade unless nothing else passes.
  reference = next((r for r in rows if r['name'] == 'float32'
                    and not r.get('error')), None)
  # Round by round (speedup_b1, paired: `measure.paired_speedup`) when the
  # row has it.
  not_slower = [r for r in passing if reference is None or (
      r['speedup_b1'] >= 1 / 1.1 if 'speedup_b1' in r else
      r['latency_ms_b1'] <= reference['latency_ms_b1'] * 1.1)]
  if passing:
    best = min(not_slower or passing,
               key=lambda r: (r['size_bytes'], r['latency_ms_b1']))
    # Smaller passing variants set aside for their latency, said by name.
    slower = sorted(r['name'] for r in passing if r not in not_slower
                    and r['size_bytes'] < best['size_bytes'])
    return {'chosen': best['name'], 'failures': failures,
            'set_aside_as_slower': slower,
            'reason': (f'{best["name"]}: the smallest variant within the '
                       f'policy{"" if not_slower else " (all passing ones are slower than float32)"} '
                       f'({best["size_ratio"]:.2f}x the float32 size, '
                       f'{best["speedup_b1"]:.2f}x its speed at batch 1, '
                       f'validation accuracy drop '
                       f'{best["validation_drop"]:+.4f})'
                       + (f'; smaller but slower than float32 at batch 1, '
                          f'set aside: {", ".join(slower)}' if slower else ''))}
  if on_no_pass == UNCOMPRESSED:
    return {'chosen': UNCOMPRESSED, 'failures': failures,
            'reason': 'no variant passed the policy; pushing the uncompressed '
                      'model (compression.on_no_pass: uncompressed)'}
  return {'chosen': None, 'failures': failures,
          'reason': 'no variant passed the policy; pushing nothing '
                    '(compression.on_no_pass: none)'}


COLUMNS = (('name', 'variant', '{}'),
           ('validation_accuracy', 'validation accuracy', '{:.4f}'),
           ('validation_drop', 'validation drop', '{:+.4f}'),
           ('eval_accuracy', 'eval accuracy', '{:.4f}'),
           ('eval_drop', 'eval drop', '{:+.4f}'),
           ('size_bytes', 'size (MB)', lambda v: f'{v / 1e6:.2f}'),
           ('size_ratio', 'size ratio', '{:.2f}'),
           ('gzip_ratio', 'gzip ratio', '{:.2f}'),
           ('latency_ms_b1', 'ms/example b1', '{:.3f}'),
           ('latency_ms_b32', 'ms/example b32', '{:.3f}'),
           ('speedup_b1', 'speed-up b1', '{:.2f}x'), ('note', 'note', '{}'))


def _cell(row, key, fmt):
  value = row.get(key)
  if value is None:
    return ''
  return fmt(value) if callable(fmt) else fmt.format(value)


def render_html(report: Dict) -> str:
  """The report as a self-contained page: policy, decision, table, plots."""
  rows, decision = report['variants'], report['decision']
  chosen = decision['chosen']
  head = ''.join(f'<th>{html.escape(label)}</th>' for _, label, _ in COLUMNS)
  body = []
  for row in rows:
    failed = decision['failures'].get(row['name'])
    style = (' style="background:#fdebd0"' if row['name'] == chosen else '')
    cells = ''.join(f'<td>{html.escape(_cell(row, k, f))}</td>'
                    for k, _, f in COLUMNS)
    verdict = ('passes' if not failed else '; '.join(failed))
    body.append(f'<tr{style}>{cells}<td>{html.escape(verdict)}</td></tr>')
  policy = report['policy']
  return f'''<!doctype html>
<html><head><meta charset="utf-8"><title>hubpipe compression report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>Compression report</h1>
<p>Model: {html.escape(str(report.get('model', '')))}<br>
Uncompressed (Keras) accuracy: {report['reference_accuracy']['validation']:.4f} on
{report['validation_examples']} validation examples (the policy chooses on these),
{report['reference_accuracy']['eval']:.4f} on {report['eval_examples']} eval
examples (reported only); calibration: {report['calibration_examples']} train
examples; all seeded, class-stratified random samples. Latency: TFLite interpreter, {report.get('threads', 2)} threads,
median ms per example.</p>
<p>Policy: validation accuracy drop at most {policy['max_accuracy_drop']:.4f}
{'' if policy.get('max_size_ratio') is None else f"; size ratio at most {policy['max_size_ratio']}"}
{'' if policy.get('max_latency_ms') is None else f"; latency at most {policy['max_latency_ms']} ms"};
when nothing passes: {html.escape(policy['on_no_pass'])}.</p>
<p><b>Decision: {html.escape(str(chosen))}</b> &mdash; {html.escape(decision['reason'])}</p>
<table><tr>{head}<th>policy</th></tr>{''.join(body)}</table>
<h2>Eval accuracy against size and latency</h2>
{report_svg.scatter(rows, 'size_bytes', 'file size (bytes)', chosen, y_key='eval_accuracy')}
{report_svg.scatter(rows, 'latency_ms_b1', 'latency, batch 1 (ms/example)', chosen, y_key='eval_accuracy')}
</body></html>
'''


REPORT_JSON = 'compression_report.json'
REPORT_HTML = 'compression_report.html'


def write(report: Dict, folder: str, html_page: bool = True) -> None:
  """compression_report.json (and .html) in `folder`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(f'{folder}/{REPORT_JSON}', 'w') as f:
    json.dump(report, f, indent=2)
  if html_page:
    with tf.io.gfile.GFile(f'{folder}/{REPORT_HTML}', 'w') as f:
      f.write(render_html(report))
