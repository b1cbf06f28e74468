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


def test_the_printed_summary_says_what_the_embedding_cache_held():
  training = {'num_classes': 3, 'epochs': 2, 'integration': 'feature_extraction',
              'strategy': 'DefaultStrategy', 'replicas': 1,
              'validation_accuracy': 0.5,
              'embedding_cache': {
                  'module': {'examples': 180, 'embedded_now': 90,
                             'from_cache': 90},
                  'control': {'examples': 180, 'embedded_now': 180,
                              'from_cache': 0}}}
  run = {'status': 'succeeded', 'training': training,
         'components': [{'name': 'Trainer', 'state': 'complete',
                         'seconds': 1.0}]}
  assert ('  embedding cache: module 90 embedded now, 90 from the cache; '
          'control 180 embedded now, 0 from the cache') in (
              summary.render(run).splitlines())
  # A rerun that reused the Trainer shows the figures of the run that made it.
  run['components'][0]['state'] = 'cached'
  assert any(line.startswith("  embedding cache (the cached Trainer's run): ")
             for line in summary.render(run).splitlines())


def test_images_left_out_as_corrupt_are_counted_and_printed(tmp_path):
  """data.on_corrupt: skip: the image folder ExampleGen lists what it left
  out in the Examples folder; the summary counts them and says where."""
  assert summary.skipped_images(str(tmp_path)) is None
  listed = tmp_path / 'corrupt_images.txt'
  listed.write_text('')  # written on every run, empty when none
  assert summary.skipped_images(str(tmp_path)) is None
  listed.write_text('/d/a/x.png\tnot a PNG or JPEG image\n'
                    '/d/b/y.jpg\tcannot be decoded as JPEG\n')
  skipped = summary.skipped_images(str(tmp_path))
  assert skipped == {'count': 2, 'list': str(listed)}
  printed = summary.render({'status': 'succeeded', 'examples': {'train': 5},
                            'skipped_images': skipped})
  assert (f'skipped: 2 corrupt images (data.on_corrupt: skip), listed in '
          f'{listed}') in printed
