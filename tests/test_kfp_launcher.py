"""The KFP v2 backend test bed itself (tests/kfp_launcher.Backend), on a tiny
compiled TFX pipeline: an importer node feeding StatisticsGen. It runs the
tasks in DAG order, reuses what KFP's cache rule reuses, runs again what it
does not, and refuses resolver nodes as the open-source backend does."""

import os

import pytest
import tensorflow as tf
import yaml
from tfx import v1 as tfx

from hubpipe.components import assets
from hubpipe.pipeline.pipeline import NO_STAGING_ARG

from kfp_launcher import Backend, LauncherError, dag_order


def _examples(folder):
  for split in ('train', 'eval'):
    os.makedirs(folder / f'Split-{split}')
    options = tf.io.TFRecordOptions(compression_type='GZIP')
    with tf.io.TFRecordWriter(str(folder / f'Split-{split}' / 'data.gz'),
                              options) as writer:
      for value in range(5):
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            'x': tf.train.Feature(int64_list=tf.train.Int64List(
                value=[value]))})).SerializeToString())


def _compile(tmp_path, name, with_resolver=False):
  data = tmp_path / 'imported'
  if not data.exists():
    _examples(data)
  importer = tfx.dsl.Importer(
      source_uri=str(data), artifact_type=tfx.types.standard_artifacts.Examples,
      properties={'split_names': '["train", "eval"]'}).with_id('import_examples')
  statistics = tfx.components.StatisticsGen(
      examples=importer.outputs['result'])
  components = [importer, statistics]
  if with_resolver:
    components.append(tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
        examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples)
    ).with_id('latest_examples'))
  pipeline = tfx.dsl.Pipeline(
      pipeline_name=name, pipeline_root=str(tmp_path / 'root'),
      components=components,
      enable_cache=True,
      beam_pipeline_args=['--direct_running_mode=in_memory', NO_STAGING_ARG])
  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
          default_image='hubpipe:test', use_pipeline_spec_2_1=True),
      output_dir=str(tmp_path), output_filename=f'{name}.yaml')
  runner.run(pipeline)
  with open(tmp_path / f'{name}.yaml') as f:
    return yaml.safe_load(f)


def _backend(tmp_path, spec, parallelism=1):
  env = dict(os.environ, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2',
             HUBPIPE_DATA_DIR=str(assets.data_dir()))
  return Backend(spec, str(tmp_path / 'kfp-state'), env, str(tmp_path),
                 pipeline_root=str(tmp_path / 'root'), parallelism=parallelism)


def test_importer_cache_hits_and_cache_off(tmp_path):
  spec = _compile(tmp_path, 'tiny-importer')
  assert dag_order(spec) == ['import_examples', 'StatisticsGen']
  backend = _backend(tmp_path, spec)

  first = backend.run()
  imported = first['tasks']['import_examples']
  assert imported['state'] == 'imported'
  assert imported['artifacts']['result']['uri'] == str(tmp_path / 'imported')
  assert first['tasks']['StatisticsGen']['state'] == 'executed'
  stats_uri = first['tasks']['StatisticsGen']['artifacts']['statistics']['uri']
  assert tf.io.gfile.exists(os.path.join(stats_uri, 'Split-eval',
                                         'FeatureStats.pb'))

  # The same import (reused by URI) into the same step: a cache hit, and the
  # cached execution's outputs are handed on.
  second = backend.run()
  assert second['tasks']['StatisticsGen']['state'] == 'cached'
  assert second['tasks']['StatisticsGen']['artifacts'] == (
      first['tasks']['StatisticsGen']['artifacts'])

  # A run stopped after a task records it and what it depends on only.
  assert list(backend.run(stop_after='import_examples')['tasks']) == [
      'import_examples']
  with pytest.raises(LauncherError, match='stop_after: no task'):
    backend.run(stop_after='Trainer')

  # With the cache off for the step, it runs again, into a new folder (every
  # ready task at once: the scheduler KFP's parallelism uses).
  spec['root']['dag']['tasks']['StatisticsGen'].pop('cachingOptions')
  third = _backend(tmp_path, spec, parallelism=None).run()
  assert third['tasks']['StatisticsGen']['state'] == 'executed'
  assert third['tasks']['StatisticsGen']['artifacts']['statistics'][
      'uri'] != stats_uri


def test_resolver_nodes_are_refused(tmp_path):
  spec = _compile(tmp_path, 'tiny-resolver', with_resolver=True)
  with pytest.raises(LauncherError, match='resolver nodes are rejected'):
    _backend(tmp_path, spec).run()
