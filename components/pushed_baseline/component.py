"""LatestPushedModel: a TFX component that hands on a pushed model as a Model.

It gives the Trainer its warm start and the Evaluator its baseline: the
pushed version in service when this run's data was first seen, which the
DataSnapshot chose (components/data_snapshot) and passes as the
`pushed_version` parameter. It reads the Pusher's destination, not ML
Metadata, so it runs in a plain container on any orchestrator (the
open-source KFP v2 backend runs no resolver nodes), and it caches on the
version: the same baseline in the next run is a cache hit, so a run with no
new data reuses every step. Optional input: the candidate Model (the stand-in
while nothing is pushed). Output: a Model.
"""

from typing import Optional, Union

from tfx import types
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.dsl.placeholder import placeholder as ph
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from hubpipe.components.pushed_baseline import executor


class LatestPushedModelSpec(types.ComponentSpec):
  # A pushed version folder (<serving_dir>/<version>), or '' for none.
  PARAMETERS = {'pushed_version': ExecutionParameter(type=str)}
  INPUTS = {'model': ChannelParameter(type=standard_artifacts.Model,
                                      optional=True)}
  OUTPUTS = {'baseline_model': ChannelParameter(type=standard_artifacts.Model)}


class LatestPushedModel(base_component.BaseComponent):
  """The pushed model `pushed_version` (or the stand-in), as a Model artifact."""

  SPEC_CLASS = LatestPushedModelSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(self, pushed_version: Union[str, ph.Placeholder],
               model: Optional[types.BaseChannel] = None):
    super().__init__(spec=LatestPushedModelSpec(
        pushed_version=pushed_version, model=model,
        baseline_model=types.Channel(type=standard_artifacts.Model)))
