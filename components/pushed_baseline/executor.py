"""LatestPushedModel's executor: copy the newest pushed model into a Model.

The Pusher writes each blessed model to <serving_dir>/<version>/ (numbered
folders, as TF Serving reads them). The newest one is the model in service,
the one a new candidate must not fall behind. It is copied into the output
Model artifact's serving folder, where the Evaluator (and the Trainer's warm
start) read a Model. Nothing pushed yet: with a `model` input, that model
stands in (the Evaluator's change threshold then compares it with itself and
only the absolute floor gates); without one, the output holds no model and
the warm start says so.
"""

import os
from typing import Optional

import tensorflow as tf
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils
from tfx.utils import path_utils


def latest_version(serving_dir: str) -> Optional[str]:
  """The newest numbered version folder holding a SavedModel, or None."""
  if not tf.io.gfile.isdir(serving_dir):
    return None
  versions = sorted(
      (int(name.rstrip('/')) for name in tf.io.gfile.listdir(serving_dir)
       if name.rstrip('/').isdigit() and tf.io.gfile.exists(
           os.path.join(serving_dir, name.rstrip('/'), 'saved_model.pb'))),
      reverse=True)
  return os.path.join(serving_dir, str(versions[0])) if versions else None


class Executor(base_executor.BaseExecutor):
  """Copies the newest pushed model (or the stand-in) to the output Model."""

  def Do(self, input_dict, output_dict, exec_properties):
    out = artifact_utils.get_single_instance(output_dict['baseline_model'])
    target = path_utils.serving_model_path(out.uri)
    pushed = latest_version(exec_properties['serving_dir'])
    if pushed:
      source, kind = pushed, 'pushed'
    elif input_dict.get('model'):
      model = artifact_utils.get_single_instance(input_dict['model'])
      source, kind = path_utils.serving_model_path(model.uri), 'candidate'
    else:
      source, kind = None, 'none'
    if source:
      io_utils.copy_dir(source, target)
    out.set_string_custom_property('baseline_source', kind)
    out.set_string_custom_property('baseline_path', source or '')
