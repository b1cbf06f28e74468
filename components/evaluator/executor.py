"""The Evaluator's executor: TFX's, without the stand-in baseline (component.py)."""

import json
import logging

import tensorflow as tf
from tfx.components.evaluator import executor as tfx_evaluator
from tfx.types import artifact_utils
from tfx.types import standard_component_specs

from hubpipe.components.pushed_baseline import executor as pushed_baseline

BASELINE_KEY = standard_component_specs.BASELINE_MODEL_KEY


def baseline_source(artifact) -> str:
  """What LatestPushedModel put in the baseline artifact: 'pushed',
  'candidate' or 'none'. Read from its record file, which is there on every
  orchestrator, else from the artifact's custom property; 'unknown' when
  neither says (the baseline is then evaluated as it is)."""
  path = f'{artifact.uri.rstrip("/")}/{pushed_baseline.RECORD_FILE}'
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      return json.load(f).get('baseline_source') or 'unknown'
  if artifact.has_custom_property('baseline_source'):
    return artifact.get_string_custom_property('baseline_source') or 'unknown'
  return 'unknown'


class Executor(tfx_evaluator.Executor):
  """TFX's Evaluator executor; a stand-in baseline is not evaluated."""

  def Do(self, input_dict, output_dict, exec_properties):
    baselines = input_dict.get(BASELINE_KEY) or []
    if len(baselines) == 1:
      source = baseline_source(artifact_utils.get_single_instance(baselines))
      if source == 'unknown':
        logging.warning('Evaluator: the baseline artifact does not say where '
                        'it came from (no %s): it is evaluated as the '
                        'baseline.', pushed_baseline.RECORD_FILE)
      if source in ('candidate', 'none'):
        logging.info('Evaluator: no model pushed yet (baseline %s): the '
                     'candidate is evaluated once, against the absolute '
                     'thresholds only.', source)
        input_dict = {k: v for k, v in input_dict.items() if k != BASELINE_KEY}
    return super().Do(input_dict, output_dict, exec_properties)
