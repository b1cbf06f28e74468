"""The Trainer: run_fn and its integration modes, distribution strategy,
checkpoints and embedding cache. What it shares with other steps (model
building, inputs, fitting, export) is in components/modeling.

`hubpipe.components.trainer.run.run_fn` is the TFX Trainer's entry point;
`component.Trainer` is TFX's Trainer with hubpipe's executor.
"""
