"""The run summary's wording where TFMA leaves it blank: why a model was not
blessed, as the value and the bound it missed."""

from google.protobuf import text_format
from tensorflow_model_analysis.proto import validation_result_pb2

from hubpipe.pipeline import summary


def _failure(text):
  return text_format.Parse(text, validation_result_pb2.ValidationFailure())


def test_a_missed_floor_says_value_and_floor():
  failure = _failure('''
      metric_key { name: "sparse_categorical_accuracy" }
      metric_value { double_value { value: 0.3833 } }
      metric_threshold { value_threshold { lower_bound { value: 0.5 } } }''')
  assert summary._failed_threshold(failure) == '0.3833, below the floor 0.5000'


def test_a_missed_change_says_change_and_allowed_drop():
  failure = _failure('''
      metric_key { name: "sparse_categorical_accuracy" is_diff: true }
      metric_value { double_value { value: -0.0421 } }
      metric_threshold { change_threshold { absolute { value: -0.01 } } }''')
  assert summary._failed_threshold(failure) == (
      'change -0.0421 against the baseline, allowed -0.0100')
