"""The image folder ExampleGen's splits, and a stand-alone FileBasedExampleGen with it.

In the hubpipe DAG the image folder executor runs inside SnapshotExampleGen
(components/snapshot_example_gen, with `split_configs` below), whose data
snapshot fingerprints every file, so added, removed and edited images all
start a new ingestion. `image_folder_example_gen()` builds the same executor
into TFX's FileBasedExampleGen, for pipelines of your own.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

from typing import Any, Tuple

from tfx.components import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2

from hubpipe.components.image_folder_example_gen.executor import (
    Executor, make_custom_config)

SPLIT_FOLDERS = ('train', 'eval')
# Optional beside them; else the validation split is carved out of train.
VALIDATION_FOLDER = 'validation'
# Hash buckets in all when ExampleGen divides one pool of images.
TOTAL_BUCKETS = 1000


def split_configs(input_base: str, eval_fraction: float = 0.2
                  ) -> Tuple[example_gen_pb2.Input, example_gen_pb2.Output]:
  """(input_config, output_config) for an image folder.

  When input_base holds both train/ and eval/ folders (each with the class folders),
  they are the splits, and so is validation/ when it is there too. Otherwise the
  class folders are directly under input_base and ExampleGen hashes each image into
  train or eval, eval_fraction of them to eval (rounded to 1/1000). Only one of
  train/ and eval/ is an error: a class cannot be told from a split folder then.
  The patterns are `train/*` and `eval/*` (rather than `train` and `eval`) so that
  FileBasedExampleGen's input fingerprint, which stats what the patterns match,
  sees the class folders change when images are added or removed.
  """
  present = [s for s in SPLIT_FOLDERS + (VALIDATION_FOLDER,)
             if fileio.isdir(os.path.join(input_base, s))]
  if set(SPLIT_FOLDERS) <= set(present):
    return (example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name=s, pattern=f'{s}/*')
        for s in present]),
            example_gen_pb2.Output())
  if present:
    missing = [s for s in SPLIT_FOLDERS if s not in present]
    raise ValueError(
        f'{input_base} has a {present[0]}/ folder but no '
        f'{" or ".join(m + "/" for m in missing)} folder: give it both train/ '
        'and eval/ (each with one sub-folder per class, and optionally '
        'validation/), or only class folders.')
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(f'eval_fraction must be between 0 and 1, got {eval_fraction}')
  eval_buckets = min(max(round(eval_fraction * TOTAL_BUCKETS), 1), TOTAL_BUCKETS - 1)
  return (example_gen_pb2.Input(splits=[
      example_gen_pb2.Input.Split(name='all', pattern='*')]),
          example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
              example_gen_pb2.SplitConfig.Split(
                  name='train', hash_buckets=TOTAL_BUCKETS - eval_buckets),
              example_gen_pb2.SplitConfig.Split(name='eval',
                                                hash_buckets=eval_buckets),
          ])))


def image_folder_example_gen(config: Any, input_base: str) -> FileBasedExampleGen:
  """FileBasedExampleGen with the image folder executor, from the config's `data`.

  Reads data.image_feature, data.label_feature, data.on_corrupt and
  data.eval_fraction (`config` may also be the data section itself).
  """
  data = getattr(config, 'data', config)
  input_config, output_config = split_configs(input_base, data.eval_fraction)
  return FileBasedExampleGen(
      input_base=input_base,
      input_config=input_config,
      output_config=output_config,
      custom_config=make_custom_config(data.image_feature, data.label_feature,
                                       data.on_corrupt),
      custom_executor_spec=executor_spec.BeamExecutorSpec(Executor))
