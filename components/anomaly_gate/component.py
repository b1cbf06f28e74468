"""AnomalyGate: a small component that turns ExampleValidator's findings into a stop.

TFX's ExampleValidator records anomalies but lets the pipeline go on. hubpipe
must not train on data that breaks the schema, so this component reads the
ExampleAnomalies artifact and fails with a readable list of what is wrong and
how to fix it; Transform runs only after it passed.
"""

import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.dsl.io import fileio
from tfx.types import artifact_utils

ANOMALIES_FILE = 'SchemaDiff.pb'


class DataAnomaliesError(RuntimeError):
  """The data does not match the schema."""


def read_anomalies(artifact) -> dict:
  """{split: Anomalies} from an ExampleAnomalies artifact."""
  out = {}
  for split in artifact_utils.decode_split_names(artifact.split_names):
    path = os.path.join(artifact.uri, f'Split-{split}', ANOMALIES_FILE)
    anomalies = anomalies_pb2.Anomalies()
    # Through TFX's filesystem layer: the pipeline root may be gs:// or s3://.
    with fileio.open(path, 'rb') as f:
      anomalies.ParseFromString(f.read())
    out[split] = anomalies
  return out


def _labels_are_names(anomalies_by_split: dict, label_feature: str) -> bool:
  """Whether the label feature holds text where the schema wants integers:
  class names, with data.label_type left at int."""
  for anomalies in anomalies_by_split.values():
    info = anomalies.anomaly_info.get(label_feature)
    if info and any('INT' in (r.description or '') and
                    ('STRING' in (r.description or '') or
                     'BYTES' in (r.description or ''))
                    for r in info.reason):
      return True
  return False


# Anomalies that mean some examples lack a value of the feature.
_MISSING_VALUES = frozenset((
    'FEATURE_TYPE_LOW_FRACTION_PRESENT', 'FEATURE_TYPE_LOW_NUMBER_PRESENT',
    'FEATURE_TYPE_NOT_PRESENT', 'FEATURE_TYPE_NO_VALUES',
    'FEATURE_TYPE_LOW_NUMBER_VALUES', 'SCHEMA_MISSING_COLUMN',
    'INVALID_FEATURE_SHAPE'))


def _without_values(anomalies_by_split: dict) -> list:
  """The features some examples hold no value of (an empty CSV cell, a
  tf.Example without the feature), sorted."""
  names = set()
  for anomalies in anomalies_by_split.values():
    for feature, info in anomalies.anomaly_info.items():
      if any(anomalies_pb2.AnomalyInfo.Type.Name(r.type) in _MISSING_VALUES
             for r in info.reason):
        names.add(feature)
  return sorted(names)


def describe(anomalies_by_split: dict, schema_hint: str = '',
             label_feature: str = '') -> str:
  """A readable report of the anomalies, or '' when there are none."""
  lines = []
  for split, anomalies in sorted(anomalies_by_split.items()):
    if anomalies.HasField('dataset_anomaly_info'):
      info = anomalies.dataset_anomaly_info
      lines.append(f'  [{split}] (data set): {info.description or info.short_description}')
    for feature, info in sorted(anomalies.anomaly_info.items()):
      reasons = '; '.join(r.description or r.short_description
                          for r in info.reason) or info.description
      lines.append(f'  [{split}] feature "{feature}": {reasons}')
  if not lines:
    return ''
  hint = ''
  if label_feature and _labels_are_names(anomalies_by_split, label_feature):
    hint = (f'\nThe labels ("{label_feature}") are text: if they are class '
            'names, set data.label_type: string in the config (its curated '
            'schema takes them as text; a schema of your own must declare '
            'the label as BYTES).')
  missing = _without_values(anomalies_by_split)
  if missing:
    hint += (f'\nSome examples hold no value of {", ".join(missing)} (an empty '
             'CSV cell gives none, as does a tf.Example without the feature): '
             'fill them in, or leave those examples out.')
  return ('the examples do not match the schema ' + schema_hint + ':\n' +
          '\n'.join(lines) + hint +
          '\nFix the data, or if the data is right and the schema is out of '
          'date, update the schema (data.schema in the config).')


@tfx.dsl.components.component
def AnomalyGate(
    anomalies: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleAnomalies],
    schema_path: tfx.dsl.components.Parameter[str] = '',
    label_feature: tfx.dsl.components.Parameter[str] = ''):
  """Fails when ExampleValidator reported any anomaly."""
  message = describe(read_anomalies(anomalies),
                     f'({schema_path})' if schema_path else '', label_feature)
  if message:
    raise DataAnomaliesError(message)
