"""Partial fine-tuning of a Hub module: train only its top blocks ("hybrid").

hub.KerasLayer is opaque: Keras sees one layer holding all of the module's
variables, so "unfreeze the top of the module" has to be expressed as a choice
among those variables. This file makes that choice and applies it.

`select_trainable(variable_names, spec)` is pure: it groups variable names into
blocks and picks the trainable ones by `spec`:

  int N          the last N blocks (1 <= N <= number of blocks);
  float f        the top fraction f of the blocks, 0 < f <= 1, rounded up
                 (ceil(f * blocks), so any f > 0 selects at least one block);
  str pattern    a regular expression, `re.search`-ed against each variable
                 name (e.g. r'conv_pw_13|conv_dw_13', r'/layer_5/').

Block rule (`block_of`), applied to each variable name:
  1. drop the `:0` suffix and the last path component (the variable's own
     name: kernel, gamma, moving_mean...); a name without '/' is its own block;
  2. if a path component is a numbered repeating unit (`layer_5`, `layer5`,
     `block2`, `unit_1`, `cell_3`, `stage4`...; see `_UNIT`), the block is the
     path up to and including the innermost such component: a transformer's
     `.../transformer/layer_5/query` and `.../layer_5/output_layer_norm` are
     both block `.../transformer/layer_5`;
  3. otherwise a trailing normalisation suffix is removed so a norm layer folds
     into the layer it normalises: `_bn`, `/bn`, `/BatchNorm`, `/batch_norm`,
     `/layer_norm`, `/LayerNorm` (case-insensitive). Keras' MobileNet
     `conv_pw_13_bn/gamma` is block `conv_pw_13`, like `conv_pw_13/kernel`;
     TF-Slim's `.../expand/BatchNorm/beta` is block `.../expand`.
Blocks are ordered by the first appearance of one of their variables in the
list, which for Keras-built modules (and ours) is input -> output order:
  mobilenet_v1_100_224: 27 blocks: conv1, conv_dw_1, conv_pw_1, ...,
    conv_dw_13, conv_pw_13 (depthwise and pointwise convs are separate blocks);
  minilm_l6_v2: 8 blocks: minilm_l6_v2/embeddings, .../transformer/layer_0 ..
    layer_5, minilm_l6_v2/pooler. NB: the pooler feeds only `cls_pooled_output`,
    not the (mean-pooled) `pooled_output`, so with `pooled_output` a spec of 1
    trains nothing that matters; use 2+ or a regex like r'/layer_5/'.
A module whose variable list is not in input -> output order needs a regex.

Moving statistics (`moving_mean`, `moving_variance`...) are never selected;
the layer additionally intersects the selection with the module's own
trainable variables.

`PartiallyTrainableKerasLayer(handle, trainable_spec, ...)` is a hub.KerasLayer
that always runs its module in inference mode (batch norm uses its moving
statistics, dropout is off; as InferenceModeKerasLayer in model.py) and reports
only the selected variables as `trainable_weights`; the rest are in
`non_trainable_weights`, so tf_keras' `fit` updates only the selected ones.
Setting `layer.trainable = False` still freezes all of it (e.g. for a
head-first stage); set it back to True (and recompile) to train the selection.
"""

import math
import numbers
import os
import re
from typing import Iterable, List, Sequence, Set, Tuple, Union

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
import tf_keras

from hubpipe.components.modeling import model as model_lib

Spec = Union[int, float, str]

# A numbered repeating unit of a network: layer_5, layer5, block2, unit_1...
_UNIT = re.compile(
    r'(?:layer|layers|block|blocks|unit|units|cell|stage|encoder_layer|'
    r'transformer_layer|transformer_block)[_-]?\d+', re.IGNORECASE)
# A normalisation layer's suffix, folded into the layer it normalises.
_NORM_SUFFIX = re.compile(
    r'(?:_bn|/bn|/batch_?norm|/layer_?norm)$', re.IGNORECASE)
# Non-trainable statistics, by the variable's own (last) name component.
_STATISTIC = re.compile(
    r'(?:^|_)moving_(?:mean|variance|var|average)|^num_batches_tracked$',
    re.IGNORECASE)


def _strip_index(name: str) -> str:
  return re.sub(r':\d+$', '', name)


def block_of(variable_name: str) -> str:
  """The block (layer) a variable belongs to; see the module docstring."""
  parts = _strip_index(variable_name).split('/')
  prefix = parts[:-1] or parts
  for i in range(len(prefix) - 1, -1, -1):
    if _UNIT.fullmatch(prefix[i]):
      return '/'.join(prefix[:i + 1])
  block = '/'.join(prefix)
  stripped = _NORM_SUFFIX.sub('', block)
  return stripped or block


def is_statistic(variable_name: str) -> bool:
  """Whether the name is a moving statistic (never trainable)."""
  return bool(_STATISTIC.search(_strip_index(variable_name).split('/')[-1]))


def blocks(variable_names: Iterable[str]) -> List[Tuple[str, List[str]]]:
  """[(block, [variable names])], blocks ordered by first appearance."""
  grouped = {}
  for name in variable_names:
    grouped.setdefault(block_of(name), []).append(name)
  return list(grouped.items())


def _check_spec(spec, num_blocks: int):
  if isinstance(spec, bool) or spec is None:
    raise ValueError(f'trainable_spec must be an int (last N blocks), a float '
                     f'in (0, 1] (top fraction of blocks) or a regex string, '
                     f'not {spec!r}')
  if isinstance(spec, numbers.Integral):
    if not 1 <= spec <= num_blocks:
      raise ValueError(f'trainable_spec={spec}: the number of top blocks to '
                       f'train must be between 1 and {num_blocks} (the '
                       'module has that many blocks)')
    return
  if isinstance(spec, numbers.Real):
    if not (0.0 < spec <= 1.0):  # Also rejects NaN.
      raise ValueError(f'trainable_spec={spec}: a fraction of blocks must be '
                       'in (0, 1]')
    return
  if isinstance(spec, str):
    if not spec:
      raise ValueError('trainable_spec: the regex is empty')
    try:
      re.compile(spec)
    except re.error as e:
      raise ValueError(f'trainable_spec={spec!r} is not a valid regular '
                       f'expression: {e}') from e
    return
  raise ValueError(f'trainable_spec must be an int (last N blocks), a float in '
                   f'(0, 1] (top fraction of blocks) or a regex string, not '
                   f'{type(spec).__name__} {spec!r}')


def select_trainable(variable_names: Sequence[str], spec: Spec) -> Set[str]:
  """The names of the variables to train, by `spec` (see the module docstring).

  Args:
    variable_names: all of the module's variable names, in the module's order
      (input -> output), moving statistics included (they are skipped).
    spec: int N (last N blocks), float fraction in (0, 1] (top ceil(f * blocks)
      blocks), or str regex (re.search against each name).

  Raises:
    ValueError: the spec is invalid, or selects no trainable variable.
  """
  names = list(variable_names)
  grouped = blocks(names)
  if not grouped:
    raise ValueError('select_trainable: the module has no variables')
  _check_spec(spec, len(grouped))
  if isinstance(spec, str):
    pattern = re.compile(spec)
    chosen = {n for n in names if pattern.search(n)}
    what = f'regex {spec!r}'
  else:
    count = (int(spec) if isinstance(spec, numbers.Integral)
             else math.ceil(float(spec) * len(grouped) - 1e-9))
    count = max(1, min(count, len(grouped)))
    chosen = {n for _, members in grouped[-count:] for n in members}
    what = (f'the last {count} of {len(grouped)} blocks '
            f'({", ".join(b for b, _ in grouped[-count:])})')
  selected = {n for n in chosen if not is_statistic(n)}
  if not selected:
    raise ValueError(
        f'trainable_spec={spec!r} selects no trainable variable ({what} match '
        f'{len(chosen)} name(s), none of them trainable). Blocks, input to '
        f'output: {", ".join(b for b, _ in grouped)}')
  return selected


@tf_keras.utils.register_keras_serializable(package='hubpipe')
class PartiallyTrainableKerasLayer(model_lib.ConfiguredHandle, hub.KerasLayer):
  """A hub.KerasLayer that trains only the module variables `trainable_spec` selects.

  The module always runs in inference mode (batch norm keeps its moving
  statistics, dropout off), as for fine-tuning in model.py. The selected
  variables are `trainable_weights`; the module's other variables are
  `non_trainable_weights`. Other arguments are hub.KerasLayer's; `trainable`
  defaults to True.

  Attributes:
    trainable_spec: the spec, as given.
    selected_variable_names: sorted names of the variables that train.
    blocks: [(block, [variable names])] of the module, input -> output.
  """

  def __init__(self, handle, trainable_spec: Spec, trainable=True, **kwargs):
    super().__init__(handle, trainable=trainable, **kwargs)
    func = self.resolved_object
    variables = list(getattr(func, 'variables', None) or
                     getattr(func, 'trainable_variables', None) or [])
    names = [v.name for v in variables]
    module_trainable = {v.name for v in
                        getattr(func, 'trainable_variables', None) or []}
    selected = select_trainable(names, trainable_spec) & module_trainable
    if not selected:
      raise ValueError(
          f'trainable_spec={trainable_spec!r} selects none of the module\'s '
          f'trainable variables ({len(module_trainable)} of {len(names)}).')
    self._trainable_spec = trainable_spec
    self._selected = tuple(sorted(selected))
    self._block_list = tuple((b, tuple(m)) for b, m in blocks(names))

  @property
  def trainable_spec(self) -> Spec:
    return self._trainable_spec

  @property
  def selected_variable_names(self) -> List[str]:
    return list(self._selected)

  @property
  def blocks(self) -> List[Tuple[str, List[str]]]:
    return [(b, list(m)) for b, m in self._block_list]

  def _is_selected(self, weight) -> bool:
    return weight.name in self._selected

  @property
  def trainable_weights(self):
    weights = super().trainable_weights
    if getattr(self, '_selected', None) is None:  # Still constructing.
      return weights
    return [w for w in weights if self._is_selected(w)]

  @property
  def non_trainable_weights(self):
    weights = super().non_trainable_weights
    if getattr(self, '_selected', None) is None or not self.trainable:
      return weights  # When frozen, Keras already lists them all here.
    frozen = [w for w in super().trainable_weights if not self._is_selected(w)]
    return frozen + weights

  def call(self, inputs, training=None):
    return super().call(inputs, training=False)

  def get_config(self):
    config = super().get_config()
    config['trainable_spec'] = self._trainable_spec
    return config
