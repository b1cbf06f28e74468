#!/usr/bin/env python
"""Benchmark: Trainer throughput under the strategy `auto` picks, GPU against CPU.

Fine-tunes MobileNet v1 (the Trainer's fine_tune path: module in inference
mode, head on top) on random 96x96 images for a fixed number of steps, once
on the CPU (default strategy, GPUs hidden) and once under the strategy that
`training.strategy: auto` picks on this machine (MirroredStrategy with several
GPUs, one device with one), and prints images per second for each and their
ratio. Both runs happen in this one invocation, in subprocesses, so the CPU
run really has no GPU. Without a GPU it prints the CPU figure alone.

  HUBPIPE_DATA_DIR=$PWD/data .venv/bin/python benchmarks/strategy_throughput.py
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent('''
    import json, os, sys, time
    os.environ['TF_USE_LEGACY_KERAS'] = '1'
    import numpy as np
    import tensorflow as tf
    from hubpipe.components.hub_modules import resolve
    from hubpipe.components.modeling import model as model_lib
    from hubpipe.components.trainer import strategy as strategy_lib

    batch, steps, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    strategy = strategy_lib.make('auto')
    global_batch = batch * strategy.num_replicas_in_sync
    with strategy.scope():
      extractor = model_lib.feature_extractor(
          'image', resolve.resolve('mobilenet_v1_100_224'), [size, size],
          trainable=True)
      model = model_lib.classifier(extractor, model_lib.head(1024, 10))
      model_lib.compile_for_training(model, 1e-4)
    rng = np.random.RandomState(0)
    images = rng.rand(global_batch * 4, size, size, 3).astype('float32')
    labels = rng.randint(0, 10, len(images))
    data = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(global_batch)
    model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)  # warm-up, tracing
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    print(json.dumps({'strategy': strategy_lib.describe(strategy),
                      'replicas': strategy.num_replicas_in_sync,
                      'devices': [d.name for d in tf.config.list_logical_devices()
                                  if d.device_type in ('GPU', 'CPU')],
                      'global_batch': global_batch, 'steps': steps,
                      'seconds': round(seconds, 3),
                      'images_per_second': round(global_batch * steps / seconds, 1)}))
''')


def measure(batch, steps, size, hide_gpus):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  if hide_gpus:
    env['CUDA_VISIBLE_DEVICES'] = ''
  result = subprocess.run([sys.executable, '-c', WORKER, str(batch), str(steps),
                           str(size)], capture_output=True, text=True, env=env)
  if result.returncode:
    raise SystemExit(result.stderr[-3000:])
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=32, help='per replica')
  parser.add_argument('--cpu-steps', type=int, default=10)
  parser.add_argument('--gpu-steps', type=int, default=100)
  parser.add_argument('--size', type=int, default=96)
  parser.add_argument('--out', default='benchmarks/results/strategy_throughput.json')
  args = parser.parse_args()
  rows = [dict(measure(args.batch, args.cpu_steps, args.size, True), run='cpu')]
  auto = measure(args.batch, args.gpu_steps, args.size, False)
  if auto['strategy'] != 'DefaultStrategy':
    rows.append(dict(auto, run='auto'))
  print(f'{"run":<5} {"strategy":<26} {"replicas":>8} {"batch":>6} {"img/s":>9}')
  for row in rows:
    print(f'{row["run"]:<5} {row["strategy"]:<26} {row["replicas"]:>8} '
          f'{row["global_batch"]:>6} {row["images_per_second"]:>9.1f}')
  if len(rows) == 2:
    print(f'speed-up (auto / cpu): '
          f'{rows[1]["images_per_second"] / rows[0]["images_per_second"]:.1f}x')
  else:
    print('no GPU or TPU here: only the CPU figure.')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(rows, f, indent=2)


if __name__ == '__main__':
  main()
