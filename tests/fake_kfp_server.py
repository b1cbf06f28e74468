"""A fake Kubeflow Pipelines API server on loopback, for tests.

It speaks the v2beta1 REST calls that kfp.Client 2.x makes to schedule a
recurring run (healthz, list and create experiments, create recurring runs)
over real HTTP, so the client's own serialisation is what gets tested. It
records every request as (method, path without query, parsed JSON body).
"""

import datetime
import http.server
import json
import threading
import urllib.parse
import uuid

_API = '/apis/v2beta1'


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y-%m-%dT%H:%M:%SZ')


def _name_filter(query: dict):
  """The display_name an experiment list call filters on, if any."""
  raw = query.get('filter', [''])[0]
  if not raw:
    return None
  for predicate in json.loads(raw).get('predicates', []):
    if predicate.get('key') == 'display_name':
      return predicate.get('stringValue') or predicate.get('string_value')
  return None


class FakeKfpServer:
  """A KFP API server on 127.0.0.1 in a daemon thread; use as a context manager.

  experiments: display_name -> experiment_id that already exist.
  fail_recurring_run: an HTTP status to answer recurring-run creation with.
  """

  def __init__(self, experiments=None, fail_recurring_run=None):
    self.requests = []
    self.experiments = {
        name: {'experiment_id': eid, 'display_name': name, 'namespace': '',
               'created_at': _now(), 'storage_state': 'AVAILABLE'}
        for name, eid in (experiments or {}).items()}
    self.fail_recurring_run = fail_recurring_run
    self._lock = threading.Lock()
    self._httpd = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), self._handler_class())
    self._httpd.daemon_threads = True
    host, port = self._httpd.server_address[:2]
    self.url = f'http://{host}:{port}'
    self._thread = threading.Thread(
        target=self._httpd.serve_forever, name='fake-kfp', daemon=True)
    self._thread.start()

  def close(self):
    self._httpd.shutdown()
    self._httpd.server_close()
    self._thread.join(timeout=5)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def paths(self):
    """(method, path) of every request so far, in order."""
    return [(method, path) for method, path, _ in self.requests]

  def handle(self, method, path, query, body):
    """The (status, JSON) answer to one request."""
    if (method, path) == ('GET', f'{_API}/healthz'):
      return 200, {'multi_user': False}
    if (method, path) == ('GET', f'{_API}/experiments'):
      name = _name_filter(query)
      found = [e for e in self.experiments.values()
               if name is None or e['display_name'] == name]
      return 200, ({'experiments': found, 'total_size': len(found)}
                   if found else {})
    if (method, path) == ('POST', f'{_API}/experiments'):
      experiment = dict(body, experiment_id=str(uuid.uuid4()),
                        created_at=_now(), storage_state='AVAILABLE')
      self.experiments[experiment['display_name']] = experiment
      return 200, experiment
    if (method, path) == ('POST', f'{_API}/recurringruns'):
      if self.fail_recurring_run:
        return self.fail_recurring_run, {
            'error': 'scheduled workflow could not be created',
            'code': 13,
            'message': 'scheduled workflow could not be created',
            'details': []}
      # The real server echoes the run, int64 fields as JSON strings.
      run = dict(body, recurring_run_id=str(uuid.uuid4()),
                 max_concurrency=str(body.get('max_concurrency', '1')),
                 created_at=_now(), updated_at=_now(), status='ENABLED')
      return 200, run
    return 404, {'error': f'Not Found: {method} {path}', 'code': 5,
                 'message': f'Not Found: {method} {path}', 'details': []}

  def _handler_class(self):
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def _serve(self):
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get('Content-Length') or 0)
        raw = self.rfile.read(length) if length else b''
        body = json.loads(raw) if raw else None
        with server._lock:
          server.requests.append((self.command, url.path, body))
          status, answer = server.handle(
              self.command, url.path, urllib.parse.parse_qs(url.query), body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

      def log_message(self, *args):
        pass

    return Handler
