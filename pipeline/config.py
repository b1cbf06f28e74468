"""The hubpipe config: one YAML file per use case, validated on load.

Every section is a dataclass; `load_config` checks each key and value and raises
`ConfigError` naming the offending key (as a dotted path), what was given and
what is allowed. Nothing about the data set (class count, image size, feature
names) is hard-coded elsewhere: it comes from here or from the data.
"""

import dataclasses
import difflib
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

MODALITIES = ('image', 'text')
DATA_SOURCES = ('fashion_mnist', 'rotten_tomatoes', 'tfrecord', 'csv',
                'image_folder')
LABEL_TYPES = ('int', 'string')
BUNDLED = {'fashion_mnist': 'image', 'rotten_tomatoes': 'text'}
ON_CORRUPT = ('fail', 'skip')
INTEGRATIONS = ('feature_extraction', 'fine_tune', 'hybrid')
MIXED_PRECISION = (False, True, 'mixed_float16', 'mixed_bfloat16')
STRATEGIES = ('auto', 'default', 'one_device', 'mirrored',
              'multi_worker_mirrored', 'tpu')
DIRECT_RUNNING_MODES = ('auto', 'in_memory', 'multi_threading',
                        'multi_processing')


class ConfigError(ValueError):
  """A config key or value is wrong; the message names the key and the fix."""


@dataclasses.dataclass
class DataConfig:
  # fashion_mnist / rotten_tomatoes: the bundled data sets (seeded subsets);
  # tfrecord: `path` holds train/ and eval/ folders of tf.Example TFRecords;
  # image_folder: `path` holds one sub-folder per class (or train/ and eval/
  # folders that each hold the class sub-folders).
  # csv (text): `path` holds train/ and eval/ folders of CSV files with a
  # header line (read as TFX's CsvExampleGen reads them), or the CSV files
  # themselves with a `split_feature` column; text_feature and label_feature
  # name the columns.
  source: str = 'fashion_mnist'
  path: Optional[str] = None
  # csv with the files at `path` itself: the column that says train,
  # validation or eval for each row (left out of the examples).
  split_feature: Optional[str] = None
  # int: labels are class ids 0..K-1. string: labels are class names (CSV
  # text, TFRecord bytes); the Transform maps them to ids with a vocabulary
  # and the served model returns each prediction's class_name.
  label_type: str = 'int'
  train_examples: int = 5000
  eval_examples: int = 2000
  seed: int = 0
  image_feature: str = 'image'
  text_feature: str = 'text'
  label_feature: str = 'label'
  # image_folder without train/ and eval/ folders: share of images for eval.
  eval_fraction: float = 0.2
  # Three roles: `train` fits, `validation` makes every choice (early
  # stopping, the ModuleSelector's ranking, the Compressor's variant),
  # `eval` only blesses and reports. Without a validation/ folder in the data
  # (beside train/ and eval/), ExampleGen carves this share of each class
  # out of train (seeded by data.seed).
  validation_fraction: float = 0.1
  # Corrupt images: 'fail' stops the run listing them; 'skip' leaves them out
  # and lists them in a report beside the examples.
  on_corrupt: str = 'fail'
  # A schema.pbtxt; default: the curated one for the modality (and
  # label_type) under schemas/, with features named text/image and label.
  schema: Optional[str] = None
  # tfrecord only: new data arrives as span folders under `path`, each with
  # train/ and eval/ (e.g. span-1/, span-2/ for 'span-{SPAN}'). Each run
  # trains on the latest `latest_spans` spans and evaluates on the newest.
  span_pattern: Optional[str] = None
  latest_spans: int = 1
  # A file the delivery writes last (e.g. _SUCCESS): a span folder (without
  # spans: the data root) counts only once it holds it.
  ready_marker: Optional[str] = None


@dataclasses.dataclass
class ModuleConfig:
  # An offline module name (see `hubpipe modules`), a local SavedModel folder,
  # or a TF Hub handle.
  handle: str = 'mobilenet_v1_100_224'
  # [height, width] the Transform resizes images to; default: the module's own.
  input_size: Optional[list] = None
  # Optional control module (e.g. the same architecture randomly initialised):
  # the Trainer fits the same head on it, to measure the value of reuse.
  control_handle: Optional[str] = None
  # Text encoders that take BERT inputs: the preprocessing companion (default:
  # the one the module's metadata names) and the token sequence length.
  preprocessor: Optional[str] = None
  seq_length: int = 128


@dataclasses.dataclass
class ModelConfig:
  # feature_extraction: module frozen, embeddings computed once, head trained.
  # fine_tune: module and head trained together (batch norm in inference mode).
  # hybrid: head first on the frozen module, then the top of the module too.
  integration: str = 'feature_extraction'
  hidden_units: list = dataclasses.field(default_factory=list)
  dropout: float = 0.0
  # hybrid: which part of the module to unfreeze after the head is trained:
  # an integer (the last N blocks), a fraction of the blocks (0, 1], or a
  # regular expression on variable names.
  unfreeze: Any = 2


@dataclasses.dataclass
class TrainingConfig:
  epochs: int = 10
  batch_size: int = 64
  learning_rate: float = 0.001
  strategy: str = 'auto'
  seed: int = 42
  # hybrid: the second stage (top of the module + head), at a lower rate.
  fine_tune_epochs: int = 2
  fine_tune_learning_rate: float = 0.0001
  # Stop when validation accuracy has not improved for this many epochs
  # (0: off); the best epoch's weights are kept.
  early_stopping_patience: int = 0
  # Raw examples held to shuffle the training input (files are shuffled
  # too, seeded by training.seed); lower it for large raw examples (e.g.
  # 10000 JPEGs of 100 KB hold 1 GB).
  shuffle_buffer: int = 10000
  # 'balanced': weight classes inversely to their frequency in the train split.
  class_weight: str = 'none'
  # Mixed precision: true picks by hardware (bfloat16 on TPU, float16 with
  # loss scaling on GPU, none on CPU); a policy name (mixed_float16,
  # mixed_bfloat16) is used on any hardware. The Hub module computes in
  # float32 (its SavedModel's dtype); the head in the policy's; logits float32.
  mixed_precision: Any = False
  # Text: also fit a bag-of-words logistic regression on the same split, as
  # the no-reuse reference.
  bag_of_words_baseline: bool = False
  # Start from the latest blessed model's weights (head; the whole model when
  # fine-tuning) instead of from scratch.
  warm_start: bool = False
  # Images, when the module trains (fine_tune, hybrid's second stage; and a
  # model trained from scratch): random changes to each training batch, off
  # by default and never part of the exported model. flip: mirror left-right
  # (half the images); crop: cut up to this share of the height and width
  # (each side at random) and scale back; brightness: add a value in
  # [-brightness, +brightness] to every pixel (images are in [0, 1]).
  augment_flip: bool = False
  augment_crop: float = 0.0
  augment_brightness: float = 0.0
  # A frozen module's embeddings (feature extraction, hybrid's first stage,
  # the control) are cached per example, keyed on the raw input, under
  # <pipeline root>/Trainer/embedding_cache (or embedding_cache_dir): a
  # retrain over the latest N spans embeds only examples no run embedded
  # before with the same Transform, module, input size and dtype policy.
  # The Trainer removes what no run used for max_age_days, and keeps at
  # most max_segments segments (one per run that embedded something) per
  # module identity. Only the Trainer reads these keys.
  embedding_cache: bool = True
  embedding_cache_max_age_days: float = 30.0
  embedding_cache_max_segments: int = 100
  embedding_cache_dir: Optional[str] = None


@dataclasses.dataclass
class EvaluationConfig:
  # Absolute lower bound on eval accuracy for the model to be blessed.
  min_accuracy: float = 0.5
  # Largest accuracy drop allowed against the latest blessed model.
  max_accuracy_drop: float = 0.01


COMPRESSION_TECHNIQUES = ('dynamic_range', 'float16', 'int8', 'int8_selective',
                          'pruning', 'distillation')


@dataclasses.dataclass
class CompressionConfig:
  # The Compressor runs between Evaluator and Pusher (TFLite variants).
  enabled: bool = True
  techniques: list = dataclasses.field(
      default_factory=lambda: list(COMPRESSION_TECHNIQUES))
  # Policy: a variant passes when its validation accuracy is at most this far
  # below the uncompressed model's, and (if set) within the size and latency
  # limits. Eval accuracy is measured and reported, never used to choose.
  max_accuracy_drop: float = 0.01
  max_size_ratio: Optional[float] = None   # against the float32 TFLite file
  max_latency_ms: Optional[float] = None   # per example, batch 1
  # When nothing passes: 'uncompressed' pushes the trained model alone,
  # 'none' pushes nothing.
  on_no_pass: str = 'uncompressed'
  # Seeded, class-stratified samples: calibration (from train), choosing
  # (validation) and reporting (eval).
  calibration_examples: int = 500
  validation_examples: int = 2000
  eval_examples: int = 2000
  # Train examples for pruning's fine-tune and the distilled student.
  fine_tune_examples: int = 2000
  pruning_sparsity: float = 0.5
  pruning_epochs: int = 2
  distillation_epochs: int = 10
  # int8_selective: at most this many ops kept in float, and the file at most
  # this fraction of the float32 TFLite file (None: no limit; max_size_ratio,
  # when set and smaller, applies instead).
  max_float_layers: int = 6
  selective_max_size_ratio: Optional[float] = 0.3


SELECTION_OBJECTIVES = ('accuracy', 'budget', 'weighted')
CANDIDATE_KEYS = ('handle', 'input_size', 'preprocessor')


@dataclasses.dataclass
class SelectionConfig:
  # ModuleSelector (after Transform): with candidates listed, each is probed
  # on a sample (frozen module, linear probe) and the Trainer trains with the
  # winner instead of module.handle. A candidate is a handle, or a mapping
  # {handle, input_size: [h, w], preprocessor}: the same module at another
  # resolution is another candidate.
  candidates: list = dataclasses.field(default_factory=list)
  # Seeded, class-stratified samples: probes fit on train, rank on validation.
  train_examples: int = 1000
  validation_examples: int = 500
  # accuracy: the best probe accuracy. budget: the best probe accuracy among
  # the candidates within max_latency_ms and max_size_mb. weighted: probe
  # accuracy less latency_weight (and size_weight) per doubling of latency
  # (size) over the cheapest candidate's.
  objective: str = 'accuracy'
  max_latency_ms: Optional[float] = None   # per example, batch 1, CPU
  max_size_mb: Optional[float] = None      # the module on disk
  latency_weight: float = 0.0
  size_weight: float = 0.0
  # Also measure a model trained from scratch on the same samples (a small
  # CNN, or a bag-of-words logistic regression: modeling/no_reuse.py); when
  # it wins, the Trainer trains it, and the run says reuse does not pay.
  no_reuse: bool = True


@dataclasses.dataclass
class PushConfig:
  # Base folder of the versioned serving models; default <workdir>/serving.
  serving_dir: Optional[str] = None


BEAM_RUNNERS = ('DirectRunner', 'FlinkRunner', 'SparkRunner',
                'PortableRunner', 'DataflowRunner')


@dataclasses.dataclass
class BeamConfig:
  # The runner of the Beam components (ExampleGen, StatisticsGen, Transform,
  # Evaluator). DirectRunner runs on this machine; the others need their own
  # arguments in extra_args (e.g. --flink_master, --job_endpoint, --project,
  # --region, --temp_location): see the README, "Beam at scale".
  runner: str = 'DirectRunner'
  # DirectRunner only. auto: a local run takes in_memory when the data
  # snapshot holds less than pipeline.IN_MEMORY_BELOW_BYTES of input (worker
  # processes each start TensorFlow and TFX: seconds per step that small
  # data never wins back), multi_processing above; a compiled (Kubeflow)
  # pipeline takes multi_processing.
  direct_running_mode: str = 'auto'
  # 0: one worker per CPU the process may use (pipeline/cpus.py: the
  # affinity mask capped by the cgroup CPU limit), not per core of the node.
  direct_num_workers: int = 0
  # Extra Beam pipeline arguments, passed through as given.
  extra_args: list = dataclasses.field(default_factory=list)


RESOURCE_KEYS = ('cpu', 'memory', 'accelerator', 'accelerator_count')


@dataclasses.dataclass
class KubeflowConfig:
  # Used by `hubpipe compile --target kubeflow` (the local runner ignores it).
  # The container image every component runs in (kubeflow/Dockerfile).
  image: str = 'hubpipe:latest'
  # Where artifacts go on the cluster (gs://, s3://, minio://, or a volume).
  pipeline_root: Optional[str] = None
  # The examples' root on the cluster; for the bundled data sets, default:
  # the copy built into the image.
  data_root: Optional[str] = None
  # Where the Pusher writes versioned models; default <pipeline_root>/serving.
  serving_dir: Optional[str] = None
  # Per component id ('default' for all others): {cpu: '4', memory: '16G',
  # accelerator: 'nvidia.com/gpu', accelerator_count: 1}. Kubernetes quantity
  # strings; accelerator is the resource type the cluster schedules on
  # (nvidia.com/gpu, a TPU type such as cloud-tpus.google.com/v3, or a Vertex
  # type such as NVIDIA_TESLA_T4).
  resources: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Config:
  name: str = 'hubpipe'
  modality: str = 'image'
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  module: ModuleConfig = dataclasses.field(default_factory=ModuleConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
  evaluation: EvaluationConfig = dataclasses.field(
      default_factory=EvaluationConfig)
  compression: CompressionConfig = dataclasses.field(
      default_factory=CompressionConfig)
  selection: SelectionConfig = dataclasses.field(
      default_factory=SelectionConfig)
  push: PushConfig = dataclasses.field(default_factory=PushConfig)
  beam: BeamConfig = dataclasses.field(default_factory=BeamConfig)
  kubeflow: KubeflowConfig = dataclasses.field(default_factory=KubeflowConfig)
  # Where the config was loaded from; paths in it are relative to its folder.
  source_path: Optional[str] = dataclasses.field(default=None, repr=False)

  def to_dict(self) -> dict:
    """The sections as plain values (a step's config: the sections it was
    handed)."""
    return {f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name != 'source_path'
            and not isinstance(getattr(self, f.name), _NotHandedOver)}

  def resolve_path(self, path: Optional[str]) -> Optional[str]:
    """A path from the config, relative to the config file's folder."""
    if not path or '://' in path or os.path.isabs(path):
      return path
    base = Path(self.source_path).parent if self.source_path else Path.cwd()
    return str((base / path).resolve())

  @property
  def input_feature(self) -> str:
    """The feature the module reads: the image or the text feature."""
    return (self.data.image_feature if self.modality == 'image'
            else self.data.text_feature)

  @property
  def schema_path(self) -> str:
    if self.data.schema:
      return self.resolve_path(self.data.schema)
    folder = f'{self.modality}_classification'
    if self.data.label_type == 'string':
      folder += '_string_labels'
    return str(REPO_ROOT / 'schemas' / folder / 'schema.pbtxt')


# Settings that went away, and what replaced them.
REMOVED = {
    'selection.eval_examples': (
        'the ModuleSelector ranks on the validation split now (eval only '
        'blesses): rename it selection.validation_examples.'),
    'kubeflow.baseline': (
        'the baseline is always the pushed model in service, chosen by the '
        'DataSnapshot step on every backend (no resolver node). Delete the '
        'line.'),
}


def _type_name(t) -> str:
  return {int: 'an integer', float: 'a number', str: 'a string',
          bool: 'true or false', list: 'a list'}.get(t, str(t))


def _build(cls, raw: Any, path: str):
  """Builds dataclass `cls` from a mapping, checking keys and value types."""
  if raw is None:
    raw = {}
  if not isinstance(raw, dict):
    raise ConfigError(f'{path or "the config"}: expected a mapping of keys, '
                      f'got {type(raw).__name__}')
  fields = {f.name: f for f in dataclasses.fields(cls) if f.name != 'source_path'}
  values = {}
  for key, value in raw.items():
    where = f'{path}.{key}' if path else str(key)
    if where in REMOVED:
      raise ConfigError(f'"{where}" is no longer a setting: {REMOVED[where]}')
    if key not in fields:
      close = difflib.get_close_matches(str(key), fields, n=1)
      hint = f' Did you mean "{close[0]}"?' if close else ''
      raise ConfigError(f'unknown key "{where}".{hint} Allowed keys'
                        f'{" under " + path if path else ""}: '
                        f'{", ".join(sorted(fields))}.')
    ftype = fields[key].type
    if ftype is Any:  # checked by validate()
      values[key] = value
      continue
    if dataclasses.is_dataclass(ftype):
      values[key] = _build(ftype, value, where)
      continue
    base = ftype
    optional = False
    if getattr(ftype, '__origin__', None) is not None:  # Optional[X]
      args = [a for a in ftype.__args__ if a is not type(None)]
      base, optional = args[0], True
    if value is None:
      if not optional:
        raise ConfigError(f'{where}: a value is required ({_type_name(base)}).')
      values[key] = None
      continue
    if base is float and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
      raise ConfigError(f'{where}: expected {_type_name(base)}, got '
                        f'{value!r} ({type(value).__name__}).')
    values[key] = value
  return cls(**values)


def _choice(where: str, value, allowed):
  if value not in allowed:
    raise ConfigError(f'{where}: "{value}" is not allowed; use one of: '
                      f'{", ".join(allowed)}.')


def _positive(where: str, value, allow_zero=False):
  if value < 0 or (value == 0 and not allow_zero):
    raise ConfigError(f'{where}: must be {"zero or more" if allow_zero else "positive"}, '
                      f'got {value}.')


def augments(training: TrainingConfig) -> bool:
  """Whether any training.augment_* key is on."""
  return bool(training.augment_flip or training.augment_crop
              or training.augment_brightness)


def validate(config: Config, check_files: bool = True) -> Config:
  """Checks values that types alone cannot; raises ConfigError.
  check_files: also check the schema file (on the machine that reads it)."""
  d, m, t, e = config.data, config.module, config.training, config.evaluation
  _choice('modality', config.modality, MODALITIES)
  _choice('data.source', d.source, DATA_SOURCES)
  if BUNDLED.get(d.source, config.modality) != config.modality:
    raise ConfigError(f'data.source: "{d.source}" is {BUNDLED[d.source]} data '
                      f'but modality is "{config.modality}".')
  if d.source == 'image_folder' and config.modality != 'image':
    raise ConfigError('data.source: "image_folder" holds images; set modality: image.')
  _choice('data.on_corrupt', d.on_corrupt, ON_CORRUPT)
  _choice('data.label_type', d.label_type, LABEL_TYPES)
  if d.label_type == 'string' and (d.source == 'image_folder' or d.source in BUNDLED):
    raise ConfigError(f'data.label_type: "{d.source}" data has class ids (an '
                      'image folder maps its folder names to ids and records the '
                      'names); remove data.label_type.')
  if d.source == 'csv' and config.modality != 'text':
    raise ConfigError('data.source: "csv" holds text; set modality: text (for '
                      'images, use an image folder or TFRecords).')
  if d.split_feature is not None:
    if d.source != 'csv':
      raise ConfigError('data.split_feature: a split column is read from CSV '
                        'files; set data.source: csv, or remove it.')
    if d.split_feature in (d.text_feature, d.label_feature):
      raise ConfigError(f'data.split_feature: "{d.split_feature}" is also the '
                        'text or label column; name the column that says '
                        'train, validation or eval.')
  if d.source in ('tfrecord', 'csv', 'image_folder') and not d.path:
    raise ConfigError(f'data.path: required when data.source is "{d.source}" '
                      '(the folder that holds the data).')
  if d.span_pattern is not None:
    if d.source not in ('tfrecord', 'csv') or d.split_feature:
      raise ConfigError('data.span_pattern: spans are read from tfrecord or '
                        'csv folders (without data.split_feature).')
    if '{SPAN}' not in d.span_pattern:
      raise ConfigError(f'data.span_pattern: "{d.span_pattern}" must contain '
                        '{SPAN}, e.g. span-{SPAN}.')
  _positive('data.latest_spans', d.latest_spans)
  _positive('training.shuffle_buffer', t.shuffle_buffer)
  if not t.embedding_cache_max_age_days > 0:
    raise ConfigError(f'training.embedding_cache_max_age_days: must be '
                      f'positive (days since a run last used a cached '
                      f'segment), got {t.embedding_cache_max_age_days}; to '
                      'stop caching set training.embedding_cache: false.')
  if t.embedding_cache_max_segments < 1:
    raise ConfigError(f'training.embedding_cache_max_segments: must be 1 or '
                      f'more (segments kept per module identity), got '
                      f'{t.embedding_cache_max_segments}; to stop caching set '
                      'training.embedding_cache: false.')
  if t.embedding_cache_dir is not None and not str(
      t.embedding_cache_dir).strip():
    raise ConfigError('training.embedding_cache_dir: must be a folder (a '
                      'local path or gs://...), or null for <pipeline '
                      'root>/Trainer/embedding_cache.')
  if not 0.0 <= t.augment_crop < 0.5:
    raise ConfigError(f'training.augment_crop: the share of the image cut '
                      f'away must be in [0, 0.5), got {t.augment_crop}.')
  if not 0.0 <= t.augment_brightness <= 1.0:
    raise ConfigError(f'training.augment_brightness: must be in [0, 1] (images '
                      f'are in [0, 1]), got {t.augment_brightness}.')
  if augments(t) and config.modality != 'image':
    raise ConfigError('training.augment_*: augmentation is for images; remove '
                      'it for modality text.')
  _positive('data.train_examples', d.train_examples)
  _positive('data.eval_examples', d.eval_examples)
  if not 0.0 < d.validation_fraction < 1.0:
    raise ConfigError(f'data.validation_fraction: must be between 0 and 1 '
                      f'(exclusive), got {d.validation_fraction}: every run '
                      'needs a validation split to choose on.')
  if not 0.0 < d.eval_fraction < 1.0:
    raise ConfigError(f'data.eval_fraction: must be between 0 and 1 '
                      f'(exclusive), got {d.eval_fraction}.')
  for key in ('image_feature', 'text_feature', 'label_feature'):
    if not getattr(d, key):
      raise ConfigError(f'data.{key}: must be a non-empty feature name.')
  if config.input_feature == d.label_feature:
    raise ConfigError('data.label_feature must differ from the input feature.')
  if m.seq_length < 4:
    raise ConfigError(f'module.seq_length: must be at least 4, got {m.seq_length}.')
  if t.bag_of_words_baseline and config.modality != 'text':
    raise ConfigError('training.bag_of_words_baseline: only for modality text.')
  if m.input_size is not None:
    if (len(m.input_size) != 2 or
        not all(isinstance(v, int) and v >= 32 for v in m.input_size)):
      raise ConfigError(f'module.input_size: expected [height, width], two '
                        f'integers of at least 32, got {m.input_size}.')
  if not m.handle:
    raise ConfigError('module.handle: required (an offline module name, a '
                      'local SavedModel folder or a TF Hub handle).')
  _choice('model.integration', config.model.integration, INTEGRATIONS)
  if not all(isinstance(u, int) and u > 0 for u in config.model.hidden_units):
    raise ConfigError(f'model.hidden_units: expected a list of positive '
                      f'integers, got {config.model.hidden_units}.')
  unfreeze = config.model.unfreeze
  if not ((isinstance(unfreeze, int) and not isinstance(unfreeze, bool) and
           unfreeze > 0) or
          (isinstance(unfreeze, float) and 0.0 < unfreeze <= 1.0) or
          (isinstance(unfreeze, str) and unfreeze)):
    raise ConfigError(f'model.unfreeze: expected a number of blocks (a '
                      'positive integer), a fraction in (0, 1], or a regular '
                      f'expression on variable names; got {unfreeze!r}.')
  _positive('training.fine_tune_epochs', t.fine_tune_epochs)
  _positive('training.fine_tune_learning_rate', t.fine_tune_learning_rate)
  if not 0.0 <= config.model.dropout < 1.0:
    raise ConfigError(f'model.dropout: must be in [0, 1), got '
                      f'{config.model.dropout}.')
  _positive('training.epochs', t.epochs)
  _positive('training.batch_size', t.batch_size)
  _positive('training.learning_rate', t.learning_rate)
  _choice('training.strategy', t.strategy, STRATEGIES)
  _choice('training.class_weight', t.class_weight, ('none', 'balanced'))
  if not (isinstance(t.mixed_precision, bool) or
          t.mixed_precision in MIXED_PRECISION[2:]):
    raise ConfigError(
        f'training.mixed_precision: {t.mixed_precision!r} is not allowed; use '
        'false, true (by hardware) or a policy: mixed_float16, mixed_bfloat16.')
  _positive('training.early_stopping_patience', t.early_stopping_patience,
            allow_zero=True)
  if not 0.0 <= e.min_accuracy <= 1.0:
    raise ConfigError(f'evaluation.min_accuracy: must be in [0, 1], got '
                      f'{e.min_accuracy}.')
  if not 0.0 <= e.max_accuracy_drop <= 1.0:
    raise ConfigError(f'evaluation.max_accuracy_drop: must be in [0, 1], got '
                      f'{e.max_accuracy_drop}.')
  c = config.compression
  for technique in c.techniques:
    _choice('compression.techniques', technique, COMPRESSION_TECHNIQUES)
  _choice('compression.on_no_pass', c.on_no_pass, ('uncompressed', 'none'))
  if not 0.0 <= c.max_accuracy_drop <= 1.0:
    raise ConfigError(f'compression.max_accuracy_drop: must be in [0, 1], got '
                      f'{c.max_accuracy_drop}.')
  if not 0.0 < c.pruning_sparsity < 1.0:
    raise ConfigError(f'compression.pruning_sparsity: must be in (0, 1), got '
                      f'{c.pruning_sparsity}.')
  for key in ('max_size_ratio', 'selective_max_size_ratio', 'max_latency_ms'):
    if getattr(c, key) is not None and not getattr(c, key) > 0:
      raise ConfigError(f'compression.{key}: must be positive or null, got '
                        f'{getattr(c, key)}.')
  for key in ('calibration_examples', 'validation_examples', 'eval_examples',
              'fine_tune_examples',
              'pruning_epochs', 'distillation_epochs', 'max_float_layers'):
    _positive(f'compression.{key}', getattr(c, key))
  _validate_selection(config.selection)
  _choice('beam.runner', config.beam.runner, BEAM_RUNNERS)
  _validate_resources(config.kubeflow.resources)
  _choice('beam.direct_running_mode', config.beam.direct_running_mode,
          DIRECT_RUNNING_MODES)
  _positive('beam.direct_num_workers', config.beam.direct_num_workers,
            allow_zero=True)
  if check_files:
    _check_schema(config)
  return config


def _validate_selection(s: SelectionConfig):
  for i, candidate in enumerate(s.candidates):
    where = f'selection.candidates[{i}]'
    if isinstance(candidate, str) and candidate:
      continue
    if not isinstance(candidate, dict) or not candidate.get('handle'):
      raise ConfigError(f'{where}: expected a handle, or a mapping with a '
                        f'"handle" key, got {candidate!r}.')
    for key in candidate:
      if key not in CANDIDATE_KEYS:
        raise ConfigError(f'{where}: unknown key "{key}"; allowed: '
                          f'{", ".join(CANDIDATE_KEYS)}.')
    size = candidate.get('input_size')
    if size is not None and (not isinstance(size, list) or len(size) != 2 or
                             not all(isinstance(v, int) and v > 0
                                     for v in size)):
      raise ConfigError(f'{where}.input_size: expected [height, width] '
                        f'(positive integers), got {size!r}.')
  _choice('selection.objective', s.objective, SELECTION_OBJECTIVES)
  _positive('selection.train_examples', s.train_examples)
  _positive('selection.validation_examples', s.validation_examples)
  for key in ('max_latency_ms', 'max_size_mb'):
    if getattr(s, key) is not None and not getattr(s, key) > 0:
      raise ConfigError(f'selection.{key}: must be positive or null, got '
                        f'{getattr(s, key)}.')
  _positive('selection.latency_weight', s.latency_weight, allow_zero=True)
  _positive('selection.size_weight', s.size_weight, allow_zero=True)
  if (s.objective == 'budget' and s.max_latency_ms is None
      and s.max_size_mb is None):
    raise ConfigError('selection.objective "budget" needs selection.'
                      'max_latency_ms or selection.max_size_mb.')


_QUANTITY = {'cpu': re.compile(r'^\d+(\.\d+)?m?$'),
             'memory': re.compile(r'^\d+(\.\d+)?(k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$')}


def _validate_resources(resources: dict):
  for component, spec in resources.items():
    where = f'kubeflow.resources.{component}'
    if not isinstance(spec, dict):
      raise ConfigError(f'{where}: expected a mapping of {", ".join(RESOURCE_KEYS)}'
                        f', got {spec!r}.')
    for key, value in spec.items():
      if key not in RESOURCE_KEYS:
        raise ConfigError(f'{where}: unknown key "{key}"; allowed: '
                          f'{", ".join(RESOURCE_KEYS)}.')
      if key in _QUANTITY and not _QUANTITY[key].match(str(value)):
        raise ConfigError(f'{where}.{key}: "{value}" is not a Kubernetes '
                          'quantity (e.g. cpu: "4" or "500m", memory: "16G" '
                          'or "16Gi").')
    count = spec.get('accelerator_count', 0)
    if not isinstance(count, int) or count < 0:
      raise ConfigError(f'{where}.accelerator_count: expected a whole number, '
                        f'got {count!r}.')
    if bool(spec.get('accelerator')) != bool(count):
      raise ConfigError(f'{where}: set accelerator and accelerator_count '
                        'together (e.g. accelerator: nvidia.com/gpu, '
                        'accelerator_count: 1).')


def _check_schema(config: Config):
  """The schema file must exist and name the config's image and label features."""
  path = config.schema_path
  if '://' in path:
    return
  if not os.path.isfile(path):
    raise ConfigError(f'data.schema: no schema file at {path}. Point data.schema '
                      'at a schema.pbtxt, or leave it unset for the curated one.')
  # Imported here: the config loads without TensorFlow.
  from google.protobuf import text_format
  from tensorflow_metadata.proto.v0 import schema_pb2
  try:
    schema = text_format.Parse(Path(path).read_text(), schema_pb2.Schema())
  except text_format.ParseError as err:
    raise ConfigError(f'data.schema: {path} is not a valid schema.pbtxt: {err}')
  names = {f.name for f in schema.feature}
  input_key = 'image_feature' if config.modality == 'image' else 'text_feature'
  for key in (input_key, 'label_feature'):
    name = getattr(config.data, key)
    if name not in names:
      raise ConfigError(
          f'data.{key}: feature "{name}" is not in the schema {path} (it has '
          f'{", ".join(sorted(names))}). Rename the feature in data.{key}, or '
          'point data.schema at a schema that matches your data.')


def load_config(path: Optional[str] = None, overrides: Optional[dict] = None
                ) -> Config:
  """Loads and validates a YAML config; `path=None` gives the default demo."""
  path = path or str(REPO_ROOT / 'pipeline' / 'configs' / 'fashion_mnist.yaml')
  try:
    text = Path(path).read_text()
  except OSError as err:
    raise ConfigError(f'cannot read the config file {path}: {err.strerror}.')
  try:
    raw = yaml.safe_load(text) or {}
  except yaml.YAMLError as err:
    raise ConfigError(f'{path} is not valid YAML: {err}')
  for dotted, value in (overrides or {}).items():
    node = raw
    *parents, leaf = dotted.split('.')
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  config = _build(Config, raw, '')
  config.source_path = str(Path(path).resolve())
  return validate(config)


def config_from_dict(raw: dict, source_path: Optional[str] = None) -> Config:
  """Builds a Config from `Config.to_dict()` (types checked; not validated:
  see `from_handoff` for what a step receives)."""
  config = _build(Config, raw, '')
  config.source_path = source_path
  return config


def _plain(value):
  return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# ---------------------------------------------------------------------------
# The hand-off: how a step of the DAG receives the config.
#
# Each step is handed the sections it reads, and only those, as one plain
# mapping under its parameters (TFX's custom_config for the Transform and
# the Trainer, the `config` execution parameter of hubpipe's components),
# so that its cache key changes with those sections alone (a new compression
# policy does not retrain) and ML Metadata and the KFP UI show what it ran
# with. `from_handoff` parses and validates it the same way in every step;
# a section the step was not handed cannot be read by mistake (it raises).

EMBEDDING_CACHE_PREFIX = 'embedding_cache'

STEP_SECTIONS = {
    'Transform': ('name', 'modality', 'data', 'module', 'selection'),
    'Trainer': ('name', 'modality', 'data', 'module', 'model', 'training'),
    'ModuleSelector': ('name', 'modality', 'data', 'module', 'model',
                       'training', 'selection'),
    'Compressor': ('name', 'modality', 'data', 'training', 'compression'),
}


def _transform_reads_candidates(config: Config) -> bool:
  """The image Transform sizes images for the selection candidates when
  module.input_size does not fix the size (modeling/modules.transform_size)."""
  return (config.modality == 'image' and not config.module.input_size
          and bool(config.selection.candidates))


def step_sections(config: Config, step: str) -> tuple:
  """The sections `step` reads; the text Transform reads no module facts,
  and the Transform reads selection only to size images for its candidates."""
  sections = STEP_SECTIONS[step]
  if step == 'Transform' and config.modality == 'text':
    sections = tuple(k for k in sections if k != 'module')
  if step == 'Transform' and not _transform_reads_candidates(config):
    sections = tuple(k for k in sections if k != 'selection')
  return sections


def handoff(config: Config, step: str, **extra) -> dict:
  """What `step` is handed: {'config': its sections, **extra} (extra: e.g.
  the step's code digest). The image Transform reads one module fact, the
  size to write images at, so it is handed module.input_size, or (unset)
  the module.handle it inspects for it, and then selection.candidates when
  there are any: nothing else of those sections."""
  sections = config.to_dict()
  out = {k: sections[k] for k in step_sections(config, step)}
  if step != 'Trainer' and 'training' in out:
    # Only the Trainer caches embeddings: changing the cache's settings
    # must not rerun the other steps that read training (their defaults
    # stand in).
    out['training'] = {k: v for k, v in out['training'].items()
                       if not k.startswith(EMBEDDING_CACHE_PREFIX)}
  if step == 'Transform' and 'module' in out:
    module = out['module']
    out['module'] = ({'input_size': module['input_size']}
                     if module['input_size'] else {'handle': module['handle']})
  if step == 'Transform' and 'selection' in out:
    # What sizes the images: each candidate's handle and input_size, not
    # its preprocessor, so that editing one does not transform the data
    # again.
    out['selection'] = {'candidates': [
        {'handle': c, 'input_size': None} if isinstance(c, str) else
        {'handle': c['handle'], 'input_size': c.get('input_size')}
        for c in out['selection']['candidates']]}
  return {'config': out, **extra}


class _NotHandedOver:
  """A section a step was not handed: reading it is a bug in the step (or
  STEP_SECTIONS lacks it), and says so."""

  def __init__(self, step: str, section: str):
    self._step, self._section = step, section

  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    raise ConfigError(
        f'the {self._step} step read config section "{self._section}" '
        f'({self._section}.{name}), which it is not handed: add it to '
        f'STEP_SECTIONS["{self._step}"] in pipeline/config.py.')


def from_handoff(params, step: str) -> Config:
  """The config `step` was handed (`handoff`'s mapping, or its JSON),
  parsed and validated as `load_config` does (file checks aside: the
  step's machine may not see the files of the one that launched the run)."""
  if isinstance(params, str):
    params = json.loads(params)
  if not isinstance((params or {}).get('config'), dict):
    raise ConfigError(
        f'the {step} step was handed no config (its parameters hold '
        f'{sorted(params or {})}): the pipeline was compiled by another '
        'hubpipe version than the one running it. Compile it again.')
  raw = dict(params['config'])
  allowed = set(STEP_SECTIONS[step])
  extra = sorted(set(raw) - allowed)
  if extra:
    raise ConfigError(f'the {step} step was handed config sections it does '
                      f'not read: {", ".join(extra)}.')
  required = [k for k in STEP_SECTIONS[step] if not (
      step == 'Transform' and k == 'module' and raw.get('modality') == 'text')
      and not (step == 'Transform' and k == 'selection')]
  missing = [k for k in required if k not in raw]
  if missing:
    raise ConfigError(
        f'the {step} step was handed no config section(s) '
        f'{", ".join(missing)}: the pipeline was compiled by another hubpipe '
        'version than the one running it. Compile it again.')
  config = validate(_build(Config, raw, ''), check_files=False)
  for field in dataclasses.fields(Config):
    if field.name != 'source_path' and field.name not in raw:
      object.__setattr__(config, field.name, _NotHandedOver(step, field.name))
  return config
