"""Like-for-like measurements of the core model and its compressed variants.

Every variant is fed the same arrays: the Transform's output (for images, float32
[N, H, W, 3] in [0, 1]). TFLite models converted by `techniques.to_tflite` keep
float32 input and output tensors in every mode (int8 ones quantize at the entrance
and dequantize at the exit, and those two ops are inside the timings); a model
with integer input or output tensors is still fed and read correctly here, through
its tensors' quantization parameters.

Latency is the median over timed runs after warm-up runs, in milliseconds per
example (the time of one batch divided by its size). TFLite runs with
`num_threads=threads` and its default delegate (XNNPACK on CPU); Keras runs the
model's forward pass as a `tf.function` with TensorFlow's own thread pools (set
them with `tf.config.threading` before TensorFlow starts, to compare like for
like). Timings are for reports and benchmarks, never for test assertions.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import gzip  # pylint: disable=g-import-not-at-top
import time
from typing import Callable, Dict, Iterable, Optional

import numpy as np
import tensorflow as tf


# ---------------------------------------------------------------------------
# TFLite


def tflite_interpreter(tflite_bytes: bytes, threads: int = 2) -> tf.lite.Interpreter:
  """The interpreter every hubpipe .tflite runs in: TFLite's builtins, TF
  Text's custom-op kernels (a text model's tokenizer) registered, and Flex
  ops through the delegate the `tensorflow` pip package links in. A user
  builds it the same way:

      import tensorflow_text
      from tensorflow.lite.python.interpreter import InterpreterWithCustomOps
      InterpreterWithCustomOps(
          model_content=..., custom_op_registerers=(
              tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS))
  """
  import tensorflow_text  # pylint: disable=g-import-not-at-top
  from tensorflow.lite.python.interpreter import InterpreterWithCustomOps  # pylint: disable=g-import-not-at-top
  return InterpreterWithCustomOps(
      model_content=tflite_bytes, num_threads=threads,
      custom_op_registerers=tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS)


def _resize(interpreter: tf.lite.Interpreter, batch: int) -> None:
  detail = interpreter.get_input_details()[0]
  shape = list(detail['shape'])
  if shape[0] != batch:
    shape[0] = batch
    interpreter.resize_tensor_input(detail['index'], shape, strict=False)
  interpreter.allocate_tensors()


def _to_input(detail: dict, x: np.ndarray) -> np.ndarray:
  """x as the input tensor's dtype (quantized with its parameters if
  integer; strings as bytes)."""
  dtype = detail['dtype']
  if dtype in (np.bytes_, np.object_):
    return np.asarray([v if isinstance(v, bytes) else str(v).encode()
                       for v in x], object)
  if np.issubdtype(dtype, np.integer):
    scale, zero_point = detail['quantization']
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min,
                   info.max).astype(dtype)
  return x.astype(dtype, copy=False)


def _from_output(detail: dict, y: np.ndarray) -> np.ndarray:
  if np.issubdtype(detail['dtype'], np.integer):
    scale, zero_point = detail['quantization']
    return (y.astype(np.float32) - zero_point) * scale
  return y.astype(np.float32, copy=False)


def tflite_predict(tflite_bytes: bytes, x: np.ndarray, batch: int = 32,
                   threads: int = 2) -> np.ndarray:
  """The model's (first) output for all of x, float32 [N, ...].

  Runs in batches of `batch` (the input is resized once; the last, shorter batch
  is padded and the padding's outputs dropped).
  """
  x = np.asarray(x)
  n = len(x)
  if n == 0:
    raise ValueError('x is empty')
  batch = max(1, min(batch, n))
  interpreter = tflite_interpreter(tflite_bytes, threads)
  _resize(interpreter, batch)
  inp = interpreter.get_input_details()[0]
  out = interpreter.get_output_details()[0]
  outputs = []
  for start in range(0, n, batch):
    chunk = x[start:start + batch]
    size = len(chunk)
    if size < batch:  # padded with copies of its last row
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - size, 0)])
    interpreter.set_tensor(inp['index'], _to_input(inp, chunk))
    interpreter.invoke()
    outputs.append(_from_output(out, interpreter.get_tensor(out['index']))[:size])
  return np.concatenate(outputs)


def accuracy_of(logits: np.ndarray, y: np.ndarray) -> float:
  """Top-1 accuracy of [N, K] scores against [N] integer labels."""
  y = np.asarray(y).reshape(-1)
  return float(np.mean(np.argmax(logits, axis=-1) == y))


def tflite_accuracy(tflite_bytes: bytes, x: np.ndarray, y: np.ndarray,
                    batch: int = 32, threads: int = 2) -> float:
  return accuracy_of(tflite_predict(tflite_bytes, x, batch, threads), y)


def tflite_latency(tflite_bytes: bytes, x: np.ndarray, batch_size: int = 1,
                   runs: int = 50, threads: int = 2, warmup: int = 5) -> float:
  """Median milliseconds per example of `invoke` on a batch of `batch_size`.

  The batch is the first `batch_size` rows of x (repeated if x is shorter).
  """
  x = np.asarray(x)
  reps = -(-batch_size // len(x))
  batch = np.concatenate([x] * reps)[:batch_size] if reps > 1 else x[:batch_size]
  interpreter = tflite_interpreter(tflite_bytes, threads)
  _resize(interpreter, batch_size)
  inp = interpreter.get_input_details()[0]
  interpreter.set_tensor(inp['index'], _to_input(inp, batch))
  for _ in range(warmup):
    interpreter.invoke()
  times = []
  for _ in range(max(1, runs)):
    start = time.perf_counter()
    interpreter.invoke()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1000.0 / batch_size


# A variant's latency is flagged unstable when its per-round medians spread
# (interquartile range over the median) more than this.
LATENCY_SPREAD_LIMIT = 0.25


def tflite_latencies(variants: Dict[str, bytes], x: np.ndarray,
                     batch_size: int = 1, rounds: int = 10, runs: int = 5,
                     threads: int = 2, warmup: int = 2) -> Dict[str, Dict]:
  """Milliseconds per example of each variant's `invoke`, measured side by
  side: one interpreter per variant, built once, and `rounds` rounds that
  each time every variant in turn (`runs` invokes, after `warmup` untimed
  ones per variant). A burst of load from other processes then slows every
  variant in that round alike, so the ratios between variants hold even when
  the absolute figures do not.

  Returns {name: {'ms': the median over all timed invokes, 'rounds_ms':
  each round's median (per example; `paired_speedup` compares variants
  round by round), 'spread': the interquartile range of the per-round
  medians over their median, 'unstable': spread > LATENCY_SPREAD_LIMIT}},
  or {name: {'error': why}} for a variant that does not run at this batch
  size (or fails in a round: then it has no figures). The batch is the
  first `batch_size` rows of x (repeated if x is shorter).
  """
  x = np.asarray(x)
  reps = -(-batch_size // len(x))
  batch = np.concatenate([x] * reps)[:batch_size] if reps > 1 else x[:batch_size]
  interpreters, out = {}, {}
  for name, tflite_bytes in variants.items():
    try:
      interpreter = tflite_interpreter(tflite_bytes, threads)
      _resize(interpreter, batch_size)
      inp = interpreter.get_input_details()[0]
      interpreter.set_tensor(inp['index'], _to_input(inp, batch))
      for _ in range(max(1, warmup)):  # one at least: a failure shows here
        interpreter.invoke()
    except (RuntimeError, ValueError) as err:
      out[name] = {'error': f'{type(err).__name__}: {err}'[:300]}
      continue
    interpreters[name] = interpreter
  times = {name: [] for name in interpreters}
  names = list(interpreters)
  for round_ in range(max(1, rounds) if names else 0):
    # Each round starts with another variant: none is always first.
    for name in names[round_ % len(names):] + names[:round_ % len(names)]:
      interpreter = interpreters[name]
      once = []
      try:
        for _ in range(max(1, runs)):
          start = time.perf_counter()
          interpreter.invoke()
          once.append(time.perf_counter() - start)
      except (RuntimeError, ValueError) as err:
        out[name] = {'error': f'{type(err).__name__}: {err}'[:300]}
        names.remove(name)
        del times[name]
        continue
      times[name].append(once)
    if not names:
      break
  for name, per_round in times.items():
    medians = np.median(np.asarray(per_round), axis=1)
    q1, q2, q3 = np.percentile(medians, [25, 50, 75])
    spread = float((q3 - q1) / q2) if q2 > 0 else 0.0
    out[name] = {'ms': float(np.median(per_round)) * 1000.0 / batch_size,
                 'rounds_ms': [float(m) * 1000.0 / batch_size for m in medians],
                 'spread': spread, 'unstable': spread > LATENCY_SPREAD_LIMIT}
  return out


def paired_speedup(reference: Dict, variant: Dict) -> float:
  """How many times faster `variant` runs than `reference` (two entries of
  one `tflite_latencies` result): the median over rounds of the ratio of
  their medians in the same round, so a burst of load that slows one round
  cancels out of the ratio. The ratio of the overall medians when the
  rounds do not pair up."""
  ref, var = reference.get('rounds_ms') or [], variant.get('rounds_ms') or []
  if ref and len(ref) == len(var) and all(v > 0 for v in var):
    return float(np.median(np.asarray(ref) / np.asarray(var)))
  return reference['ms'] / variant['ms']


# ---------------------------------------------------------------------------
# Keras / SavedModel


def keras_predict(model, x: np.ndarray, batch: int = 64) -> np.ndarray:
  """The model's logits for all of x, in inference mode, float32 numpy."""
  fn = _forward(model)
  outputs = [np.asarray(fn(tf.constant(x[i:i + batch])), np.float32)
             for i in range(0, len(x), batch)]
  return np.concatenate(outputs)


def keras_accuracy(model, x: np.ndarray, y: np.ndarray, batch: int = 64) -> float:
  return accuracy_of(keras_predict(model, x, batch), y)


def _forward(model) -> Callable:
  """A traced inference-mode forward pass of a Keras model, or the callable as is
  (a loaded SavedModel's signature or tf.function)."""
  if hasattr(model, 'layers'):
    return tf.function(lambda t: model(t, training=False), autograph=False)
  return model


def keras_latency(model, x: np.ndarray, batch_size: int = 1, runs: int = 50,
                  warmup: int = 5) -> float:
  """Median milliseconds per example of the model's forward pass on one batch.

  `model`: a tf_keras model (run as a `tf.function` in inference mode) or any
  callable taking a float32 batch (a SavedModel's function or signature; a
  signature's dict output is fine). The time includes fetching the result.
  """
  x = np.asarray(x)
  reps = -(-batch_size // len(x))
  batch = np.concatenate([x] * reps)[:batch_size] if reps > 1 else x[:batch_size]
  batch = tf.constant(batch)
  fn = _forward(model)

  def once():
    out = fn(batch)
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t, out)

  for _ in range(warmup):
    once()
  times = []
  for _ in range(max(1, runs)):
    start = time.perf_counter()
    once()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1000.0 / batch_size


# ---------------------------------------------------------------------------
# Size and sparsity


def sizes(tflite_bytes: bytes) -> Dict[str, int]:
  """{'bytes': flatbuffer size, 'gzip_bytes': its gzip size (level 9, mtime 0)}.

  The gzip size is what zeros buy: a pruned model's flatbuffer is as large as the
  dense one (TFLite stores dense tensors) but compresses better.
  """
  return {'bytes': len(tflite_bytes),
          'gzip_bytes': len(gzip.compress(tflite_bytes, compresslevel=9,
                                          mtime=0))}


def _is_kernel(variable) -> bool:
  name = variable.name
  return 'kernel' in name and len(variable.shape) >= 2


def weights_sparsity(variables: Iterable) -> Dict[str, float]:
  """Zeros among the given variables: {'sparsity', 'zeros', 'total'}."""
  zeros = total = 0
  for v in variables:
    value = np.asarray(v.numpy() if hasattr(v, 'numpy') else v)
    zeros += int(np.count_nonzero(value == 0))
    total += int(value.size)
  return {'sparsity': zeros / total if total else 0.0, 'zeros': zeros,
          'total': total}


def kernel_sparsity(model, include: Optional[Callable] = None
                    ) -> Dict[str, float]:
  """Fraction of exact zeros in a Keras model's kernels.

  `include(variable) -> bool` picks the variables (default: every weight with
  'kernel' in its name and rank >= 2: dense, conv and depthwise kernels, also
  inside a hub.KerasLayer). Variables shared between layers count once.
  """
  include = include or _is_kernel
  seen, chosen = set(), []
  for v in model.weights:
    key = id(v)
    if key not in seen and include(v):
      seen.add(key)
      chosen.append(v)
  return weights_sparsity(chosen)
