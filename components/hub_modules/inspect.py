"""What a user needs to know to choose a module, and whether it fits the config.

`describe(handle)` loads any module hubpipe accepts and reports its input
signature, output shape and kind (feature vector, feature map, sequence, BERT
inputs), parameter counts, size on disk, whether it can be fine-tuned, and its
preprocessing companion. `check_compatible(info, config)` compares that with
the config's modality, image size and head, and raises `IncompatibleModule`
naming both sides; the local runner calls it before anything runs.
"""

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from hubpipe.components.hub_modules import resolve as resolve_lib

FEATURE_VECTOR = 'feature_vector'
FEATURE_MAP = 'feature_map'
SEQUENCE = 'sequence'
BERT_ENCODER = 'sequence+pooled'
BERT_INPUTS = 'bert_inputs'
BERT_INPUT_KEYS = ('input_word_ids', 'input_mask', 'input_type_ids')


class IncompatibleModule(ValueError):
  """The module does not fit the config; the message names both sides."""


@dataclasses.dataclass
class ModuleInfo:
  handle: str
  resolved: str
  kind: str
  modality: str
  inputs: Dict[str, Dict[str, Any]]
  outputs: Dict[str, Dict[str, Any]]
  output_kind: str
  output_dim: Optional[int]
  input_size: Optional[List[int]]
  value_range: Optional[List[float]]
  parameters: int
  trainable_parameters: int
  has_training_argument: bool
  fine_tunable: bool
  size_bytes: Optional[int]
  preprocessor: Optional[str]
  metadata: Dict[str, Any]

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _spec(tensor_spec) -> Dict[str, Any]:
  shape = tensor_spec.shape
  return {'dtype': tensor_spec.dtype.name,
          'shape': None if shape.rank is None else
                   [d if d is not None else None for d in shape.as_list()]}


def _flatten(structure, prefix='') -> Dict[str, Dict[str, Any]]:
  import tensorflow as tf
  if isinstance(structure, dict):
    out = {}
    for key in sorted(structure):
      out.update(_flatten(structure[key], f'{prefix}{key}' if not prefix
                          else f'{prefix}.{key}'))
    return out
  if isinstance(structure, (tf.TensorSpec, tf.Tensor)) or hasattr(
      structure, 'dtype'):
    return {prefix or 'output': _spec(structure)}
  return {}


def _call_function(obj):
  """(concrete function, has_training_argument) of the module's __call__."""
  call = getattr(obj, '__call__', None)
  functions = list(getattr(call, 'concrete_functions', []) or [])
  if functions:
    def training_false(fn):
      args, kwargs = fn.structured_input_signature
      return kwargs.get('training', args[1] if len(args) > 1 else None) is False
    ordered = sorted(functions, key=lambda fn: not training_false(fn))
    args, kwargs = ordered[0].structured_input_signature
    has_training = 'training' in kwargs or len(args) > 1
    return ordered[0], has_training
  signatures = getattr(obj, 'signatures', {})
  for name in ('default', 'serving_default'):
    if name in signatures:
      return signatures[name], False
  raise IncompatibleModule('the module has no __call__ and no default '
                           'signature: it is not a TF Hub module.')


def _inputs_of(function) -> Dict[str, Dict[str, Any]]:
  args, kwargs = function.structured_input_signature
  if args:
    return _flatten(args[0], '') if isinstance(args[0], dict) else {
        'input': _spec(args[0])}
  kwargs = {k: v for k, v in kwargs.items() if k != 'training'}
  return _flatten(kwargs)


def _output_kind(outputs: Dict[str, Dict[str, Any]]) -> (str, Optional[int]):
  keys = set(outputs)
  if set(BERT_INPUT_KEYS) <= keys:
    return BERT_INPUTS, None
  if {'pooled_output', 'sequence_output'} <= keys:
    return BERT_ENCODER, (outputs['pooled_output']['shape'] or [None])[-1]
  main = outputs.get('default') or outputs.get('output') or (
      next(iter(outputs.values())) if len(outputs) == 1 else None)
  if not main or main['shape'] is None:
    return 'unknown', None
  rank = len(main['shape'])
  return ({2: FEATURE_VECTOR, 3: SEQUENCE, 4: FEATURE_MAP}.get(rank, 'unknown'),
          main['shape'][-1])


def _modality(inputs, output_kind, metadata) -> str:
  if metadata.get('modality'):
    return metadata['modality']
  if output_kind == BERT_ENCODER or set(BERT_INPUT_KEYS) <= set(inputs):
    return 'text'
  if len(inputs) == 1:
    spec = next(iter(inputs.values()))
    if spec['dtype'] == 'string':
      return 'text'
    if spec['dtype'].startswith('float') and spec['shape'] and len(spec['shape']) == 4:
      return 'image'
  return 'unknown'


def size_on_disk(path: str) -> Optional[int]:
  if '://' in path or not os.path.isdir(path):
    return None
  return sum(f.stat().st_size for f in Path(path).rglob('*') if f.is_file())


def load(resolved: str):
  """hub.load, with the custom ops text preprocessors need registered."""
  try:
    import tensorflow_text  # pylint: disable=unused-import
  except ImportError:
    pass
  import tensorflow_hub as hub
  return hub.load(resolved)


def describe(handle: str) -> ModuleInfo:
  """Loads the module behind `handle` and describes it."""
  import numpy as np
  resolved = resolve_lib.resolve(handle)
  metadata = resolve_lib.metadata(resolved)
  obj = load(resolved)
  function, has_training = _call_function(obj)
  inputs = _inputs_of(function)
  outputs = _flatten(function.structured_outputs)
  output_kind, output_dim = _output_kind(outputs)
  # Reusable SavedModels list their variables; for other SavedModels, the
  # variables the call function captures are the module's weights.
  variables = list(getattr(obj, 'variables', None) or function.variables)
  trainable = list(getattr(obj, 'trainable_variables', None) or [])
  count = lambda vs: int(sum(np.prod(v.shape) for v in vs))
  input_size = metadata.get('input_size')
  if input_size is None and len(inputs) == 1:
    shape = next(iter(inputs.values()))['shape']
    if shape and len(shape) == 4 and shape[1] and shape[2]:
      input_size = [shape[1], shape[2]]
  modality = _modality(inputs, output_kind, metadata)
  value_range = metadata.get('value_range')
  if value_range is None and modality == 'image':
    value_range = [0.0, 1.0]  # the TF Hub convention for image modules
  return ModuleInfo(
      handle=handle, resolved=resolved, kind=resolve_lib.kind(handle),
      modality=modality, inputs=inputs, outputs=outputs,
      output_kind=metadata.get('output', output_kind) if output_kind == 'unknown'
      else output_kind,
      output_dim=metadata.get('output_dim', output_dim),
      input_size=input_size, value_range=value_range,
      parameters=count(variables), trainable_parameters=count(trainable),
      has_training_argument=has_training, fine_tunable=bool(trainable),
      size_bytes=size_on_disk(resolved),
      preprocessor=metadata.get('preprocessor'), metadata=metadata)


def _side(info: ModuleInfo) -> str:
  ins = ', '.join(f'{k}: {v["dtype"]} {v["shape"]}' for k, v in info.inputs.items())
  return (f'module {info.handle} ({info.modality} module; input {ins}; '
          f'output {info.output_kind}{"" if info.output_dim is None else " " + str(info.output_dim)})')


def check_compatible(info: ModuleInfo, config) -> None:
  """Raises IncompatibleModule when the module cannot serve the config."""
  modality = config.modality
  data = f'data.source {config.data.source}'
  if info.output_kind == BERT_INPUTS:
    raise IncompatibleModule(
        f'{_side(info)} is a preprocessing model, not an encoder. Set '
        'module.handle to its encoder and module.preprocessor to this one.')
  if info.modality != modality:
    raise IncompatibleModule(
        f'{_side(info)} does not fit the config: modality "{modality}" '
        f'({data}). Use {"an" if modality == "image" else "a"} {modality} '
        'module (`hubpipe modules list`), or set '
        f'modality to "{info.modality}" with {info.modality} data.')
  integration = config.model.integration
  heads = {FEATURE_VECTOR: 'a dense head', BERT_ENCODER: 'a dense head',
           FEATURE_MAP: 'a convolutional head'}
  if info.output_kind not in heads or (
      info.output_kind == FEATURE_MAP and modality != 'image'):
    raise IncompatibleModule(
        f'{_side(info)} outputs a {info.output_kind}; hubpipe puts a dense head '
        'on a feature vector (or a pooled BERT output) and a convolutional head '
        'on an image feature map. Use a feature-vector or feature-map variant '
        'of the module.')
  if modality == 'image':
    spec = next(iter(info.inputs.values()))
    shape = spec['shape'] or []
    if len(info.inputs) != 1 or not spec['dtype'].startswith('float') or len(shape) != 4:
      raise IncompatibleModule(
          f'{_side(info)} does not take a batch of float images [N, H, W, 3], '
          'which the image Transform produces.')
    if shape[3] not in (None, 3):
      raise IncompatibleModule(
          f'{_side(info)} takes {shape[3]}-channel images; the image '
          'Transform produces 3-channel RGB.')
    wanted = config.module.input_size
    if wanted and shape[1] and shape[2] and list(wanted) != [shape[1], shape[2]]:
      raise IncompatibleModule(
          f'{_side(info)} takes fixed {shape[1]}x{shape[2]} images but '
          f'module.input_size is {wanted}. Set module.input_size to '
          f'[{shape[1]}, {shape[2]}] or remove it.')
    if not wanted and not info.input_size:
      raise IncompatibleModule(
          f'{_side(info)} accepts any image size and does not declare one; '
          'set module.input_size: [height, width].')
  if modality == 'text':
    if info.output_kind == BERT_ENCODER:
      if not (config.module.preprocessor or info.preprocessor):
        raise IncompatibleModule(
            f'{_side(info)} takes BERT inputs (word ids, mask, type ids) and '
            'names no preprocessing companion; set module.preprocessor to the '
            "encoder's preprocessing model.")
      longest = info.metadata.get('max_seq_length')
      if longest and config.module.seq_length > longest:
        raise IncompatibleModule(
            f'{_side(info)} takes at most {longest} tokens (its position '
            f'embeddings), but module.seq_length is '
            f'{config.module.seq_length}. Set module.seq_length to {longest} '
            'or less.')
    else:
      spec = next(iter(info.inputs.values()))
      if len(info.inputs) != 1 or spec['dtype'] != 'string':
        raise IncompatibleModule(
            f'{_side(info)} does not take a batch of strings, which the text '
            'Transform produces.')
  if integration != 'feature_extraction' and not info.fine_tunable:
    raise IncompatibleModule(
        f'{_side(info)} has no trainable variables, so model.integration '
        f'"{integration}" cannot fine-tune it; use feature_extraction.')
