"""ModuleSelector: a TFX component between the Transform and the Trainer.

Inputs: the Examples (seeded, class-stratified samples of
selection.train_examples train and selection.validation_examples validation
examples; never eval), the Schema (lineage:
the selection depends on the data it describes) and the TransformGraph.
Parameter: the hubpipe config (its `selection` section lists the candidates
and the objective). Outputs: a ModuleSelection (module_selection.json and
.html; the winner in custom properties chosen_handle, chosen_name,
chosen_input_size, chosen_preprocessor, decision, selector_seconds) and a
HyperParameters artifact for the Trainer's `hyperparameters` input.
"""

import json
from typing import Any, Dict

from tfx import types
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from hubpipe.components.module_selector import executor
from hubpipe.pipeline import code_version


class ModuleSelection(types.Artifact):
  """module_selection.json and module_selection.html."""
  TYPE_NAME = 'hubpipe.ModuleSelection'


class ModuleSelectorSpec(types.ComponentSpec):
  PARAMETERS = {'config': ExecutionParameter(type=str)}
  INPUTS = {
      'examples': ChannelParameter(type=standard_artifacts.Examples),
      'schema': ChannelParameter(type=standard_artifacts.Schema),
      'transform_graph': ChannelParameter(
          type=standard_artifacts.TransformGraph),
  }
  OUTPUTS = {
      'selection': ChannelParameter(type=ModuleSelection),
      'best_hyperparameters': ChannelParameter(
          type=standard_artifacts.HyperParameters),
  }


class ModuleSelector(base_component.BaseComponent):
  """Probes the candidate Hub modules on a sample and picks one by measurement."""

  SPEC_CLASS = ModuleSelectorSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(self, examples: types.BaseChannel, schema: types.BaseChannel,
               transform_graph: types.BaseChannel, config: Dict[str, Any]):
    """Args: the examples, schema and transform graph; `config`: the
    selector's hand-off (pipeline/config.py `handoff(config,
    'ModuleSelector')`)."""
    super().__init__(spec=ModuleSelectorSpec(
        examples=examples, schema=schema, transform_graph=transform_graph,
        # 'code': this step's source digest, so an edit reruns it.
        config=json.dumps({**config,
                           'code': code_version.digest('ModuleSelector')},
                          sort_keys=True),
        selection=types.Channel(type=ModuleSelection),
        best_hyperparameters=types.Channel(
            type=standard_artifacts.HyperParameters)))
