"""DataSnapshot's executor: take the snapshot, write the two String outputs."""

from absl import logging
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from hubpipe.components.data_snapshot import snapshot


class Executor(base_executor.BaseExecutor):

  def Do(self, input_dict, output_dict, exec_properties):
    taken = snapshot.take(
        exec_properties['input_base'], exec_properties['source'],
        exec_properties.get('span_pattern') or None,
        int(exec_properties['latest_spans']), exec_properties['serving_dir'],
        exec_properties['state_dir'], exec_properties['identity'],
        exec_properties.get('ready_marker') or None)
    logging.info('DataSnapshot: examples %s; baseline %s',
                 taken['examples'], taken['baseline'] or 'none')
    waiting = taken.pop('waiting')
    if waiting:
      logging.warning('DataSnapshot: spans %s have no %s file yet; left for a '
                      'later run', waiting, exec_properties['ready_marker'])
    for key, value in taken.items():
      artifact_utils.get_single_instance(output_dict[key]).write(value)
