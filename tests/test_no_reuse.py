"""The no-reuse candidate: a model trained from scratch, measured beside the
modules, and trained by the Trainer when the objective picks it."""

import numpy as np
import pytest
import tensorflow as tf

from hubpipe.components.modeling import export
from hubpipe.components.modeling import no_reuse
from hubpipe.components.module_selector import executor as selector
from hubpipe.pipeline import local_runner
from hubpipe.pipeline import summary as summary_lib
from hubpipe.pipeline.config import REPO_ROOT, load_config


def test_the_image_model_is_a_small_cnn():
  model = no_reuse.build('image', [40, 40, 3], 7)
  assert model(np.zeros([2, 40, 40, 3], np.float32)).shape == (2, 7)
  assert 250_000 < model.count_params() < 350_000


def test_the_text_model_is_tf_idf_logistic_regression():
  texts = ['a good film', 'a bad film', 'good acting', 'bad plot'] * 3
  model = no_reuse.build('text', None, 2, train_texts=texts)
  assert model(tf.constant(['good', 'an unseen word'])).shape == (2, 2)
  dense = [l for l in model.layers if isinstance(l, tf.keras.layers.Layer)
           and l.name == 'logits']
  assert dense  # one dense layer on the TF-IDF vector
  with pytest.raises(ValueError, match='training texts'):
    no_reuse.build('text', None, 2)


def test_the_selector_measures_it_beside_the_modules():
  """Same samples, same epochs and seed; a row like a module's."""
  config = load_config(None, {
      'training.epochs': 3, 'training.batch_size': 16,
      'selection.candidates': ['mobilenet_v1_100_224_random', 'no_such_module']})
  specs = selector.candidate_specs(config)
  assert [s['name'] for s in specs] == [
      'mobilenet_v1_100_224_random', 'no_such_module', no_reuse.HANDLE]
  rng = np.random.default_rng(0)
  # Two classes a CNN learns at once: dark and bright images.
  labels = np.arange(80) % 2
  images = (rng.uniform(0, 0.4, [80, 32, 32, 3]) + 0.5 * labels[:, None, None, None]
            ).astype(np.float32)
  data = (images[:60], labels[:60], images[60:], labels[60:], config, 2, [32, 32])
  module, missing, scratch = selector.probe_candidates(specs, *data,
                                                       log=lambda _: None)
  assert 'skipped' not in module and 'skipped' in missing
  assert scratch['handle'] == no_reuse.HANDLE and 'skipped' not in scratch
  assert scratch['accuracy'] >= 0.9
  assert scratch['output_kind'].startswith('from scratch')
  assert scratch['latency_ms_b1'] > 0 and scratch['input_size'] == [32, 32]
  assert scratch['size_bytes'] == 4 * scratch['parameters']
  assert scratch['parameters'] < module['parameters'] / 10
  # It does not mask a list of modules that all fail.
  with pytest.raises(selector.ModuleSelectionError, match='none of the 1 '):
    selector.probe_candidates(specs[1:], *data, log=lambda _: None)
  config.selection.no_reuse = False
  assert no_reuse.HANDLE not in [s['name'] for s in selector.candidate_specs(config)]


@pytest.fixture(scope='module')
def text_run(tmp_path_factory):
  """Rotten Tomatoes with GloVe as the only module, and a size budget only
  the bag of words meets: the objective picks the model without reuse."""
  config = load_config(
      str(REPO_ROOT / 'pipeline/configs/rotten_tomatoes_select.yaml'),
      {'beam.direct_running_mode': 'in_memory', 'data.train_examples': 200,
       'data.eval_examples': 80, 'training.epochs': 5,
       'training.bag_of_words_baseline': False,
       'evaluation.min_accuracy': 0.3,
       'selection.candidates': ['glove_6b_50d'],
       'selection.train_examples': 150, 'selection.validation_examples': 50,
       'selection.objective': 'budget', 'selection.max_size_mb': 10})
  workdir = tmp_path_factory.mktemp('no-reuse') / 'work'
  return local_runner.run(config, str(workdir), echo=lambda _: None)


def test_when_it_wins_the_trainer_trains_it_and_the_run_says_so(text_run):
  assert text_run['status'] == 'succeeded', text_run.get('error')
  decision = text_run['module_selection']['decision']
  assert decision['chosen'] == no_reuse.HANDLE
  assert decision['reuse_pays'] is False
  assert decision['reason'].startswith('reuse does not pay on this data')
  training = text_run['training']
  assert training['module'] == no_reuse.HANDLE
  assert training['integration'] == 'from_scratch'
  assert training['resolved_module'] is None
  assert 'reuse does not pay' in summary_lib.render(text_run)
  # The Compressor loads it back (a string-typed TextVectorization) and
  # pushes it uncompressed: hubpipe converts BERT-style text models only.
  assert 'BERT-style' in text_run['compression']['skipped']
  assert text_run['compression']['decision']['chosen'] == 'uncompressed'
  # The served model is the bag of words: raw text in, no module inside.
  served = tf.saved_model.load(text_run['pushed_model'])
  example = tf.train.Example(features=tf.train.Features(feature={
      'text': tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[b'a tedious, joyless film']))})).SerializeToString()
  out = served.signatures['serving_default'](examples=tf.constant([example]))
  assert out['probabilities'].shape == (1, 2)
  record = export.read_record(text_run['pushed_model'])
  assert record['module_handle'] == no_reuse.HANDLE
  assert record['integration'] == 'from_scratch'
