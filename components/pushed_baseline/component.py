"""LatestPushedModel: a TFX component that hands on the newest pushed model.

It stands where the latest-blessed-model Resolver stands in the local DAG, on
orchestrators that run no resolver nodes: the open-source Kubeflow Pipelines
v2 backend rejects them. It reads the Pusher's destination instead of ML
Metadata, so it runs in a plain container anywhere. Optional input: the
candidate Model (the stand-in while nothing is pushed). Parameter: the
Pusher's base directory. Output: a Model.
"""

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from hubpipe.components.pushed_baseline import executor


class LatestPushedModelSpec(types.ComponentSpec):
  PARAMETERS = {'serving_dir': ExecutionParameter(type=str)}
  INPUTS = {'model': ChannelParameter(type=standard_artifacts.Model,
                                      optional=True)}
  OUTPUTS = {'baseline_model': ChannelParameter(type=standard_artifacts.Model)}


class LatestPushedModel(base_component.BaseComponent):
  """The newest model in `serving_dir`, as a Model artifact."""

  SPEC_CLASS = LatestPushedModelSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(self, serving_dir: str,
               model: Optional[types.BaseChannel] = None):
    super().__init__(spec=LatestPushedModelSpec(
        serving_dir=serving_dir, model=model,
        baseline_model=types.Channel(type=standard_artifacts.Model)))
