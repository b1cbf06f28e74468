"""The ModuleSelector's report: module_selection.json and a page to read.

The report is a dict: the policy (selection.objective, budget and weights),
the sample sizes, the ranked rows (see `ranking.choose`), the Pareto front
and the decision.
"""

import html
import json
from typing import Dict

from hubpipe.components import report_svg

REPORT_JSON = 'module_selection.json'
REPORT_HTML = 'module_selection.html'

COLUMNS = (('rank', 'rank', '{}'), ('name', 'candidate', '{}'),
           ('input_size', 'input', lambda v: f'{v[0]}x{v[1]}'),
           ('accuracy', 'probe accuracy', '{:.4f}'),
           ('latency_ms_b1', 'ms/example b1', '{:.2f}'),
           ('size_bytes', 'size (MB)', lambda v: f'{v / 1e6:.1f}'),
           ('parameters', 'parameters', '{:,}'),
           ('feature_shape', 'features', '{}'),
           ('score', 'score', '{:.4f}'),
           ('embedding_seconds', 'embedding (s)', '{:.1f}'))


def _cell(row, key, fmt):
  value = row.get(key)
  if value is None:
    return ''
  return fmt(value) if callable(fmt) else fmt.format(value)


def _note(row) -> str:
  if row.get('skipped'):
    return f'skipped: {row["skipped"]}'
  notes = ['Pareto front' if row['pareto'] else 'dominated']
  if row.get('over_budget'):
    notes.append('over budget: ' + '; '.join(row['over_budget']))
  if row.get('resized_from'):
    notes.append('resized from {}x{}'.format(*row['resized_from']))
  return ', '.join(notes)


def render_html(report: Dict) -> str:
  """The report as a self-contained page: decision, table, scatter plot."""
  rows, decision = report['rows'], report['decision']
  chosen = decision['chosen']
  head = ''.join(f'<th>{html.escape(label)}</th>' for _, label, _ in COLUMNS)
  body = []
  for row in rows:
    style = (' style="background:#fdebd0"' if row['name'] == chosen else
             ' style="color:#888"' if row.get('skipped') else '')
    if row.get('skipped'):
      # The reason spans the measurement columns: nothing was measured.
      cells = (f'<td></td><td>{html.escape(row["name"])}</td>'
               f'<td colspan="{len(COLUMNS) - 1}" style="text-align:left">'
               f'{html.escape(_note(row))}</td>')
    else:
      cells = ''.join(f'<td>{html.escape(_cell(row, k, f))}</td>'
                      for k, _, f in COLUMNS)
      cells += f'<td>{html.escape(_note(row))}</td>'
    body.append(f'<tr{style}>{cells}</tr>')
  policy = report['policy']
  keys = ['max_latency_ms', 'max_size_mb'] + (
      ['latency_weight', 'size_weight']
      if policy['objective'] == 'weighted' else [])
  terms = [f'{k} {policy[k]:g}' for k in keys if policy[k] is not None]
  plot = report_svg.scatter(
      rows, 'latency_ms_b1', 'CPU latency, batch 1 (ms/example)', chosen,
      front=report['pareto'], y_label='probe validation accuracy', width=640,
      height=360)
  return f'''<!doctype html>
<html><head><meta charset="utf-8"><title>hubpipe module selection</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}
td:nth-child(2),td:last-child{{text-align:left}}</style></head><body>
<h1>Module selection</h1>
<p>Each candidate module, frozen, embedded {report['train_examples']} train and
{report['validation_examples']} validation examples (seeded, class-stratified
random samples); a probe (the Trainer's head without hidden layers: linear on
a feature vector, its small convolutional head on a feature map) was fitted
on the train embeddings and scored on the validation ones
({report['num_classes']} classes). Accuracy below is validation accuracy; the
eval split plays no part in the choice.
Latency: the module and the probe in TensorFlow on CPU, median ms per example
at batch 1.</p>
<p>Objective: {html.escape('; '.join([policy['objective']] + terms))}.</p>
<p><b>Decision: {html.escape(str(chosen))}</b> &mdash; {html.escape(decision['reason'])}</p>
<table><tr>{head}<th>note</th></tr>{''.join(body)}</table>
<h2>Probe accuracy against latency</h2>
<p>Red: the chosen module. Dashed line: the Pareto front (no other candidate
is both more accurate and faster).</p>
{plot}
</body></html>
'''


def write(report: Dict, folder: str) -> None:
  """module_selection.json and module_selection.html in `folder`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(f'{folder}/{REPORT_JSON}', 'w') as f:
    json.dump(report, f, indent=2)
  with tf.io.gfile.GFile(f'{folder}/{REPORT_HTML}', 'w') as f:
    f.write(render_html(report))
