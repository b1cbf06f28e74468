"""Compressor techniques and measurements on tiny Hub-module models (and MobileNet).

The tiny module is a small CNN exported in the TF Hub reusable SavedModel format
by the project's own exporter, loaded back as a hub.KerasLayer: the same path as
the real MobileNet module, at a fraction of the cost.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from hubpipe.components.modeling import measure
from hubpipe.components.compressor import techniques
from hubpipe.components.hub_modules import mobilenet_v1
from hubpipe.components.hub_modules import resolve
from hubpipe.components.modeling import model as model_lib

from toy_images import toy_images

SIZE = 16
CLASSES = 3


def _toy_data(n, seed, signal=0.4):
  return toy_images(n, seed, SIZE, CLASSES, signal)


@pytest.fixture(scope='module')
def toy():
  return _toy_data(384, 0), _toy_data(192, 1)


@pytest.fixture(scope='module')
def tiny_handle(tmp_path_factory):
  """A Hub image feature-vector module with ~0.1M weights (mostly 1x1 kernels)."""
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input(shape=(None, None, 3))
  x = inputs
  for name, filters, kernel, strides in (('conv_a', 16, 3, 2),
                                         ('conv_b', 64, 1, 1),
                                         ('conv_c', 256, 1, 1),
                                         ('conv_d', 256, 1, 1)):
    x = tf_keras.layers.Conv2D(filters, kernel, strides=strides, padding='same',
                               use_bias=False, name=name)(x)
    x = tf_keras.layers.BatchNormalization(name=f'{name}_bn')(x)
    x = tf_keras.layers.ReLU(6.0, name=f'{name}_relu')(x)
  outputs = tf_keras.layers.GlobalAveragePooling2D()(x)
  body = tf_keras.Model(inputs, outputs)
  path = tmp_path_factory.mktemp('modules') / 'tiny'
  mobilenet_v1.export_feature_vector_module(body, path, native_input_size=SIZE,
                                            pretrained=False)
  return str(path)


def _classifier(handle, size=SIZE, classes=CLASSES, dim=256):
  extractor = model_lib.feature_extractor('image', handle, input_size=[size, size])
  return model_lib.classifier(extractor, model_lib.head(dim, classes))


@pytest.fixture(scope='module')
def trained(tiny_handle, toy):
  """Frozen tiny module + head trained on the toy problem."""
  (x, y), _ = toy
  tf_keras.utils.set_random_seed(0)
  model = _classifier(tiny_handle)
  model_lib.compile_for_training(model, 1e-2)
  model.fit(x, y, batch_size=32, epochs=15, verbose=0)
  return model


@pytest.fixture(scope='module')
def converted(trained, toy):
  (x, _), _ = toy
  return {mode: techniques.to_tflite(trained, mode, representative=x[:64])
          for mode in techniques.MODES}


def test_every_mode_converts_and_predicts_like_keras(trained, converted, toy):
  _, (ex, ey) = toy
  reference = measure.keras_predict(trained, ex)
  assert measure.keras_accuracy(trained, ex, ey) > 0.9
  scale = np.abs(reference).max()
  tolerance = {'float32': 1e-4, 'float16': 1e-2, 'dynamic_range': 0.1,
               'int8': 0.25}
  for mode, tflite in converted.items():
    logits = measure.tflite_predict(tflite, ex, batch=50)  # padded last batch
    assert logits.shape == reference.shape
    error = np.abs(logits - reference).max() / scale
    assert error < tolerance[mode], (mode, error)
    assert np.mean(logits.argmax(-1) == reference.argmax(-1)) > 0.95, mode


def test_int8_keeps_a_float32_interface_and_is_a_quarter_of_float32(converted):
  interpreter = tf.lite.Interpreter(model_content=converted['int8'])
  assert interpreter.get_input_details()[0]['dtype'] == np.float32
  assert interpreter.get_output_details()[0]['dtype'] == np.float32
  float_size = measure.sizes(converted['float32'])['bytes']
  assert 0.2 < measure.sizes(converted['int8'])['bytes'] / float_size < 0.35
  assert 0.4 < measure.sizes(converted['float16'])['bytes'] / float_size < 0.6


def _output_dtype(tflite, tensor_name):
  interpreter = tf.lite.Interpreter(model_content=tflite)
  return {t['name']: t['dtype'] for t in interpreter.get_tensor_details()
          }[tensor_name]


def test_keep_float_ops_leaves_the_named_op_in_float(trained, converted, toy):
  (x, _), _ = toy
  plain = converted['int8']
  kept = techniques.to_tflite(trained, 'int8', representative=x[:64],
                              keep_float_ops=['conv_c'])
  names = [t['name'] for t in
           tf.lite.Interpreter(model_content=kept).get_tensor_details()]
  node = next(n for n in names if techniques.op_layer_name(n) == 'conv_c'
              and ';' in n)
  assert _output_dtype(kept, node) == np.float32
  assert _output_dtype(plain, node) == np.int8
  with pytest.raises(ValueError, match='no quantized op'):
    techniques.to_tflite(trained, 'int8', representative=x[:8],
                         keep_float_ops=['no_such_layer'])


def test_int8_selective_adds_the_ops_that_restore_agreement(trained, toy):
  (x, _), _ = toy
  # A weak signal puts examples near the decision boundary, where int8 flips
  # some of the float model's answers.
  ex, ey = _toy_data(400, 5, signal=0.1)
  # An unreachable budget: steps on while an op raises agreement, up to 2.
  result = techniques.int8_selective(trained, x[:64], ex, ey, budget=-1.0,
                                     max_float_layers=2, max_size_ratio=None)
  assert not result.met_budget
  steps = [t['float_layers'] for t in result.trace]
  assert steps[0] == [] and len(steps) >= 2
  ranked = [r['layer'] for r in result.ranking]
  for before, after in zip(steps, steps[1:]):
    assert after[:-1] == before and after[-1] in ranked
  agreements = [t['agreement'] for t in result.trace]
  assert agreements == sorted(set(agreements))  # each step raises it
  assert result.float_layers == steps[-1] and len(result.float_ops) <= 2
  for node in result.float_ops:
    assert _output_dtype(result.tflite, node) == np.float32
  float_pred = measure.tflite_predict(techniques.to_tflite(trained, 'float32'),
                                      ex).argmax(-1)
  pred = measure.tflite_predict(result.tflite, ex).argmax(-1)
  assert result.agreement == np.mean(pred == float_pred)
  assert result.accuracy == np.mean(pred == ey)
  assert result.reference_accuracy == np.mean(float_pred == ey)
  scores = [r['rmse/scale'] for r in result.ranking]
  assert scores == sorted(scores, reverse=True)
  assert {r['op_name'] for r in result.ranking} <= set(techniques.WEIGHTED_OPS)

  # A size limit at plain int8's size leaves every op out: each costs bytes.
  capped = techniques.int8_selective(trained, x[:64], ex, ey, budget=-1.0,
                                     max_float_layers=2,
                                     max_size_ratio=result.trace[0]['size_ratio'])
  assert capped.float_ops == [] and sorted(capped.over_size_limit) == sorted(ranked)
  assert capped.size_ratio == result.trace[0]['size_ratio']
  # Deterministic, and a generous budget keeps everything int8.
  again = techniques.int8_selective(trained, x[:64], ex, ey, budget=1.0,
                                    max_float_layers=2)
  assert again.met_budget and again.float_ops == []
  assert again.accuracy == result.trace[0]['accuracy']


def test_conversions_export_once_and_share_int8_calibration(
    trained, converted, toy, monkeypatch):
  """`Conversions`: every mode from one SavedModel export (from_keras_model
  is never needed); plain int8 from the debugger int8_selective uses, the
  same model as `to_tflite` makes, and all int8 again after a selective
  candidate has kept an op in float."""
  (x, _), _ = toy
  ex, ey = _toy_data(200, 5, signal=0.1)
  saves = []
  save = tf.saved_model.save
  monkeypatch.setattr(tf.saved_model, 'save',
                      lambda *a, **k: (saves.append(a[1]), save(*a, **k)))

  def refuse(*_):
    raise AssertionError('from_keras_model: the export was not used')

  monkeypatch.setattr(tf.lite.TFLiteConverter, 'from_keras_model', refuse)
  with techniques.Conversions(trained, x[:64]) as conversions:
    for mode in techniques.MODES:
      tflite = conversions.tflite(mode)
      np.testing.assert_allclose(measure.tflite_predict(tflite, ex),
                                 measure.tflite_predict(converted[mode], ex),
                                 atol=1e-5, err_msg=mode)
    assert techniques.float_compute_ops(conversions.tflite('int8')) == []
    selective = techniques.int8_selective(
        trained, x[:64], ex, ey, budget=-1.0, max_float_layers=1,
        max_size_ratio=None, debugger=conversions.debugger)
    assert len(selective.float_ops) == 1
    assert techniques.float_compute_ops(selective.tflite)
    # The shared debugger's options were reset: plain int8 again, and a
    # second ranking sees every op (none left in float from the last call).
    assert techniques.float_compute_ops(conversions.tflite('int8')) == []
    conversions.tflite('float16')
    again = techniques.int8_selective(
        trained, x[:64], ex, ey, budget=-1.0, max_float_layers=1,
        max_size_ratio=None, debugger=conversions.debugger)
    assert again.ranking == selective.ranking
  assert len(saves) == 1 and not tf.io.gfile.exists(saves[0])


def test_plain_int8_names_the_ops_left_in_float(toy):
  """An op without an int8 kernel stays in float in plain int8 (the
  quantizer does not refuse it); `float_compute_ops` names it."""
  (x, _), _ = toy
  inputs = tf_keras.Input((SIZE, SIZE, 3))
  hidden = tf_keras.layers.Conv2D(4, 3)(inputs)
  hidden = tf_keras.layers.Lambda(tf.math.sin)(hidden)
  logits = tf_keras.layers.Dense(CLASSES)(
      tf_keras.layers.GlobalAveragePooling2D()(hidden))
  model = tf_keras.Model(inputs, logits)
  with techniques.Conversions(model, x[:16], debug_examples=4) as conversions:
    assert techniques.float_compute_ops(conversions.tflite('int8')) == ['SIN']
  assert techniques.float_compute_ops(
      techniques.to_tflite(model, 'int8', x[:16])) == ['SIN']


def test_prune_reaches_the_target_sparsity_and_compresses(trained, toy):
  (x, y), (ex, ey) = toy
  before = [w.copy() for w in trained.get_weights()]
  pruned, sparsity = techniques.prune(trained, x, y, target_sparsity=0.5,
                                      epochs=2, batch=32)
  assert abs(sparsity - 0.5) <= 0.05
  hub_layer = pruned.get_layer('hub_module')
  assert isinstance(hub_layer, techniques.PrunableKerasLayer)
  names = [v.name for v in hub_layer.get_prunable_weights()]
  assert sorted(names) == ['conv_b/kernel:0', 'conv_c/kernel:0',
                           'conv_d/kernel:0']  # conv_a: 432 weights, too small
  assert measure.kernel_sparsity(pruned)['sparsity'] > 0.45
  for old, new in zip(before, trained.get_weights()):  # input untouched
    np.testing.assert_array_equal(old, new)
  assert measure.keras_accuracy(pruned, ex, ey) > 0.8
  dense = measure.sizes(techniques.to_tflite(trained, 'float32'))
  sparse = measure.sizes(techniques.to_tflite(pruned, 'float32'))
  assert sparse['gzip_bytes'] < 0.8 * dense['gzip_bytes']


def test_prune_copies_a_partly_trainable_module_weight_for_weight(
    trained, tiny_handle, toy):
  """A hybrid model's module trains only its top blocks, so Keras lists its
  variables in another order (trainable first): the prunable copy must
  still get each variable's own value."""
  (x, y), _ = toy
  extractor = model_lib.feature_extractor('image', tiny_handle,
                                          input_size=[SIZE, SIZE],
                                          trainable='conv_d')
  hybrid = model_lib.classifier(extractor, trained.layers[-1])
  module = hybrid.get_layer('hub_module')
  assert module.trainable_weights[0].name.startswith('conv_d')
  values = {v.name: v.numpy() for v in module.weights}
  copy = techniques._prunable_copy(module, None, trainable=True)  # pylint: disable=protected-access
  assert not copy.weights[0].name.startswith('conv_d')  # another order
  for variable in copy.weights:
    np.testing.assert_array_equal(variable.numpy(), values[variable.name])
  pruned, _ = techniques.prune(hybrid, x, y, target_sparsity=0.5, epochs=1,
                               batch=32)
  assert pruned.predict(x[:4], verbose=0).shape == (4, CLASSES)


def test_distill_teaches_a_small_cnn_the_teachers_answers(trained, toy):
  (x, y), (ex, _) = toy
  tf_keras.utils.set_random_seed(0)
  student = techniques.small_cnn_student((SIZE, SIZE, 3), CLASSES,
                                         widths=(8, 16))
  teacher_eval = measure.keras_predict(trained, ex).argmax(-1)
  agree = lambda: np.mean(measure.keras_predict(student, ex).argmax(-1)
                          == teacher_eval)
  untrained = agree()
  student, history = techniques.distill(trained, student, x, epochs=8,
                                        train_y=y, batch=32, learning_rate=3e-3)
  assert history['loss'][-1] < history['loss'][0]
  assert agree() > max(0.85, untrained)


def test_distillation_loss_is_zero_when_the_student_matches():
  logits = tf.constant([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
  assert float(techniques.distillation_loss(logits, logits)) == pytest.approx(
      0.0, abs=1e-6)
  assert float(techniques.distillation_loss(logits, -logits)) > 0.1


def test_latency_and_sizes_are_positive(trained, converted, toy):
  _, (ex, _) = toy
  for batch in (1, 4):
    assert measure.tflite_latency(converted['int8'], ex, batch_size=batch,
                                  runs=3, warmup=1) > 0
    assert measure.keras_latency(trained, ex, batch_size=batch, runs=3,
                                 warmup=1) > 0
  size = measure.sizes(converted['float32'])
  assert 0 < size['gzip_bytes'] < size['bytes']


def test_variants_are_timed_side_by_side_and_a_wide_spread_is_flagged(
    converted, toy, monkeypatch):
  _, (ex, _) = toy
  pair = {k: converted[k] for k in ('float32', 'int8')}
  timed = measure.tflite_latencies({**pair, 'broken': b'not a flatbuffer'},
                                   ex, batch_size=4, rounds=3, runs=2,
                                   warmup=1)
  assert set(timed) == {*pair, 'broken'} and 'error' in timed.pop('broken')
  for figures in timed.values():
    assert figures['ms'] > 0 and figures['spread'] >= 0
  # A clock on which a timed invoke takes 2 units in even rounds and 4 in
  # odd ones (a burst of load from elsewhere): the spread between the
  # rounds' medians is flagged. Two clock reads an invoke, 2 variants x 4
  # runs a round.
  calls = []

  def clock():
    n = len(calls)
    calls.append(n)
    extra = 0.0 if n % 2 == 0 else (1.0 if (n // 16) % 2 == 0 else 3.0)
    return float(n) + extra

  monkeypatch.setattr(measure.time, 'perf_counter', clock)
  noisy = measure.tflite_latencies(pair, ex, batch_size=1, rounds=4, runs=4,
                                   warmup=0)
  monkeypatch.undo()
  assert len(calls) == 4 * 2 * 4 * 2
  for figures in noisy.values():
    assert figures['ms'] == pytest.approx(3000.0)  # the median: 3 units
    assert figures['rounds_ms'] == pytest.approx([2000.0, 4000.0] * 2)
    assert figures['spread'] == pytest.approx(2 / 3)
    assert figures['unstable']


def test_speedups_pair_the_rounds():
  """Twice as fast as the reference in the same round, while load slowed
  rounds 4 and 5 (both variants) and the variant's turn in round 3: paired,
  2x; the ratio of the overall medians would say 3x slower."""
  reference = {'ms': 1.0, 'rounds_ms': [1.0, 1.0, 1.0, 6.0, 6.0]}
  variant = {'ms': 3.0, 'rounds_ms': [0.5, 0.5, 3.0, 3.0, 3.0]}
  assert measure.paired_speedup(reference, variant) == pytest.approx(2.0)
  # Rounds that do not pair up (no per-round figures): the medians' ratio.
  assert measure.paired_speedup({'ms': 1.0}, {'ms': 3.0}) == pytest.approx(1 / 3)


def test_the_image_student_works_at_the_images_own_size():
  from hubpipe.components.compressor import executor
  assert executor.student_size([28, 28], (96, 96, 3)) == [32, 32]
  assert executor.student_size([40, 60], (96, 96, 3)) == [40, 64]
  assert executor.student_size([120, 90], (96, 96, 3)) is None  # not enlarged
  assert executor.student_size([90, 90], (96, 96, 3)) is None   # 96 >= 96
  assert executor.student_size(None, (96, 96, 3)) is None
  student = executor.student_for(
      tf_keras.Sequential([tf_keras.Input((96, 96, 3)),
                           tf_keras.layers.Flatten(),
                           tf_keras.layers.Dense(5)]),
      np.zeros((2, 96, 96, 3), np.float32), content_size=[28, 28])
  assert student.get_layer('resize').height == 32
  assert student.output_shape == (None, 5)


def test_mobilenet_converts_to_int8():
  """The real module (hub.KerasLayer on the offline MobileNet v1) at 32 px:
  int8 is about a quarter of the float weights (3.2M) and tracks Keras."""
  handle = resolve.resolve('mobilenet_v1_100_224')
  tf_keras.utils.set_random_seed(0)
  model = _classifier(handle, size=32, classes=4, dim=1024)
  x = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
  reference = measure.keras_predict(model, x)
  int8 = techniques.to_tflite(model, 'int8', representative=x)
  float_bytes = 4 * sum(int(np.prod(v.shape)) for v in model.weights)
  assert 0.2 < measure.sizes(int8)['bytes'] / float_bytes < 0.3
  assert np.abs(measure.tflite_predict(int8, x) - reference).max() < (
      0.5 * np.abs(reference).max() + 1e-3)


def test_the_compressor_chooses_on_validation_never_on_eval(trained, toy):
  """compress() with the eval sample's labels poisoned: the same variants,
  the same validation figures, the same policy verdicts and int8_selective
  ops; only the reported eval figures change."""
  from hubpipe.components.compressor import executor
  from hubpipe.components.compressor import policy
  (x, y), (ex, ey) = toy
  settings = {'techniques': ['int8', 'int8_selective'],
              'calibration_examples': 64, 'max_accuracy_drop': 0.02,
              'max_float_layers': 2, 'selective_max_size_ratio': None,
              'max_size_ratio': None}
  validation = (ex[:96], ey[:96])
  clean = executor.compress(trained, x, y, {'validation': validation,
                                            'eval': (ex[96:], ey[96:])},
                            settings, log=lambda _: None)
  poisoned = executor.compress(
      trained, x, y, {'validation': validation,
                      'eval': (ex[96:], (ey[96:] + 1) % CLASSES)},
      settings, log=lambda _: None)
  (ref_a, rows_a, _), (ref_b, rows_b, _) = clean, poisoned
  assert ref_a['validation'] == ref_b['validation']
  assert ref_b['eval'] < ref_a['eval']
  assert [r['name'] for r in rows_a] == [r['name'] for r in rows_b]
  for a, b in zip(rows_a, rows_b):
    assert 'error' not in a and 'error' not in b, (a, b)
    assert a['validation_accuracy'] == b['validation_accuracy'], a['name']
    assert a['note'] == b['note'], a['name']  # int8_selective's ops
  # Only what is reported saw the poison.
  assert sum(b['eval_accuracy'] for b in rows_b) < sum(
      a['eval_accuracy'] for a in rows_a)
  for row in rows_a:  # timed side by side, ratios to float32
    assert row['latency_ms_b1'] > 0 and row['latency_ms_b32'] > 0
    assert row['speedup_b1'] > 0 and 'latency_spread_b1' in row
  verdicts = lambda rows: policy.choose(rows, 0.02)['failures']
  assert verdicts(rows_a) == verdicts(rows_b)
