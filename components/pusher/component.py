"""Pusher: TFX's Pusher, with a push that a killed run cannot leave half done.

TFX's Pusher copies the model straight into `<serving dir>/<version>/`,
saved_model.pb last. A run killed in the middle leaves a numbered folder
that a model server lists and fails to load, and the rerun pushes again
under a new version; so does a run killed after the copy but before ML
Metadata recorded it. This executor (components/pusher/executor.py):

- writes the version aside, in a hidden folder a model server does not
  list (`.push-<time>-<version>-<id>`), and renames it into place when it is
  whole: on a local or POSIX file system the version appears at once or not
  at all. Object storage has no atomic rename: there the version folder
  gets a record first, then the files, saved_model.pb last (TFX's and TF
  Serving's convention: the version is there once its saved_model.pb is);
  a killed push's unfinished folder is removed by the next push of the same
  model, which takes a new number;
- records in each version which model it holds (`push_record.json`: the
  pushed Model artifact's URI, the ModelBlessing's URI and the digest of
  its saved_model.pb), and when a version already holds this model on this
  blessing, marks it pushed instead of pushing it again: a rerun of a
  killed Pusher pushes at most one version, and never over a later push;
- numbers a new version after every numbered folder, even within the same
  second (TFX's would skip the push and still report it pushed), and takes
  the next number when another push took this one first;
- removes what a failed copy wrote at once, and hidden folders that killed
  pushes left once they are an hour old (by the later of the name's time
  and the last change on the file system).

Same spec, inputs and outputs as `tfx.components.Pusher`; a filesystem push
destination only.
"""

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from hubpipe.components.pusher import executor


class Pusher(tfx.components.Pusher):
  """tfx.components.Pusher with an atomic, idempotent filesystem push."""

  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)
