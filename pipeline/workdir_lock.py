"""One local run per work dir at a time.

A work dir holds one ML Metadata database, one serving folder and the last
run's summary; two runs in it at once would interleave their executions and
pushes. `hold(workdir)` takes an exclusive lock on `<workdir>/.lock` (flock:
the kernel drops it when the holding process dies, even by SIGKILL, so a
crashed run never leaves a stale lock) and writes who holds it there. A second
run either stops at once with WorkdirBusy, which names the holder, or waits
for it (`hubpipe run --wait`). Runs in different work dirs do not touch each
other, unless they share a pipeline root or serving dir.

flock is reliable on local file systems (not on NFS), and a lock belongs to
an open file: a process that holds a work dir and calls hold() on it again
is refused (or, with wait, waits for itself), so take it once per process.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from typing import Callable, Iterator

LOCK_FILE = '.lock'
# `hubpipe run` exits with this when the work dir is busy (sysexits'
# EX_TEMPFAIL: nothing was done, try again later).
EXIT_BUSY = 75


class WorkdirBusy(RuntimeError):
  """Another run holds the work dir."""


def _holder(lock_file) -> dict:
  lock_file.seek(0)
  try:
    return json.loads(lock_file.read() or '{}')
  except ValueError:
    return {}


def describe(holder: dict) -> str:
  if not holder.get('pid'):
    return 'another hubpipe run'
  return (f'hubpipe run pid {holder["pid"]} on {holder.get("host", "?")} '
          f'since {holder.get("started", "?")} (config '
          f'{holder.get("config") or "the default demo"})')


@contextlib.contextmanager
def hold(workdir: str, config_path: str = None, wait: bool = False,
         echo: Callable[[str], None] = print) -> Iterator[dict]:
  """Holds `workdir` for this process; yields what the lock file records."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  with open(path, 'a+') as lock_file:
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = describe(_holder(lock_file))
      if not wait:
        raise WorkdirBusy(
            f'the work dir {workdir} is in use by {holder}. Wait for that '
            'run to finish, pass --wait to start when it does, or pass '
            'another --workdir.') from None
      echo(f'hubpipe: {workdir} is in use by {holder}; waiting for it.')
      fcntl.flock(lock_file, fcntl.LOCK_EX)
    me = {'pid': os.getpid(), 'host': socket.gethostname(),
          'started': datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec='seconds'),
          'config': config_path, 'command': ' '.join(sys.argv)}
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(json.dumps(me))
    lock_file.flush()
    try:
      yield me
    finally:
      lock_file.seek(0)
      lock_file.truncate()
      lock_file.flush()
      fcntl.flock(lock_file, fcntl.LOCK_UN)
