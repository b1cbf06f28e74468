"""The Trainer's executor: TFX's GenericExecutor (which calls `run.run_fn`),
then the model record of the export onto the Model artifact.

`run_fn` sees paths, not artifacts, so the facts later steps need (module,
sizes, integration, class names; modeling/export.py) become the Model
artifact's custom properties here, where the Compressor, ML Metadata and the
KFP UI read them. Every worker of a multi-worker cluster sets the same ones,
from the record its own run_fn exported (run.LAST_RECORD), not from the
chief's files.
"""

from tfx.components.trainer import executor as tfx_trainer_executor
from tfx.types import artifact_utils

from hubpipe.components.modeling import export as export_lib
from hubpipe.components.trainer import run


class Executor(tfx_trainer_executor.GenericExecutor):

  def Do(self, input_dict, output_dict, exec_properties):
    run.LAST_RECORD.clear()
    super().Do(input_dict, output_dict, exec_properties)
    model = artifact_utils.get_single_instance(output_dict['model'])
    for key, value in export_lib.artifact_properties(run.LAST_RECORD).items():
      if isinstance(value, int):
        model.set_int_custom_property(key, value)
      else:
        model.set_string_custom_property(key, value)
