"""The Trainer module: model builder, integration modes, distribution strategy.

`hubpipe.components.trainer.run.run_fn` is the TFX Trainer's entry point.
"""
