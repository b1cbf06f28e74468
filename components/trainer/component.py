"""The Trainer: TFX's own component, with hubpipe's executor (run_fn as
usual; the export's model record onto the Model artifact). Its id stays
`Trainer`."""

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from hubpipe.components.trainer import executor


class Trainer(tfx.components.Trainer):
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)
