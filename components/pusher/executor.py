"""The Pusher's executor: an atomic, idempotent push (component.py)."""

import hashlib
import json
import logging
import time
import uuid
from typing import Dict, Optional, Tuple

import tensorflow as tf
from tfx.components.pusher import executor as tfx_pusher
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import io_utils
from tfx.utils import proto_utils

from hubpipe.components import faults

RECORD_FILE = 'push_record.json'
SAVED_MODEL = 'saved_model.pb'
ASIDE_PREFIX = '.push-'
# A hidden folder a killed push left is removed once it is this old: a push
# in progress from another run on the same serving dir is younger.
STALE_ASIDE_SECONDS = 3600


def _join(*parts: str) -> str:
  return '/'.join([parts[0].rstrip('/')] + [p.strip('/') for p in parts[1:]])


def _is_local(path: str) -> bool:
  return '://' not in path or path.startswith('file://')


def digest(path: str) -> str:
  """sha256 of a file (the model's saved_model.pb), hex."""
  sha = hashlib.sha256()
  with tf.io.gfile.GFile(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      sha.update(block)
  return sha.hexdigest()


def numbered(serving_dir: str) -> list:
  """Every numbered folder's number under `serving_dir`, whole or not."""
  if not tf.io.gfile.isdir(serving_dir):
    return []
  return [int(name.rstrip('/')) for name in tf.io.gfile.listdir(serving_dir)
          if name.rstrip('/').isdigit()]


def versions(serving_dir: str) -> Dict[int, str]:
  """{version: folder} of the numbered folders under `serving_dir` holding
  a saved_model.pb (what a model server would load)."""
  if not tf.io.gfile.isdir(serving_dir):
    return {}
  out = {}
  for name in tf.io.gfile.listdir(serving_dir):
    name = name.rstrip('/')
    folder = _join(serving_dir, name)
    if name.isdigit() and tf.io.gfile.exists(_join(folder, SAVED_MODEL)):
      out[int(name)] = folder
  return out


def read_record(folder: str) -> Optional[Dict]:
  path = _join(folder, RECORD_FILE)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)
  except (ValueError, tf.errors.OpError):
    return None


def _last_change(folder: str) -> float:
  """When anything under `folder` last changed, in seconds."""
  times = [tf.io.gfile.stat(folder).mtime_nsec]
  for path, _, files in tf.io.gfile.walk(folder):
    times += [tf.io.gfile.stat(_join(path, f)).mtime_nsec for f in files]
  return max(times) / 1e9


def remove_stale_asides(serving_dir: str, now: float,
                        older_than: float = STALE_ASIDE_SECONDS) -> list:
  """Removes the hidden folders killed pushes left; returns their paths."""
  removed = []
  if not tf.io.gfile.isdir(serving_dir):
    return removed
  for name in tf.io.gfile.listdir(serving_dir):
    name = name.rstrip('/')
    if not name.startswith(ASIDE_PREFIX):
      continue
    folder = _join(serving_dir, name)
    try:
      started = int(name[len(ASIDE_PREFIX):].split('-')[0])
    except ValueError:
      continue
    # Its writer's clock (the name) and the file system's (the last change
    # seen): a copy still being written, or from a skewed clock, is young.
    try:
      started = max(started, _last_change(folder))
    except tf.errors.OpError:
      pass
    if now - started >= older_than:
      tf.io.gfile.rmtree(folder)
      removed.append(folder)
  return removed


def push(model_path: str, serving_dir: str, source: str,
         blessing: str = '', now: Optional[float] = None
         ) -> Tuple[str, str, bool]:
  """Pushes the SavedModel folder `model_path` as a new version under
  `serving_dir`, or finds it pushed already. `source` names the model (the
  pushed Model artifact's URI), `blessing` the blessing it is pushed on (the
  ModelBlessing artifact's URI). Returns (version, its folder, whether this
  call pushed it)."""
  now = time.time() if now is None else now
  pb = _join(model_path, SAVED_MODEL)
  if not tf.io.gfile.exists(pb):
    raise FileNotFoundError(f'no {SAVED_MODEL} in the model to push, '
                            f'{model_path}')
  record = {'source': source, 'blessing': blessing,
            'saved_model_sha256': digest(pb)}
  tf.io.gfile.makedirs(serving_dir)
  for path in remove_stale_asides(serving_dir, now):
    logging.warning('Pusher: removed %s, left by a push that was killed',
                    path)
  # Any version, not only the newest: a rerun of a push that landed before
  # its run was killed must not push that model again over a later one. A
  # deliberate push of an older model comes with a blessing of its own.
  for number, folder in sorted(versions(serving_dir).items(), reverse=True):
    if _holds(folder, record):
      logging.info('Pusher: version %d already holds this model (%s, blessed '
                   'by %s); not pushed again', number, source, blessing)
      return str(number), folder, False
  if not _is_local(serving_dir):
    return _push_to_object_storage(model_path, serving_dir, record, now)
  aside = _join(serving_dir, f'{ASIDE_PREFIX}{int(now)}-'
                f'{_next_version(serving_dir, now)}-{uuid.uuid4().hex[:8]}')
  try:
    _copy_tree(model_path, aside, skip=SAVED_MODEL)
    faults.pause_point('pusher_mid_copy')
    io_utils.copy_file(pb, _join(aside, SAVED_MODEL))
    # One rename: the version folder appears whole or not at all. Another
    # push may take the number first (a rename onto a folder fails): then
    # the next one.
    for _ in range(10):
      version = _next_version(serving_dir, now)
      target = _join(serving_dir, version)
      _write_record(aside, record, version, now)
      try:
        tf.io.gfile.rename(aside, target)
        break
      except tf.errors.AlreadyExistsError:
        continue
    else:
      raise RuntimeError(f'Pusher: could not take a version number under '
                         f'{serving_dir}: other pushes kept taking them')
  except BaseException:
    # A failed or interrupted copy (a full disk, Ctrl-C, SIGTERM) frees what
    # it wrote; a SIGKILLed one is removed by a later push, once stale.
    if tf.io.gfile.exists(aside):
      tf.io.gfile.rmtree(aside)
    raise
  logging.info('Pusher: model written to %s', target)
  return version, target, True


def _holds(folder: str, record: dict) -> bool:
  held = read_record(folder) or {}
  return all(held.get(k) == v for k, v in record.items())


def _next_version(serving_dir: str, now: float) -> str:
  """After every numbered folder, whole or not (a rename onto one fails; a
  model server may have tried and given up on an unfinished one)."""
  return str(max([int(now)] + [v + 1 for v in numbered(serving_dir)]))


def _copy_tree(src: str, dst: str, skip: str) -> None:
  """Copies the files under `src` to `dst`, but `src`/`skip`, over what
  `dst` holds. (io_utils.copy_dir removes `dst` first, and with it the
  record written there first on object storage.)"""
  src = src.rstrip('/')
  for folder, _, files in tf.io.gfile.walk(src):
    relative = folder[len(src):].strip('/')
    into = _join(dst, relative) if relative else dst
    tf.io.gfile.makedirs(into)
    for name in files:
      if relative or name != skip:
        tf.io.gfile.copy(_join(folder, name), _join(into, name),
                         overwrite=True)


def _write_record(folder: str, record: dict, version: str, now: float):
  with tf.io.gfile.GFile(_join(folder, RECORD_FILE), 'w') as f:
    json.dump({**record, 'version': version, 'pushed_at': now}, f)


def _push_to_object_storage(model_path: str, serving_dir: str, record: dict,
                            now: float) -> Tuple[str, str, bool]:
  """Object storage has no atomic rename. The version folder gets its record
  first (with this push's id), then the files, saved_model.pb last: a
  version is there once its saved_model.pb is (TFX's and TF Serving's
  convention). A push killed midway leaves a folder without one; the next
  push of the same model removes it and takes a new number (a model server
  may have given up on that one). Before saved_model.pb, the record is read
  back: a concurrent push that took the same number fails this one."""
  version = _next_version(serving_dir, now)  # after the unfinished too
  for number in numbered(serving_dir):
    folder = _join(serving_dir, str(number))
    if (not tf.io.gfile.exists(_join(folder, SAVED_MODEL)) and
        _holds(folder, record)):
      logging.warning('Pusher: removing %s, which a killed push of this model '
                      'left without its %s', folder, SAVED_MODEL)
      tf.io.gfile.rmtree(folder)
  target = _join(serving_dir, version)
  mine = {**record, 'push_id': uuid.uuid4().hex}
  tf.io.gfile.makedirs(target)
  _write_record(target, mine, version, now)
  _copy_tree(model_path, target, skip=SAVED_MODEL)
  faults.pause_point('pusher_mid_copy')
  if (read_record(target) or {}).get('push_id') != mine['push_id']:
    raise RuntimeError(f'Pusher: another push took version {version} under '
                       f'{serving_dir} while this one was writing it; run '
                       'again (one push at a time per serving dir).')
  io_utils.copy_file(_join(model_path, SAVED_MODEL), _join(target, SAVED_MODEL),
                     overwrite=True)
  logging.info('Pusher: model written to %s', target)
  return version, target, True


class Executor(tfx_pusher.Executor):
  """Pushes a blessed model atomically and at most once (component.py)."""

  def Do(self, input_dict, output_dict, exec_properties):
    self._log_startup(input_dict, output_dict, exec_properties)
    model_push = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.PUSHED_MODEL_KEY])
    if not self.CheckBlessing(input_dict):
      self._MarkNotPushed(model_push)
      return
    model_path = self.GetModelPath(input_dict)
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
        destination)
    if destination.WhichOneof('destination') != 'filesystem':
      raise NotImplementedError('hubpipe pushes to a filesystem destination '
                                '(push_destination.filesystem) only')
    model = artifact_utils.get_single_instance(
        input_dict[standard_component_specs.MODEL_KEY])
    # Archived in the output, as TFX's Pusher does; first, so that a
    # pipeline root too full to hold it stops the Pusher before the push.
    io_utils.copy_dir(model_path, model_push.uri)
    blessings = input_dict.get(standard_component_specs.MODEL_BLESSING_KEY)
    blessing = blessings[0].uri if blessings else ''
    version, target, _ = push(model_path,
                              destination.filesystem.base_directory,
                              source=model.uri, blessing=blessing)
    faults.pause_point('pusher_renamed')
    self._MarkPushed(model_push, pushed_destination=target,
                     pushed_version=version)
