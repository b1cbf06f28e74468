"""SnapshotExampleGen's executors: TFX's ExampleGen executors, fed by a snapshot.

The snapshot (components/data_snapshot/snapshot.py) names, per split, the
file patterns below its `input_base`. The executor reads exactly the files
they match, and takes the fingerprint before and after reading: if the files
changed since the snapshot or while they were read (a delivery still being
written), it stops rather than publish examples under a fingerprint they do
not match; the next run ingests the finished delivery.

The examples are read as TFX's executors read them (GenerateExamplesByBeam:
TFRecords as ImportExampleGen, image folders, CSV files as CsvExampleGen),
validation is carved out of train when the data brings none
(validation_split.py), and each split is written in content order
(content_order.py) instead of by TFX's WriteSplit.

CSV files either sit in train/ and eval/ (and validation/) folders like
TFRecords, or all at the data root with a column (`split_feature`) that says
which split each row belongs to: `train`, `validation` or `eval`. That column
is routed on and left out of the examples.
"""

import csv

import hashlib
import json
import os
from typing import Any, Dict, List, Tuple

from absl import logging
import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen import write_split
from tfx.components.example_gen.csv_example_gen import executor as csv_executor
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.utils import io_utils
from tfx.utils import proto_utils
from tfx_bsl.coders import csv_decoder

from hubpipe.components.data_snapshot import snapshot as snapshot_lib
from hubpipe.components.image_folder_example_gen import executor as image_executor
from hubpipe.components.snapshot_example_gen import content_order

VALIDATION = 'validation'


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
    _check_unchanged(snap, 'after this run took its snapshot')
    props = dict(exec_properties, input_base=snap['input_base'])
    if snap['splits']:
      # Exactly the files the snapshot fingerprinted (files only: a
      # sub-folder under train/ is not read).
      props['input_config'] = proto_utils.proto_to_json(example_gen_pb2.Input(
          splits=[example_gen_pb2.Input.Split(name=name,
                                              pattern=json.dumps(files))
                  for name, files in snapshot_lib.files_of(snap).items()]))
    self.input_bytes = int(snap['fingerprint']['bytes'])
    damaged = []
    try:
      super().Do(input_dict, output_dict, props)
    except Exception as err:  # pylint: disable=broad-except
      # Beam's TFRecord reader says "Not a valid TFRecord" and shows bytes,
      # not the file: find the damaged files (only now: the normal path
      # reads each file once) and say which, and what to do.
      if snap.get('source') != 'tfrecord' or 'TFRecord' not in _messages(err):
        raise
      damaged = damaged_tfrecords(snapshot_lib.files_of(snap))
      if not damaged:
        raise
    if damaged:
      # Raised here, not in the except block: the error is the cause (a
      # failed run's summary reports the innermost exception of the chain).
      raise CorruptInputError(
          'these input files are truncated or corrupt: '
          + '; '.join(f'{path}: {what}' for path, what in damaged)
          + '. Nothing was ingested. Have the file(s) delivered again (or '
          'remove them from the data root), then run again.')
    # A file that changed while Beam read it: what was read is not what the
    # fingerprint says; fail rather than publish it.
    _check_unchanged(snap, 'while this run read them')
    examples = artifact_utils.get_single_instance(output_dict['examples'])
    # The class names the data root gives for integer labels go with the
    # examples (an image folder's ExampleGen writes its own).
    names = os.path.join(snap['input_base'], snapshot_lib.CLASSES_FILE)
    copy = os.path.join(examples.uri, snapshot_lib.CLASSES_FILE)
    if tf.io.gfile.exists(names) and not tf.io.gfile.exists(copy):
      tf.io.gfile.copy(names, copy)
    examples.span = int(snap['span'])
    examples.version = 0
    examples.set_string_custom_property(
        'input_fingerprint', _fingerprint_text(snap['fingerprint']))
    examples.set_string_custom_property('spans', json.dumps(snap['spans']))
    examples.set_string_custom_property('snapshot_sha256', hashlib.sha256(
        exec_properties['snapshot'].encode()).hexdigest())


class _WriteInContentOrder(base_example_gen_executor.BaseExampleGenExecutor):
  """TFX's ExampleGen Do, but the splits are written in content order
  (content_order.py) instead of by TFX's WriteSplit, and `validation` is
  carved out of train when the data brings none (validation_split.py).

  The same data gives the same files, so whatever reads them in file order
  (the Trainer's seeded shuffle, seeded samples) is repeatable. Last in the
  executors' bases, so that a reader's own Do (the image folder's) runs
  first and reaches this one through super()."""

  # The input files' bytes: an estimate that sizes the spill
  # (content_order.ranges_for), never the output's layout.
  input_bytes = 0

  def Do(self, input_dict, output_dict, exec_properties):
    self._log_startup(input_dict, output_dict, exec_properties)
    file_format = exec_properties.get('output_file_format')
    if file_format not in (None, example_gen_pb2.FILE_FORMAT_UNSPECIFIED,
                           example_gen_pb2.FORMAT_TFRECORDS_GZIP):
      raise ValueError(
          f'SnapshotExampleGen writes gzipped TFRecords only, not '
          f'{example_gen_pb2.FileFormat.Name(file_format)}.')
    examples = artifact_utils.get_single_instance(output_dict['examples'])
    seed = int(exec_properties.get('split_seed') or 0)
    fraction = exec_properties.get('validation_fraction') or 0.0
    uri = lambda split: artifact_utils.get_split_uri([examples], split)
    # Scratch space every Beam worker reaches: TFX's temp folder for this
    # execution, or (an executor run by hand) beside the output.
    try:
      scratch_root = self._get_tmp_dir()
    except RuntimeError:  # no context, or one without a temp path
      scratch_root = examples.uri
    scratch = os.path.join(scratch_root, '.content_order')
    logging.info('Generating examples.')
    with self._make_beam_pipeline() as pipeline:
      splits = self.GenerateExamplesByBeam(pipeline, exec_properties)
      source = f'the data\'s own {VALIDATION} split'
      carving = VALIDATION not in splits and fraction > 0
      examples.split_names = artifact_utils.encode_split_names(
          list(splits) + ([VALIDATION] if carving else []))
      carve = None
      if carving:
        if 'train' not in splits:
          raise ValueError(f'no train split to carve validation from: the '
                           f'splits are {sorted(splits)}.')
        carve = {'uri': uri(VALIDATION), 'fraction': fraction, 'seed': seed,
                 'label_feature': exec_properties['label_feature']}
        source = (f'carved out of train: {fraction:g} of each class, seed '
                  f'{seed}')
      for split, records in splits.items():
        _ = records | f'WriteSplit[{split}]' >> content_order.WriteInContentOrder(
            uri(split), seed, os.path.join(scratch, split),
            ranges=content_order.ranges_for(self.input_bytes),
            carve=carve if split == 'train' else None)
    content_order.remove_folder(scratch)
    if exec_properties.get('output_data_format'):
      examples_utils.set_payload_format(
          examples, exec_properties['output_data_format'])
    examples_utils.set_file_format(examples, write_split.to_file_format_str(
        example_gen_pb2.FORMAT_TFRECORDS_GZIP))
    examples.set_string_custom_property('validation_source', source)
    examples.set_string_custom_property(
        'record_order', f'sorted by a hash of each example (seed {seed}), '
        f'in shards of about {content_order.SHARD_BYTES >> 20} MB before '
        'compression')
    logging.info('Examples generated.')


class CorruptInputError(RuntimeError):
  """An input TFRecord file is truncated or corrupt."""


def _messages(err: BaseException) -> str:
  """The messages of `err` and the exceptions it was raised from."""
  seen, out = set(), []
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    out.append(str(err))
    err = err.__cause__ or err.__context__
  return '\n'.join(out)


def damaged_tfrecords(files_by_split: Dict[str, List[str]]
                      ) -> List[Tuple[str, str]]:
  """[(path, what is wrong)] of the TFRecord files that do not read to the
  end: a record cut short (the file was truncated: a copy or upload that
  stopped), or one whose checksum does not match (the bytes changed). Read
  with TF's reader (which checks the records' CRCs) through tf.io.gfile's
  file systems; a .gz file as GZIP."""
  out = []
  for path in sorted({f for files in files_by_split.values() for f in files}):
    records = 0
    try:
      for _ in tf.data.TFRecordDataset(
          path, compression_type='GZIP' if path.endswith('.gz') else ''):
        records += 1
    except tf.errors.OpError as err:
      message = getattr(err, 'message', str(err))
      where = f'record {records + 1}'
      if 'truncated' in message:
        what = f'truncated: the file ends inside {where}'
      elif 'corrupted' in message:
        what = f'corrupt: {where} fails its checksum'
      else:
        what = f'unreadable at {where}: {message.strip().splitlines()[-1]}'
      out.append((path, what))
  return out


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


class TFRecordExecutor(_FromSnapshot, import_executor.Executor,
                       _WriteInContentOrder):
  """ImportExampleGen's executor over the snapshot's file patterns."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _ReadFiles


class ImageFolderExecutor(_FromSnapshot, image_executor.Executor,
                          _WriteInContentOrder):
  """The image folder ExampleGen's executor, on the snapshot's data root."""


class NotUtf8Error(ValueError):
  """A CSV file that is not UTF-8 text."""


def first_non_utf8_line(path: str):
  """(line number from 1, the line) of the first line of `path` that is
  not UTF-8, or None."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    for number, line in enumerate(f, 1):
      try:
        line.decode('utf-8')
      except UnicodeDecodeError:
        return number, line
  return None


class _ReadUtf8CsvRecords(csv_executor._ReadCsvRecordsFromTextFile):  # pylint: disable=protected-access
  """TFX's CSV record reader; a file that is not UTF-8 fails naming the
  file, the line and the fix instead of a bare UnicodeDecodeError."""

  def process(self, csv_filepath: str):
    records = super().process(csv_filepath)
    while True:
      try:
        record = next(records)
      except StopIteration:
        return
      except UnicodeDecodeError:
        break
      yield record
    # Raised outside the except clause: the error reported is this one.
    raise NotUtf8Error(_not_utf8_message(
        csv_filepath, first_non_utf8_line(csv_filepath)))


def _not_utf8_message(path: str, found) -> str:
  where = f'line {found[0]} ({found[1][:80]!r})' if found else 'a line'
  return (f'{path} is not UTF-8 text: {where} holds bytes that are not '
          'UTF-8. Save the CSV files as UTF-8 (e.g. `iconv -f latin1 -t utf-8 '
          'in.csv > out.csv` for a Latin-1 file), or remove the line.')


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ReadCsvFiles(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],  # pylint: disable=invalid-name
                  split_pattern: str) -> beam.pvalue.PCollection:
  """tf.Examples from the CSV files the split's "pattern" lists (a JSON list
  of paths), parsed as TFX's CsvExampleGen parses a split, with its own
  pieces: a header line in every file (all alike), quoted fields that may
  span lines, each column's type inferred over the split (INT, FLOAT, else
  bytes), an empty cell an empty feature.

  CsvExampleGen globs one pattern under input_base; a snapshot lists files
  (a window of span folders is several), so the listing is read here.

  exec_properties['string_columns'] (JSON list): columns that are text
  whatever they look like (the text, and class-name labels such as "0"/"1"),
  kept as bytes instead of the inferred INT or FLOAT; each must be in the
  header."""
  files = json.loads(split_pattern)
  strings = json.loads(exec_properties.get('string_columns') or '[]')
  header = io_utils.load_csv_column_names(files[0])
  missing = [c for c in strings if c not in header]
  if missing:
    raise ValueError(
        f'{files[0]} has no column {", ".join(missing)} (its header: '
        f'{", ".join(header)}). Name the columns in data.text_feature and '
        'data.label_feature, or rename them in the files.')
  for path in files[1:]:
    other = io_utils.load_csv_column_names(path)
    if other != header:
      raise ValueError(
          f'{path} has the columns {other}, {files[0]} has {header}: the CSV '
          'files of a split must have the same header line.')
  # pylint: disable=protected-access  (TFX's CSV reading, as CsvExampleGen's)
  lines = (pipeline
           | 'Files' >> beam.Create(files)
           | 'ReadRecords' >> beam.ParDo(_ReadUtf8CsvRecords())
           | 'ParseLines' >> beam.ParDo(csv_decoder.ParseCSVLine(delimiter=','))
           | 'Cells' >> beam.Keys())
  column_infos = beam.pvalue.AsSingleton(
      lines
      | 'InferTypes' >> beam.CombineGlobally(
          csv_decoder.ColumnTypeInferrer(header, skip_blank_lines=True))
      | 'KeepStrings' >> beam.Map(lambda infos: [
          csv_decoder.ColumnInfo(i.name, csv_decoder.ColumnType.STRING)
          if i.name in strings else i for i in infos]))
  return lines | 'ToTFExample' >> beam.ParDo(
      csv_executor._ParsedCsvToTfExample(), column_infos)


# The snapshot's one split when the CSV files sit at the data root.
ALL_ROWS = snapshot_lib.ALL_ROWS
SPLIT_VALUES = ('train', VALIDATION, 'eval')


def split_column_values(files, column: str) -> Dict[str, int]:
  """{value: rows} of `column` over the CSV files (one streamed pass over
  the files, in this process: the splits must be known to build the Beam
  graph). The header is parsed as the ExampleGen parses it (TFX's
  io_utils). Raises ValueError naming a file without that column."""
  counts: Dict[str, int] = {}
  for path in files:
    header = io_utils.load_csv_column_names(path)
    if column not in header:
      raise ValueError(
          f'data.split_feature: {path} has no column "{column}" (its '
          f'columns: {", ".join(header)}). Name the column that says '
          f'{"/".join(SPLIT_VALUES)}, or put the files in train/ and eval/ '
          'folders.')
    index = header.index(column)
    try:
      with tf.io.gfile.GFile(path, 'r') as lines:
        rows = csv.reader(lines)
        next(rows, None)  # the header
        for row in rows:
          if not row:
            continue  # a blank line, as the ExampleGen skips it
          value = row[index].strip() if index < len(row) else ''
          counts[value] = counts.get(value, 0) + 1
    except UnicodeDecodeError:
      pass
    else:
      continue
    # Raised outside the except clause: the error reported is this one.
    raise NotUtf8Error(_not_utf8_message(path, first_non_utf8_line(path)))
  return counts


def _split_of(example: tf.train.Example, num_partitions: int, column: str,
              names) -> int:
  del num_partitions
  value = example.features.feature[column].bytes_list.value
  return names.index(value[0].decode('utf-8').strip())


def _without(example: tf.train.Example, column: str) -> tf.train.Example:
  example = tf.train.Example.FromString(example.SerializeToString())
  del example.features.feature[column]
  return example


class CsvExecutor(_FromSnapshot, csv_executor.Executor, _WriteInContentOrder):
  """CsvExampleGen's executor over the snapshot's files; see the module
  docstring for the split column."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _ReadCsvFiles

  def GenerateExamplesByBeam(self, pipeline, exec_properties):
    splits = super().GenerateExamplesByBeam(pipeline, exec_properties)
    column = exec_properties.get('split_feature') or ''
    if ALL_ROWS not in splits:
      if column:
        raise ValueError(
            f'data.split_feature "{column}": the CSV files are in split '
            'folders already; remove data.split_feature, or put the files at '
            'the data root.')
      return splits
    if not column:
      raise ValueError(
          'the CSV files sit at the data root: set data.split_feature to the '
          f'column that says {"/".join(SPLIT_VALUES)} for each row, or put '
          'the files in train/ and eval/ folders.')
    files = json.loads(self._all_rows_pattern(exec_properties))
    counts = split_column_values(files, column)
    unknown = sorted(set(counts) - set(SPLIT_VALUES))
    if unknown or not counts.get('train') or not counts.get('eval'):
      raise ValueError(
          f'data.split_feature "{column}" holds {counts}: every row must say '
          f'{", ".join(SPLIT_VALUES)} (validation optional), with at least '
          'one train and one eval row.')
    names = [v for v in SPLIT_VALUES if counts.get(v)]
    parts = splits[ALL_ROWS] | 'BySplitColumn' >> beam.Partition(
        _split_of, len(names), column, names)
    return {name: part | f'DropSplitColumn[{name}]' >> beam.Map(_without, column)
            for name, part in zip(names, parts)}

  @staticmethod
  def _all_rows_pattern(exec_properties) -> str:
    config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties['input_config'], config)
    return next(s.pattern for s in config.splits if s.name == ALL_ROWS)
