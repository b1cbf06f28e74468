"""SnapshotExampleGen's executors: TFX's ExampleGen executors, fed by a snapshot.

The snapshot (components/data_snapshot/snapshot.py) names, per split, the
file patterns below its `input_base`. Before reading, the executor takes the
fingerprint again: if the files changed since the snapshot (a delivery still
being written), it stops rather than record examples under a fingerprint they
do not match; the next run ingests the finished delivery.
"""

import hashlib
import json
import posixpath
from typing import Any, Dict

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.utils import proto_utils

from hubpipe.components.data_snapshot import snapshot as snapshot_lib
from hubpipe.components.image_folder_example_gen import executor as image_executor


class SnapshotChangedError(RuntimeError):
  """The files changed between the snapshot and ingestion."""


def _fingerprint_text(fingerprint: Dict) -> str:
  return (f'files:{fingerprint["files"]},bytes:{fingerprint["bytes"]},'
          f'sha256:{fingerprint["sha256"]}')


class _FromSnapshot:
  """Turns the `snapshot` parameter into what TFX's ExampleGen executor reads,
  runs it, and records span, spans and fingerprint on the Examples."""

  def Do(self, input_dict, output_dict, exec_properties):
    snap = json.loads(exec_properties['snapshot'])
    now = snapshot_lib.refingerprint(snap)
    if now != snap['fingerprint']:
      raise SnapshotChangedError(
          f'the files under {snap["input_base"]} changed after this run took '
          f'its snapshot ({_fingerprint_text(snap["fingerprint"])}; now '
          f'{_fingerprint_text(now)}): a delivery still being written? '
          'Nothing was ingested; the next run ingests the data as it is then.')
    props = dict(exec_properties, input_base=snap['input_base'])
    if snap['splits']:
      props['input_config'] = proto_utils.proto_to_json(example_gen_pb2.Input(
          splits=[example_gen_pb2.Input.Split(name=name,
                                              pattern=json.dumps(patterns))
                  for name, patterns in snap['splits'].items()]))
    super().Do(input_dict, output_dict, props)
    examples = artifact_utils.get_single_instance(output_dict['examples'])
    examples.span = int(snap['span'])
    examples.version = 0
    examples.set_string_custom_property(
        'input_fingerprint', _fingerprint_text(snap['fingerprint']))
    examples.set_string_custom_property('spans', json.dumps(snap['spans']))
    examples.set_string_custom_property('snapshot_sha256', hashlib.sha256(
        exec_properties['snapshot'].encode()).hexdigest())


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ReadPatterns(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],  # pylint: disable=invalid-name
                  split_pattern: str) -> beam.pvalue.PCollection:
  """Serialized records of the TFRecord files that the split's patterns
  (a JSON list, relative to input_base) match."""
  base = exec_properties['input_base']
  patterns = [posixpath.join(base, p) for p in json.loads(split_pattern)]
  return (pipeline
          | 'Patterns' >> beam.Create(patterns)
          | 'ReadAllFromTFRecord' >> beam.io.ReadAllFromTFRecord()
          | 'ToTFExample' >> beam.Map(tf.train.Example.FromString))


class TFRecordExecutor(_FromSnapshot, import_executor.Executor):
  """ImportExampleGen's executor over the snapshot's file patterns."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _ReadPatterns


class ImageFolderExecutor(_FromSnapshot, image_executor.Executor):
  """The image folder ExampleGen's executor, on the snapshot's data root."""
