"""Pause points for fault-injection tests (tests/test_fault_injection.py).

A run started with HUBPIPE_PAUSE_AT=<point> logs "hubpipe: paused at
<point>" when it reaches that point and then waits, so a test can SIGKILL it
at a chosen, reproducible place (mid-epoch, mid-copy) rather than after a
guessed delay. Without the variable, a pause point does nothing. The points:

  trainer_mid_epoch   the Trainer, in its second epoch (the first is saved)
  pusher_mid_copy     the Pusher, with the version written but for its
                      saved_model.pb (aside on a file system, in place on
                      object storage)
  pusher_renamed      the Pusher, after the version is in place, before ML
                      Metadata records the push
"""

import logging
import os
import time

PAUSE_ENV = 'HUBPIPE_PAUSE_AT'
# Long enough for any test to kill the run; short enough that a forgotten
# variable shows as a stall, not a hang.
PAUSE_SECONDS = 300


def armed(name: str) -> bool:
  """Whether this run pauses at `name` (to add a pause only when asked)."""
  return os.environ.get(PAUSE_ENV) == name


def pause_point(name: str) -> None:
  """Waits here when HUBPIPE_PAUSE_AT names this point (tests only)."""
  if not armed(name):
    return
  logging.error('hubpipe: paused at %s (%s=%s, for fault-injection tests '
                'only): waiting %d s to be killed', name, PAUSE_ENV, name,
                PAUSE_SECONDS)
  for handler in logging.getLogger().handlers:
    handler.flush()
  time.sleep(PAUSE_SECONDS)
