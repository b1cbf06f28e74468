"""The ModuleSelector's executor: probe each candidate module, rank, write out.

Every candidate is checked against the config first (as the local runner
checks module.handle), then measured on the same sample of transformed
examples: the frozen module embeds the sample once; a probe (the head the
Trainer fits in feature_extraction mode, without hidden layers: linear on a
feature vector, the small convolutional head on a feature map; the config's
epochs, learning rate, batch size, dropout and class weights) is fitted on the
train embeddings and scored on the validation ones (the split the Trainer
reports on; never eval, which only the Evaluator uses), so that its accuracy
compares with the Trainer's. Both samples are seeded, class-stratified
random draws. Size on disk, parameter count and CPU latency per example
at batch 1 (module + probe) come with it. A candidate that cannot be loaded,
does not fit, or fails while probed becomes a skipped row with the reason:
one bad candidate must not stop a scheduled retrain.

Images arrive at the Transform's size. A candidate is probed at its
input_size, else at the size its module only takes, else (module.input_size
unset) at the size its module is made for, the rule by which the Transform
sized the images for the largest candidate (modeling/modules.py), else at
the Transform's size; another resolution is another candidate. At a size
other than the Transform's, a bilinear resize (`tf_keras.layers.Resizing`,
i.e. `tf.image.resize`) goes in front of the module, inside the timed model:
the Trainer's own `modeling.model.extractor_for`.

With selection.no_reuse (the default), one more candidate, `no-reuse`, is
the model a user would train without any module (modeling/no_reuse.py: a
small CNN on the images, a bag-of-words logistic regression on the text),
fitted end to end on the same train sample with the same epochs, batch size,
learning rate and seed, and scored on the same validation sample. When it
wins, the decision says that reuse does not pay on this data, and the Trainer
trains it.

Outputs: a ModuleSelection (report, and the winner as custom properties) and
a HyperParameters artifact whose one file TFX's Trainer reads into
`fn_args.hyperparameters`.
"""

import dataclasses
import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_transform as tft
import tf_keras
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from hubpipe.components.hub_modules import inspect as inspect_lib
from hubpipe.components.hub_modules import resolve as hub_resolve
from hubpipe.components.modeling import inputs
from hubpipe.components.modeling import measure
from hubpipe.components.modeling import model as model_lib
from hubpipe.components.modeling import modules
from hubpipe.components.modeling import no_reuse
from hubpipe.components.modeling import training
from hubpipe.components.module_selector import ranking
from hubpipe.components.module_selector import report as report_lib
from hubpipe.pipeline.config import from_handoff

# The Trainer takes the only file in the HyperParameters artifact's folder.
HYPERPARAMETERS_FILE = 'best_hyperparameters.txt'
EMBED_BATCH = 32
LATENCY_RUNS = 30


class ModuleSelectionError(ValueError):
  """No candidate could be probed, or the inputs are unusable."""


def _name(handle: str, input_size: Optional[list]) -> str:
  return f'{handle}@{input_size[0]}x{input_size[1]}' if input_size else handle


def candidate_specs(config) -> List[Dict]:
  """selection.candidates as dicts {name, handle, input_size, preprocessor}.

  The name is the handle, plus @HxW when the candidate sets input_size. A
  repeated candidate is probed once; two that differ only in their
  preprocessor get #2, #3... after the name. With no candidates listed, the
  one candidate is module.handle (with module.input_size and preprocessor).
  With selection.no_reuse, the no-reuse model is the last candidate.
  """
  raw = config.selection.candidates or [{
      'handle': config.module.handle, 'input_size': config.module.input_size,
      'preprocessor': config.module.preprocessor}]
  specs, seen = [], set()
  for candidate in raw:
    if isinstance(candidate, str):
      candidate = {'handle': candidate}
    size = candidate.get('input_size')
    spec = {'handle': candidate['handle'],
            'input_size': list(size) if size else None,
            'preprocessor': candidate.get('preprocessor')}
    key = json.dumps(spec, sort_keys=True)
    if key in seen:
      continue
    seen.add(key)
    base = name = _name(spec['handle'], spec['input_size'])
    number = 1
    while name in (s['name'] for s in specs):
      number += 1
      name = f'{base}#{number}'
    specs.append({'name': name, **spec})
  if config.selection.no_reuse and not any(
      s['handle'] == no_reuse.HANDLE for s in specs):
    specs.append({'name': no_reuse.HANDLE, 'handle': no_reuse.HANDLE,
                  'input_size': None, 'preprocessor': None})
  return specs


def _candidate_config(config, spec, size):
  """The config as if the candidate were module.handle (for the checks)."""
  return dataclasses.replace(config, module=dataclasses.replace(
      config.module, handle=spec['handle'], input_size=size,
      preprocessor=spec['preprocessor']))


def _fixed_size(info) -> Optional[list]:
  """[H, W] when the module only takes images of one size."""
  spec = next(iter(info.inputs.values()), None) or {}
  shape = spec.get('shape') or []
  if len(shape) == 4 and shape[1] and shape[2]:
    return [shape[1], shape[2]]
  return None


def _probe_no_reuse(spec, train_x, train_y, eval_x, eval_y, config,
                    num_classes, transform_size) -> Dict:
  """The no-reuse model's row: fitted end to end on the train sample as the
  Trainer would fit it, scored on the validation sample."""
  tf_keras.utils.set_random_seed(config.training.seed)
  start = time.perf_counter()
  model = no_reuse.build(
      config.modality,
      [*transform_size, 3] if config.modality == 'image' else None,
      num_classes, train_texts=train_x if config.modality == 'text' else None)
  model_lib.compile_for_training(model, config.training.learning_rate)
  with model_lib.keras_internals_unconverted():
    model.fit(train_x, train_y, batch_size=config.training.batch_size,
              epochs=config.training.epochs, shuffle=True, verbose=0,
              class_weight=training.class_weights(
                  train_y, num_classes, config.training.class_weight))
    accuracy = float(model.evaluate(eval_x, eval_y, verbose=0,
                                    batch_size=config.training.batch_size)[1])
  fit_seconds = time.perf_counter() - start
  parameters = int(model.count_params())
  return {
      'name': spec['name'], 'handle': no_reuse.HANDLE, 'resolved': None,
      'input_size': list(transform_size) if transform_size else None,
      'resized_from': None, 'preprocessor': None,
      'output_kind': 'from scratch: ' + no_reuse.DESCRIPTION[config.modality],
      'feature_shape': None, 'accuracy': accuracy,
      'latency_ms_b1': measure.keras_latency(model, eval_x[:1], batch_size=1,
                                             runs=LATENCY_RUNS),
      # float32 weights: what its SavedModel variables hold.
      'size_bytes': 4 * parameters, 'parameters': parameters,
      'embedding_seconds': 0.0, 'probe_seconds': round(fit_seconds, 3),
  }


def _probe(spec, train_x, train_y, eval_x, eval_y, config, num_classes,
           transform_size) -> Dict:
  """One candidate's measured row; raises when it cannot be probed."""
  if spec['handle'] == no_reuse.HANDLE:
    return _probe_no_reuse(spec, train_x, train_y, eval_x, eval_y, config,
                           num_classes, transform_size)
  info = inspect_lib.describe(spec['handle'])
  size = preprocessor = None
  if config.modality == 'image':
    size = list(spec['input_size'] or _fixed_size(info)
                or modules.own_size(config, info) or transform_size)
  elif spec['input_size']:
    raise inspect_lib.IncompatibleModule(
        'input_size is for image candidates; remove it from this text one.')
  inspect_lib.check_compatible(info, _candidate_config(config, spec, size))
  preprocessor = modules.preprocessor_for(spec['handle'], spec['preprocessor'],
                                         info)
  resize_from = (list(transform_size) if size and size != list(transform_size)
                 else None)
  # The Trainer's extractor, resize included: the probe times what it serves.
  extractor = model_lib.extractor_for(
      config, modules.ModuleChoice(handle=spec['handle'], input_size=size,
                                   preprocessor=preprocessor),
      images_at=transform_size)

  start = time.perf_counter()
  train_features = extractor.predict(train_x, batch_size=EMBED_BATCH, verbose=0)
  eval_features = extractor.predict(eval_x, batch_size=EMBED_BATCH, verbose=0)
  embedding_seconds = time.perf_counter() - start

  # The same seed for every candidate: no probe gets a luckier start.
  tf_keras.utils.set_random_seed(config.training.seed)
  probe_config = dataclasses.replace(
      config, model=dataclasses.replace(config.model, hidden_units=[]))
  start = time.perf_counter()
  head, accuracy, _ = training.fit_head_in_memory(
      train_features, train_y, eval_features, eval_y, num_classes,
      probe_config, name='probe')
  probe_seconds = time.perf_counter() - start
  latency = measure.keras_latency(model_lib.classifier(extractor, head),
                                  eval_x[:1], batch_size=1, runs=LATENCY_RUNS)

  size_bytes = info.size_bytes
  if preprocessor and size_bytes is not None:
    # The served model carries the preprocessor too.
    extra = inspect_lib.size_on_disk(hub_resolve.resolve(preprocessor))
    size_bytes = None if extra is None else size_bytes + extra
  return {
      'name': spec['name'], 'handle': spec['handle'],
      'resolved': info.resolved, 'input_size': size,
      'resized_from': resize_from,
      'preprocessor': preprocessor, 'output_kind': info.output_kind,
      'feature_shape': list(train_features.shape[1:]),
      'accuracy': float(accuracy), 'latency_ms_b1': latency,
      'size_bytes': size_bytes, 'parameters': info.parameters,
      'embedding_seconds': round(embedding_seconds, 3),
      'probe_seconds': round(probe_seconds, 3),
  }


def probe_candidates(candidates: List[Dict], train_x, train_y, eval_x, eval_y,
                     config, num_classes: int, transform_size: Optional[list],
                     log: Callable[[str], None] = print) -> List[Dict]:
  """One row per candidate (see `candidate_specs`), in their order.

  train_x/eval_x: transformed inputs (images [N, H, W, 3] at
  `transform_size`, or [N] strings); *_y: class ids. A candidate that cannot
  be probed is a row with `skipped` (the reason). Raises ModuleSelectionError
  when every candidate is skipped.
  """
  rows = []
  for spec in candidates:
    try:
      row = _probe(spec, train_x, train_y, eval_x, eval_y, config,
                   num_classes, transform_size)
      log(f'ModuleSelector: {row["name"]}: probe accuracy '
          f'{row["accuracy"]:.4f}, {row["latency_ms_b1"]:.2f} ms/example, '
          f'embedding {row["embedding_seconds"]:.1f} s')
    except (hub_resolve.ModuleNotFound, hub_resolve.ModuleUnavailable,
            inspect_lib.IncompatibleModule) as err:
      row = {**spec, 'skipped': f'{type(err).__name__}: {err}'}
      log(f'ModuleSelector: {spec["name"]}: skipped: {row["skipped"]}')
    except Exception as err:  # pylint: disable=broad-except
      logging.exception('ModuleSelector: probing %s failed', spec['name'])
      row = {**spec, 'skipped': f'probing failed: {type(err).__name__}: '
                                f'{err}'[:500]}
      log(f'ModuleSelector: {spec["name"]}: skipped: {row["skipped"]}')
    rows.append(row)
  # The no-reuse model alone is no selection: a list of modules that all
  # fail is a config error, not a finding that reuse does not pay.
  listed = [r for r in rows if r['handle'] != no_reuse.HANDLE]
  if all(r.get('skipped') for r in listed) or all(
      r.get('skipped') for r in rows):
    listing = '\n'.join(f'  - {r["name"]}: {r["skipped"]}' for r in rows
                        if r.get('skipped'))
    raise ModuleSelectionError(
        f'ModuleSelector: none of the {len(listed)} candidates in '
        f'selection.candidates could be probed:\n{listing}\nFix '
        f'selection.candidates: list {config.modality} modules that fit the '
        'config (`hubpipe modules list`; `hubpipe modules inspect HANDLE` '
        'shows what a module takes), or remove the list to train with '
        'module.handle.')
  return rows


class Executor(base_executor.BaseExecutor):
  """Probes the candidate modules and picks one; see the module docstring."""

  def Do(self, input_dict, output_dict, exec_properties):
    start = time.time()
    config = from_handoff(exec_properties['config'], 'ModuleSelector')
    selection = config.selection
    transform_output = tft.TFTransformOutput(
        artifact_utils.get_single_uri(input_dict['transform_graph']))
    num_classes = inputs.num_classes(transform_output)
    train_x, train_y = inputs.sample(
        input_dict['examples'], 'train', transform_output, config,
        selection.train_examples)
    eval_x, eval_y = inputs.sample(
        input_dict['examples'], 'validation', transform_output, config,
        selection.validation_examples)
    transform_size = inputs.images_at(transform_output, config.input_feature)

    rows = probe_candidates(candidate_specs(config), train_x, train_y, eval_x,
                            eval_y, config, num_classes, transform_size,
                            log=logging.info)
    policy = {'objective': selection.objective,
              'max_latency_ms': selection.max_latency_ms,
              'max_size_mb': selection.max_size_mb,
              'latency_weight': selection.latency_weight,
              'size_weight': selection.size_weight}
    ranked, decision = ranking.choose(rows, **policy)
    if decision['chosen'] == no_reuse.HANDLE:
      decision['reason'] = (
          'reuse does not pay on this data: the model trained from scratch ('
          f'{no_reuse.DESCRIPTION[config.modality]}) beats every module; '
          'the Trainer trains it. ' + decision['reason'])
      logging.warning('ModuleSelector: %s', decision['reason'])
    decision['reuse_pays'] = decision['chosen'] != no_reuse.HANDLE
    chosen = next(r for r in ranked if r['name'] == decision['chosen'])
    seconds = time.time() - start
    report = {
        'policy': policy, 'transform_size': transform_size,
        'train_examples': int(len(train_y)),
        'validation_examples': int(len(eval_y)),
        'num_classes': num_classes, 'rows': ranked,
        'pareto': ranking.pareto_front(rows), 'decision': decision,
        'selector_seconds': round(seconds, 2),
    }
    out = artifact_utils.get_single_instance(output_dict['selection'])
    tf.io.gfile.makedirs(out.uri)
    report_lib.write(report, out.uri)
    out.set_string_custom_property('chosen_handle', chosen['handle'])
    out.set_string_custom_property('chosen_name', chosen['name'])
    out.set_string_custom_property(
        'chosen_input_size',
        json.dumps(chosen['input_size']) if chosen['input_size'] else '')
    out.set_string_custom_property('chosen_preprocessor',
                                   chosen['preprocessor'] or '')
    out.set_string_custom_property('decision', decision['reason'])
    out.set_float_custom_property('selector_seconds', seconds)

    hyperparameters = {'module_handle': chosen['handle'],
                       'input_size': chosen['input_size'],
                       'preprocessor': chosen['preprocessor'],
                       'selected_by': modules.SELECTOR}
    io_utils.write_string_file(
        os.path.join(artifact_utils.get_single_uri(
            output_dict['best_hyperparameters']), HYPERPARAMETERS_FILE),
        json.dumps(hyperparameters))
