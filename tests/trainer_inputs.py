"""A tiny real Trainer input for tests that run the Trainer outside a DAG.

Writes raw image examples (PNG bytes, the toy colour problem) as an Examples
artifact with train, validation and eval splits (as hubpipe's ExampleGen
writes them), then runs TFX's own Transform executor on
them with hubpipe's image preprocessing_fn. The result is what the Trainer
reads in a pipeline run: raw examples plus a Transform graph.

`trainer_do(...)` then runs the Trainer's executor (TFX's GenericExecutor,
then the model record onto the Model artifact) on them, as a Trainer pod
(or one worker of a TFJob / Vertex worker pool) does.
"""

import io
import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image
from hubpipe.components.trainer import executor as trainer_executor
from tfx.components.transform import executor as transform_executor
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from google.protobuf import json_format

from hubpipe.pipeline.config import handoff, load_config
from hubpipe.pipeline.pipeline import NO_STAGING_ARG
from toy_images import toy_images

# How dominant the class colour is (tests.toy_images): easy, so a few steps learn.
SIGNAL = 0.8
SCHEMA_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'schemas', 'image_classification')
TRANSFORM_FN = 'hubpipe.components.transform.image.preprocessing_fn'
TRAINER_FN = 'hubpipe.components.trainer.run.run_fn'


def _example(image: np.ndarray, label: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray((image * 255).astype('uint8')).save(buffer, format='PNG')
  return tf.train.Example(features=tf.train.Features(feature={
      'image': tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[buffer.getvalue()])),
      'label': tf.train.Feature(int64_list=tf.train.Int64List(
          value=[int(label)])),
  })).SerializeToString()


def _artifact(cls, uri, **properties):
  artifact = cls()
  artifact.uri = uri
  for key, value in properties.items():
    setattr(artifact, key, value)
  return artifact


# Shares of a split per file: uneven, as ExampleGen's shards are.
SHARDS = (0.5, 0.3, 0.2)


def examples_artifact(root: str, splits: dict) -> standard_artifacts.Examples:
  """{split: (images, labels)} as an Examples artifact: gzipped TFRecord
  shards of uneven size, in order (reading the sorted files gives the
  examples as given)."""
  examples = _artifact(standard_artifacts.Examples, os.path.join(root, 'examples'))
  examples.split_names = artifact_utils.encode_split_names(sorted(splits))
  for split, (images, labels) in splits.items():
    folder = os.path.join(examples.uri, f'Split-{split}')
    os.makedirs(folder, exist_ok=True)
    bounds = [round(len(labels) * c) for c in np.cumsum((0,) + SHARDS)]
    for index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
      name = f'data-{index:05d}-of-{len(SHARDS):05d}.gz'
      with tf.io.TFRecordWriter(os.path.join(folder, name),
                                options='GZIP') as writer:
        for image, label in zip(images[start:end], labels[start:end]):
          writer.write(_example(image, label))
  return examples


def examples_of(inputs: dict) -> standard_artifacts.Examples:
  """The Examples artifact `make_trainer_inputs` wrote."""
  examples = standard_artifacts.Examples()
  examples.uri = inputs['examples']
  examples.split_names = artifact_utils.encode_split_names(
      ['eval', 'train', 'validation'])
  return examples


def records(inputs: dict, split: str = 'validation') -> list:
  """The serialized examples of `split`, in the order of
  `inputs[f'{split}_labels']`."""
  files = sorted(tf.io.gfile.glob(os.path.join(inputs['examples'],
                                               f'Split-{split}', '*')))
  return [r.numpy() for r in tf.data.TFRecordDataset(files,
                                                     compression_type='GZIP')]


def transformed_images(inputs: dict, split: str = 'validation') -> np.ndarray:
  """`records(inputs, split)` through the Transform graph: the images the
  model's core takes."""
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  output = tft.TFTransformOutput(inputs['transform_graph'])
  raw = tf.io.parse_example(tf.constant(records(inputs, split)),
                            output.raw_feature_spec())
  return output.transform_features_layer()(raw)['image'].numpy()


def make_trainer_inputs(root: str, train: int = 96, eval_: int = 48,
                        size: int = 32, input_size=(32, 32), classes: int = 3,
                        seed: int = 0, class_sorted: bool = False) -> dict:
  """Examples + Transform graph + schema under `root`; returns their URIs.
  validation and eval have `eval_` examples each; class_sorted: the train
  files hold the examples sorted by class (as some deliveries do)."""
  x_train, y_train = toy_images(train, seed, size=size, classes=classes,
                                signal=SIGNAL)
  if class_sorted:
    order = np.argsort(y_train, kind='stable')
    x_train, y_train = x_train[order], y_train[order]
  x_val, y_val = toy_images(eval_, seed + 1, size=size, classes=classes,
                            signal=SIGNAL)
  x_eval, y_eval = toy_images(eval_, seed + 2, size=size, classes=classes,
                              signal=SIGNAL)
  examples = examples_artifact(root, {'train': (x_train, y_train),
                                      'validation': (x_val, y_val),
                                      'eval': (x_eval, y_eval)})
  schema = _artifact(standard_artifacts.Schema, SCHEMA_DIR)
  graph = _artifact(standard_artifacts.TransformGraph,
                    os.path.join(root, 'transform_graph'))
  cache = _artifact(standard_artifacts.TransformCache,
                    os.path.join(root, 'transform_cache'))
  executor = transform_executor.Executor(
      transform_executor.Executor.Context(
          beam_pipeline_args=['--direct_running_mode=in_memory',
                              '--direct_num_workers=1', NO_STAGING_ARG],
          tmp_dir=os.path.join(root, 'tmp'), unique_id='transform'))
  executor.Do(
      {'examples': [examples], 'schema': [schema]},
      {'transform_graph': [graph], 'updated_analyzer_cache': [cache]},
      {'preprocessing_fn': TRANSFORM_FN, 'disable_statistics': 1,
       'force_tf_compat_v1': 0,
       # The Transform's hand-off (pipeline/config.py).
       'custom_config': json.dumps(handoff(
           load_config(None, {'module.input_size': list(input_size)}),
           'Transform'))})
  return {'examples': examples.uri, 'transform_graph': graph.uri,
          'schema': SCHEMA_DIR, 'input_size': list(input_size),
          'train_labels': [int(v) for v in y_train],
          'validation_labels': [int(v) for v in y_val],
          'eval_labels': [int(v) for v in y_eval]}


def trainer_do(inputs: dict, output_root: str, config: dict):
  """The Trainer's executor (TFX's GenericExecutor, then the model record
  onto the Model artifact) with hubpipe's run_fn, as a Trainer pod runs it;
  `config` is the Trainer's config sections (Config.to_dict()). Returns the
  Model artifact."""
  examples = _artifact(standard_artifacts.Examples, inputs['examples'])
  examples.split_names = artifact_utils.encode_split_names(
      ['eval', 'train', 'validation'])
  model = _artifact(standard_artifacts.Model,
                    os.path.join(output_root, 'Trainer', 'model', '1'))
  model_run = _artifact(standard_artifacts.ModelRun,
                        os.path.join(output_root, 'Trainer', 'model_run', '1'))
  trainer_executor.Executor().Do(
      {'examples': [examples],
       'transform_graph': [_artifact(standard_artifacts.TransformGraph,
                                     inputs['transform_graph'])],
       'schema': [_artifact(standard_artifacts.Schema, inputs['schema'])]},
      {'model': [model], 'model_run': [model_run]},
      {'run_fn': TRAINER_FN,
       'train_args': json_format.MessageToJson(
           trainer_pb2.TrainArgs(splits=['train'])),
       'eval_args': json_format.MessageToJson(
           trainer_pb2.EvalArgs(splits=['validation'])),
       'custom_config': json.dumps({'config': config})})
  return model


def main(argv):
  """`python tests/trainer_inputs.py <inputs.json> <output root> <config.json>`:
  one Trainer process (a worker when TF_CONFIG is set)."""
  with open(argv[1]) as f:
    inputs = json.load(f)
  with open(argv[3]) as f:
    config = json.load(f)
  trainer_do(inputs, argv[2], config)
  import tf_keras  # pylint: disable=g-import-not-at-top
  # What the components after the Trainer inherit in a local run's process.
  print(json.dumps({'policy_after_trainer':
                    tf_keras.mixed_precision.global_policy().name}))


if __name__ == '__main__':
  import sys
  main(sys.argv)
