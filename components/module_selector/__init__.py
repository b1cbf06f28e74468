"""ModuleSelector: choose the Hub module by measurement, not by habit.

`ranking` holds the objectives and the Pareto front as pure functions,
`report` the JSON and HTML report, `executor` the probing (frozen module,
linear probe, size and latency per candidate) and `component` the TFX
component between the Transform and the Trainer.
"""
