"""SnapshotExampleGen: an ExampleGen whose input is a data snapshot (a parameter).

TFX's file-based ExampleGens fingerprint their input files and resolve the
newest `{SPAN}` in their driver. The open-source Kubeflow Pipelines v2
backend does not run that driver (TFX compiles it as a `pre_cache_check`
hook), so there a compiled ExampleGen has the same parameters every run, KFP's
cache hits, and a scheduled run reuses last week's examples. This component
has no driver: its input is the `snapshot` parameter (components/data_snapshot:
the file patterns of each split, the spans, a fingerprint of the files),
which changes exactly when the data does, on every orchestrator. Its executor
is TFX's own ExampleGen executor (Beam: read, split, write TFRecords), for
TFRecord folders or, with `ImageFolderExecutor`, for image folders.

It also does what resolver nodes did for rolling windows, which that backend
rejects: with span folders the snapshot's train patterns cover the latest N
spans and its eval pattern the newest, so one Examples artifact holds the
window. Its splits are train, validation (the data's own, or carved out of
train: validation_split.py) and eval. The artifact records `span` (the newest), and custom properties
`spans` (JSON list), `input_fingerprint` and `snapshot_sha256`.
"""

import json
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from hubpipe.components.snapshot_example_gen import executor
from hubpipe.pipeline import code_version


class SnapshotExampleGenSpec(types.ComponentSpec):
  PARAMETERS = {
      # The DataSnapshot's `examples` (JSON); a runtime parameter on KFP.
      'snapshot': ExecutionParameter(type=str),
      # Image folders: the splits as ImageFolderExecutor reads them.
      'input_config': ExecutionParameter(type=example_gen_pb2.Input,
                                         optional=True),
      'output_config': ExecutionParameter(type=example_gen_pb2.Output),
      'custom_config': ExecutionParameter(type=example_gen_pb2.CustomConfig,
                                          optional=True),
      # The validation split, when the data brings no validation/ folder:
      # this share of each class of train (by `label_feature`), seeded.
      'validation_fraction': ExecutionParameter(type=float),
      'label_feature': ExecutionParameter(type=str),
      'split_seed': ExecutionParameter(type=int),
      # CSV files at the data root: the column that names each row's split.
      'split_feature': ExecutionParameter(type=str, optional=True),
      # CSV: columns kept as text whatever they look like (JSON list).
      'string_columns': ExecutionParameter(type=str, optional=True),
      # The digest of the code it runs (pipeline/code_version.py): an edit
      # ingests again.
      'code': ExecutionParameter(type=str, optional=True),
      'output_data_format': ExecutionParameter(type=int),
      'output_file_format': ExecutionParameter(type=int),
  }
  INPUTS = {}
  OUTPUTS = {'examples': ChannelParameter(type=standard_artifacts.Examples)}


_READERS = {'tfrecord': executor.TFRecordExecutor,
            'csv': executor.CsvExecutor,
            'image_folder': executor.ImageFolderExecutor}


class SnapshotExampleGen(base_beam_component.BaseBeamComponent):
  """tf.Examples from the files a data snapshot lists."""

  SPEC_CLASS = SnapshotExampleGenSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.TFRecordExecutor)

  def __init__(self, snapshot,
               input_config: Optional[example_gen_pb2.Input] = None,
               output_config: Optional[example_gen_pb2.Output] = None,
               custom_config: Optional[example_gen_pb2.CustomConfig] = None,
               reader: str = 'tfrecord', validation_fraction: float = 0.1,
               label_feature: str = 'label', split_seed: int = 0,
               split_feature: str = '', string_columns=()):
    """`snapshot`: a JSON string, or a DataSnapshot output's
    `.future()[0].value`. `reader`: 'tfrecord' (tf.Example TFRecords),
    'csv' (CSV files, as CsvExampleGen reads them; `split_feature`: the
    column that routes the rows of files at the data root), or
    'image_folder' (input_config and custom_config as for the image folder
    ExampleGen). `string_columns`: CSV columns kept as text (the text, and
    class-name labels that look like numbers). Without validation
    data, `validation_fraction` of each class (`label_feature`) of train is
    carved out as the `validation` split, seeded by `split_seed`."""
    super().__init__(
        spec=SnapshotExampleGenSpec(
            snapshot=snapshot, input_config=input_config,
            output_config=output_config or example_gen_pb2.Output(),
            custom_config=custom_config,
            validation_fraction=validation_fraction,
            label_feature=label_feature, split_seed=split_seed,
            split_feature=split_feature or None,
            string_columns=(json.dumps(list(string_columns))
                            if string_columns else None),
            code=code_version.digest('ExampleGen'),
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            examples=types.Channel(type=standard_artifacts.Examples)),
        custom_executor_spec=(
            executor_spec.BeamExecutorSpec(_READERS[reader])
            if reader != 'tfrecord' else None))
