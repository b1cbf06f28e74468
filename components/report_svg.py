"""Inline SVG plots for the components' HTML reports (no plotting library in
the serving stack, and a report page must stand on its own)."""

import html
from typing import Dict, Optional, Sequence


def scatter(rows: Sequence[Dict], x_key: str, x_label: str,
            chosen: Optional[str], front: Sequence[str] = (),
            y_key: str = 'accuracy', y_label: str = 'eval accuracy',
            width=420, height=300) -> str:
  """An SVG scatter of y_key against x_key, one labelled point per row.

  Rows with an 'error' or without a (non-zero) x value are left out. The
  `chosen` row is drawn red; the rows named in `front` are joined by a line
  in x order (e.g. a Pareto front). '' when there is nothing to plot.
  """
  points = [r for r in rows if not r.get('error') and r.get(x_key)
            and r.get(y_key) is not None]
  if not points:
    return ''
  pad = 50
  xs = [r[x_key] for r in points]
  ys = [r[y_key] for r in points]
  x0, x1 = min(xs) * 0.9, max(xs) * 1.1
  y0, y1 = min(ys) - 0.02, max(ys) + 0.02
  sx = lambda v: pad + (v - x0) / (x1 - x0 or 1) * (width - 2 * pad)
  sy = lambda v: height - pad - (v - y0) / (y1 - y0 or 1) * (height - 2 * pad)
  parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" font-family="sans-serif" font-size="11">',
           f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" '
           f'y2="{height - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" '
           'stroke="black"/>',
           f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">'
           f'{html.escape(x_label)}</text>',
           f'<text x="14" y="{height / 2}" text-anchor="middle" '
           f'transform="rotate(-90 14 {height / 2})">{html.escape(y_label)}'
           '</text>',
           f'<text x="{pad}" y="{height - pad + 14}">{x0:.3g}</text>',
           f'<text x="{width - pad}" y="{height - pad + 14}" '
           f'text-anchor="end">{x1:.3g}</text>',
           f'<text x="{pad - 4}" y="{height - pad}" text-anchor="end">'
           f'{y0:.3f}</text>',
           f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end">{y1:.3f}</text>']
  on_front = sorted((r for r in points if r['name'] in front),
                    key=lambda r: (r[x_key], r[y_key]))
  if len(on_front) > 1:
    line = ' '.join(f'{sx(r[x_key]):.1f},{sy(r[y_key]):.1f}' for r in on_front)
    parts.append(f'<polyline class="front" points="{line}" fill="none" '
                 'stroke="#27ae60" stroke-width="1.5" stroke-dasharray="4 3"/>')
  for r in points:
    colour = '#c0392b' if r['name'] == chosen else '#2c3e50'
    parts.append(f'<circle cx="{sx(r[x_key]):.1f}" cy="{sy(r[y_key]):.1f}" '
                 f'r="5" fill="{colour}"/>')
    parts.append(f'<text x="{sx(r[x_key]) + 7:.1f}" '
                 f'y="{sy(r[y_key]) - 6:.1f}">{html.escape(r["name"])}</text>')
  parts.append('</svg>')
  return ''.join(parts)
