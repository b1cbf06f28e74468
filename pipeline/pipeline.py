"""The hubpipe DAG, in one place, independent of the runner.

  ExampleGen -> StatisticsGen -> ImportSchemaGen -> ExampleValidator
    -> AnomalyGate -> Transform -> [ModuleSelector, with selection.candidates]
    -> Trainer (Hub module, tf.distribute)
    -> Evaluator (TFMA; baseline = latest blessed model, or on Kubeflow the
       newest pushed model)
    -> Compressor (image models: TFLite variants, measured) -> Pusher
  (+ a span resolver feeding Transform and Trainer the latest N spans, when
  the data arrives in span folders; + the latest blessed model as the
  Trainer's warm start, on request)

`create_pipeline(config, ...)` returns a `tfx.dsl.Pipeline`; the local runner
(`pipeline/local_runner.py`) runs it with LocalDagRunner and the Kubeflow entry
compiles the very same object.
"""

from typing import List, Optional

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from hubpipe.components.anomaly_gate.component import AnomalyGate
from hubpipe.components.compressor.component import Compressor
from hubpipe.components.module_selector.component import ModuleSelector
from hubpipe.components.pushed_baseline.component import LatestPushedModel
from hubpipe.pipeline.config import Config

TRANSFORM_FN = 'hubpipe.components.transform.{modality}.preprocessing_fn'
TRAINER_FN = 'hubpipe.components.trainer.run.run_fn'
EVAL_SPLIT = 'eval'


# The config sections the Trainer depends on: only a change to these should
# retrain (a new evaluation or compression policy reuses the cached model).
TRAINER_SECTIONS = ('name', 'modality', 'data', 'module', 'model', 'training')


def _sections(config: Config, keys) -> dict:
  return {k: v for k, v in config.to_dict().items() if k in keys}


def beam_pipeline_args(config: Config) -> List[str]:
  """Beam arguments for the data components (ExampleGen, StatisticsGen,
  Transform, Evaluator); DirectRunner on all cores by default. The cluster
  runners take their endpoints and options from beam.extra_args."""
  beam = config.beam
  args = [f'--runner={beam.runner}']
  if beam.runner == 'DirectRunner':
    args += [f'--direct_running_mode={beam.direct_running_mode}',
             f'--direct_num_workers={beam.direct_num_workers}']
  return args + list(beam.extra_args)


def example_gen(config: Config, input_base: str):
  """ExampleGen for the configured source, keeping (or making) train/eval splits."""
  if config.data.source == 'image_folder':
    from hubpipe.components.image_folder_example_gen import component
    return component.image_folder_example_gen(config, input_base)
  # With span folders, the pattern holds {SPAN}: ExampleGen ingests the newest.
  prefix = f'{config.data.span_pattern}/' if config.data.span_pattern else ''
  return tfx.components.ImportExampleGen(
      input_base=input_base,
      input_config=tfx.proto.Input(splits=[
          tfx.proto.Input.Split(name='train', pattern=f'{prefix}train/*'),
          tfx.proto.Input.Split(name=EVAL_SPLIT, pattern=f'{prefix}eval/*'),
      ]))


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
      model_specs=[tfma.ModelSpec(signature_name='serving_default',
                                  label_key=config.data.label_feature,
                                  prediction_key='probabilities')],
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
                    serving_dir: str, input_size: Optional[List[int]] = None,
                    preprocessor: Optional[str] = None,
                    metadata_connection_config=None,
                    enable_cache: bool = True,
                    baseline: str = 'resolver') -> tfx.dsl.Pipeline:
  """The runner-agnostic DAG for `config`.

  Args:
    config: the validated config.
    pipeline_root: where artifacts go (a local folder or gs:// URI).
    input_base: the examples' root (train/ and eval/ TFRecord folders, or an
      image folder).
    serving_dir: base folder of the pushed, versioned serving models.
    input_size: [height, width] the images are resized to (image modality).
    preprocessor: the text encoder's preprocessing companion, if it has one.
    metadata_connection_config: ML Metadata connection (local runs: SQLite).
    enable_cache: reuse the results of unchanged components.
    baseline: where the Evaluator's baseline (and the Trainer's warm start)
      comes from: 'resolver', the latest blessed model in ML Metadata; or
      'pushed', the newest model in `serving_dir` (LatestPushedModel), for
      orchestrators that run no resolver nodes (open-source KFP v2).
  """
  data = config.data
  examples = example_gen(config, input_base)
  statistics = tfx.components.StatisticsGen(
      examples=examples.outputs['examples'])
  schema = tfx.components.ImportSchemaGen(schema_file=config.schema_path)
  validator = tfx.components.ExampleValidator(
      statistics=statistics.outputs['statistics'],
      schema=schema.outputs['schema'])
  gate = AnomalyGate(anomalies=validator.outputs['anomalies'],
                     schema_path=config.schema_path)

  # What Transform and the Trainer learn from: the newest examples, or with
  # span folders the latest N spans ingested so far.
  training_examples = examples.outputs['examples']
  spans = None
  if data.span_pattern:
    spans = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.SpanRangeStrategy,
        config={'range_config': tfx.proto.RangeConfig(
            rolling_range=tfx.proto.RollingRange(num_spans=data.latest_spans))},
        examples=tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.Examples,
            producer_component_id=examples.id),
    ).with_id('latest_spans_resolver')
    training_examples = spans.outputs['examples']

  transform = tfx.components.Transform(
      examples=training_examples,
      schema=schema.outputs['schema'],
      preprocessing_fn=TRANSFORM_FN.format(modality=config.modality),
      # The Transform graph runs on the fly in the Trainer's input pipeline
      # (and inside the served model): materialising 96x96x3 floats per image
      # would write ~100 KB per example to disk.
      materialize=False,
      disable_statistics=True,
      custom_config={'input_feature': config.input_feature,
                     'label_feature': data.label_feature,
                     'input_size': input_size})
  transform.add_upstream_node(gate)

  # The model a candidate is measured against (and warm-starts from): the
  # latest blessed model, found in ML Metadata by a Resolver; or, on
  # orchestrators that run no resolver nodes, the newest pushed model.
  resolver = previous_push = None
  if baseline == 'resolver':
    resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id('latest_blessed_model_resolver')
    previous_model = resolver.outputs['model']
  elif baseline == 'pushed':
    previous_model = None
    if config.training.warm_start:
      previous_push = LatestPushedModel(serving_dir=serving_dir).with_id(
          'latest_pushed_model_for_warm_start')
      previous_model = previous_push.outputs['baseline_model']
  else:
    raise ValueError(f'baseline: "{baseline}" is neither resolver nor pushed.')

  # With candidates listed, the ModuleSelector probes each on a sample and
  # hands the Trainer its choice as hyperparameters (as the Tuner would).
  selector = None
  if config.selection.candidates:
    selector = ModuleSelector(
        examples=training_examples, schema=schema.outputs['schema'],
        transform_graph=transform.outputs['transform_graph'],
        config=_sections(config, TRAINER_SECTIONS + ('selection',)),
        input_size=input_size)

  trainer = tfx.components.Trainer(
      run_fn=TRAINER_FN,
      examples=training_examples,
      hyperparameters=(selector.outputs['best_hyperparameters'] if selector
                       else None),
      base_model=previous_model if config.training.warm_start else None,
      transform_graph=transform.outputs['transform_graph'],
      schema=schema.outputs['schema'],
      train_args=tfx.proto.TrainArgs(splits=['train']),
      eval_args=tfx.proto.EvalArgs(splits=[EVAL_SPLIT]),
      custom_config={'config': _sections(config, TRAINER_SECTIONS),
                     'input_size': input_size,
                     'preprocessor': preprocessor})

  pushed_baseline = None
  if baseline == 'pushed':
    # Nothing pushed yet: the candidate stands in, so only the floor gates.
    pushed_baseline = LatestPushedModel(
        serving_dir=serving_dir, model=trainer.outputs['model']).with_id(
            'latest_pushed_model')
    previous_model = pushed_baseline.outputs['baseline_model']

  evaluator = tfx.components.Evaluator(
      examples=examples.outputs['examples'],
      model=trainer.outputs['model'],
      baseline_model=previous_model,
      example_splits=[EVAL_SPLIT],
      eval_config=eval_config(config))

  # Image models: the Compressor makes and measures the TFLite variants and
  # hands the Pusher the SavedModel plus the chosen .tflite, and its own
  # blessing (the Evaluator's, and a variant the policy accepts).
  compressor = None
  push_model, push_blessing = (trainer.outputs['model'],
                               evaluator.outputs['blessing'])
  if config.modality == 'image' and config.compression.enabled:
    compressor = Compressor(
        model=trainer.outputs['model'], examples=examples.outputs['examples'],
        transform_graph=transform.outputs['transform_graph'],
        blessing=evaluator.outputs['blessing'],
        config=_sections(config, TRAINER_SECTIONS + ('compression',)),
        input_size=input_size)
    push_model = compressor.outputs['compressed_model']
    push_blessing = compressor.outputs['push_blessing']

  pusher = tfx.components.Pusher(
      model=push_model,
      model_blessing=push_blessing,
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=serving_dir)))

  return tfx.dsl.Pipeline(
      pipeline_name=config.name,
      pipeline_root=pipeline_root,
      components=[c for c in (examples, statistics, schema, validator, gate,
                              spans, transform, selector, resolver,
                              previous_push, trainer, pushed_baseline,
                              evaluator, compressor, pusher)
                  if c is not None],
      enable_cache=enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=beam_pipeline_args(config))
