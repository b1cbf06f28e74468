"""Chooses and builds the tf.distribute strategy named in the config.

`auto` picks TPUStrategy when a TPU is configured, MultiWorkerMirroredStrategy
when TF_CONFIG names several workers, MirroredStrategy with more than one GPU,
and the default strategy otherwise. The choice is a pure function so that it
can be tested without the hardware.
"""

import json
import logging
import os
from typing import Optional

import tensorflow as tf


TF_CONFIG_SHAPE = ('{"cluster": {"worker": ["host:port", ...]}, '
                   '"task": {"type": "worker", "index": i}}')


def _workers_in(tf_config: Optional[str]) -> int:
  """How many workers (and chief) TF_CONFIG's cluster names (0: unset)."""
  if not tf_config:
    return 0
  try:
    spec = json.loads(tf_config)
  except ValueError as err:
    raise ValueError(f'TF_CONFIG is not valid JSON ({err}); multi-worker '
                     f'training needs {TF_CONFIG_SHAPE}.') from None
  cluster = spec.get('cluster', {}) if isinstance(spec, dict) else None
  if not isinstance(cluster, dict):
    raise ValueError(f'TF_CONFIG must be a JSON object like {TF_CONFIG_SHAPE}; '
                     f'it is {tf_config[:200]}')
  return len(cluster.get('worker', [])) + len(cluster.get('chief', []))


def choose(requested: str, num_gpus: int, tf_config: Optional[str] = None,
           tpu_address: Optional[str] = None) -> str:
  """The strategy name to use for `requested` on the given hardware."""
  if requested != 'auto':
    return requested
  if tpu_address:
    return 'tpu'
  if _workers_in(tf_config) > 1:
    return 'multi_worker_mirrored'
  if num_gpus > 1:
    return 'mirrored'
  if num_gpus == 1:
    return 'one_device'
  return 'default'


def make(requested: str, mixed_precision=False) -> tf.distribute.Strategy:
  """Builds the strategy; create every variable inside its scope().

  Call it before anything else touches TensorFlow's runtime:
  MultiWorkerMirroredStrategy configures the collective ops, which only
  works before the runtime starts (so the GPUs are counted with
  list_physical_devices, which does not start it).
  """
  gpus = tf.config.list_physical_devices('GPU')
  tpu_address = os.environ.get('TPU_NAME') or os.environ.get('TPU_ADDRESS')
  workers = _workers_in(os.environ.get('TF_CONFIG'))  # checks it, any strategy
  name = choose(requested, len(gpus), os.environ.get('TF_CONFIG'), tpu_address)
  if name == 'multi_worker_mirrored' and workers < 2:
    logging.warning(
        'training.strategy multi_worker_mirrored: TF_CONFIG names %d '
        'worker(s), so this process trains alone. Each replica needs '
        'TF_CONFIG naming all of them: %s', workers, TF_CONFIG_SHAPE)
  import tf_keras  # pylint: disable=g-import-not-at-top
  policy = precision_policy(name, len(gpus), mixed_precision)
  if mixed_precision and not policy:
    logging.warning('training.mixed_precision: true has no effect on CPU '
                    '(name a policy to force one); training in float32.')
  # Set it either way: a policy left by an earlier run in this process must
  # not carry over.
  tf_keras.mixed_precision.set_global_policy(policy or 'float32')
  if name == 'tpu':
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu_address or '')
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  if name == 'multi_worker_mirrored':
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == 'mirrored':
    return tf.distribute.MirroredStrategy()
  if name == 'one_device':
    return tf.distribute.OneDeviceStrategy('/gpu:0' if gpus else '/cpu:0')
  return tf.distribute.get_strategy()


def describe(strategy: tf.distribute.Strategy) -> str:
  """A readable name: MirroredStrategy, DefaultStrategy, ..."""
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 'MultiWorkerMirroredStrategy'  # its class is CollectiveAllReduce...
  return type(strategy).__name__.strip('_').replace(
      'DistributionStrategy', 'Strategy')


def precision_policy(strategy_name: str, num_gpus: int,
                     mixed_precision=True) -> 'str | None':
  """The Keras mixed-precision policy, or None (float32).

  mixed_precision: False (none), a policy name (used as given), or True: by
  hardware, bfloat16 on TPU, float16 on GPU (Keras then scales the loss),
  nothing on CPU, where it would only slow training down. A Hub SavedModel
  computes in the dtype it was exported with, so only the layers around it
  (the head) change precision.
  """
  if not mixed_precision:
    return None
  if isinstance(mixed_precision, str):
    return mixed_precision
  if strategy_name == 'tpu':
    return 'mixed_bfloat16'
  if num_gpus:
    return 'mixed_float16'
  return None


def worker_role(strategy: tf.distribute.Strategy):
  """(task_type, task_id, has_chief) of this process in a multi-worker
  cluster, from the strategy's cluster resolver (TF_CONFIG); (None, None,
  False) otherwise."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not isinstance(
      strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return None, None, False
  return (resolver.task_type, resolver.task_id,
          'chief' in resolver.cluster_spec().as_dict())


def num_workers(strategy: tf.distribute.Strategy) -> int:
  """How many processes train together (1 unless multi-worker)."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 1
  return max(1, _workers_in(json.dumps(
      {'cluster': strategy.cluster_resolver.cluster_spec().as_dict()})))


def is_chief(task_type, task_id, has_chief: bool = False) -> bool:
  """The chief writes the model: the 'chief' task, or worker 0 when the
  cluster has no chief task, or the only process."""
  if task_type is None or task_type == 'chief':
    return True
  return task_type == 'worker' and task_id == 0 and not has_chief


def output_dir(path: str, task_type, task_id, has_chief: bool = False) -> str:
  """Where this process saves `path`. Under MultiWorkerMirroredStrategy every
  worker must save (saving runs collective ops), but only the chief's copy is
  kept: the others write beside it in a temporary folder and delete it."""
  if is_chief(task_type, task_id, has_chief):
    return path
  return os.path.join(os.path.dirname(path.rstrip('/')),
                      f'.workertemp_{task_type}_{task_id}',
                      os.path.basename(path.rstrip('/')))
