"""Object storage for artifacts, data and serving dirs: what each scheme needs.

hubpipe reads and writes artifacts through TensorFlow's filesystem layer
(tf.io.gfile, which TFX's fileio uses) and Beam's. Local folders and gs://
work out of the box with the pinned stack. s3:// (and S3-compatible stores
such as MinIO or Ceph) needs the `s3` extra: tensorflow-io registers the
scheme with TensorFlow when imported, and Beam's S3 filesystem uses boto3.

Endpoints and credentials come from the environment, as each client reads
them: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION for both,
S3_ENDPOINT (TensorFlow) and AWS_ENDPOINT_URL_S3 (boto3, so Beam) for a store
that is not AWS. Credentials passed as Beam `--s3_*` arguments would be
printed in TFX's logs; the environment keeps them out.
"""

import os
import sys
from typing import Iterable, Optional


class StorageError(RuntimeError):
  """A URI scheme this installation cannot read or write."""


def enable(uris: Iterable[Optional[str]]) -> None:
  """Makes the schemes of `uris` readable by TensorFlow here (imports
  tensorflow-io for s3://); a clear error when that is not installed."""
  if not any(u and u.startswith('s3://') for u in uris):
    return
  try:
    import tensorflow_io  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise StorageError(
        's3:// paths need TensorFlow\'s S3 filesystem, which is not '
        'installed: pip install -c constraints.txt "hubpipe[s3]" '
        '(tensorflow-io and boto3).') from None
  missing = [v for v in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY')
             if not os.environ.get(v)]
  if missing and not os.path.exists(os.path.expanduser('~/.aws/credentials')):
    raise StorageError(
        f's3:// paths: no credentials ({", ".join(missing)} unset and no '
        '~/.aws/credentials). Set them, and for a store that is not AWS also '
        'S3_ENDPOINT and AWS_ENDPOINT_URL_S3 (e.g. http://minio:9000).')


def exit_process(code: int) -> None:
  """Ends this process with `code`. With tensorflow-io's S3 filesystem used,
  its 0.37.1 build aborts at interpreter shutdown ("pure virtual method
  called", exit status 134; tensorflow/io#2039), after the work is done and
  written: so flush and leave without running the shutdown."""
  if 'tensorflow_io' not in sys.modules:
    sys.exit(code)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access
