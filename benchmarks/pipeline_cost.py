"""What a hubpipe run costs, as ratios measured side by side in one invocation.

  1. rolling window: the Trainer's embedding time in run 3 of a rolling
     window (3 spans of `--span-images` Fashion-MNIST images, the latest 3
     spans) with the per-span embedding cache against the same run with it
     off (benchmarks/rolling_window.py);
  2. demo: the Compressor's wall time over the Trainer's, from one run of the
     demo config (pipeline/configs/fashion_mnist.yaml) in a fresh work dir;
  3. fixed overhead: the demo without the Compressor and its control module
     (so the same work as the script) over a plain script that does that
     work in one process with plain Keras and TF Hub: decode and resize the
     same examples, embed them with the same module, fit the same head for
     the same epochs, evaluate on the eval split, export a SavedModel. The
     script runs before and after the pipeline; the ratio is to the mean.

    .venv/bin/python benchmarks/pipeline_cost.py [--only demo,overhead]

Wall times depend on the machine and its load; the ratios are what to read.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'pipeline', 'configs', 'fashion_mnist.yaml')


def _run(config, workdir):
  from hubpipe.pipeline import local_runner  # pylint: disable=g-import-not-at-top
  summary = local_runner.run(config, workdir, echo=lambda _: None)
  if summary['status'] != 'succeeded':
    raise SystemExit(f'the pipeline run failed: {summary.get("error")}')
  return summary


def _seconds(summary, component):
  return next(c['seconds'] for c in summary['components']
              if c['name'] == component)


def demo_ratio(workdir):
  """The demo as `make demo` runs it: Compressor / Trainer wall time."""
  from hubpipe.pipeline.config import load_config  # pylint: disable=g-import-not-at-top
  summary = _run(load_config(DEMO), os.path.join(workdir, 'demo'))
  compression = summary['compression']
  chosen = compression['decision']['chosen']
  row = next((r for r in compression['variants'] if r['name'] == chosen), {})
  return {'compressor_seconds': _seconds(summary, 'Compressor'),
          'trainer_seconds': _seconds(summary, 'Trainer'),
          'wall_seconds': summary['wall_seconds'],
          'chosen': chosen,
          'chosen_validation_drop': row.get('validation_drop'),
          'components': {c['name']: c['seconds']
                         for c in summary['components']}}


def plain_script(config, input_base, workdir):
  """The demo's work in one process, as a user would write it without TFX:
  returns (seconds, eval accuracy)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  import tensorflow_hub as hub
  import tf_keras
  from hubpipe.components.hub_modules import resolve
  from hubpipe.components.transform import image as image_transform

  start = time.time()
  height, width = config.module.input_size
  spec = {config.data.image_feature: tf.io.FixedLenFeature([], tf.string),
          config.data.label_feature: tf.io.FixedLenFeature([], tf.int64)}

  def read(split):
    files = sorted(tf.io.gfile.glob(os.path.join(input_base, split, '*')))
    records = tf.data.TFRecordDataset(files).batch(256).map(
        lambda r: tf.io.parse_example(r, spec))
    images, labels = [], []
    for batch in records:
      images.append(batch[config.data.image_feature].numpy())
      labels.append(batch[config.data.label_feature].numpy())
    return np.concatenate(images), np.concatenate(labels)

  train_bytes, train_y = read('train')
  eval_bytes, eval_y = read('eval')
  # Validation carved out of train, as the pipeline does (a seeded share).
  order = np.random.default_rng(config.data.seed).permutation(len(train_y))
  cut = int(len(order) * config.data.validation_fraction)
  val, fit = order[:cut], order[cut:]
  module = hub.KerasLayer(resolve.resolve(config.module.handle),
                          trainable=False)

  def embed(encoded):
    dataset = tf.data.Dataset.from_tensor_slices(encoded).batch(
        config.training.batch_size).map(
            lambda b: image_transform.decode_and_resize(b, height, width),
            num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
    call = tf.function(lambda x: module(x, training=False))
    return np.concatenate([call(x).numpy() for x in dataset])

  train_features = embed(train_bytes)
  eval_features = embed(eval_bytes)
  classes = int(max(train_y.max(), eval_y.max()) + 1)
  head = tf_keras.Sequential([
      tf_keras.Input(train_features.shape[1:]),
      tf_keras.layers.Dense(classes)])
  head.compile(tf_keras.optimizers.Adam(config.training.learning_rate),
               tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               metrics=['accuracy'])
  head.fit(train_features[fit], train_y[fit],
           validation_data=(train_features[val], train_y[val]),
           epochs=config.training.epochs,
           batch_size=config.training.batch_size, verbose=0)
  accuracy = head.evaluate(eval_features, eval_y, verbose=0)[1]

  class Served(tf.Module):

    def __init__(self):
      super().__init__()
      self.module, self.head = module, head

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, encoded):
      images = image_transform.decode_and_resize(encoded, height, width)
      return {'probabilities': tf.nn.softmax(self.head(self.module(images)))}

  served = Served()
  tf.saved_model.save(served, tempfile.mkdtemp(prefix='plain_export_',
                                               dir=workdir),
                      signatures={'serving_default': served.serve})
  return time.time() - start, float(accuracy)


def overhead_ratio(workdir):
  """The demo without the Compressor and the control module, against the
  plain script doing the same work."""
  from hubpipe.pipeline import local_runner  # pylint: disable=g-import-not-at-top
  from hubpipe.pipeline.config import load_config
  config = load_config(DEMO, {'compression.enabled': False,
                              'module.control_handle': None})
  input_base = local_runner.prepare_data(config)
  # The script runs before and after the pipeline, and the pipeline is held
  # to the mean of the two: a machine that slows down (or warms up) in the
  # middle of the measurement moves both sides.
  before, script_accuracy = plain_script(config, input_base, workdir)
  summary = _run(config, os.path.join(workdir, 'overhead'))
  after, _ = plain_script(config, input_base, workdir)
  return {'pipeline_seconds': summary['wall_seconds'],
          'script_seconds': round((before + after) / 2, 1),
          'script_runs_seconds': [round(before, 1), round(after, 1)],
          'pipeline_eval_accuracy': summary['evaluation']['metrics'].get(
              'sparse_categorical_accuracy'),
          'script_eval_accuracy': script_accuracy,
          'components': {c['name']: c['seconds']
                         for c in summary['components']}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--only', default='window,demo,overhead',
                      help='comma-separated: window, demo, overhead')
  parser.add_argument('--span-images', type=int, default=2000)
  parser.add_argument('--workdir', default=None,
                      help='default: a temporary folder, removed afterwards')
  parser.add_argument('--json', default=None, help='also write the results')
  args = parser.parse_args(argv)
  only = set(args.only.split(','))
  workdir = args.workdir or tempfile.mkdtemp(prefix='pipeline_cost_')
  results = {}
  try:
    if 'window' in only:
      sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
      import rolling_window  # pylint: disable=g-import-not-at-top
      results['window'] = rolling_window.measure(
          os.path.join(workdir, 'window'), images_per_span=args.span_images)
    if 'demo' in only:
      results['demo'] = demo_ratio(workdir)
    if 'overhead' in only:
      results['overhead'] = overhead_ratio(workdir)
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  print('\nhubpipe pipeline cost (each ratio measured side by side, '
        'in this one invocation)')
  if 'window' in results:
    w = results['window']
    on, off = w['last_run_with_cache'], w['last_run_without_cache']
    print(f'  rolling window, run {w["spans"]} ({w["spans"]} spans x '
          f'{w["images_per_span"]} images): embedding '
          f'{on["embedding_seconds"]:.1f} s with the cache '
          f'({on["embedded_now"]} embedded, {on["from_cache"]} cached) vs '
          f'{off["embedding_seconds"]:.1f} s without: '
          f'{w["embedding_speedup"]:.2f}x less (target >= 2.5x); validation '
          f'accuracy {on["validation_accuracy"]:.4f} vs '
          f'{off["validation_accuracy"]:.4f}')
  if 'demo' in results:
    d = results['demo']
    print(f'  demo: Compressor {d["compressor_seconds"]:.1f} s / Trainer '
          f'{d["trainer_seconds"]:.1f} s = '
          f'{d["compressor_seconds"] / d["trainer_seconds"]:.2f} '
          f'(target <= 1.5); chosen {d["chosen"]}, validation drop '
          f'{d["chosen_validation_drop"]}; pipeline {d["wall_seconds"]:.1f} s')
  if 'overhead' in results:
    o = results['overhead']
    print(f'  no Compressor: pipeline {o["pipeline_seconds"]:.1f} s / plain '
          f'script {o["script_seconds"]:.1f} s (the mean of '
          f'{" s and ".join(map(str, o["script_runs_seconds"]))} s, before '
          f'and after) = '
          f'{o["pipeline_seconds"] / o["script_seconds"]:.2f} (target <= 2.0);'
          f' eval accuracy {o["pipeline_eval_accuracy"]:.4f} vs '
          f'{o["script_eval_accuracy"]:.4f}')
    print('    pipeline steps: ' + ', '.join(
        f'{k} {v:.1f} s' for k, v in o['components'].items() if v >= 0.5))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == '__main__':
  main()
