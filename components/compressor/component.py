"""Compressor: a TFX component between the Evaluator and the Pusher.

Inputs: the trained Model, the Examples (train split for calibration and
fine-tuning, eval split for measurement), the TransformGraph, and the
Evaluator's ModelBlessing. Parameter: the hubpipe config (its `compression`
section is the policy and the techniques). Outputs: a Model (the trained
SavedModel plus the chosen `model.tflite`), a ModelBlessing that gates the
Pusher, and a CompressionReport (JSON + HTML).
"""

import json
from typing import Any, Dict

from tfx import types
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from hubpipe.components.compressor import executor
from hubpipe.pipeline import code_version


class CompressionReport(types.Artifact):
  """compression_report.json and compression_report.html."""
  TYPE_NAME = 'hubpipe.CompressionReport'


class CompressorSpec(types.ComponentSpec):
  PARAMETERS = {'config': ExecutionParameter(type=str)}
  INPUTS = {
      'model': ChannelParameter(type=standard_artifacts.Model),
      'examples': ChannelParameter(type=standard_artifacts.Examples),
      'transform_graph': ChannelParameter(
          type=standard_artifacts.TransformGraph),
      'blessing': ChannelParameter(type=standard_artifacts.ModelBlessing),
  }
  OUTPUTS = {
      'compressed_model': ChannelParameter(type=standard_artifacts.Model),
      'push_blessing': ChannelParameter(type=standard_artifacts.ModelBlessing),
      'report': ChannelParameter(type=CompressionReport),
  }


class Compressor(base_component.BaseComponent):
  """Quantizes, prunes and distils the blessed model; measures; decides."""

  SPEC_CLASS = CompressorSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(self, model: types.BaseChannel, examples: types.BaseChannel,
               transform_graph: types.BaseChannel, blessing: types.BaseChannel,
               config: Dict[str, Any]):
    """Args: the trained model, examples, transform graph and the Evaluator's
    blessing; `config`: the Compressor's hand-off (pipeline/config.py
    `handoff(config, 'Compressor')`)."""
    super().__init__(spec=CompressorSpec(
        model=model, examples=examples, transform_graph=transform_graph,
        blessing=blessing,
        # 'code': this step's source digest, so an edit reruns it.
        config=json.dumps({**config,
                           'code': code_version.digest('Compressor')},
                          sort_keys=True),
        compressed_model=types.Channel(type=standard_artifacts.Model),
        push_blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        report=types.Channel(type=CompressionReport)))
