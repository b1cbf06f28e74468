#!/usr/bin/env python
"""Benchmark: training time and accuracy of the four ways to integrate a Hub module.

On one seeded, balanced Fashion-MNIST subset (PNG bytes via
`fashion_mnist.prepare`, decoded with the Transform's `decode_and_resize`:
grayscale tiled to 3 channels, scaled to [0, 1], resized to --size), with
MobileNet v1 (`resolve('mobilenet_v1_100_224')`) and the project's head
(`model.head`: one Dense layer, logits), it times:

  naive     frozen hub.KerasLayer + head, fit end to end on the images: the
            module's forward pass runs on every batch of every epoch;
  cached    feature extraction as the Trainer does it: embed train and eval
            once with the frozen module (that time is included), then fit the
            head on the cached vectors for the same number of epochs;
  fine_tune the whole module trainable (InferenceModeKerasLayer: batch norm
            keeps its moving statistics), Adam --fine-tune-lr, for
            --fine-tune-epochs epochs (fewer: each epoch is a forward and a
            backward pass through the whole module);
  hybrid    the cached run's head (its time included), then the module's top
            blocks unfrozen (PartiallyTrainableKerasLayer, --hybrid-spec) and
            trained end to end with the head for --hybrid-epochs at
            --hybrid-lr.

"train seconds" is the wall time of the fit calls (plus embedding for cached,
and cached + the end-to-end stage for hybrid); decoding the data, loading the
module and final evaluation are outside it. Accuracy is on the eval subset
after training. naive and cached fit the same head on the same features, so
their accuracies agree (up to float noise); the point is the time.

With --epochs-list (default: 1 and --epochs) the naive and cached runs are
also evaluated after those epochs (evaluation time excluded from the clock),
showing that the naive/cached time ratio grows with the number of epochs.

This is a benchmark, not a test. Defaults take about 5 minutes on 2 CPU cores.
  python benchmarks/integration_modes.py [--train 2000 --eval 1000 --epochs 10]
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tf_keras

from hubpipe.components.datasets import fashion_mnist
from hubpipe.components.hub_modules import resolve
from common import load_fashion_mnist  # benchmarks/common.py
from hubpipe.components.modeling import model as model_lib
from hubpipe.components.modeling import partial

MODULE = 'mobilenet_v1_100_224'
MODES = ('naive', 'cached', 'fine_tune', 'hybrid')
DEFAULT_OUT = Path(__file__).resolve().parent / 'results' / 'integration_modes.json'


def parse_spec(text: str):
  """'4' -> 4 (last blocks), '0.2' -> 0.2 (fraction), anything else: a regex."""
  try:
    return int(text)
  except ValueError:
    pass
  try:
    return float(text)
  except ValueError:
    return text


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--train', type=int, default=2000, help='train examples')
  p.add_argument('--eval', type=int, default=1000, help='eval examples')
  p.add_argument('--epochs', type=int, default=10,
                 help='epochs for naive and cached (and the hybrid head stage)')
  p.add_argument('--size', type=int, default=96, help='image height and width')
  p.add_argument('--batch', type=int, default=64, help='batch size')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--head-lr', type=float, default=1e-3,
                 help='Adam learning rate of naive and cached (the head)')
  p.add_argument('--fine-tune-epochs', type=int, default=2)
  p.add_argument('--fine-tune-lr', type=float, default=1e-4)
  p.add_argument('--hybrid-spec', type=parse_spec, default=4,
                 help='which top blocks hybrid trains: N (last N blocks), a '
                 'fraction in (0, 1], or a regex on variable names')
  p.add_argument('--hybrid-epochs', type=int, default=2)
  p.add_argument('--hybrid-lr', type=float, default=1e-4)
  p.add_argument('--epochs-list', default=None,
                 help='comma-separated epochs after which naive and cached are '
                 'also evaluated (default: 1,EPOCHS; "none" to skip)')
  p.add_argument('--modes', default=','.join(MODES),
                 help='comma-separated subset of ' + ','.join(MODES))
  p.add_argument('--out', type=Path, default=DEFAULT_OUT, help='JSON results')
  args = p.parse_args(argv)

  for name in ('train', 'eval', 'epochs', 'size', 'batch', 'fine_tune_epochs',
               'hybrid_epochs'):
    if getattr(args, name) <= 0:
      p.error(f'--{name.replace("_", "-")} must be positive')
  args.modes = [m.strip() for m in args.modes.split(',') if m.strip()]
  unknown = set(args.modes) - set(MODES)
  if unknown or not args.modes:
    p.error(f'--modes: choose from {",".join(MODES)}, not {args.modes}')
  if args.epochs_list is None:
    args.epochs_list = sorted({1, args.epochs})
  elif args.epochs_list.strip().lower() in ('', 'none'):
    args.epochs_list = [args.epochs]
  else:
    try:
      listed = {int(e) for e in args.epochs_list.split(',') if e.strip()}
    except ValueError:
      p.error(f'--epochs-list: integers separated by commas, not '
              f'{args.epochs_list!r}')
    if any(not 1 <= e <= args.epochs for e in listed):
      p.error(f'--epochs-list: each value must be in 1..--epochs '
              f'({args.epochs}), got {sorted(listed)}')
    args.epochs_list = sorted(listed | {args.epochs})
  return args


class EpochClock(tf_keras.callbacks.Callback):
  """Cumulative training seconds after each epoch; evaluates at chosen epochs.

  The clock starts at `start` (taken just before `fit`) and is paused while
  the callback evaluates, so evaluation time is not counted.
  """

  def __init__(self, start, eval_data, eval_epochs, batch):
    super().__init__()
    self.start, self.paused = start, 0.0
    self.eval_data, self.eval_epochs, self.batch = eval_data, eval_epochs, batch
    self.seconds, self.accuracy = [], {}

  def on_epoch_end(self, epoch, logs=None):
    now = time.perf_counter()
    self.seconds.append(now - self.start - self.paused)
    if epoch + 1 in self.eval_epochs:
      _, acc = self.model.evaluate(*self.eval_data, batch_size=self.batch,
                                   verbose=0)
      self.accuracy[epoch + 1] = float(acc)
    self.paused += time.perf_counter() - now

  def total(self):
    return time.perf_counter() - self.start - self.paused


def timed_fit(model, x, y, epochs, batch, eval_data, eval_epochs=()):
  """Fits; returns (train seconds, per-epoch cumulative seconds, {epoch: acc})."""
  clock = EpochClock(time.perf_counter(), eval_data, set(eval_epochs), batch)
  model.fit(x, y, batch_size=batch, epochs=epochs, callbacks=[clock],
            verbose=0)
  return clock.total(), clock.seconds, clock.accuracy


def steady_epoch(curve):
  """Seconds per epoch after the first (which also traces the train step)."""
  return (curve[-1] - curve[0]) / (len(curve) - 1) if len(curve) > 1 else None


def evaluate(model, x, y, batch):
  _, accuracy = model.evaluate(x, y, batch_size=batch, verbose=0)
  return float(accuracy)


def log(message):
  print(f'[{time.strftime("%H:%M:%S")}] {message}', flush=True)


def run_naive(args, handle, data, num_classes):
  x_train, y_train, x_eval, y_eval = data
  tf_keras.utils.set_random_seed(args.seed)
  extractor = model_lib.feature_extractor('image', handle,
                                          input_size=[args.size, args.size])
  model = model_lib.classifier(
      extractor, model_lib.head(extractor.output_shape[-1], num_classes))
  model_lib.compile_for_training(model, args.head_lr)
  seconds, curve, by_epoch = timed_fit(
      model, x_train, y_train, args.epochs, args.batch, (x_eval, y_eval),
      args.epochs_list)
  return dict(mode='naive', epochs=args.epochs, train_seconds=seconds,
              eval_accuracy=by_epoch[args.epochs],
              seconds_by_epoch=curve, accuracy_by_epoch=by_epoch,
              steady_epoch_seconds=steady_epoch(curve),
              trainable_weights=len(model.trainable_weights))


def run_cached(args, handle, data, num_classes):
  x_train, y_train, x_eval, y_eval = data
  tf_keras.utils.set_random_seed(args.seed)
  extractor = model_lib.feature_extractor('image', handle,
                                          input_size=[args.size, args.size])
  start = time.perf_counter()
  f_train = extractor.predict(x_train, batch_size=args.batch, verbose=0)
  f_eval = extractor.predict(x_eval, batch_size=args.batch, verbose=0)
  embed_seconds = time.perf_counter() - start
  head = model_lib.head(f_train.shape[1], num_classes)
  model_lib.compile_for_training(head, args.head_lr)
  head_seconds, curve, by_epoch = timed_fit(
      head, f_train, y_train, args.epochs, args.batch, (f_eval, y_eval),
      args.epochs_list)
  return dict(mode='cached', epochs=args.epochs,
              train_seconds=embed_seconds + head_seconds,
              eval_accuracy=by_epoch[args.epochs],
              embed_seconds=embed_seconds, head_seconds=head_seconds,
              steady_epoch_seconds=steady_epoch(curve),
              seconds_by_epoch=[embed_seconds + s for s in curve],
              accuracy_by_epoch=by_epoch,
              trainable_weights=len(head.trainable_weights)), head


def run_fine_tune(args, handle, data, num_classes):
  x_train, y_train, x_eval, y_eval = data
  tf_keras.utils.set_random_seed(args.seed)
  extractor = model_lib.feature_extractor(
      'image', handle, input_size=[args.size, args.size], trainable=True)
  model = model_lib.classifier(
      extractor, model_lib.head(extractor.output_shape[-1], num_classes))
  model_lib.compile_for_training(model, args.fine_tune_lr)
  seconds, curve, _ = timed_fit(model, x_train, y_train, args.fine_tune_epochs,
                                args.batch, (x_eval, y_eval))
  return dict(mode='fine_tune', epochs=args.fine_tune_epochs,
              train_seconds=seconds,
              eval_accuracy=evaluate(model, x_eval, y_eval, args.batch),
              seconds_by_epoch=curve,
              learning_rate=args.fine_tune_lr,
              trainable_weights=len(model.trainable_weights))


def run_hybrid(args, handle, data, cached, head):
  """Stage 2 on top of the cached run: its head, then the top blocks too."""
  x_train, y_train, x_eval, y_eval = data
  tf_keras.utils.set_random_seed(args.seed)
  layer = partial.PartiallyTrainableKerasLayer(
      handle, trainable_spec=args.hybrid_spec, name='hub_module')
  inputs = tf_keras.Input(shape=(args.size, args.size, 3), name='image')
  model = tf_keras.Model(inputs, head(layer(inputs)), name='hybrid')
  model_lib.compile_for_training(model, args.hybrid_lr)
  start_accuracy = evaluate(model, x_eval, y_eval, args.batch)
  seconds, curve, _ = timed_fit(model, x_train, y_train, args.hybrid_epochs,
                                args.batch, (x_eval, y_eval))
  trained_blocks = sorted(
      {partial.block_of(n) for n in layer.selected_variable_names},
      key=[b for b, _ in layer.blocks].index)
  return dict(mode='hybrid', epochs=f'{args.epochs}+{args.hybrid_epochs}',
              head_epochs=args.epochs, end_to_end_epochs=args.hybrid_epochs,
              train_seconds=cached['train_seconds'] + seconds,
              eval_accuracy=evaluate(model, x_eval, y_eval, args.batch),
              accuracy_before_end_to_end=start_accuracy,
              stage1_seconds=cached['train_seconds'], stage2_seconds=seconds,
              stage2_seconds_by_epoch=curve,
              spec=args.hybrid_spec, trained_blocks=trained_blocks,
              module_blocks=len(layer.blocks),
              trainable_module_variables=len(layer.trainable_weights),
              learning_rate=args.hybrid_lr,
              trainable_weights=len(model.trainable_weights))


def table(rows):
  lines = [f'{"mode":<10} {"epochs":>7} {"train s":>9} {"eval acc":>9}']
  for r in rows:
    lines.append(f'{r["mode"]:<10} {str(r["epochs"]):>7} '
                 f'{r["train_seconds"]:>9.1f} {r["eval_accuracy"]:>9.4f}')
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  started = time.perf_counter()
  environment = dict(
      python=platform.python_version(), tensorflow=tf.__version__,
      cpu_count=os.cpu_count(),
      usable_cpus=len(os.sched_getaffinity(0)) if hasattr(
          os, 'sched_getaffinity') else None,
      gpus=[d.name for d in tf.config.list_physical_devices('GPU')],
      machine=platform.machine())
  log(f'environment: {environment}')

  t = time.perf_counter()
  *data, folder = load_fashion_mnist(args.train, args.eval, args.seed, args.size)
  data_seconds = time.perf_counter() - t
  num_classes = fashion_mnist.NUM_CLASSES
  log(f'data: {folder}, train {data[0].shape}, eval {data[2].shape}, '
      f'decoded in {data_seconds:.1f} s')
  handle = resolve.resolve(MODULE)

  rows, cached, head = [], None, None
  for mode in MODES:
    if mode not in args.modes and not (mode == 'cached' and
                                       'hybrid' in args.modes):
      continue
    log(f'{mode}: training...')
    if mode == 'naive':
      row = run_naive(args, handle, data, num_classes)
    elif mode == 'cached':
      row, head = run_cached(args, handle, data, num_classes)
      cached = row
    elif mode == 'fine_tune':
      row = run_fine_tune(args, handle, data, num_classes)
    else:
      row = run_hybrid(args, handle, data, cached, head)
    log(f'{mode}: {row["train_seconds"]:.1f} s, eval accuracy '
        f'{row["eval_accuracy"]:.4f}')
    if mode in args.modes:
      rows.append(row)

  by_mode = {r['mode']: r for r in rows}
  result = dict(
      benchmark='integration_modes', module=MODULE,
      dataset=dict(name='fashion_mnist', folder=str(folder),
                   train=args.train, eval=args.eval, seed=args.seed,
                   image_size=args.size, decode_seconds=data_seconds),
      args={k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()},
      environment=environment, command=' '.join([sys.executable] + sys.argv),
      results=rows)

  print()
  print(table(rows))
  if 'naive' in by_mode and 'cached' in by_mode:
    naive, cached = by_mode['naive'], by_mode['cached']
    ratio = naive['train_seconds'] / cached['train_seconds']
    result['naive_over_cached_train_time'] = ratio
    print(f'\nnaive / cached train time: {ratio:.2f}x '
          f'(cached = {cached["embed_seconds"]:.1f} s embedding + '
          f'{cached["head_seconds"]:.1f} s head)')
    if naive['steady_epoch_seconds'] is not None:
      print(f'steady-state seconds per epoch: naive '
            f'{naive["steady_epoch_seconds"]:.2f}, cached head '
            f'{cached["steady_epoch_seconds"]:.3f} (the first epoch also '
            f'traces: naive {naive["seconds_by_epoch"][0]:.1f} s)')
    curve = []
    for e in args.epochs_list:
      n, c = naive['seconds_by_epoch'][e - 1], cached['seconds_by_epoch'][e - 1]
      curve.append(dict(epochs=e, naive_seconds=n, cached_seconds=c,
                        ratio=n / c,
                        naive_accuracy=naive['accuracy_by_epoch'][e],
                        cached_accuracy=cached['accuracy_by_epoch'][e]))
    result['ratio_by_epochs'] = curve
    if len(curve) > 1:
      print(f'\n{"epochs":>6} {"naive s":>9} {"cached s":>9} {"ratio":>7} '
            f'{"naive acc":>10} {"cached acc":>10}')
      for c in curve:
        print(f'{c["epochs"]:>6} {c["naive_seconds"]:>9.1f} '
              f'{c["cached_seconds"]:>9.1f} {c["ratio"]:>6.2f}x '
              f'{c["naive_accuracy"]:>10.4f} {c["cached_accuracy"]:>10.4f}')
  if 'hybrid' in by_mode:
    h = by_mode['hybrid']
    print(f'\nhybrid: spec {h["spec"]!r} trained {len(h["trained_blocks"])} of '
          f'{h["module_blocks"]} blocks ({", ".join(h["trained_blocks"])}); '
          f'accuracy {h["accuracy_before_end_to_end"]:.4f} -> '
          f'{h["eval_accuracy"]:.4f}')

  result['total_seconds'] = time.perf_counter() - started
  print(f'\ntotal run time: {result["total_seconds"]:.0f} s')
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + '\n')
  print(f'results: {args.out}')


if __name__ == '__main__':
  main()
