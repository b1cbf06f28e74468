"""The embedding cache on a rolling window: run 3's embedding time, with the
cache and without it.

Three Fashion-MNIST span folders (`images_per_span` train images each,
built as tests/test_span_retraining.py builds them) arrive one per run;
each run trains on the latest `spans` spans (data.latest_spans) with the
demo's module settings (mobilenet_v1_100_224 at 96x96, feature_extraction;
no control module, no Compressor, no warm start, so that both variants of
run 3 start from the same head). Runs 1 to 3 use the cache; then run 3 is
repeated in the same work dir with `training.embedding_cache: false` (only
the Trainer and what follows it run again: the other steps are not handed
the cache's settings). Printed: the Trainer's embedding seconds of both
variants of run 3, their ratio, the examples each embedded, and both
validation accuracies.

  export HUBPIPE_DATA_DIR=$PWD/data
  .venv/bin/python benchmarks/rolling_window.py            # ~10 min on 2 cores
  .venv/bin/python benchmarks/rolling_window.py --images-per-span 500
"""

import argparse
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

from hubpipe.components.datasets import fashion_mnist  # pylint: disable=g-import-not-at-top
from hubpipe.pipeline import local_runner
from hubpipe.pipeline.config import load_config

CONFIG = '''\
name: rolling-window
modality: image
data:
  source: tfrecord
  path: spans
  span_pattern: span-{{SPAN}}
  latest_spans: {spans}
module:
  handle: mobilenet_v1_100_224
  input_size: [96, 96]
  control_handle: null
model:
  integration: feature_extraction
training:
  epochs: 10
  batch_size: 64
  learning_rate: 0.001
  warm_start: false
evaluation:
  min_accuracy: 0.5
  max_accuracy_drop: 0.5
compression:
  enabled: false
beam:
  direct_running_mode: in_memory
'''


def _add_span(spans_dir, number, images, eval_images):
  source = fashion_mnist.prepare(images, eval_images, seed=number)
  for split in ('train', 'eval'):
    shutil.copytree(source / split, os.path.join(spans_dir, f'span-{number}',
                                                 split))


def _run(config, workdir, what):
  start = time.time()
  summary = local_runner.run(config, workdir, echo=lambda _: None)
  if summary['status'] != 'succeeded':
    raise RuntimeError(f'{what} failed: {summary.get("error")}')
  training = summary['training']
  cache = training['embedding_cache']['module']
  print(f'  {what}: spans {summary["trained_on_spans"]}, embedded '
        f'{cache["embedded_now"]} of {cache["examples"]} examples in '
        f'{training["embedding_seconds"]:.1f} s, validation accuracy '
        f'{training["validation_accuracy"]:.4f} (run {time.time() - start:.0f} s)',
        flush=True)
  return {'spans': summary['trained_on_spans'],
          'embedding_seconds': training['embedding_seconds'],
          'embedded_now': cache['embedded_now'],
          'from_cache': cache['from_cache'],
          'examples': cache['examples'],
          'validation_accuracy': training['validation_accuracy']}


def measure(workdir, images_per_span=2000, spans=3) -> dict:
  """Runs 1..`spans` with the cache, one span arriving before each, then the
  last run again without it; returns what each run embedded, how long it
  took and the accuracies, and the last run's time ratio (off / on)."""
  os.makedirs(workdir, exist_ok=True)
  spans_dir = os.path.join(workdir, 'spans')
  config_file = os.path.join(workdir, 'rolling.yaml')
  with open(config_file, 'w') as f:
    f.write(CONFIG.format(spans=spans))
  eval_images = max(50, images_per_span // 5)
  work = os.path.join(workdir, 'work')
  runs = []
  for number in range(1, spans + 1):
    _add_span(spans_dir, number, images_per_span, eval_images)
    config = load_config(config_file)
    runs.append(_run(config, work, f'run {number}, cache on'))
  off = _run(load_config(config_file, {'training.embedding_cache': False}),
             work, f'run {spans} again, cache off')
  on = runs[-1]
  return {
      'images_per_span': images_per_span, 'spans': spans, 'runs': runs,
      'last_run_with_cache': on, 'last_run_without_cache': off,
      'embedding_speedup': round(off['embedding_seconds'] /
                                 max(on['embedding_seconds'], 1e-9), 2),
      'accuracy_difference_points': round(
          100 * abs(on['validation_accuracy'] - off['validation_accuracy']),
          2),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images-per-span', type=int, default=2000)
  parser.add_argument('--spans', type=int, default=3)
  parser.add_argument('--workdir', default=None,
                      help='default: a temporary folder, removed after')
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix='rolling-window-')
  try:
    result = measure(workdir, args.images_per_span, args.spans)
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  on, off = result['last_run_with_cache'], result['last_run_without_cache']
  print(f'\nrun {args.spans} of a rolling window of {args.spans} spans x '
        f'{args.images_per_span} images:')
  print(f'  {"":14}{"embedded":>10}{"from cache":>12}{"embedding s":>13}'
        f'{"val. accuracy":>15}')
  for name, r in (('cache on', on), ('cache off', off)):
    print(f'  {name:14}{r["embedded_now"]:>10}{r["from_cache"]:>12}'
          f'{r["embedding_seconds"]:>13.1f}{r["validation_accuracy"]:>15.4f}')
  print(f'  embedding time, off / on: {result["embedding_speedup"]:.2f}x; '
        f'accuracy difference: {result["accuracy_difference_points"]:.2f} '
        'points')
  results = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         'results')
  os.makedirs(results, exist_ok=True)
  with open(os.path.join(results, 'rolling_window.json'), 'w') as f:
    json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
