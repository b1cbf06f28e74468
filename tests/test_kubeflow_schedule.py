"""Scheduling recurring runs through kfp.Client, against a fake KFP server."""

import re
import socket

import kfp
import pytest
import yaml
from kfp import compiler, dsl

from hubpipe.kubeflow import schedule
from hubpipe.kubeflow.schedule import ScheduleError

from fake_kfp_server import FakeKfpServer

API = '/apis/v2beta1'


@dsl.component(base_image='python:3.11')
def _train(epochs: int) -> int:
  return epochs


@dsl.pipeline(name='tiny-retrain')
def _tiny(epochs: int = 1):
  _train(epochs=epochs)


@pytest.fixture(scope='module')
def package(tmp_path_factory):
  path = tmp_path_factory.mktemp('kfp') / 'pipeline.yaml'
  compiler.Compiler().compile(_tiny, str(path))
  return str(path)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
  """No endpoint, credentials or kfp context from the machine running tests."""
  for name in (schedule.ENDPOINT_ENV, 'KF_PIPELINES_ENDPOINT',
               'KF_PIPELINES_UI_ENDPOINT', 'KF_PIPELINES_IAP_OAUTH2_CLIENT_ID',
               'KF_PIPELINES_APP_OAUTH2_CLIENT_ID',
               'KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(kfp.Client, '_LOCAL_KFP_CONTEXT',
                      str(tmp_path / 'no-context.json'))


@pytest.fixture
def server():
  with FakeKfpServer() as fake:
    yield fake


def _recurring_run_bodies(fake):
  return [body for method, path, body in fake.requests
          if (method, path) == ('POST', f'{API}/recurringruns')]


def test_recurring_run_request_on_the_wire(server, package):
  result = schedule.create_recurring_run(
      package, '0 3 * * *', endpoint=server.url, params={'epochs': 3})

  assert server.paths() == [
      ('GET', f'{API}/healthz'),
      ('GET', f'{API}/experiments'),
      ('POST', f'{API}/experiments'),
      ('POST', f'{API}/recurringruns'),
  ]
  assert server.requests[2][2] == {'display_name': 'hubpipe', 'namespace': ''}
  experiment_id = server.experiments['hubpipe']['experiment_id']
  with open(package) as f:
    spec = yaml.safe_load(f)
  [body] = _recurring_run_bodies(server)
  assert body == {
      'display_name': 'tiny-retrain (scheduled)',
      'experiment_id': experiment_id,
      'pipeline_spec': spec,
      'runtime_config': {'parameters': {'epochs': 3}},
      'trigger': {'cron_schedule': {'cron': '0 0 3 * * *'}},
      'mode': 'ENABLE',
      'no_catchup': True,
      'max_concurrency': 1,
  }
  assert result['experiment_id'] == experiment_id
  assert result['recurring_run_id']
  assert result == {
      'recurring_run_id': result['recurring_run_id'],
      'experiment_id': experiment_id,
      'name': 'tiny-retrain (scheduled)',
      'cron': '0 0 3 * * *',
      'endpoint': server.url,
  }


def test_a_scheduled_hubpipe_pipeline_keeps_its_snapshot_uncached(
    server, tmp_path):
  """The recurring run carries the compiled per-task cache settings: the
  DataSnapshot step is never cached, every other step is."""
  from hubpipe.kubeflow.runner import compile_pipeline
  from hubpipe.pipeline.config import load_config
  path = tmp_path / 'hubpipe.yaml'
  compile_pipeline(load_config(), str(path), pipeline_root=str(tmp_path))
  schedule.create_recurring_run(str(path), '0 3 * * *', endpoint=server.url)
  [body] = _recurring_run_bodies(server)
  tasks = body['pipeline_spec']['root']['dag']['tasks']
  assert 'cachingOptions' not in tasks['DataSnapshot']
  assert all(task['cachingOptions']['enableCache']
             for name, task in tasks.items() if name != 'DataSnapshot')


def test_existing_experiment_is_reused(package):
  with FakeKfpServer(experiments={'nightly': 'exp-42'}) as fake:
    result = schedule.create_recurring_run(
        package, '30 2 * * MON-FRI', endpoint=fake.url, experiment='nightly',
        job_name='weekday retrain', description='weekdays at 02:30')
    assert ('POST', f'{API}/experiments') not in fake.paths()
    [body] = _recurring_run_bodies(fake)
  assert body['experiment_id'] == result['experiment_id'] == 'exp-42'
  assert body['display_name'] == result['name'] == 'weekday retrain'
  assert body['description'] == 'weekdays at 02:30'
  assert body['trigger'] == {'cron_schedule': {'cron': '0 30 2 * * MON-FRI'}}
  assert body['runtime_config'] == {'parameters': {}}


def test_endpoint_from_env(server, package, monkeypatch):
  monkeypatch.setenv('KFP_ENDPOINT', server.url)
  result = schedule.create_recurring_run(package, '0 3 * * *')
  assert result['endpoint'] == server.url
  assert len(_recurring_run_bodies(server)) == 1


def test_flag_wins_over_env(monkeypatch):
  monkeypatch.setenv('KFP_ENDPOINT', 'http://from-env:8080')
  assert schedule.resolve_endpoint('http://flag:8888') == 'http://flag:8888'
  assert schedule.resolve_endpoint(None) == 'http://from-env:8080'


def test_no_endpoint_is_a_clear_error(package):
  with pytest.raises(ScheduleError) as info:
    schedule.resolve_endpoint(None)
  assert '--endpoint' in str(info.value)
  assert 'KFP_ENDPOINT' in str(info.value)
  with pytest.raises(ScheduleError, match='KFP_ENDPOINT'):
    schedule.create_recurring_run(package, '0 3 * * *')


@pytest.mark.parametrize('expr, expected', [
    ('0 3 * * *', '0 0 3 * * *'),
    ('  */15  *  * *   * ', '0 */15 * * * *'),
    ('0 0 9 ? * 2-6', '0 0 9 ? * 2-6'),
    ('0 6 1,15 jan-jun sun', '0 0 6 1,15 jan-jun sun'),
    ('30 0 12 * * MON', '30 0 12 * * MON'),
])
def test_normalize_cron_accepts(expr, expected):
  assert schedule.normalize_cron(expr) == expected


@pytest.mark.parametrize('expr', [
    '', '   ', '* * * *', '0 0 0 3 * * *', '@daily', '0 3 * * * ;rm',
    '0 3 * * FOO', '0 3 * * 1#2', '0 3 * * L',
])
def test_normalize_cron_rejects(expr):
  with pytest.raises(ScheduleError) as info:
    schedule.normalize_cron(expr)
  assert repr(expr) in str(info.value)
  assert '0 3 * * *' in str(info.value)


def test_bad_cron_sends_nothing(server, package):
  with pytest.raises(ScheduleError, match='bad cron'):
    schedule.create_recurring_run(package, 'daily', endpoint=server.url)
  assert server.requests == []


def test_missing_package_sends_nothing(server, tmp_path):
  missing = str(tmp_path / 'nope.yaml')
  with pytest.raises(ScheduleError) as info:
    schedule.create_recurring_run(missing, '0 3 * * *', endpoint=server.url)
  assert missing in str(info.value)
  assert 'hubpipe compile' in str(info.value)
  assert server.requests == []


def test_server_error_names_endpoint(package):
  with FakeKfpServer(fail_recurring_run=500) as fake:
    with pytest.raises(ScheduleError) as info:
      schedule.create_recurring_run(package, '0 3 * * *', endpoint=fake.url)
    assert fake.paths()[-1] == ('POST', f'{API}/recurringruns')
  message = str(info.value)
  assert fake.url in message
  assert '500' in message
  assert 'scheduled workflow could not be created' in message


def test_connection_refused_names_endpoint(package):
  with socket.socket() as sock:  # a port that nothing listens on
    sock.bind(('127.0.0.1', 0))
    url = 'http://127.0.0.1:%d' % sock.getsockname()[1]
  with pytest.raises(ScheduleError, match='cannot reach .*' + re.escape(url)):
    schedule.create_recurring_run(package, '0 3 * * *', endpoint=url)
