"""SnapshotExampleGen's executors: TFX's ExampleGen executors, fed by a snapshot.

The snapshot (components/data_snapshot/snapshot.py) names, per split, the
file patterns below its `input_base`. The executor reads exactly the files
they match, and takes the fingerprint before and after reading: if the files
changed since the snapshot or while they were read (a delivery still being
written), it stops rather than publish examples under a fingerprint they do
not match; the next run ingests the finished delivery.

The examples are read as TFX's executors read them (GenerateExamplesByBeam),
validation is carved out of train when the data brings none
(validation_split.py), and each split is written in content order
(content_order.py) instead of by TFX's WriteSplit.
"""

import hashlib
import json
from typing import Any, Dict

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen import write_split
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.utils import proto_utils

from hubpipe.components.data_snapshot import snapshot as snapshot_lib
from hubpipe.components.image_folder_example_gen import executor as image_executor
from hubpipe.components.snapshot_example_gen import content_order
from hubpipe.components.snapshot_example_gen import validation_split

VALIDATION = 'validation'


class SnapshotChangedError(RuntimeError):
  """The files changed between the snapshot and ingestion."""


def _fingerprint_text(fingerprint: Dict) -> str:
  return (f'files:{fingerprint["files"]},bytes:{fingerprint["bytes"]},'
          f'sha256:{fingerprint["sha256"]}')


class _FromSnapshot:
  """Turns the `snapshot` parameter into what TFX's ExampleGen executor reads,
  runs it (adding the validation split), and records span, spans and
  fingerprint on the Examples."""

  _examples = None

  def Do(self, input_dict, output_dict, exec_properties):
    snap = json.loads(exec_properties['snapshot'])
    _check_unchanged(snap, 'after this run took its snapshot')
    props = dict(exec_properties, input_base=snap['input_base'])
    if snap['splits']:
      # Exactly the files the snapshot fingerprinted (files only: a
      # sub-folder under train/ is not read).
      props['input_config'] = proto_utils.proto_to_json(example_gen_pb2.Input(
          splits=[example_gen_pb2.Input.Split(name=name,
                                              pattern=json.dumps(files))
                  for name, files in snapshot_lib.files_of(snap).items()]))
    examples = artifact_utils.get_single_instance(output_dict['examples'])
    # GenerateExamplesByBeam names the splits, with the carved one.
    self._examples = examples
    self._generate_and_write(examples, props)
    # A file that changed while Beam read it: what was read is not what the
    # fingerprint says; fail rather than publish it.
    _check_unchanged(snap, 'while this run read them')
    examples.span = int(snap['span'])
    examples.version = 0
    examples.set_string_custom_property(
        'input_fingerprint', _fingerprint_text(snap['fingerprint']))
    examples.set_string_custom_property('spans', json.dumps(snap['spans']))
    examples.set_string_custom_property('snapshot_sha256', hashlib.sha256(
        exec_properties['snapshot'].encode()).hexdigest())

  def _generate_and_write(self, examples, exec_properties) -> None:
    """What TFX's BaseExampleGenExecutor.Do does, but each split is written
    in content order (content_order.py), not by WriteSplit: the same data
    gives the same files, so whatever reads them in file order (the
    Trainer's seeded shuffle, seeded samples) is repeatable."""
    file_format = exec_properties.get('output_file_format')
    if file_format not in (None, example_gen_pb2.FILE_FORMAT_UNSPECIFIED,
                           example_gen_pb2.FORMAT_TFRECORDS_GZIP):
      raise ValueError(
          f'SnapshotExampleGen writes gzipped TFRecords only, not '
          f'{example_gen_pb2.FileFormat.Name(file_format)}.')
    seed = int(exec_properties.get('split_seed') or 0)
    with self._make_beam_pipeline() as pipeline:
      for split, records in self.GenerateExamplesByBeam(
          pipeline, exec_properties).items():
        _ = records | f'WriteSplit[{split}]' >> content_order.WriteInContentOrder(
            artifact_utils.get_split_uri([examples], split), seed)
    if exec_properties.get('output_data_format'):
      examples_utils.set_payload_format(
          examples, exec_properties['output_data_format'])
    examples_utils.set_file_format(examples, write_split.to_file_format_str(
        example_gen_pb2.FORMAT_TFRECORDS_GZIP))
    examples.set_string_custom_property(
        'record_order', f'sorted by a hash of each example (seed {seed}), '
        'in shards of about '
        f'{content_order.SHARD_BYTES >> 20} MB')

  def GenerateExamplesByBeam(self, pipeline, exec_properties):
    """TFX's splits, plus `validation` carved out of train when the data
    brings none (validation_split.py)."""
    splits = super().GenerateExamplesByBeam(pipeline, exec_properties)
    fraction = exec_properties.get('validation_fraction') or 0.0
    source = f'the data\'s own {VALIDATION} split'
    if VALIDATION not in splits and fraction > 0:
      source = (f'carved out of train: {fraction:g} of each class, seed '
                f'{int(exec_properties.get("split_seed") or 0)}')
      if 'train' not in splits:
        raise ValueError(f'no train split to carve validation from: the '
                         f'splits are {sorted(splits)}.')
      splits['train'], splits[VALIDATION] = (
          splits['train'] | 'CarveValidation' >> validation_split.CarveValidation(
              exec_properties['label_feature'], fraction,
              int(exec_properties.get('split_seed') or 0)))
    if self._examples is not None:
      self._examples.split_names = artifact_utils.encode_split_names(
          list(splits))
      self._examples.set_string_custom_property('validation_source', source)
    return splits


def _check_unchanged(snap, when: str) -> None:
  now = snapshot_lib.refingerprint(snap)
  if now != snap['fingerprint']:
    raise SnapshotChangedError(
        f'the files under {snap["input_base"]} changed {when} '
        f'({_fingerprint_text(snap["fingerprint"])}; now '
        f'{_fingerprint_text(now)}): a delivery still being written? Nothing '
        'was ingested. Start a new run once it is complete (a retry of this '
        'run reuses its snapshot and fails again); data.ready_marker makes '
        'runs wait for a marker file written last.')


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ReadFiles(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],  # pylint: disable=invalid-name
               split_pattern: str) -> beam.pvalue.PCollection:
  """tf.Examples from the TFRecord files the split's "pattern" lists (a
  JSON list of paths, set by _FromSnapshot.Do)."""
  del exec_properties
  return (pipeline
          | 'Files' >> beam.Create(json.loads(split_pattern))
          | 'ReadAllFromTFRecord' >> beam.io.ReadAllFromTFRecord()
          | 'ToTFExample' >> beam.Map(tf.train.Example.FromString))


class TFRecordExecutor(_FromSnapshot, import_executor.Executor):
  """ImportExampleGen's executor over the snapshot's file patterns."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _ReadFiles


class ImageFolderExecutor(_FromSnapshot, image_executor.Executor):
  """The image folder ExampleGen's executor, on the snapshot's data root."""
