"""Partial fine-tuning: which module variables train, and that only they do."""

import numpy as np
import pytest
import tf_keras

from hubpipe.components.hub_modules import resolve
from hubpipe.components.modeling import partial

# Keras MobileNet naming (a slice of it), in the module's input -> output order.
MOBILENET = [
    f'{layer}{suffix}'
    for layer, kernel in (('conv1', 'kernel'), ('conv_dw_1', 'depthwise_kernel'),
                          ('conv_pw_1', 'kernel'),
                          ('conv_dw_2', 'depthwise_kernel'),
                          ('conv_pw_2', 'kernel'))
    for suffix in (f'/{kernel}:0', '_bn/gamma:0', '_bn/beta:0',
                   '_bn/moving_mean:0', '_bn/moving_variance:0')
]
# BERT-style encoder naming.
ENCODER = (
    ['enc/embeddings/word_embeddings:0', 'enc/embeddings/layer_norm/gamma:0'] +
    [f'enc/transformer/layer_{i}/{part}:0' for i in range(3)
     for part in ('query/kernel', 'output/bias', 'output_layer_norm/beta')] +
    ['enc/pooler/kernel:0'])


def _trainable(names):
  return {n for n in names if 'moving' not in n}


def test_blocks_fold_batch_norm_into_its_conv_in_order():
  assert [b for b, _ in partial.blocks(MOBILENET)] == [
      'conv1', 'conv_dw_1', 'conv_pw_1', 'conv_dw_2', 'conv_pw_2']
  assert partial.block_of('MobilenetV2/expanded_conv_3/expand/BatchNorm/beta'
                          ) == 'MobilenetV2/expanded_conv_3/expand'
  assert partial.block_of('bias') == 'bias'


def test_blocks_group_a_transformer_by_layer():
  assert [b for b, _ in partial.blocks(ENCODER)] == [
      'enc/embeddings', 'enc/transformer/layer_0', 'enc/transformer/layer_1',
      'enc/transformer/layer_2', 'enc/pooler']


def test_last_n_blocks_without_moving_statistics():
  assert partial.select_trainable(MOBILENET, 1) == {
      'conv_pw_2/kernel:0', 'conv_pw_2_bn/gamma:0', 'conv_pw_2_bn/beta:0'}
  two = partial.select_trainable(MOBILENET, 2)
  assert two == _trainable(n for n in MOBILENET if '_2' in n)
  assert partial.select_trainable(MOBILENET, 5) == _trainable(MOBILENET)
  assert partial.select_trainable(ENCODER, 2) == {
      'enc/transformer/layer_2/query/kernel:0',
      'enc/transformer/layer_2/output/bias:0',
      'enc/transformer/layer_2/output_layer_norm/beta:0',
      'enc/pooler/kernel:0'}


def test_fraction_of_blocks_rounds_up():
  # 5 blocks: 0.2 -> 1 block, 0.3 -> 2 blocks (ceil), 1.0 -> all.
  assert partial.select_trainable(MOBILENET, 0.2) == partial.select_trainable(
      MOBILENET, 1)
  assert partial.select_trainable(MOBILENET, 0.3) == partial.select_trainable(
      MOBILENET, 2)
  assert partial.select_trainable(MOBILENET, 0.01) == partial.select_trainable(
      MOBILENET, 1)
  assert partial.select_trainable(MOBILENET, 1.0) == _trainable(MOBILENET)


def test_regex_matches_names_but_never_statistics():
  assert partial.select_trainable(MOBILENET, r'^conv_dw_') == _trainable(
      n for n in MOBILENET if n.startswith('conv_dw_'))
  assert partial.select_trainable(ENCODER, r'/layer_1/') == {
      n for n in ENCODER if '/layer_1/' in n}
  assert 'conv1_bn/moving_mean:0' not in partial.select_trainable(
      MOBILENET, 'conv1')


@pytest.mark.parametrize('spec, message', [
    (r'^nothing$', 'selects no trainable variable'),
    (r'moving_mean', 'selects no trainable variable'),
    (0, 'between 1 and 5'),
    (6, 'between 1 and 5'),
    (-1, 'between 1 and 5'),
    (0.0, r'\(0, 1\]'),
    (1.5, r'\(0, 1\]'),
    (float('nan'), r'\(0, 1\]'),
    (True, 'must be an int'),
    (None, 'must be an int'),
    ([1], 'must be an int'),
    ('', 'regex is empty'),
    ('(unclosed', 'not a valid regular expression'),
])
def test_invalid_or_empty_selection_raises(spec, message):
  with pytest.raises(ValueError, match=message):
    partial.select_trainable(MOBILENET, spec)


def test_no_variables_raises():
  with pytest.raises(ValueError, match='no variables'):
    partial.select_trainable([], 1)


def _values(variables):
  return {v.name: v.numpy().copy() for v in variables}


def test_layer_trains_only_the_selected_variables():
  tf_keras.utils.set_random_seed(0)
  handle = resolve.resolve('mobilenet_v1_100_224')
  layer = partial.PartiallyTrainableKerasLayer(handle, trainable_spec=2)
  assert [b for b, _ in layer.blocks][-2:] == ['conv_dw_13', 'conv_pw_13']
  assert len(layer.blocks) == 27
  selected = set(layer.selected_variable_names)
  assert selected == {
      'conv_dw_13/depthwise_kernel:0', 'conv_dw_13_bn/gamma:0',
      'conv_dw_13_bn/beta:0', 'conv_pw_13/kernel:0', 'conv_pw_13_bn/gamma:0',
      'conv_pw_13_bn/beta:0'}
  assert {w.name for w in layer.trainable_weights} == selected
  assert len(layer.non_trainable_weights) == len(layer.weights) - len(selected)
  assert not selected & {w.name for w in layer.non_trainable_weights}

  inputs = tf_keras.Input(shape=(32, 32, 3))
  logits = tf_keras.layers.Dense(3)(layer(inputs))
  model = tf_keras.Model(inputs, logits)
  model.compile(optimizer=tf_keras.optimizers.Adam(1e-2),
                loss=tf_keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
  module_names = {w.name for w in layer.weights}
  assert {w.name for w in model.trainable_weights} & module_names == selected

  before = _values(layer.weights)
  images = np.random.RandomState(0).rand(4, 32, 32, 3).astype('float32')
  model.fit(images, np.array([0, 1, 2, 0]), batch_size=4, epochs=1, verbose=0)
  after = _values(layer.weights)
  changed = {n for n in before if not np.array_equal(before[n], after[n])}
  assert changed == selected  # Every selected variable moved, nothing else did.
  assert any('moving' in n for n in before)  # The statistics were checked too.


def test_frozen_layer_reports_no_trainable_weights_and_config_keeps_spec():
  handle = resolve.resolve('mobilenet_v1_100_224')
  layer = partial.PartiallyTrainableKerasLayer(handle, trainable_spec=r'pw_13')
  assert len(layer.trainable_weights) == 3
  layer.trainable = False
  assert layer.trainable_weights == []
  assert len(layer.non_trainable_weights) == len(layer.weights) == 135
  config = layer.get_config()
  assert config['trainable_spec'] == r'pw_13'
  again = partial.PartiallyTrainableKerasLayer.from_config(config)
  assert again.selected_variable_names == layer.selected_variable_names
  assert again.trainable_weights == []  # trainable=False is in the config.


def test_layer_rejects_a_spec_selecting_nothing():
  handle = resolve.resolve('mobilenet_v1_100_224')
  with pytest.raises(ValueError, match='between 1 and 27'):
    partial.PartiallyTrainableKerasLayer(handle, trainable_spec=28)
