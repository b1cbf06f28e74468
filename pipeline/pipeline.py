"""The hubpipe DAG, in one place, independent of the runner.

  [DataSnapshot] -> ExampleGen -> StatisticsGen -> ImportSchemaGen
    -> ExampleValidator -> AnomalyGate -> Transform
    -> [ModuleSelector, with selection.candidates]
    -> Trainer (Hub module, tf.distribute; warm start from the baseline push)
    -> Evaluator (TFMA; baseline = the pushed model in service)
    -> Compressor (TFLite variants and a distilled student, measured) -> Pusher

What a run ingests and what it is gated against is a data snapshot
(components/data_snapshot): the files under the data root (with span
folders: the latest N spans) and the push in service. Compiled for an
orchestrator, a never-cached DataSnapshot step takes it at the start of each
run and hands it on as runtime parameters; the local runner takes it before
it builds the DAG (`snapshot=`). Either way ExampleGen and the baseline step
cache on its values: new data retrains, no new data reuses every step.

`create_pipeline(config, ...)` returns a `tfx.dsl.Pipeline`; the local runner
(`pipeline/local_runner.py`) runs it with LocalDagRunner and the Kubeflow entry
compiles the very same object.
"""

import hashlib
import json
import posixpath
from typing import Dict, Optional, Union

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.dsl.placeholder import placeholder as ph

from hubpipe.components.anomaly_gate.component import AnomalyGate
from hubpipe.components.compressor.component import Compressor
from hubpipe.components.data_snapshot.component import DataSnapshot
from hubpipe.components.evaluator.component import Evaluator
from hubpipe.components.module_selector.component import ModuleSelector
from hubpipe.components.pushed_baseline.component import LatestPushedModel
from hubpipe.components.pusher.component import Pusher
from hubpipe.components.snapshot_example_gen.component import SnapshotExampleGen
from hubpipe.components.trainer.component import Trainer
from hubpipe.pipeline import code_version
from hubpipe.pipeline.config import Config
from hubpipe.pipeline.config import EMBEDDING_CACHE_PREFIX
from hubpipe.pipeline.config import handoff
from hubpipe.pipeline.config import STEP_SECTIONS

TRANSFORM_FN = 'hubpipe.components.transform.{modality}.preprocessing_fn'
TRAINER_FN = 'hubpipe.components.trainer.run.run_fn'
# Local runs: Beam's DirectRunner worker count, set by the local runner.
BEAM_WORKERS_ENV = 'HUBPIPE_BEAM_WORKERS'
# Local runs, `beam.direct_running_mode: auto`: the running mode, set by the
# local runner from the data snapshot's size (`running_mode_for`).
BEAM_MODE_ENV = 'HUBPIPE_BEAM_MODE'
# Below this much input, `auto` runs the Beam steps in this process
# (in_memory). Measured on the demo (7000 Fashion-MNIST images, 2 cores):
# ExampleGen, StatisticsGen and Transform took 8.8, 12.5 and 14.2 s with two
# worker processes and 3.3, 8.6 and 7.2 s in memory; each worker process
# starts TensorFlow and TFX. Above it, the steps' own work (and the memory an
# in-process run holds) outweighs that start-up.
IN_MEMORY_BELOW_BYTES = 64 << 20
# train fits; validation makes every choice (early stopping, the selector,
# the Compressor); eval only blesses and reports.
TRAIN_SPLIT, VALIDATION_SPLIT, EVAL_SPLIT = 'train', 'validation', 'eval'
# create_pipeline(snapshot=STEP): the DataSnapshot runs as the DAG's first step.
STEP = 'step'


# The config sections the model depends on: only a change to these should
# retrain (a new evaluation or compression policy reuses the cached model).
TRAINER_SECTIONS = STEP_SECTIONS['Trainer']


def _sections(config: Config, keys) -> dict:
  return {k: v for k, v in config.to_dict().items() if k in keys}


def _handoff(config: Config, step: str) -> dict:
  """`step`'s config sections and its code digest (pipeline/code_version.py)."""
  return handoff(config, step, code=code_version.digest(step))


def beam_pipeline_args(config: Config, local: bool = False) -> list:
  """Beam arguments for the data components (ExampleGen, StatisticsGen,
  Transform, Evaluator); DirectRunner with one worker per CPU by default. The
  cluster runners take their endpoints and options from beam.extra_args.

  `direct_num_workers: 0` means the CPUs the process that runs the step may
  use (pipeline/cpus.py), which only that process knows, so it is resolved
  when the step runs, never written into the DAG (TFX's cache key holds the
  Beam arguments: a count in them would rerun every step on a machine with
  other CPUs). Local runs (`local`): a placeholder of the environment
  variable BEAM_WORKERS_ENV, which the local runner sets. Kubeflow: the 0
  itself, which each pod's entry point replaces (kubeflow/entrypoint.py)."""
  beam = config.beam
  args = [f'--runner={beam.runner}']
  if beam.runner == 'DirectRunner':
    workers = str(beam.direct_num_workers)
    if local and not beam.direct_num_workers:
      workers = ph.environment_variable(BEAM_WORKERS_ENV)
    mode = beam.direct_running_mode
    if mode == 'auto':
      # Like the worker count: resolved when the step runs, so that the
      # cache key does not change with the data's size.
      mode = ph.environment_variable(BEAM_MODE_ENV) if local else (
          'multi_processing')
    args += ['--direct_running_mode=' + mode,
             '--direct_num_workers=' + workers, NO_STAGING_ARG]
  return args + list(beam.extra_args)


def running_mode_for(config: Config, input_bytes: int) -> str:
  """The DirectRunner mode of a local run over `input_bytes` of input."""
  mode = config.beam.direct_running_mode
  if mode != 'auto':
    return mode
  return ('in_memory' if input_bytes < IN_MEMORY_BELOW_BYTES
          else 'multi_processing')


# Without a dependency flag, TFX's Beam executors build an sdist of TFX itself
# for the workers at every step (about 2 s, and 52 MB left in the temp dir
# each time). DirectRunner's workers are local processes that import the
# installed packages and stage nothing; this flag, which only a portable
# runner would read, tells TFX so. A constant: the Beam arguments are in
# TFX's cache key, so no version or machine detail belongs in it.
NO_STAGING_ARG = '--sdk_container_image=unused-by-DirectRunner'


def _trainer_handoff(config: Config, pipeline_root: str) -> dict:
  """The Trainer's hand-off, with the embedding cache's folder made
  explicit: by default <pipeline root>/Trainer/embedding_cache, from the
  pipeline root this DAG is built for. The Trainer cannot find that root
  itself on Kubeflow, where an artifact's path holds the run's id, and a
  cache under it would serve one run only."""
  out = _handoff(config, 'Trainer')
  training = out['config']['training']
  if training.get('embedding_cache') and not training.get(
      'embedding_cache_dir'):
    training['embedding_cache_dir'] = posixpath.join(
        pipeline_root.rstrip('/'), 'Trainer', 'embedding_cache')
  return out


def pipeline_identity(config: Config, image: str = 'local') -> str:
  """What a trained model is made by: the config's sections that shape it
  (those the Trainer and the ModuleSelector read) and the image. A change of
  either retrains, warm-started from and gated against the model in service
  (data_snapshot.snapshot.baseline_for); a new evaluation or compression
  policy reuses the trained model and keeps its baseline."""
  sections = _sections(config, STEP_SECTIONS['ModuleSelector'])
  # Where and how long embeddings are cached does not make another model.
  sections['training'] = {k: v for k, v in sections['training'].items()
                          if not k.startswith(EMBEDDING_CACHE_PREFIX)}
  return hashlib.sha256(json.dumps([sections, image], sort_keys=True,
                                   default=str).encode()).hexdigest()[:16]


def snapshot_parameters(config: Config, input_base: str, pipeline_root: str,
                        serving_dir: str, identity: str) -> Dict:
  """The DataSnapshot's parameters (also what the local runner takes the
  snapshot with)."""
  return {'input_base': input_base,
          'source': (config.data.source
                     if config.data.source in ('image_folder', 'csv')
                     else 'tfrecord'),
          'span_pattern': config.data.span_pattern or '',
          'latest_spans': config.data.latest_spans if config.data.span_pattern
                          else 1,
          'serving_dir': serving_dir,
          'state_dir': posixpath.join(pipeline_root.rstrip('/'), 'DataSnapshot',
                                      config.name),
          'identity': identity,
          'ready_marker': config.data.ready_marker or ''}


def example_gen(config: Config, input_base: str, snapshot):
  """ExampleGen over the data snapshot (a JSON string or runtime parameter):
  TFRecord or CSV folders (span folders: the latest N spans), CSV files with
  a split column, or an image folder."""
  validation = dict(validation_fraction=config.data.validation_fraction,
                    label_feature=config.data.label_feature,
                    split_seed=config.data.seed)
  if config.data.source == 'image_folder':
    from hubpipe.components.image_folder_example_gen import component
    from hubpipe.components.image_folder_example_gen import executor
    input_config, output_config = component.split_configs(
        input_base, config.data.eval_fraction)
    return SnapshotExampleGen(
        snapshot, input_config=input_config, output_config=output_config,
        custom_config=executor.make_custom_config(
            config.data.image_feature, config.data.label_feature,
            config.data.on_corrupt),
        reader='image_folder', **validation)
  if config.data.source == 'csv':
    strings = [config.data.text_feature] + (
        [config.data.label_feature] if config.data.label_type == 'string'
        else [])
    return SnapshotExampleGen(snapshot, reader='csv',
                              split_feature=config.data.split_feature or '',
                              string_columns=strings, **validation)
  return SnapshotExampleGen(snapshot, **validation)


def eval_config(config: Config) -> tfma.EvalConfig:
  """Accuracy with an absolute floor and a largest drop against the baseline.

  The thresholds gate on the overall slice; per-class accuracy (the label
  slices) is reported, not gated: a small eval set makes per-class figures noisy.
  """
  threshold = tfma.MetricThreshold(
      value_threshold=tfma.GenericValueThreshold(
          lower_bound={'value': config.evaluation.min_accuracy}),
      change_threshold=tfma.GenericChangeThreshold(
          direction=tfma.MetricDirection.HIGHER_IS_BETTER,
          absolute={'value': -config.evaluation.max_accuracy_drop}))
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(
          signature_name='serving_default',
          label_key=config.data.label_feature,
          prediction_key='probabilities',
          # A text model loads back as Keras too (its BERT preprocessing is
          # a registered layer), and TFMA's Keras path then costs minutes on
          # it; the serving signature alone is what is evaluated.
          model_type=(tfma.TF_GENERIC if config.modality == 'text' else ''))],
      slicing_specs=[tfma.SlicingSpec(),
                     tfma.SlicingSpec(feature_keys=[config.data.label_feature])],
      metrics_specs=[tfma.MetricsSpec(metrics=[
          tfma.MetricConfig(class_name='ExampleCount'),
          tfma.MetricConfig(
              class_name='SparseCategoricalAccuracy',
              per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                  slicing_specs=[tfma.SlicingSpec()],
                  threshold=threshold)])])])


def create_pipeline(config: Config, pipeline_root: str, input_base: str,
                    serving_dir: str, metadata_connection_config=None,
                    enable_cache: bool = True,
                    snapshot: Union[Dict[str, str], str, None] = None,
                    identity: Optional[str] = None,
                    local: bool = False) -> tfx.dsl.Pipeline:
  """The runner-agnostic DAG for `config`.

  Args:
    config: the validated config.
    pipeline_root: where artifacts go (a local folder or gs:// URI).
    input_base: the examples' root (train/ and eval/ TFRecord folders, span
      folders that hold them, or an image folder).
    serving_dir: base folder of the pushed, versioned serving models.
    metadata_connection_config: ML Metadata connection (local runs: SQLite).
    enable_cache: reuse the results of unchanged components.
    snapshot: the data snapshot already taken ({'examples', 'baseline'}, from
      data_snapshot.snapshot.take with `snapshot_parameters`), as the local
      runner does; or STEP: a DataSnapshot step takes it at the start of each
      run, for an orchestrator whose cache can be turned off for that one
      step (kubeflow/runner.py does; TFX has no per-node cache switch, so
      under a runner that caches every step, it would replay the first
      snapshot).
    identity: `pipeline_identity(config, image)` (default: image 'local').
    local: for the local runner (`beam_pipeline_args`).
  """
  identity = identity or pipeline_identity(config)
  snapshot_step = None
  if snapshot is None or (isinstance(snapshot, str) and snapshot != STEP):
    raise ValueError(
        f'create_pipeline: snapshot must be a taken snapshot (dict) or '
        f'"{STEP}", not {snapshot!r}: see its docstring.')
  if snapshot == STEP:
    snapshot_step = DataSnapshot(**snapshot_parameters(
        config, input_base, pipeline_root, serving_dir, identity))
    examples_snapshot = snapshot_step.outputs['examples'].future()[0].value
    baseline_version = snapshot_step.outputs['baseline'].future()[0].value
  else:
    examples_snapshot, baseline_version = (snapshot['examples'],
                                           snapshot['baseline'])

  examples = example_gen(config, input_base, examples_snapshot)
  statistics = tfx.components.StatisticsGen(
      examples=examples.outputs['examples'])
  schema = tfx.components.ImportSchemaGen(schema_file=config.schema_path)
  validator = tfx.components.ExampleValidator(
      statistics=statistics.outputs['statistics'],
      schema=schema.outputs['schema'])
  gate = AnomalyGate(anomalies=validator.outputs['anomalies'],
                     schema_path=config.schema_path,
                     label_feature=config.data.label_feature)

  # With span folders the examples hold the latest N spans' train data and
  # the newest span's eval data (the snapshot's window).
  training_examples = examples.outputs['examples']

  transform = tfx.components.Transform(
      examples=training_examples,
      schema=schema.outputs['schema'],
      preprocessing_fn=TRANSFORM_FN.format(modality=config.modality),
      # The Transform graph runs on the fly in the Trainer's input pipeline
      # (and inside the served model): materialising 96x96x3 floats per image
      # would write ~100 KB per example to disk.
      materialize=False,
      disable_statistics=True,
      custom_config=_handoff(config, 'Transform'))
  transform.add_upstream_node(gate)

  # The model a candidate warm-starts from and is measured against: the push
  # in service when this data was first seen (the snapshot's `baseline`).
  previous_push = None
  previous_model = None
  if config.training.warm_start:
    previous_push = LatestPushedModel(pushed_version=baseline_version).with_id(
        'latest_pushed_model_for_warm_start')
    previous_model = previous_push.outputs['baseline_model']

  # With candidates listed, the ModuleSelector probes each on a sample and
  # hands the Trainer its choice as hyperparameters (as the Tuner would).
  selector = None
  if config.selection.candidates:
    selector = ModuleSelector(
        examples=training_examples, schema=schema.outputs['schema'],
        transform_graph=transform.outputs['transform_graph'],
        config=handoff(config, 'ModuleSelector'))

  trainer = Trainer(
      run_fn=TRAINER_FN,
      examples=training_examples,
      hyperparameters=(selector.outputs['best_hyperparameters'] if selector
                       else None),
      base_model=previous_model,
      transform_graph=transform.outputs['transform_graph'],
      schema=schema.outputs['schema'],
      train_args=tfx.proto.TrainArgs(splits=[TRAIN_SPLIT]),
      # The Trainer's "eval" files are the validation split: it never sees eval.
      eval_args=tfx.proto.EvalArgs(splits=[VALIDATION_SPLIT]),
      custom_config=_trainer_handoff(config, pipeline_root))

  # Nothing pushed yet: the candidate stands in (the channel is never empty),
  # and the Evaluator leaves it out, so only the floor gates.
  pushed_baseline = LatestPushedModel(
      pushed_version=baseline_version, model=trainer.outputs['model']).with_id(
          'latest_pushed_model')

  evaluator = Evaluator(
      examples=examples.outputs['examples'],
      model=trainer.outputs['model'],
      baseline_model=pushed_baseline.outputs['baseline_model'],
      example_splits=[EVAL_SPLIT],
      eval_config=eval_config(config))

  # The Compressor makes and measures the TFLite variants (a text model's
  # with its tokenizer inside) and hands the Pusher the SavedModel plus the
  # chosen .tflite, and its own blessing (the Evaluator's, and a variant the
  # policy accepts).
  compressor = None
  push_model, push_blessing = (trainer.outputs['model'],
                               evaluator.outputs['blessing'])
  if config.compression.enabled:
    compressor = Compressor(
        model=trainer.outputs['model'], examples=examples.outputs['examples'],
        transform_graph=transform.outputs['transform_graph'],
        blessing=evaluator.outputs['blessing'],
        config=handoff(config, 'Compressor'))
    push_model = compressor.outputs['compressed_model']
    push_blessing = compressor.outputs['push_blessing']

  pusher = Pusher(
      model=push_model,
      model_blessing=push_blessing,
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=serving_dir)))

  return tfx.dsl.Pipeline(
      pipeline_name=config.name,
      pipeline_root=pipeline_root,
      components=[c for c in (snapshot_step, examples, statistics, schema,
                              validator, gate, transform, selector,
                              previous_push, trainer, pushed_baseline,
                              evaluator, compressor, pusher)
                  if c is not None],
      enable_cache=enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=beam_pipeline_args(config, local))
