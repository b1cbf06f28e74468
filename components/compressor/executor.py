"""The Compressor's executor: make each variant, measure it, decide, write out.

Every variant serves the trained model's core (transformed images in, logits
out; a text model's: raw strings in, probabilities out, its tokenizer inside,
see `text_model`), which the Trainer exported: `modeling.export.load_core`
loads it back as the Keras model that was trained. Each variant is measured on the same transformed examples: accuracy against the
uncompressed model on a validation sample (what the policy chooses on, and
what int8_selective's steps are scored on) and on an eval sample (what is
reported; eval plays no part in any choice), file size (and gzip size),
TFLite CPU latency per example at batch 1 and at batch 32. Samples are
seeded, class-stratified random draws. The decision follows the policy in
`policy.choose`; the output Model holds the trained SavedModel (raw tf.Example
signature, for TF Serving) and, beside it, `model.tflite` (the chosen variant,
for edge use) with `labels.txt` (its class names, one a line), so the
Pusher puts them all in the versioned folder. The output
ModelBlessing gates the Pusher: it is blessed only when the Evaluator blessed
the model and the policy chose something to push.
"""

import dataclasses
import logging
import os
import time

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
import tensorflow_transform as tft
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils
from tfx.utils import path_utils

from hubpipe.components.compressor import policy
from hubpipe.components.compressor import techniques
from hubpipe.components.compressor import text_model
from hubpipe.components.modeling import export as export_lib
from hubpipe.components.modeling import inputs
from hubpipe.components.modeling import measure
from hubpipe.components.modeling import model as model_lib
from hubpipe.components.modeling import modules
from hubpipe.pipeline.config import from_handoff

TFLITE_FILE = 'model.tflite'
# Beside it: the class names, one a line, line i for output i (an image
# .tflite returns logits, a text one probabilities: the pushed Model's
# `tflite_output` property says which; TFLite's metadata tooling is not part
# of this stack).
LABELS_FILE = 'labels.txt'
# Beside the pushed folder (Format-Serving) in the compressed Model's folder.
DECISION_FILE = 'compression_decision.txt'
LATENCY_BATCH = 32


class CompressorError(ValueError):
  """The Compressor's inputs are missing or unusable."""


def _row(name, tflite_bytes, samples, reference, note='', threads=2):
  """One variant's accuracy and size (latency and the ratios to float32:
  `_add_latencies`). samples: {'validation': (x, y), 'eval': (x, y)};
  reference: the uncompressed model's accuracy on each. One interpreter
  runs both samples."""
  size = measure.sizes(tflite_bytes)
  xs = [x for x, _ in samples.values()]
  predictions = measure.tflite_predict(tflite_bytes, np.concatenate(xs),
                                       threads=threads)
  accuracy, start = {}, 0
  for split, (x, y) in samples.items():
    accuracy[split] = measure.accuracy_of(predictions[start:start + len(x)], y)
    start += len(x)
  return {
      'name': name,
      'validation_accuracy': accuracy['validation'],
      'validation_drop': reference['validation'] - accuracy['validation'],
      'eval_accuracy': accuracy['eval'],
      'eval_drop': reference['eval'] - accuracy['eval'],
      'size_bytes': size['bytes'], 'gzip_bytes': size['gzip_bytes'],
      'note': note,
  }


def _add_latencies(rows, variants, x, threads=2) -> None:
  """Latency at batch 1 and LATENCY_BATCH, every variant measured side by
  side (measure.tflite_latencies: contention hits them alike), and the
  ratios to the float32 row: sizes as they are, speed-ups paired round by
  round (`measure.paired_speedup`), which the policy's "not slower than
  float32" rule reads. A variant whose timing rounds spread widely is
  flagged (`latency_unstable`; the printed summary marks it): its figures
  are the machine's load as much as the model's."""
  measured = {batch: measure.tflite_latencies(
      variants, x, batch, threads=threads,
      **({'rounds': 10, 'runs': 5} if batch == 1 else
         {'rounds': 5, 'runs': 1, 'warmup': 1}))
              for batch in (1, LATENCY_BATCH)}
  for i, row in enumerate(rows):
    if row['name'] not in variants:
      continue
    b1, b32 = measured[1][row['name']], measured[LATENCY_BATCH][row['name']]
    failed = b1.get('error') or b32.get('error')
    if failed:
      # What cannot be timed cannot be chosen.
      logging.error('compression variant %s failed: %s', row['name'], failed)
      rows[i] = {'name': row['name'], 'error': failed}
      del variants[row['name']]
      continue
    row['latency_ms_b1'], row['latency_ms_b32'] = b1['ms'], b32['ms']
    row['latency_spread_b1'] = round(b1['spread'], 3)
    row['latency_spread_b32'] = round(b32['spread'], 3)
    if b1['unstable'] or b32['unstable']:
      row['latency_unstable'] = True
  base = next((r for r in rows if r['name'] == 'float32' and 'error' not in r),
              None)
  for row in rows:
    if 'error' in row:
      continue
    ref = base or row
    row['size_ratio'] = row['size_bytes'] / ref['size_bytes']
    row['gzip_ratio'] = row['gzip_bytes'] / ref['gzip_bytes']
    for batch, key in ((1, 'speedup_b1'), (LATENCY_BATCH, 'speedup_b32')):
      row[key] = measure.paired_speedup(measured[batch][ref['name']],
                                        measured[batch][row['name']])


# Techniques for image models only: int8_selective keeps conv / dense ops in
# float by the quantization debugger, and pruning prunes a module's kernels
# for sparse-aware TFLite kernels; a text model's cost is its encoder's
# matrix multiplies and its embedding table, which the other variants cut.
IMAGE_ONLY = ('int8_selective', 'pruning')


def student_size(content_size, input_shape):
  """Where the image student works: at the images' own size when the
  Transform enlarged them (28x28 Fashion-MNIST at 96x96 holds no more
  detail, and costs 9x the compute), rounded up to a multiple of 8 (the
  student's three stride-2 stages) and at least 32; None (the Transform's
  size) when the images were not enlarged or their size is unknown."""
  if not content_size:
    return None
  size = [max(32, -(-int(side) // 8) * 8) for side in content_size]
  if any(s >= int(t) for s, t in zip(size, input_shape[:2])):
    return None
  return size


def student_for(model, train_x, content_size=None):
  """The distillation student: for a (BERT-style) text teacher a token
  embedding with pooling on the teacher's tokenizer; for images the small
  CNN, at the images' own size when the Transform enlarged them
  (`student_size`)."""
  classes = int(model.output_shape[-1])
  if text_model.is_text(model):
    return text_model.bert_student(model, classes)
  return techniques.small_cnn_student(
      train_x.shape[1:], classes,
      resize_to=student_size(content_size, train_x.shape[1:]))


def compress(model, train_x, train_y, samples, settings, log=print,
             content_size=None):
  """All variants of `model`, measured: (reference accuracies, rows, {name:
  tflite bytes}). train_x/train_y: a seeded random train sample (its first
  calibration_examples calibrate); samples: {'validation': (x, y), 'eval':
  (x, y)}; content_size: the raw images' [height, width] (`student_for`)."""
  techs = settings['techniques']
  reference = {split: measure.keras_accuracy(model, x, y)
               for split, (x, y) in samples.items()}
  calibration = train_x[:settings['calibration_examples']]
  validation_x, validation_y = samples['validation']
  variants, rows = {}, []

  def add(name, make, note=''):
    start = time.time()
    try:
      result = make()
      data, note, extra = (result + ({},))[:3] if isinstance(result, tuple) \
          else (result, note, {})
      rows.append({**_row(name, data, samples, reference, note), **extra})
      variants[name] = data  # scored: it is timed with the others
    except Exception as err:  # pylint: disable=broad-except
      logging.exception('compression variant %s failed', name)
      rows.append({'name': name, 'error': f'{type(err).__name__}: {err}'[:300]})
    # Making and scoring it (its latency is timed with the others, after).
    rows[-1]['seconds'] = round(time.time() - start, 1)
    log(f'  {name}: {rows[-1]["seconds"]:.1f} s')

  # One SavedModel export for the model's conversions, and one int8
  # calibration for plain and selective int8 (`techniques.Conversions`),
  # released before pruning and distillation.
  text = text_model.is_text(model)
  with techniques.Conversions(
      model, calibration,
      share_int8_calibration='int8_selective' in techs) as conversions:
    add('float32', lambda: conversions.tflite('float32'),
        'TFLite reference, no quantization')
    for mode in ('dynamic_range', 'float16'):
      if mode in techs:
        add(mode, lambda m=mode: conversions.tflite(m))
    if 'int8' in techs:
      def int8():
        tflite = conversions.tflite('int8')
        if text:
          return (tflite, 'int8 where TFLite has an int8 kernel; the '
                  'tokenizer\'s string and index ops as they are')
        left = sorted(set(techniques.float_compute_ops(tflite)))
        return tflite, ('ops without an int8 kernel, left in float: ' +
                        ', '.join(left) if left else '')
      add('int8', int8)
    if 'int8_selective' in techs:
      def selective():
        # Ops are chosen on the validation sample, as the policy chooses
        # variants; half the budget there leaves room for sampling noise.
        limits = [r for r in (settings['selective_max_size_ratio'],
                              settings['max_size_ratio']) if r is not None]
        result = techniques.int8_selective(
            model, calibration, validation_x, validation_y,
            budget=settings['max_accuracy_drop'] / 2,
            max_float_layers=settings['max_float_layers'],
            max_size_ratio=min(limits) if limits else None,
            float_tflite=variants.get('float32'),
            debugger=conversions.debugger)
        for step in result.trace:
          log(f'    float {", ".join(step["float_layers"]) or "none"}: '
              f'agreement {step["agreement"]:.4f}, drop '
              f'{100 * step["drop"]:+.2f} pt, size {step["size_ratio"]:.3f}')
        note = ('float: ' + ', '.join(result.float_layers)
                if result.float_layers else 'all int8')
        if result.over_size_limit:
          note += (' (over the size limit in float: ' +
                   ', '.join(result.over_size_limit) + ')')
        return result.tflite, note
      add('int8_selective', selective)
  if 'pruning' in techs:
    def pruned():
      stripped, sparsity = techniques.prune(
          model, train_x, train_y, settings['pruning_sparsity'],
          epochs=settings['pruning_epochs'])
      return (techniques.to_tflite(stripped, 'float32'),
              f'{sparsity:.0%} of the module kernels are zero')
    add('pruned', pruned)
  if 'distillation' in techs:
    def distilled():
      student = student_for(model, train_x, content_size)
      techniques.distill(model, student, train_x,
                         epochs=settings['distillation_epochs'],
                         train_y=train_y)
      resize = next((layer for layer in student.layers
                     if layer.name == 'resize'), None)
      at = (f' at {resize.height}x{resize.width} (the images\' own size)'
            if resize is not None else '')
      return (techniques.to_tflite(student, 'float32'),
              f'{student.name.replace("_", " ")}{at}, '
              f'{student.count_params():,} parameters '
              f'(teacher {model.count_params():,})',
              {'parameters': student.count_params(),
               'teacher_parameters': model.count_params()})
    add('distilled', distilled)
  start = time.time()
  _add_latencies(rows, variants, validation_x)
  log(f'  latency, {len(variants)} variants side by side: '
      f'{time.time() - start:.1f} s')
  return reference, rows, variants


def _property(artifact, key):
  """A custom property as the Trainer set it: KFP's metadata hands integers
  back as floats (JSON numbers)."""
  value = artifact.get_custom_property(key)
  if isinstance(value, float) and value.is_integer():
    return int(value)
  return value if isinstance(value, (int, str)) else str(value)


def _bless(out_blessing, out_model, blessed: bool, reason: str) -> None:
  """Records the push decision. Like TFX's Evaluator, a BLESSED or
  NOT_BLESSED file marks it in the blessing's folder, and a decision file
  in the model's: on object storage a folder with no file in it does not
  exist, and the orchestrator's cache would then take the outputs for lost
  and run the step again."""
  out_blessing.set_int_custom_property('blessed', int(blessed))
  out_model.set_string_custom_property('compression_decision', reason)
  marker = 'BLESSED' if blessed else 'NOT_BLESSED'
  for uri in (out_blessing.uri, out_model.uri):
    tf.io.gfile.makedirs(uri)
  with tf.io.gfile.GFile(os.path.join(out_blessing.uri, marker), 'w') as f:
    f.write(reason)
  with tf.io.gfile.GFile(os.path.join(out_model.uri, DECISION_FILE), 'w') as f:
    f.write(reason)


def _push_uncompressed(out_model, out_blessing, serving_dir, report_dir,
                       model_uri, trained, why: str) -> None:
  """A model that cannot be converted faithfully (a text model hubpipe does
  not convert, or whose TFLite tokenizer would differ): the SavedModel is
  pushed as it is, whatever `on_no_pass` says (that is for variants that
  fail the policy), and the report says why."""
  logging.warning('Compressor: %s', why)
  reason = f'no TFLite variant, the uncompressed model is pushed: {why}'
  policy.write({'model': model_uri, 'trained_model': trained, 'skipped': why,
                'decision': {'chosen': policy.UNCOMPRESSED, 'reason': reason}},
               report_dir, html_page=False)
  out_model.set_string_custom_property('compression_variant',
                                       policy.UNCOMPRESSED)
  _bless(out_blessing, out_model, True, reason)
  io_utils.copy_dir(serving_dir, path_utils.serving_model_path(out_model.uri))


class Executor(base_executor.BaseExecutor):
  """Compresses the blessed model; see the module docstring."""

  def Do(self, input_dict, output_dict, exec_properties):
    config = from_handoff(exec_properties['config'], 'Compressor')
    settings = dataclasses.asdict(config.compression)
    model_artifact = artifact_utils.get_single_instance(input_dict['model'])
    blessing = artifact_utils.get_single_instance(input_dict['blessing'])
    out_model = artifact_utils.get_single_instance(
        output_dict['compressed_model'])
    out_blessing = artifact_utils.get_single_instance(
        output_dict['push_blessing'])
    report_dir = artifact_utils.get_single_uri(output_dict['report'])
    tf.io.gfile.makedirs(report_dir)
    serving_dir = path_utils.serving_model_path(model_artifact.uri)
    if not tf.io.gfile.exists(os.path.join(serving_dir, 'saved_model.pb')):
      raise CompressorError(f'no SavedModel in the trained model at '
                            f'{serving_dir}.')
    out_blessing.set_string_custom_property('current_model',
                                            model_artifact.uri)
    out_blessing.set_int_custom_property('current_model_id', model_artifact.id)

    if not blessing.get_int_custom_property('blessed'):
      _bless(out_blessing, out_model, False,
             'skipped: the model was not blessed')
      policy.write({'skipped': 'the Evaluator did not bless the model'},
                   report_dir, html_page=False)
      return

    # The Trainer's export, as trained: no rebuilding, no weights to reload.
    model = export_lib.load_core(serving_dir)
    trained = {key: _property(model_artifact, key)
               for key in export_lib.PROPERTIES
               if model_artifact.has_custom_property(key)}
    # The pushed model carries them too.
    for key, value in trained.items():
      if isinstance(value, int):
        out_model.set_int_custom_property(key, value)
      else:
        out_model.set_string_custom_property(key, value)
    text = text_model.is_text(model)
    unconvertible = text and text_model.unconvertible(model, serving_dir)
    if unconvertible:
      _push_uncompressed(out_model, out_blessing, serving_dir, report_dir,
                         model_artifact.uri, trained, unconvertible)
      return

    transform_output = tft.TFTransformOutput(
        artifact_utils.get_single_uri(input_dict['transform_graph']))
    examples = input_dict['examples']
    train_x, train_y = inputs.sample(
        examples, 'train', transform_output, config,
        settings['fine_tune_examples'])
    samples = {split: inputs.sample(
        examples, split, transform_output, config, settings[f'{split}_examples'])
               for split in ('validation', 'eval')}
    resolution = 1 / len(samples['validation'][1])
    if resolution > settings['max_accuracy_drop']:
      logging.warning(
          'Compressor: one validation example is %.4f of accuracy, more than '
          'compression.max_accuracy_drop (%.4f): a single flipped answer '
          'fails a variant. More validation data (data.validation_fraction) '
          'makes the choice steadier.', resolution, settings['max_accuracy_drop'])
    if text:
      # The .tflite tokenizes with TFLite kernels: it must give the trained
      # model's token ids on every sampled text, or it is not converted.
      try:
        text_model.check_same_tokens(model, np.concatenate(
            [train_x] + [x for x, _ in samples.values()]))
      except text_model.TextConversionError as err:
        _push_uncompressed(out_model, out_blessing, serving_dir, report_dir,
                           model_artifact.uri, trained, str(err))
        return
    # Techniques the config asks for that do not apply to this model: said
    # in the log and the report.
    left_out = {}
    if trained.get('module_handle') == modules.NO_REUSE:
      # A small model trained from scratch: pruning prunes a module's
      # kernels, and the distillation student would be the model itself.
      left_out.update({t: 'the model was trained from scratch (no module)'
                       for t in ('pruning', 'distillation')})
    if text:
      left_out.update({t: 'image models only' for t in IMAGE_ONLY})
    left_out = {t: why for t, why in left_out.items()
                if t in settings['techniques']}
    for technique, why in left_out.items():
      logging.info('Compressor: %s left out: %s', technique, why)
    settings = {**settings, 'techniques': [
        t for t in settings['techniques'] if t not in left_out]}
    content_size = None
    if not text:
      content_size = inputs.content_size(
          inputs.factory_for(examples),
          inputs.split_patterns(examples, 'train'),
          transform_output.raw_metadata.schema, config.input_feature)
    with model_lib.keras_internals_unconverted():
      reference, rows, variants = compress(model, train_x, train_y, samples,
                                           settings, log=logging.info,
                                           content_size=content_size)
    decision = policy.choose(rows, settings['max_accuracy_drop'],
                             settings['max_size_ratio'],
                             settings['max_latency_ms'],
                             settings['on_no_pass'])
    report = {
        'model': model_artifact.uri,
        # What the Trainer recorded on its Model artifact.
        'trained_model': trained,
        # The uncompressed model's accuracy on each sample: the policy
        # chooses on validation; eval is reported only.
        'reference_accuracy': reference,
        'validation_examples': int(len(samples['validation'][1])),
        'eval_examples': int(len(samples['eval'][1])),
        'calibration_examples': int(min(len(train_x),
                                        settings['calibration_examples'])),
        'threads': 2,
        'policy': {k: settings[k] for k in ('max_accuracy_drop',
                                            'max_size_ratio', 'max_latency_ms',
                                            'on_no_pass')},
        'variants': rows,
        'decision': decision,
        'left_out': left_out,
    }
    chosen = decision['chosen']
    if text and chosen in variants:
      # What an interpreter needs to run the pushed text .tflite.
      report['tflite_ops'] = text_model.ops_of(variants[chosen])
      report['interpreter'] = text_model.INTERPRETER
    policy.write(report, report_dir)

    out_model.set_string_custom_property('compression_variant',
                                         chosen or 'none')
    if chosen in variants:
      out_model.set_string_custom_property(
          'tflite_output', 'probabilities' if text else 'logits')
    _bless(out_blessing, out_model, chosen is not None, decision['reason'])
    if chosen is None:
      return
    out_serving = path_utils.serving_model_path(out_model.uri)
    io_utils.copy_dir(serving_dir, out_serving)
    if chosen != policy.UNCOMPRESSED:
      with tf.io.gfile.GFile(os.path.join(out_serving, TFLITE_FILE), 'wb') as f:
        f.write(variants[chosen])
      names = (export_lib.read_record(serving_dir) or {}).get('class_names')
      if names:
        with tf.io.gfile.GFile(os.path.join(out_serving, LABELS_FILE), 'w') as f:
          f.write(''.join(f'{name}\n' for name in names))
