"""DataSnapshot: a TFX component that runs first, is never cached, and hands
later steps what the data root and the serving dir hold now.

Used where the pipeline is compiled once and run on a schedule (Kubeflow
Pipelines): the compiled file turns KFP's cache off for this step alone, and
its two String outputs reach later steps as runtime parameters (KFP task
output parameters), so their cache keys on the values:

- `examples` -> SnapshotExampleGen's `snapshot`: new files, a new span ->
  ExampleGen and everything downstream rerun; no change -> cache hits;
- `baseline` -> LatestPushedModel's `pushed_version`: the warm start and the
  Evaluator's baseline.

The local runner takes the same snapshot (`snapshot.take`) before it builds
the DAG and passes the values as constants: ML Metadata's cache keys on
input artifact ids, so a fresh artifact each run would defeat it there.
Parameters: see DataSnapshotSpec.
"""

from tfx import types
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from hubpipe.components.data_snapshot import executor


class DataSnapshotSpec(types.ComponentSpec):
  PARAMETERS = {
      'input_base': ExecutionParameter(type=str),
      'source': ExecutionParameter(type=str),  # tfrecord | csv | image_folder
      'span_pattern': ExecutionParameter(type=str),  # '' without spans
      'latest_spans': ExecutionParameter(type=int),
      'serving_dir': ExecutionParameter(type=str),
      'state_dir': ExecutionParameter(type=str),
      'identity': ExecutionParameter(type=str),
      'ready_marker': ExecutionParameter(type=str),  # '' for none
  }
  INPUTS = {}
  OUTPUTS = {
      'examples': ChannelParameter(type=standard_artifacts.String),
      'baseline': ChannelParameter(type=standard_artifacts.String),
  }


class DataSnapshot(base_component.BaseComponent):
  """The data snapshot and the baseline push, as String outputs."""

  SPEC_CLASS = DataSnapshotSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(self, input_base: str, source: str, span_pattern: str,
               latest_spans: int, serving_dir: str, state_dir: str,
               identity: str, ready_marker: str = ''):
    super().__init__(spec=DataSnapshotSpec(
        input_base=input_base, source=source, span_pattern=span_pattern or '',
        latest_spans=latest_spans, serving_dir=serving_dir,
        state_dir=state_dir, identity=identity, ready_marker=ready_marker,
        examples=types.Channel(type=standard_artifacts.String),
        baseline=types.Channel(type=standard_artifacts.String)))
