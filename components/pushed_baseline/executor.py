"""LatestPushedModel's executor: copy a pushed model into a Model artifact.

The Pusher writes each blessed model to <serving_dir>/<version>/ (numbered
folders, as TF Serving reads them). The version to hand on comes as the
`pushed_version` parameter (the DataSnapshot's choice). It is copied into the
output Model artifact's serving folder, where the Evaluator (and the
Trainer's warm start) read a Model. Nothing pushed yet: with a `model`
input, that model stands in (hubpipe's Evaluator then leaves it out, and
only the absolute floor gates); without one, the output holds no model and
the warm start says so. The record file (RECORD_FILE) says which.
"""

import json

import tensorflow as tf
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils
from tfx.utils import path_utils


RECORD_FILE = 'baseline.json'


class BaselineMissingError(RuntimeError):
  """The pushed version the snapshot named is gone."""


class Executor(base_executor.BaseExecutor):
  """Copies the pushed version (or the stand-in) to the output Model."""

  def Do(self, input_dict, output_dict, exec_properties):
    out = artifact_utils.get_single_instance(output_dict['baseline_model'])
    target = path_utils.serving_model_path(out.uri)
    pushed = exec_properties.get('pushed_version') or ''
    if pushed:
      if not tf.io.gfile.exists(f'{pushed.rstrip("/")}/saved_model.pb'):
        raise BaselineMissingError(
            f'the baseline push {pushed} holds no saved_model.pb (deleted or '
            'moved since it was recorded?). Restore it, or delete the '
            'DataSnapshot state under the pipeline root so the next run '
            'takes the newest push.')
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
    # Always a file in the output: on object storage an empty folder does not
    # exist, and the orchestrator's cache would take the output for lost.
    tf.io.gfile.makedirs(out.uri)
    with tf.io.gfile.GFile(f'{out.uri.rstrip("/")}/{RECORD_FILE}', 'w') as f:
      json.dump({'baseline_source': kind, 'baseline_path': source or ''}, f)
