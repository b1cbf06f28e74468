#!/usr/bin/env python
"""Benchmark: compressed variants of the core model, measured like for like.

On one seeded, balanced Fashion-MNIST subset (PNG bytes via
`fashion_mnist.prepare`, decoded with the Transform's `decode_and_resize`: tiled
to 3 channels, [0, 1], --size px), the core model is the frozen pretrained
MobileNet v1 (`resolve('mobilenet_v1_100_224')`) + the project's linear head,
the head trained --epochs on cached embeddings and assembled with
`model_lib.classifier`. Its compressed variants (components/compressor):

  float32          TFLite, no quantization: the reference for size and speed
  dynamic_range    int8 weights, float activations
  float16          float16 weights
  int8             full integer, calibrated on --calibration train images
                   (float32 input/output tensors, so same inputs for all)
  int8_selective   int8 with the debugger's most sensitive ops kept in float
                   until within --budget of float32 TFLite (selection scored
                   on --select-on data; eval accuracy reported)
  pruned           TFMOT magnitude pruning of the module's 1x1 kernels to
                   --sparsity, --prune-epochs of fine-tuning, float32 TFLite
                   (and pruned_int8: the same, full int8)
  distilled_cnn    a small CNN (resize to 32 px inside) distilled from the core
                   model's logits, float32 TFLite (and distilled_cnn_int8)
  module_64px      the same frozen module at --student-size px (resized
                   inside), head distilled from the core model: less compute,
                   same weights

Every variant sees the same eval images (float32 [N, size, size, 3]); latency is
TFLite `invoke` with --threads threads (XNNPACK), median of runs after warm-up,
in ms per example, at batch 1 and --batch-latency, measured after all variants
are built, round-robin for --latency-rounds rounds (median over rounds); the
Keras row is the core model's forward pass as a tf.function. Timings need a
quiet machine: another busy process on the same cores inflates 2-thread TFLite
batch-1 latencies by 10-100x (XNNPACK threads wait on each other); the printed
load averages tell. Accuracy drops are against the float32
Keras model; speed-ups against float32 TFLite at the same batch size.

This is a benchmark, not a test (about 6-8 minutes on 2 CPU cores).
  python benchmarks/compression.py [--train 2000 --eval 1000 --size 96]
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

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
import tf_keras

from hubpipe.components.modeling import measure
from hubpipe.components.compressor import techniques
from hubpipe.components.datasets import fashion_mnist
from hubpipe.components.hub_modules import resolve
from common import load_fashion_mnist  # benchmarks/common.py
from hubpipe.components.modeling import model as model_lib

MODULE = 'mobilenet_v1_100_224'
DEFAULT_OUT = Path(__file__).resolve().parent / 'results' / 'compression.json'


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--train', type=int, default=2000)
  p.add_argument('--eval', type=int, default=1000)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--size', type=int, default=96, help='input height and width')
  p.add_argument('--epochs', type=int, default=5, help='head epochs (cached)')
  p.add_argument('--calibration', type=int, default=500,
                 help='train images used to calibrate int8')
  p.add_argument('--budget', type=float, default=0.01,
                 help='int8_selective: allowed accuracy drop vs float32 TFLite')
  p.add_argument('--max-float-layers', type=int, default=6)
  p.add_argument('--selective-max-size-ratio', type=float, default=0.3,
                 help='int8_selective: largest file size against float32')
  p.add_argument('--select-on', choices=('train', 'eval'), default='train',
                 help='data int8_selective scores its steps on (train: the '
                 'eval set stays unseen by the selection)')
  p.add_argument('--sparsity', type=float, default=0.5)
  p.add_argument('--prune-epochs', type=int, default=2)
  p.add_argument('--distill-epochs', type=int, default=15)
  p.add_argument('--student-size', type=int, default=64,
                 help='module_64px: the module student resolution (0: skip)')
  p.add_argument('--student-epochs', type=int, default=5)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--runs', type=int, default=50, help='timed runs, batch 1')
  p.add_argument('--batch-latency', type=int, default=32)
  p.add_argument('--latency-rounds', type=int, default=3)
  p.add_argument('--out', default=str(DEFAULT_OUT))
  return p.parse_args(argv)


def log(message):
  print(f'[{time.strftime("%H:%M:%S")}] {message}', flush=True)


class Bench:
  """Measures variants on the same eval data and collects the rows.

  Accuracy and size are measured when a variant is added; latencies at the end
  (`measure_latencies`), round-robin over all variants for --latency-rounds
  rounds, each figure the median over rounds, so that a burst of load on the
  machine does not land on one variant only.
  """

  def __init__(self, args, x_eval, y_eval):
    self.args, self.x, self.y = args, x_eval, y_eval
    self.rows = []
    self.reference = None  # the float32 TFLite row

  def keras(self, name, model, **extra):
    accuracy = measure.keras_accuracy(model, self.x, self.y)
    row = dict(variant=name, kind='keras', accuracy=accuracy,
               params=int(model.count_params()), **extra)
    row['_latency'] = lambda batch, runs: measure.keras_latency(
        model, self.x, batch_size=batch, runs=runs)
    self.rows.append(row)
    log(f'{name}: accuracy {accuracy:.4f}')
    return row

  def tflite(self, name, tflite, **extra):
    a = self.args
    logits = measure.tflite_predict(tflite, self.x, batch=32, threads=a.threads)
    row = dict(variant=name, kind='tflite',
               accuracy=measure.accuracy_of(logits, self.y),
               **measure.sizes(tflite), **extra)
    row['_argmax'] = logits.argmax(-1)
    row['_latency'] = lambda batch, runs: measure.tflite_latency(
        tflite, self.x, batch_size=batch, runs=runs, threads=a.threads)
    if name == 'float32':
      self.reference = row
    self.rows.append(row)
    log(f'{name}: {row["bytes"] / 1e6:.2f} MB (gzip {row["gzip_bytes"] / 1e6:.2f}), '
        f'accuracy {row["accuracy"]:.4f}')
    return row

  def measure_latencies(self):
    a = self.args
    runs = {1: a.runs, a.batch_latency: max(5, a.runs // 5)}
    samples = {(i, b): [] for i in range(len(self.rows)) for b in runs}
    for _ in range(a.latency_rounds):
      for i, row in enumerate(self.rows):
        for batch, count in runs.items():
          samples[(i, batch)].append(row['_latency'](batch, count))
    for i, row in enumerate(self.rows):
      row['latency_b1_ms'] = float(np.median(samples[(i, 1)]))
      row['latency_bn_ms'] = float(np.median(samples[(i, a.batch_latency)]))
      row['latency_rounds_ms'] = {str(b): samples[(i, b)] for b in runs}
      log(f'{row["variant"]}: {row["latency_b1_ms"]:.3f} / '
          f'{row["latency_bn_ms"]:.3f} ms per example')


def table(rows, keras_accuracy, reference, batch):
  head = (f'| variant | size MB | size vs f32 | gzip MB | gzip vs f32 | accuracy '
          f'| drop vs Keras f32 | ms/ex b1 | ms/ex b{batch} | speed-up b1 '
          f'| speed-up b{batch} | notes |')
  lines = [head, '|' + '---|' * 12]
  for r in rows:
    if r['kind'] == 'tflite':
      size = (f'{r["bytes"] / 1e6:.2f} | {r["bytes"] / reference["bytes"]:.3f} | '
              f'{r["gzip_bytes"] / 1e6:.2f} | '
              f'{r["gzip_bytes"] / reference["gzip_bytes"]:.3f}')
      speed = (f'{reference["latency_b1_ms"] / r["latency_b1_ms"]:.2f}x | '
               f'{reference["latency_bn_ms"] / r["latency_bn_ms"]:.2f}x')
    else:
      size = f'({4 * r["params"] / 1e6:.2f} f32 weights) | - | - | -'
      speed = (f'{reference["latency_b1_ms"] / r["latency_b1_ms"]:.2f}x | '
               f'{reference["latency_bn_ms"] / r["latency_bn_ms"]:.2f}x')
    drop = keras_accuracy - r['accuracy']
    lines.append(
        f'| {r["variant"]} | {size} | {r["accuracy"]:.4f} | {100 * drop:+.1f} pt | '
        f'{r["latency_b1_ms"]:.3f} | {r["latency_bn_ms"]:.3f} | {speed} | '
        f'{r.get("notes", "")} |')
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  tf_keras.utils.set_random_seed(args.seed)
  t0 = time.perf_counter()
  handle = resolve.resolve(MODULE)
  x_train, y_train, x_eval, y_eval, _ = load_fashion_mnist(
      args.train, args.eval, args.seed, args.size)
  num_classes = fashion_mnist.NUM_CLASSES
  log(f'data: {x_train.shape} train, {x_eval.shape} eval '
      f'({time.perf_counter() - t0:.1f} s)')
  timings = {}

  # The core model: frozen module + linear head trained on cached embeddings.
  start = time.perf_counter()
  extractor = model_lib.feature_extractor('image', handle,
                                          input_size=[args.size, args.size])
  f_train = extractor.predict(x_train, batch_size=64, verbose=0)
  head = model_lib.head(f_train.shape[1], num_classes)
  model_lib.compile_for_training(head, 1e-3)
  head.fit(f_train, y_train, batch_size=64, epochs=args.epochs, verbose=0)
  core = model_lib.classifier(extractor, head)
  teacher_train_logits = head.predict(f_train, batch_size=256, verbose=0)
  timings['core_model_s'] = time.perf_counter() - start
  log(f'core model trained in {timings["core_model_s"]:.1f} s')

  bench = Bench(args, x_eval, y_eval)
  keras_row = bench.keras('keras_float32 (SavedModel/Keras)', core,
                          notes='core model, tf.function forward pass')
  keras_accuracy = keras_row['accuracy']
  calibration = x_train[:args.calibration]

  tflites = {}
  for mode in techniques.MODES:
    start = time.perf_counter()
    tflites[mode] = techniques.to_tflite(core, mode, representative=calibration)
    timings[f'convert_{mode}_s'] = time.perf_counter() - start
    bench.tflite(mode, tflites[mode],
                 convert_seconds=timings[f'convert_{mode}_s'])
    if mode == 'dynamic_range':
      bench.rows[-1]['notes'] = 'int8 weights, float activations'
    elif mode == 'float16':
      bench.rows[-1]['notes'] = 'float16 weights, dequantized at load'
    elif mode == 'int8':
      bench.rows[-1]['notes'] = (f'{len(calibration)} calibration images, '
                                 'float32 in/out')

  # Selective int8.
  start = time.perf_counter()
  select_x, select_y = ((x_train[:args.eval], y_train[:args.eval])
                        if args.select_on == 'train' else (x_eval, y_eval))
  selective = techniques.int8_selective(
      core, calibration, select_x, select_y, budget=args.budget,
      max_float_layers=args.max_float_layers,
      max_size_ratio=args.selective_max_size_ratio, threads=args.threads)
  timings['int8_selective_s'] = time.perf_counter() - start
  log(f'int8_selective ({timings["int8_selective_s"]:.1f} s): ranking ' +
      ', '.join(f'{r["layer"]}={r["rmse/scale"]:.2f}' for r in selective.ranking[:8]))
  for step in selective.trace:
    log(f'  float {step["float_layers"] or "none"}: {args.select_on} accuracy '
        f'{step["accuracy"]:.4f}, drop {100 * step["drop"]:+.1f} pt, agreement '
        f'{step["agreement"]:.4f}, size {step["size_ratio"]:.3f}')
  bench.tflite('int8_selective', selective.tflite,
               notes=f'float: {", ".join(selective.float_layers) or "none"}; '
               f'met budget on {args.select_on}: {selective.met_budget}',
               float_layers=selective.float_layers, trace=selective.trace,
               ranking=selective.ranking[:10])

  # Pruning.
  start = time.perf_counter()
  pruned, sparsity = techniques.prune(core, x_train, y_train,
                                      target_sparsity=args.sparsity,
                                      epochs=args.prune_epochs, batch=64)
  timings['prune_s'] = time.perf_counter() - start
  log(f'pruned in {timings["prune_s"]:.1f} s: sparsity {sparsity:.3f} of the '
      f'pruned kernels, {measure.kernel_sparsity(pruned)["sparsity"]:.3f} of all')
  bench.tflite('pruned', techniques.to_tflite(pruned, 'float32'),
               sparsity=sparsity,
               notes=f'{sparsity:.0%} of 1x1 kernels zero, float32; '
               f'{args.prune_epochs} fine-tune epochs')
  bench.tflite('pruned_int8',
               techniques.to_tflite(pruned, 'int8', representative=calibration),
               sparsity=sparsity, notes='pruned, then full int8')

  # Distillation into a small CNN.
  start = time.perf_counter()
  tf_keras.utils.set_random_seed(args.seed)
  student = techniques.small_cnn_student((args.size, args.size, 3), num_classes,
                                         resize_to=(32, 32))
  techniques.distill(None, student, x_train, args.distill_epochs,
                     train_y=y_train, teacher_logits=teacher_train_logits,
                     learning_rate=2e-3)
  timings['distill_cnn_s'] = time.perf_counter() - start
  log(f'distilled the small CNN in {timings["distill_cnn_s"]:.1f} s')
  teacher_argmax = bench.reference['_argmax']
  for name, mode in (('distilled_cnn', 'float32'), ('distilled_cnn_int8', 'int8')):
    row = bench.tflite(name, techniques.to_tflite(student, mode,
                                                  representative=calibration),
                       params=int(student.count_params()))
    row['agreement_with_teacher'] = float(np.mean(row['_argmax'] == teacher_argmax))
    row['notes'] = (f'{student.count_params() / 1e3:.0f}k params, {mode}; '
                    f'agrees with teacher on {row["agreement_with_teacher"]:.1%}')

  if args.student_size:
    start = time.perf_counter()
    tf_keras.utils.set_random_seed(args.seed)
    small = techniques.resized_module_student(
        handle, (args.size, args.size, 3), (args.student_size, args.student_size),
        num_classes)
    techniques.distill(None, small, x_train, args.student_epochs,
                       train_y=y_train, teacher_logits=teacher_train_logits,
                       learning_rate=1e-3)
    timings['distill_module_s'] = time.perf_counter() - start
    log(f'distilled the {args.student_size} px module student in '
        f'{timings["distill_module_s"]:.1f} s')
    row = bench.tflite(f'module_{args.student_size}px',
                       techniques.to_tflite(small, 'float32'))
    row['agreement_with_teacher'] = float(np.mean(row['_argmax'] == teacher_argmax))
    row['notes'] = (f'same module at {args.student_size} px, head distilled; '
                    f'agrees with teacher on {row["agreement_with_teacher"]:.1%}')

  start = time.perf_counter()
  load_before = os.getloadavg()[0]
  bench.measure_latencies()
  timings['latency_s'] = time.perf_counter() - start
  load_after = os.getloadavg()[0]
  timings['total_s'] = time.perf_counter() - t0
  print()
  print(f'Fashion-MNIST {args.train} train / {args.eval} eval, {args.size}x{args.size}, '
        f'{MODULE} frozen + linear head ({args.epochs} epochs on cached '
        f'embeddings); TFLite {args.threads} threads; latency median ms per '
        f'example; {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs, 1-min load average {load_before:.2f} before and '
        f'{load_after:.2f} after the latency phase')
  print(table(bench.rows, keras_accuracy, bench.reference, args.batch_latency))
  print(f'\ntotal {timings["total_s"]:.0f} s; ' +
        ', '.join(f'{k} {v:.1f}' for k, v in timings.items() if k != 'total_s'))

  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  rows = [{k: v for k, v in r.items() if not k.startswith('_')} for r in bench.rows]
  out.write_text(json.dumps(dict(
      args=vars(args), module=MODULE, keras_accuracy=keras_accuracy,
      rows=rows, timings=timings, load_average=[load_before, load_after], tensorflow=tf.__version__,
      python=sys.version.split()[0], cpus=os.cpu_count()), indent=2) + '\n')
  log(f'wrote {out}')


if __name__ == '__main__':
  main()
