"""AnomalyGate turns ExampleValidator's findings into a readable stop."""

from tensorflow_metadata.proto.v0 import anomalies_pb2

from hubpipe.components.anomaly_gate.component import describe


def _anomalies(feature=None, description=''):
  anomalies = anomalies_pb2.Anomalies()
  if feature:
    info = anomalies.anomaly_info[feature]
    reason = info.reason.add()
    reason.description = description
  return anomalies


def test_no_anomalies_no_message():
  assert describe({'train': _anomalies(), 'eval': _anomalies()}) == ''


def test_anomalies_are_listed_per_split_with_the_fix():
  message = describe({
      'train': _anomalies('label', 'Expected data of type: INT but got BYTES'),
      'eval': _anomalies(),
  }, '(schemas/x.pbtxt)')
  assert '[train] feature "label": Expected data of type: INT but got BYTES' in message
  assert 'schemas/x.pbtxt' in message
  assert 'update the schema' in message


def test_class_names_in_an_integer_label_point_at_label_type():
  found = {'train': _anomalies('category',
                               'Expected data of type: INT but got STRING')}
  message = describe(found, '', label_feature='category')
  assert 'set data.label_type: string' in message
  # Another feature's type, or no label feature named: no such hint.
  assert 'label_type' not in describe(found, '', label_feature='label')
  assert 'label_type' not in describe(found, '')
