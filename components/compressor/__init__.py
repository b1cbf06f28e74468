"""Compressor: smaller and faster variants of the trained core model.

`techniques` holds the compression steps as pure functions (TFLite conversion in
float32 / dynamic-range / float16 / full-integer int8, selective int8 guided by
TFLite's quantization debugger, magnitude pruning of a Hub module with TFMOT,
knowledge distillation into a smaller student); `policy` the choice and the
report; the like-for-like measurements (accuracy, latency, size, sparsity)
are in components/modeling/measure.py, shared with the ModuleSelector.
"""
