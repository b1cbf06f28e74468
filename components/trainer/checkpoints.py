"""Training that survives being killed: a checkpoint folder stable across retries.

TFX gives every Trainer execution a fresh output folder, so a Trainer that was
killed and is run again (same inputs, same config) would start from scratch.
hubpipe keys a checkpoint folder on what the training depends on (the example
files, the Transform output, the Trainer's config) under the pipeline root;
a retry finds it and carries on:
  - Keras `BackupAndRestore` resumes `fit` at the last finished epoch;
  - the frozen module's embeddings (feature extraction) are kept as sharded
    TFRecords (embeddings.py), so a retry does not recompute them.
The folder is removed once the model is exported.
"""

import hashlib
import json
import os

import tensorflow as tf
import tf_keras


def checkpoint_dir(fn_args) -> str:
  """<pipeline root>/Trainer/checkpoints/<fingerprint of the Trainer's inputs>."""
  fingerprint = hashlib.sha256(json.dumps({
      'train': sorted(fn_args.train_files),
      'eval': sorted(fn_args.eval_files),
      'transform': fn_args.transform_output,
      'base_model': getattr(fn_args, 'base_model', None),
      'config': fn_args.custom_config,
      # The ModuleSelector's choice: another module must not reuse features.
      'hyperparameters': getattr(fn_args, 'hyperparameters', None),
  }, sort_keys=True, default=str).encode()).hexdigest()[:16]
  return os.path.join(trainer_root(fn_args), 'checkpoints', fingerprint)


def trainer_root(fn_args) -> str:
  """<pipeline root>/<Trainer id>: what outlives one Trainer execution
  (checkpoints, the embedding cache) goes under it."""
  # model_run_dir is <pipeline root>/<Trainer id>/model_run/<execution id>.
  return os.path.dirname(os.path.dirname(fn_args.model_run_dir.rstrip('/')))


def backup_callback(directory: str, name: str) -> tf_keras.callbacks.Callback:
  """Saves after every epoch; a new `fit` with the same folder resumes."""
  return tf_keras.callbacks.BackupAndRestore(os.path.join(directory, name))


def clear(directory: str) -> None:
  if tf.io.gfile.exists(directory):
    tf.io.gfile.rmtree(directory)
