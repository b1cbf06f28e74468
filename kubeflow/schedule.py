"""Scheduled retraining: a recurring run of the compiled pipeline on Kubeflow.

A recurring run lives on the KFP server, so retraining keeps happening without
anyone's machine being up. Every failure (no endpoint, bad cron, no package,
server errors) is a `ScheduleError` that says what to change.
"""

import json
import os
import re
from typing import Optional

import yaml

ENDPOINT_ENV = 'KFP_ENDPOINT'

_CRON_EXAMPLE = "'0 3 * * *' (every day at 03:00)"
# Digits, the cron operators, and month or weekday names (JAN, MON, ...).
_CRON_FIELD = re.compile(
    r'^(?:[0-9*/,?-]|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC'
    r'|SUN|MON|TUE|WED|THU|FRI|SAT)+$', re.IGNORECASE)


class ScheduleError(ValueError):
  """The schedule cannot be created; the message says why and what to do."""


def resolve_endpoint(endpoint: Optional[str]) -> str:
  """The KFP API address: the --endpoint flag, else $KFP_ENDPOINT."""
  endpoint = endpoint or os.environ.get(ENDPOINT_ENV)
  if not endpoint:
    raise ScheduleError(
        'no Kubeflow Pipelines endpoint: pass --endpoint URL or set '
        f'{ENDPOINT_ENV} (for example http://localhost:8080 after '
        '`kubectl port-forward svc/ml-pipeline-ui 8080:80`)')
  return endpoint


def normalize_cron(expr: str) -> str:
  """A KFP cron expression (6 fields, seconds first) from 5 or 6 fields.

  KFP's scheduler reads the first field as seconds, so a standard 5-field
  expression submitted as-is would silently mean something else.
  """
  fields = (expr or '').split()
  bad = (len(fields) not in (5, 6) or
         not all(_CRON_FIELD.match(field) for field in fields))
  if bad:
    raise ScheduleError(
        f'bad cron expression {expr!r}: expected 5 fields (minute hour '
        'day-of-month month day-of-week) or 6 with seconds first, using '
        f'digits, * / , - ? and month or day names; for example {_CRON_EXAMPLE}')
  if len(fields) == 5:
    fields.insert(0, '0')
  return ' '.join(fields)


def _pipeline_name(package_path: str) -> str:
  """`pipelineInfo.name` of a compiled pipeline YAML (its first document)."""
  try:
    with open(package_path) as f:
      spec = next(yaml.safe_load_all(f), None)
    return spec['pipelineInfo']['name']
  except (yaml.YAMLError, TypeError, KeyError) as err:
    raise ScheduleError(
        f'{package_path} is not a compiled KFP pipeline YAML (no '
        f'pipelineInfo.name: {err}); run `hubpipe compile` to write it'
    ) from None


def _server_message(err) -> str:
  """'HTTP status reason: message' of a kfp_server_api ApiException."""
  text = err.body.decode('utf-8', 'replace') if isinstance(
      err.body, bytes) else str(err.body or '')
  try:  # KFP answers errors as JSON {"error", "code", "message", ...}
    text = json.loads(text).get('message') or text
  except (ValueError, AttributeError):
    pass
  text = text.strip()[:500]
  return f'HTTP {err.status} {err.reason or ""}'.strip() + (
      f': {text}' if text else '')


def create_recurring_run(package_path: str,
                         cron: str,
                         endpoint: Optional[str] = None,
                         experiment: str = 'hubpipe',
                         job_name: Optional[str] = None,
                         namespace: Optional[str] = None,
                         params: Optional[dict] = None,
                         description: str = '') -> dict:
  """Schedules the compiled pipeline at `package_path` on a cron schedule.

  Runs do not catch up on missed slots and never overlap (one at a time):
  retraining on the latest data once is what matters, not replaying every
  missed day. Everything checkable locally is checked before the first
  request, so a typo never leaves a half-made experiment behind.
  """
  endpoint = resolve_endpoint(endpoint)
  cron = normalize_cron(cron)
  if not os.path.isfile(package_path):
    raise ScheduleError(
        f'pipeline package {package_path} not found; run `hubpipe compile` '
        'first to write it')
  job_name = job_name or f'{_pipeline_name(package_path)} (scheduled)'

  # kfp is imported here: resolving flags and checking a cron needs no client.
  import kfp
  import kfp_server_api
  import urllib3
  try:
    client = kfp.Client(host=endpoint)
    exp = client.create_experiment(name=experiment, namespace=namespace)
    run = client.create_recurring_run(
        experiment_id=exp.experiment_id,
        job_name=job_name,
        description=description or None,
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        enabled=True,
        pipeline_package_path=package_path,
        params=params or {},
        # Keep the compiled per-task cache settings: True or False here
        # would override every task's, and the DataSnapshot step must never
        # be cached (a cached snapshot replays last week's data).
        enable_caching=None)
  except kfp_server_api.ApiException as err:
    raise ScheduleError(
        f'Kubeflow Pipelines at {endpoint} refused the request: '
        f'{_server_message(err)}') from None
  except (urllib3.exceptions.HTTPError, OSError) as err:
    raise ScheduleError(
        f'cannot reach Kubeflow Pipelines at {endpoint}: '
        f'{getattr(err, "reason", None) or err}; check --endpoint or '
        f'{ENDPOINT_ENV}') from None
  return {
      'recurring_run_id': run.recurring_run_id,
      'experiment_id': exp.experiment_id,
      'name': job_name,
      'cron': cron,
      'endpoint': endpoint,
  }
