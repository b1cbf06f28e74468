"""Compression techniques for the trained core model, as pure functions.

The core model maps transformed inputs to logits (images: float32 [N, H, W, 3] in
[0, 1] -> [N, K]) and usually holds a hub.KerasLayer. Nothing here mutates the
model it is given. What follows is about image models; a text model ([N]
strings in) is converted by `text_model` (tokenizer inside, probabilities
out), and int8_selective and pruning are for images only.

TFLite conversion (`to_tflite`), in four modes:

  float32        no quantization: the reference every other variant is held to.
  dynamic_range  int8 weights, float activations (weights dequantized or
                 "hybrid" kernels at run time); no calibration data.
  float16        float16 weights, dequantized to float32 at load: size only.
  int8           full integer: int8 weights and activations, calibrated on a
                 representative dataset drawn from the calibration array.

Interface choice for int8: the input and output tensors stay float32 (the
converter puts a QUANTIZE op at the entrance and a DEQUANTIZE op at the exit).
So every variant takes the same float32 [N, H, W, 3] images and returns float32
logits, the served interface does not change, and measurements (accuracy and
latency, the two extra ops included) compare like for like.

Conversion starts from the model's SavedModel export when it is given one
(`Conversions`), else `TFLiteConverter.from_keras_model` (it handles a
hub.KerasLayer), and falls back to `from_concrete_functions` on a
tf.function of the model with a fixed input signature (batch dimension left
free). `from_keras_model` writes the model out as a SavedModel on every
call; a `Conversions` object, what the Compressor uses, exports it once for
all modes and calibrates int8 once for both plain and selective int8.

`int8_selective` keeps a few of the ops the TFLite quantization debugger finds
most sensitive in float, chosen one at a time by how much they bring the int8
model's answers back to the float32 model's, within a file-size limit. `prune` applies TFMOT magnitude
pruning to the Hub module's kernels and fine-tunes briefly. `distill` trains a
smaller student on the teacher's softened logits.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import contextlib  # pylint: disable=g-import-not-at-top
import csv
import io
import logging
import math
import tempfile
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_model_optimization as tfmot
import tf_keras

from hubpipe.components.compressor import text_model
from hubpipe.components.hub_modules import resolve as hub_resolve
from hubpipe.components.modeling import measure
from hubpipe.components.modeling import model as model_lib
from hubpipe.components.modeling import no_reuse

MODES = ('float32', 'dynamic_range', 'float16', 'int8')
# Calibration examples drawn (in order) from the representative array.
MAX_CALIBRATION = 500
# Ops int8_selective considers keeping in float: the ones with weights, where
# both weight and activation quantization error arise.
WEIGHTED_OPS = ('CONV_2D', 'DEPTHWISE_CONV_2D', 'FULLY_CONNECTED')


# ---------------------------------------------------------------------------
# TFLite conversion


def representative_dataset(x: np.ndarray, max_examples: int = MAX_CALIBRATION
                           ) -> Callable:
  """A representative-dataset factory: the first `max_examples` rows of x, one
  example per step, always in the same order (so calibration is deterministic)."""
  x = np.asarray(x)
  x = (x if x.dtype.kind in 'OSU' else x.astype(np.float32))[:max_examples]
  if len(x) == 0:
    raise ValueError('the representative (calibration) array is empty')

  def generator():
    for i in range(len(x)):
      yield [x[i:i + 1]]

  return generator


def _concrete_function(model: tf_keras.Model):
  spec = model.inputs[0]
  signature = tf.TensorSpec([None, *spec.shape[1:]], spec.dtype,
                            name=spec.name.split(':')[0])
  fn = tf.function(lambda t: model(t, training=False), autograph=False)
  return fn.get_concrete_function(signature)


def _converters(model: tf_keras.Model, saved_model_dir: Optional[str] = None):
  """Fresh converters for the model: from its SavedModel export when one is
  given (`Conversions`), from_keras_model, then the fallback."""
  if saved_model_dir:
    yield lambda: tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
  yield lambda: tf.lite.TFLiteConverter.from_keras_model(model)
  yield lambda: tf.lite.TFLiteConverter.from_concrete_functions(
      [_concrete_function(model)], model)


def _with_converter(model: tf_keras.Model, use: Callable,
                    saved_model_dir: Optional[str] = None):
  """use(converter) with the first converter that works (`_converters`)."""
  errors = []
  for make in _converters(model, saved_model_dir):
    try:
      return use(make())
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f'{type(e).__name__}: {e}')
  raise RuntimeError('TFLite conversion failed from every source (the '
                     'SavedModel export when given, the Keras model, a '
                     'concrete function):\n' + '\n'.join(errors))


def _configure(converter, mode: str, representative, text: bool = False):
  if mode == 'float32':
    return converter
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if mode == 'float16':
    converter.target_spec.supported_types = [tf.float16]
  elif mode == 'int8':
    converter.representative_dataset = representative_dataset(representative)
    if not text:
      # A text model keeps its string and index ops (the tokenizer,
      # packing) as they are: int8 where an op has an int8 kernel.
      converter.target_spec.supported_ops = [
          tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # inference_input_type / inference_output_type stay float32 (see above).
  return converter


def to_tflite(model: tf_keras.Model, mode: str,
              representative: Optional[np.ndarray] = None,
              keep_float_ops: Optional[Sequence[str]] = None,
              saved_model_dir: Optional[str] = None) -> bytes:
  """The model as a TFLite flatbuffer.

  Args:
    model: inputs -> logits, possibly holding a hub.KerasLayer. A text model
      ([N] strings in) becomes a flatbuffer with its tokenizer inside,
      strings in and probabilities out (`text_model`).
    mode: one of MODES.
    representative: calibration inputs (numpy, like the model's input), needed
      for 'int8'; the first MAX_CALIBRATION rows are used, in order.
    keep_float_ops: 'int8' only: ops left in float, named by their output
      tensor name (as in QuantizationDebugger statistics) or by their layer
      name (e.g. 'conv_pw_1'; see `op_layer_name`). The int8 model is then
      made through the quantization debugger with these ops denylisted, and
      float ops are allowed next to int8 ones.
    saved_model_dir: the model already exported as a SavedModel (image models;
      `Conversions` does this once for all modes).
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, not {mode!r}')
  if mode == 'int8' and representative is None:
    raise ValueError("mode 'int8' needs a representative (calibration) array")
  if text_model.is_text(model):
    if keep_float_ops:
      raise ValueError('keep_float_ops applies to image models only')
    return text_model.to_tflite(
        model, lambda c: _configure(c, mode, representative, text=True))
  if keep_float_ops:
    if mode != 'int8':
      raise ValueError("keep_float_ops applies to mode 'int8' only")
    debugger = _int8_debugger(model, representative, debug_examples=8,
                              saved_model_dir=saved_model_dir)
    stats = layer_statistics(debugger)
    nodes = resolve_ops(keep_float_ops, [s['tensor_name'] for s in stats])
    return _quantize_with_denylist(debugger, nodes)
  return _with_converter(
      model, lambda c: _configure(c, mode, representative).convert(),
      saved_model_dir)


class Conversions:
  """Every TFLite mode of one model, exported once and calibrated once.

  `from_keras_model` writes the model as a SavedModel on each call (seconds
  for a Hub module), and plain int8 and int8_selective would each calibrate
  on the same examples. Here an image model is exported once (a local
  temporary folder, removed by `close`), and with `share_int8_calibration`
  calibrated once, in a QuantizationDebugger (`debugger`) configured as
  `to_tflite` configures int8: plain int8 is that calibration with no op
  kept in float (`plain_int8`), and int8_selective ranks and re-quantizes
  from the same debugger. If the export or the debugger fails, conversion
  goes the way `to_tflite` goes alone. A text model converts through
  `to_tflite` as before (its tokenizer takes another path, `text_model`).
  """

  def __init__(self, model: tf_keras.Model, representative: np.ndarray,
               debug_examples: int = 64, share_int8_calibration: bool = True):
    self.model = model
    self.representative = representative
    self.debug_examples = debug_examples
    self.share_int8_calibration = share_int8_calibration
    self.text = text_model.is_text(model)
    self._stack = contextlib.ExitStack()
    self._exported = False
    self._saved_model_dir = None
    self._debugger = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    self._stack.close()
    self._saved_model_dir = self._debugger = None

  @property
  def saved_model_dir(self) -> Optional[str]:
    """The export every image conversion starts from (None for text, or if
    the export failed: conversions then start from the Keras model)."""
    if self.text or self._exported:
      return self._saved_model_dir
    self._exported = True
    folder = self._stack.enter_context(
        tempfile.TemporaryDirectory(prefix='hubpipe-tflite-'))
    try:
      tf.saved_model.save(self.model, folder)
      self._saved_model_dir = folder
    except Exception as err:  # pylint: disable=broad-except
      logging.warning('SavedModel export for TFLite conversion failed (%s: '
                      '%s); each conversion starts from the Keras model',
                      type(err).__name__, err)
    return self._saved_model_dir

  @property
  def debugger(self):
    """The QuantizationDebugger calibrated on `representative` (image models)."""
    if self.text:
      raise ValueError('the quantization debugger is for image models only')
    if self._debugger is None:
      self._debugger = _int8_debugger(self.model, self.representative,
                                      self.debug_examples,
                                      saved_model_dir=self.saved_model_dir)
    return self._debugger

  def tflite(self, mode: str) -> bytes:
    """The model in `mode` (MODES), as `to_tflite` makes it."""
    if mode == 'int8' and not self.text and self.share_int8_calibration:
      try:
        debugger = self.debugger
      except Exception as err:  # pylint: disable=broad-except
        logging.warning('int8 calibration in the quantization debugger '
                        'failed (%s: %s); plain int8 calibrates on its own',
                        type(err).__name__, err)
      else:
        return plain_int8(debugger)
    return to_tflite(self.model, mode, self.representative,
                     saved_model_dir=self.saved_model_dir)


def float_compute_ops(tflite_bytes: bytes) -> List[str]:
  """The ops of a quantized flatbuffer that compute in float: any op but the
  QUANTIZE / DEQUANTIZE at the float32 interface with a float32 input."""
  interpreter = tf.lite.Interpreter(
      model_content=tflite_bytes,
      experimental_op_resolver_type=(
          tf.lite.experimental.OpResolverType
          .BUILTIN_WITHOUT_DEFAULT_DELEGATES))
  interpreter.allocate_tensors()
  dtypes = {t['index']: t['dtype'] for t in interpreter.get_tensor_details()}
  return [op['op_name'] for op in interpreter._get_ops_details()  # pylint: disable=protected-access
          if op['op_name'] not in ('QUANTIZE', 'DEQUANTIZE')
          and any(dtypes.get(t) == np.float32 for t in op['inputs'] if t >= 0)]


def plain_int8(debugger) -> bytes:
  """int8 from a calibrated debugger (`Conversions.debugger`) with no op
  denylisted: what `to_tflite(model, 'int8')` makes, without calibrating
  again (the converter's quantizer leaves an op without an int8 kernel in
  float either way; `float_compute_ops` names them)."""
  return _quantize_with_denylist(debugger, [])


# ---------------------------------------------------------------------------
# Selective int8


def op_layer_name(tensor_name: str) -> str:
  """A short name for a TFLite op from its output tensor name.

  Fused ops are named 'a/conv_pw_1_relu/Relu6;a/conv_pw_1_bn/...;a/conv_pw_1/Conv2D':
  the last fused part's layer, 'conv_pw_1'. Names without a '/' come back whole.
  """
  last = tensor_name.split(';')[-1]
  parts = last.split('/')
  return parts[-2] if len(parts) >= 2 else last


def resolve_ops(names: Sequence[str], tensor_names: Sequence[str]) -> List[str]:
  """Output tensor names for ops named by tensor name or by `op_layer_name`."""
  resolved = []
  for name in names:
    matches = [t for t in tensor_names if t == name or op_layer_name(t) == name]
    if not matches:
      raise ValueError(f'no quantized op is named {name!r}; known: '
                       f'{sorted({op_layer_name(t) for t in tensor_names})}')
    resolved.extend(m for m in matches if m not in resolved)
  return resolved


def _int8_debugger(model: tf_keras.Model, representative: np.ndarray,
                   debug_examples: int = 64,
                   saved_model_dir: Optional[str] = None):
  """A QuantizationDebugger holding the model calibrated once on `representative`."""
  debug_data = representative_dataset(representative, debug_examples)

  def make(converter):
    # Configured as plain int8 is (`_configure`), so the debugger's
    # quantized model with no op denylisted is that model.
    return tf.lite.experimental.QuantizationDebugger(
        converter=_configure(converter, 'int8', representative),
        debug_dataset=debug_data)

  return _with_converter(model, make, saved_model_dir)


def layer_statistics(debugger) -> List[Dict]:
  """Per quantized op: op_name, tensor_name, tensor_idx, scale, the debugger's
  error metrics, and 'rmse/scale' (root mean squared quantization error in units
  of the op's output quantization step; about 0.29 is pure rounding error), on
  the debugger's debug dataset. Every quantized op: ops a previous
  `_quantize_with_denylist` kept in float are quantized again first."""
  if debugger.options.denylisted_nodes:
    debugger.options = tf.lite.experimental.QuantizationDebugOptions()
  debugger.run()
  buffer = io.StringIO()
  debugger.layer_statistics_dump(buffer)
  rows = []
  for row in csv.DictReader(io.StringIO(buffer.getvalue())):
    stats = dict(row)
    for key in ('tensor_idx', 'num_elements'):
      stats[key] = int(float(stats[key]))
    for key in ('stddev', 'mean_error', 'max_abs_error', 'mean_squared_error',
                'scale', 'zero_point'):
      stats[key] = float(stats[key])
    scale = stats['scale']
    stats['rmse/scale'] = (math.sqrt(stats['mean_squared_error']) / scale
                           if scale > 0 else 0.0)
    stats['layer'] = op_layer_name(stats['tensor_name'])
    rows.append(stats)
  return rows


def rank_sensitive_ops(stats: Sequence[Dict],
                       op_types: Sequence[str] = WEIGHTED_OPS) -> List[Dict]:
  """The ops of `op_types`, most sensitive first: by rmse/scale, descending;
  ties by position in the graph (tensor index), so the order is deterministic."""
  candidates = [s for s in stats if s['op_name'] in op_types]
  return sorted(candidates, key=lambda s: (-round(s['rmse/scale'], 9),
                                           s['tensor_idx']))


def _quantize_with_denylist(debugger, nodes: Sequence[str]) -> bytes:
  """The debugger's calibrated model quantized with `nodes` kept in float.
  The options are set whenever they differ from the last call's, empty
  included: one debugger serves plain int8 and every selective candidate."""
  nodes = list(nodes)
  if list(debugger.options.denylisted_nodes or []) != nodes:
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=nodes or None)
  return debugger.get_nondebug_quantized_model()


class SelectiveInt8(NamedTuple):
  """What `int8_selective` returns."""
  tflite: bytes                # the chosen int8 model
  float_ops: List[str]         # output tensor names of the ops kept in float
  float_layers: List[str]      # the same, as short layer names (op_layer_name)
  accuracy: float              # accuracy of `tflite` on the selection examples
  reference_accuracy: float    # the float32 TFLite model's, same examples
  agreement: float             # share of them where `tflite` and float32 agree
  size_ratio: float            # len(tflite) / len(float32 TFLite)
  over_size_limit: List[str]   # candidate layers left out: over the size limit
  met_budget: bool             # reference_accuracy - accuracy <= budget
  trace: List[Dict]            # per step: float_layers, accuracy, drop, ...
  ranking: List[Dict]          # the candidate ops' statistics, most sensitive first


def int8_selective(model: tf_keras.Model, representative: np.ndarray,
                   select_x: np.ndarray, select_y: np.ndarray,
                   budget: float = 0.01, max_float_layers: int = 6,
                   max_size_ratio: Optional[float] = 0.30,
                   candidates: int = 8, debug_examples: int = 64,
                   threads: int = 2, float_tflite: Optional[bytes] = None,
                   debugger=None) -> SelectiveInt8:
  """Full-integer int8 with a few quantization-sensitive ops kept in float,
  within a size limit.

  1. Calibrate once (QuantizationDebugger on the converter) and collect per-op
     statistics on the first `debug_examples` representative examples; the
     `candidates` weighted ops (WEIGHTED_OPS) with the largest rmse/scale are
     the candidates.
  2. Greedy forward selection from plain int8: each step re-quantizes (no
     re-calibration) with each remaining candidate added to the float ops,
     drops those that take the file over `max_size_ratio` of the float32
     TFLite file (size only grows, so they stay out), and keeps the one whose
     predictions agree most often with the float32 model's on
     (select_x, select_y). Agreement, not accuracy, scores the steps: it counts
     every flipped answer, not just the net change in right ones, so it is the
     steadier signal, and it needs no labels.
  3. Stop when the accuracy drop against float32 on the selection examples is
     within `budget` (a fraction: 0.01 is one point), when no candidate raises
     agreement, or at `max_float_layers` float ops.

  Returns the last step's model; met_budget says whether it is within budget.
  Deterministic: fixed calibration order, ranking tie-breaks, evaluation.
  `float_tflite`: the model's float32 TFLite file, when already converted;
  `debugger`: the model's calibrated debugger (`Conversions.debugger`), when
  already made (with `representative` and `debug_examples`).
  """
  float_tflite = float_tflite or to_tflite(model, 'float32')
  float_pred = np.argmax(measure.tflite_predict(float_tflite, select_x,
                                                threads=threads), axis=-1)
  labels = np.asarray(select_y).reshape(-1)
  reference_accuracy = float(np.mean(float_pred == labels))
  limit = None if max_size_ratio is None else max_size_ratio * len(float_tflite)

  if debugger is None:
    debugger = _int8_debugger(model, representative, debug_examples)
  ranking = rank_sensitive_ops(layer_statistics(debugger))[:candidates]

  def score(nodes):
    tflite = _quantize_with_denylist(debugger, nodes)
    pred = np.argmax(measure.tflite_predict(tflite, select_x, threads=threads),
                     axis=-1)
    return {'tflite': tflite, 'nodes': list(nodes),
            'accuracy': float(np.mean(pred == labels)),
            'agreement': float(np.mean(pred == float_pred)),
            'size_ratio': len(tflite) / len(float_tflite)}

  def record(step):
    trace.append({'float_layers': [op_layer_name(n) for n in step['nodes']],
                  'accuracy': step['accuracy'],
                  'drop': reference_accuracy - step['accuracy'],
                  'agreement': step['agreement'],
                  'size_ratio': step['size_ratio']})

  current, trace, over_limit = score([]), [], []
  record(current)
  pool = [s['tensor_name'] for s in ranking]
  while (reference_accuracy - current['accuracy'] > budget + 1e-12
         and len(current['nodes']) < max_float_layers):
    best, too_big = None, []
    for node in [n for n in pool if n not in current['nodes']]:
      step = score(current['nodes'] + [node])
      if limit is not None and len(step['tflite']) > limit:
        too_big.append(node)
        continue
      if best is None or step['agreement'] > best['agreement']:
        best = step
    pool = [n for n in pool if n not in too_big]
    over_limit.extend(too_big)
    if best is None or best['agreement'] <= current['agreement']:
      break
    current = best
    record(current)
  return SelectiveInt8(
      tflite=current['tflite'], float_ops=current['nodes'],
      float_layers=[op_layer_name(n) for n in current['nodes']],
      accuracy=current['accuracy'], reference_accuracy=reference_accuracy,
      agreement=current['agreement'], size_ratio=current['size_ratio'],
      over_size_limit=[op_layer_name(n) for n in over_limit],
      met_budget=reference_accuracy - current['accuracy'] <= budget + 1e-12,
      trace=trace,
      ranking=[{k: s[k] for k in ('layer', 'op_name', 'tensor_name',
                                  'rmse/scale', 'scale')} for s in ranking])


# ---------------------------------------------------------------------------
# Pruning


def default_prunable(variable, min_elements: int = 1024) -> bool:
  """Which module weights get pruned by default: conv and dense kernels.

  Excluded: depthwise kernels (3x3 taps per channel: a sliver of the weights,
  very sensitive, and no sparse TFLite kernel gains from them), batch-norm
  parameters and biases (vectors), and kernels under `min_elements` (in
  MobileNet that is `conv1`, the 3x3x3x32 stem, the most sensitive layer).
  """
  name = variable.name
  return ('kernel' in name and 'depthwise' not in name
          and len(variable.shape) >= 2
          and int(np.prod(variable.shape)) >= min_elements)


class PrunableKerasLayer(model_lib.InferenceModeKerasLayer,
                         tfmot.sparsity.keras.PrunableLayer):
  """A hub.KerasLayer that TFMOT's `prune_low_magnitude` can wrap.

  `get_prunable_weights` returns the module's kernels picked by `prunable`
  (default: `default_prunable`). The module always runs in inference mode
  (batch norm keeps its moving statistics) while its weights fine-tune.
  """

  def __init__(self, handle, prunable: Optional[Callable] = None, **kwargs):
    super().__init__(handle, **kwargs)
    self._prunable = prunable or default_prunable

  def get_prunable_weights(self):
    seen, chosen = set(), []
    for v in self.weights:
      if id(v) not in seen and self._prunable(v):
        seen.add(id(v))
        chosen.append(v)
    return chosen


_HUB_CONFIG_KEYS = ('output_shape', 'arguments', 'signature', 'output_key',
                    'signature_outputs_as_dict')


def _prunable_copy(layer: hub.KerasLayer, prunable, trainable: bool
                   ) -> PrunableKerasLayer:
  config = layer.get_config()
  kwargs = {k: config[k] for k in _HUB_CONFIG_KEYS if config.get(k) is not None}
  # The config names the module as configured; load it from where it is.
  copy = PrunableKerasLayer(hub_resolve.resolve(config['handle']),
                            prunable=prunable,
                            trainable=trainable, name=layer.name, **kwargs)
  # By name, not by position: Keras lists trainable weights first, so a
  # partly trainable module (hybrid) lists its variables in another order
  # than the all-trainable copy does.
  values = {v.name: v for v in layer.weights}
  if sorted(values) != sorted(v.name for v in copy.weights):
    raise ValueError(f'{layer.name}: the prunable copy of the module has '
                     'other variables than the module')
  for variable in copy.weights:
    variable.assign(values[variable.name])
  return copy


def pruning_schedule(total_steps: int, target_sparsity: float,
                     ramp_fraction: float = 0.75):
  """PolynomialDecay from 0 to `target_sparsity`, reached after about
  `ramp_fraction` of the steps (the rest fine-tunes at the target).

  TFMOT prunes only on steps that are multiples of `frequency` (default 100,
  more than a short fine-tune has), and stops at end_step: so frequency is about
  a tenth of the ramp and end_step a multiple of it.
  """
  ramp = max(1, int(total_steps * ramp_fraction))
  frequency = max(1, ramp // 10)
  end_step = max(frequency, (ramp // frequency) * frequency)
  return tfmot.sparsity.keras.PolynomialDecay(
      initial_sparsity=0.0, final_sparsity=target_sparsity, begin_step=0,
      end_step=end_step, frequency=frequency)


def _clone_layer(layer):
  if isinstance(layer, tf_keras.Model):
    copy = tf_keras.models.clone_model(layer)
  else:
    copy = layer.__class__.from_config(layer.get_config())
  return copy


def prune(model: tf_keras.Model, train_x: np.ndarray, train_y: np.ndarray,
          target_sparsity: float = 0.5, epochs: int = 2, batch: int = 64,
          learning_rate: float = 1e-4, prunable: Optional[Callable] = None,
          seed: int = 0) -> Tuple[tf_keras.Model, float]:
  """Magnitude-prunes the Hub module's kernels and fine-tunes the whole model.

  Every top-level hub.KerasLayer of `model` is replaced by a trainable
  `PrunableKerasLayer` with the same weights, wrapped in `prune_low_magnitude`
  (PolynomialDecay schedule sized to the run, see `pruning_schedule`); other
  layers are copied. The copy trains for `epochs` on (train_x, train_y), Adam at
  `learning_rate`, with `UpdatePruningStep`, and `strip_pruning` removes the
  wrappers. The given model is not changed.

  Returns (the stripped model, achieved sparsity of the pruned weights: the
  fraction of exact zeros among them). Seeds the global RNGs with `seed`.
  """
  tf_keras.utils.set_random_seed(seed)
  n = len(train_x)
  steps_per_epoch = max(1, math.ceil(n / batch))
  schedule = pruning_schedule(steps_per_epoch * epochs, target_sparsity)
  pruned_layers = []

  def clone(layer):
    if isinstance(layer, hub.KerasLayer):
      inner = _prunable_copy(layer, prunable, trainable=True)
      pruned_layers.append(inner)
      return tfmot.sparsity.keras.prune_low_magnitude(
          inner, pruning_schedule=schedule)
    return _clone_layer(layer)

  copy = tf_keras.models.clone_model(model, clone_function=clone)
  if not pruned_layers:
    raise ValueError('the model has no top-level hub.KerasLayer to prune')
  for old, new in zip(model.layers, copy.layers):
    if not isinstance(old, hub.KerasLayer) and old.weights:
      new.set_weights(old.get_weights())
  copy.compile(
      optimizer=tf_keras.optimizers.Adam(learning_rate),
      loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  with model_lib.keras_internals_unconverted():
    copy.fit(train_x, train_y, batch_size=batch, epochs=epochs, shuffle=True,
             verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
  stripped = tfmot.sparsity.keras.strip_pruning(copy)
  weights = [v for layer in pruned_layers for v in layer.get_prunable_weights()]
  return stripped, measure.weights_sparsity(weights)['sparsity']


# ---------------------------------------------------------------------------
# Distillation


def small_cnn_student(input_shape, num_classes: int,
                      widths: Sequence[int] = (32, 64, 128),
                      resize_to: Optional[Sequence[int]] = None,
                      name: str = 'small_cnn_student') -> tf_keras.Model:
  """The distillation student: the no-reuse candidate's small CNN
  (`modeling.no_reuse.small_cnn`; about 0.29M weights with the defaults).
  `resize_to` (e.g. [32, 32] for upsampled 28x28 Fashion-MNIST) cuts the
  compute when the input resolution exceeds the content's."""
  return no_reuse.small_cnn(input_shape, num_classes, widths, resize_to, name)


def resized_module_student(handle: str, input_shape, student_size: Sequence[int],
                           num_classes: int, trainable=False,
                           name: str = 'resized_module_student'
                           ) -> tf_keras.Model:
  """The same Hub module run at a smaller resolution: inputs at `input_shape`
  are resized to `student_size` inside the model, then module + linear head.

  Compute falls with the pixel count (64x64 vs 96x96: 2.25x fewer); the size
  stays the module's. Only the head trains unless `trainable` (as in
  `model_lib.module_layer`).
  """
  inputs = tf_keras.Input(shape=tuple(input_shape), name='image')
  x = tf_keras.layers.Resizing(*student_size, name='resize')(inputs)
  features = model_lib.module_layer(handle, trainable)(x)
  logits = tf_keras.layers.Dense(num_classes, name='logits')(features)
  return tf_keras.Model(inputs, logits, name=name)


def distillation_loss(teacher_logits, student_logits, labels=None,
                      temperature: float = 4.0, alpha: float = 0.1):
  """(1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)) + alpha * CE(y, s).

  The T^2 factor keeps the soft term's gradients at the scale of the hard one
  (Hinton et al., 2015). Without labels the loss is the soft term alone
  (weight 1). Mean over the batch.
  """
  t = tf.cast(teacher_logits, tf.float32) / temperature
  s = tf.cast(student_logits, tf.float32) / temperature
  log_p_t = tf.nn.log_softmax(t)
  kl = tf.reduce_sum(tf.exp(log_p_t) * (log_p_t - tf.nn.log_softmax(s)), -1)
  soft = tf.reduce_mean(kl) * temperature ** 2
  if labels is None:
    return soft
  hard = tf.reduce_mean(tf_keras.losses.sparse_categorical_crossentropy(
      labels, student_logits, from_logits=True))
  return (1.0 - alpha) * soft + alpha * hard


def distill(teacher, student: tf_keras.Model, train_x: np.ndarray,
            epochs: int, temperature: float = 4.0, alpha: float = 0.1,
            train_y: Optional[np.ndarray] = None, batch: int = 64,
            learning_rate: float = 1e-3, teacher_logits: Optional[np.ndarray] = None,
            seed: int = 0) -> Tuple[tf_keras.Model, Dict[str, List[float]]]:
  """Trains `student` (in place) to match the teacher's softened logits.

  The teacher's logits on train_x are computed once (or passed as
  `teacher_logits`, e.g. from cached embeddings); `teacher` may then be None.
  Plain training loop: seeded shuffle, Adam, `distillation_loss` (+ the
  student's regularization losses). Returns (student, {'loss': per epoch}).
  """
  if teacher_logits is None:
    teacher_logits = measure.keras_predict(teacher, train_x)
  teacher_logits = np.asarray(teacher_logits, np.float32)
  tf_keras.utils.set_random_seed(seed)
  n = len(train_x)
  train_x = np.asarray(train_x)
  tensors = (train_x if train_x.dtype.kind in 'OSU'
             else train_x.astype(np.float32), teacher_logits)
  if train_y is not None:
    tensors += (np.asarray(train_y, np.int64).reshape(-1),)
  data = (tf.data.Dataset.from_tensor_slices(tensors)
          .shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch))
  optimizer = tf_keras.optimizers.Adam(learning_rate)

  @tf.function
  def step(x, t, y=None):
    with tf.GradientTape() as tape:
      s = student(x, training=True)
      loss = distillation_loss(t, s, y, temperature, alpha)
      if student.losses:
        loss += tf.add_n(student.losses)
    grads = tape.gradient(loss, student.trainable_variables)
    optimizer.apply_gradients(zip(grads, student.trainable_variables))
    return loss

  history = {'loss': []}
  for _ in range(epochs):
    total, count = 0.0, 0
    for batch_tensors in data:
      loss = step(*batch_tensors)
      size = int(batch_tensors[0].shape[0])
      total += float(loss) * size
      count += size
    history['loss'].append(total / count)
  return student, history
