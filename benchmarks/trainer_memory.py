"""Peak memory of the Trainer against the size of the data: it must stay flat.

Runs hubpipe's Trainer (run_fn under TFX's GenericExecutor, in a process of
its own, as a Trainer pod runs it) with the demo config's trainer sections
(pipeline/configs/fashion_mnist.yaml: frozen MobileNetV1 at 96x96, linear
head, the random control) on two sizes of Fashion-MNIST, side by side:
the demo's 5000 / 2000 subset and all of it (60000 train, 10000 eval). The
inputs are what the pipeline hands the Trainer: gzipped TFRecord shards with
train, validation (10% of each class of train, carved by the ExampleGen's
own rule) and eval, and a Transform graph made by TFX's Transform executor.

Prints each run's peak resident set size (the child's ru_maxrss), its
embedding and training times and validation accuracy, and the ratio of the
peaks (the issue's target: at most 1.5).

  python benchmarks/trainer_memory.py [--sizes 5000:2000 60000:10000]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # pylint: disable=g-import-not-at-top
from tfx.components.transform import executor as transform_executor
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests'))

import trainer_inputs  # pylint: disable=g-import-not-at-top,wrong-import-position
from hubpipe.components.datasets import fashion_mnist  # pylint: disable=g-import-not-at-top,wrong-import-position
from hubpipe.components.snapshot_example_gen import validation_split  # pylint: disable=wrong-import-position
from hubpipe.pipeline.config import handoff, load_config  # pylint: disable=wrong-import-position
from hubpipe.pipeline.pipeline import NO_STAGING_ARG, TRAINER_SECTIONS  # pylint: disable=wrong-import-position

CONFIG = os.path.join(os.path.dirname(HERE), 'pipeline', 'configs',
                      'fashion_mnist.yaml')
SHARDS = 4


def _write_examples(source, root, fraction, seed):
  """The prepared TFRecords as an Examples artifact with the three splits."""
  by_split = {'train': [], 'validation': [], 'eval': []}
  records = {split: [r.numpy() for r in tf.data.TFRecordDataset(
      os.path.join(source, split, 'data.tfrecord'))]
             for split in ('train', 'eval')}
  by_split['eval'] = records['eval']
  classes = {}
  for record in records['train']:
    classes.setdefault(validation_split.label_of(record, 'label'), []).append(
        (validation_split.hash_of(record, seed), record))
  for label, pairs in classes.items():
    # ExampleGen's own rule (validation_split.cut, as content_order applies it).
    _, last = validation_split.cut((label, [h for h, _ in pairs]), fraction)
    by_split['validation'] += [r for h, r in pairs if h <= last]
    by_split['train'] += [r for h, r in pairs if h > last]
  examples = standard_artifacts.Examples()
  examples.uri = os.path.join(root, 'examples')
  examples.split_names = artifact_utils.encode_split_names(sorted(by_split))
  for split, rows in by_split.items():
    folder = os.path.join(examples.uri, f'Split-{split}')
    os.makedirs(folder, exist_ok=True)
    for shard in range(SHARDS):
      with tf.io.TFRecordWriter(
          os.path.join(folder, f'data-{shard:05d}-of-{SHARDS:05d}.gz'),
          options='GZIP') as writer:
        for row in rows[shard::SHARDS]:
          writer.write(row)
  return examples, {k: len(v) for k, v in by_split.items()}


def _transform(examples, root, config):
  schema = standard_artifacts.Schema()
  schema.uri = trainer_inputs.SCHEMA_DIR
  graph = standard_artifacts.TransformGraph()
  graph.uri = os.path.join(root, 'transform_graph')
  cache = standard_artifacts.TransformCache()
  cache.uri = os.path.join(root, 'transform_cache')
  executor = transform_executor.Executor(transform_executor.Executor.Context(
      beam_pipeline_args=['--direct_running_mode=in_memory',
                          '--direct_num_workers=1', NO_STAGING_ARG],
      tmp_dir=os.path.join(root, 'tmp'), unique_id='transform'))
  executor.Do({'examples': [examples], 'schema': [schema]},
              {'transform_graph': [graph], 'updated_analyzer_cache': [cache]},
              {'preprocessing_fn': trainer_inputs.TRANSFORM_FN,
               'disable_statistics': 1, 'force_tf_compat_v1': 0,
               'custom_config': json.dumps(handoff(config, 'Transform'))})
  return graph.uri


def measure(train, eval_, root, config):
  source = fashion_mnist.prepare(train, eval_, seed=config.data.seed)
  examples, counts = _write_examples(str(source), root,
                                     config.data.validation_fraction,
                                     config.data.seed)
  inputs = {'examples': examples.uri, 'schema': trainer_inputs.SCHEMA_DIR,
            'input_size': config.module.input_size,
            'transform_graph': _transform(examples, root, config)}
  with open(os.path.join(root, 'inputs.json'), 'w') as f:
    json.dump(inputs, f)
  with open(os.path.join(root, 'config.json'), 'w') as f:
    json.dump({k: v for k, v in config.to_dict().items()
               if k in TRAINER_SECTIONS}, f)
  start = time.time()
  process = subprocess.Popen(
      [sys.executable, trainer_inputs.__file__,
       os.path.join(root, 'inputs.json'), os.path.join(root, 'out'),
       os.path.join(root, 'config.json')],
      stdout=subprocess.DEVNULL, stderr=open(os.path.join(root, 'trainer.log'),
                                             'w'))
  _, status, usage = os.wait4(process.pid, 0)
  process.returncode = os.waitstatus_to_exitcode(status)
  if process.returncode:
    raise RuntimeError(f'the Trainer failed; see {root}/trainer.log')
  with open(os.path.join(root, 'out', 'Trainer', 'model_run', '1',
                         'training_report.json')) as f:
    report = json.load(f)
  return {'train': train, 'eval': eval_, 'splits': counts,
          'peak_rss_mb': round(usage.ru_maxrss / 1024, 1),
          'trainer_seconds': round(time.time() - start, 1),
          'embedding_seconds': report.get('embedding_seconds'),
          'training_seconds': report.get('training_seconds'),
          'validation_accuracy': round(report['validation_accuracy'], 4)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', nargs='+', default=['5000:2000', '60000:10000'],
                      help='train:eval pairs, smallest first')
  parser.add_argument('--workdir', default=None)
  parser.add_argument('--json', default=None, help='also write the rows here')
  args = parser.parse_args()
  config = load_config(CONFIG)
  workdir = args.workdir or tempfile.mkdtemp(prefix='trainer_memory-')
  rows = []
  for size in args.sizes:
    train, eval_ = (int(v) for v in size.split(':'))
    root = os.path.join(workdir, f'{train}-{eval_}')
    os.makedirs(root, exist_ok=True)
    rows.append(measure(train, eval_, root, config))
    print(json.dumps(rows[-1]), flush=True)
  print(f'\n| train / eval | splits (train / validation / eval) | peak RSS (MB) '
        f'| embedding s | training s | validation accuracy |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    s = r['splits']
    print(f'| {r["train"]} / {r["eval"]} | {s["train"]} / {s["validation"]} / '
          f'{s["eval"]} | {r["peak_rss_mb"]} | {r["embedding_seconds"]} | '
          f'{r["training_seconds"]} | {r["validation_accuracy"]} |')
  if len(rows) > 1:
    print(f'\npeak RSS, largest / smallest: '
          f'{rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]:.2f}x for '
          f'{rows[-1]["train"] / rows[0]["train"]:.0f}x the train examples '
          '(target: at most 1.5x)')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  main()
