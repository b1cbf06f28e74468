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
    if now - started >= older_than:
      tf.io.gfile.rmtree(folder)
      removed.append(folder)
  return removed


def push(model_path: str, serving_dir: str, source: str,
         now: Optional[float] = None) -> Tuple[str, str, bool]:
  """Pushes the SavedModel folder `model_path` as a new version under
  `serving_dir`, or finds it pushed already. `source` names the model (the
  pushed Model artifact's URI). Returns (version, its folder, whether this
  call pushed it)."""
  now = time.time() if now is None else now
  pb = _join(model_path, SAVED_MODEL)
  if not tf.io.gfile.exists(pb):
    raise FileNotFoundError(f'no {SAVED_MODEL} in the model to push, '
                            f'{model_path}')
  record = {'source': source, 'saved_model_sha256': digest(pb)}
  tf.io.gfile.makedirs(serving_dir)
  for path in remove_stale_asides(serving_dir, now):
    logging.warning('Pusher: removed %s, left by a push that was killed',
                    path)
  existing = versions(serving_dir)
  if existing:
    newest = max(existing)
    held = read_record(existing[newest]) or {}
    if all(held.get(k) == v for k, v in record.items()):
      logging.info('Pusher: version %d already holds this model (%s); not '
                   'pushed again', newest, source)
      return str(newest), existing[newest], False
  if not _is_local(serving_dir):
    return _push_to_object_storage(model_path, serving_dir, record, now)
  # After every numbered folder, whole or not (a rename onto one fails).
  version = str(max([int(now)] + [v + 1 for v in numbered(serving_dir)]))
  target = _join(serving_dir, version)
  aside = _join(serving_dir,
                f'{ASIDE_PREFIX}{int(now)}-{version}-{uuid.uuid4().hex[:8]}')
  try:
    _copy_tree(model_path, aside, skip=SAVED_MODEL)
    faults.pause_point('pusher_mid_copy')
    io_utils.copy_file(pb, _join(aside, SAVED_MODEL))
    _write_record(aside, record, version, now)
  except Exception:
    # A failed copy (a full disk) frees what it wrote; a killed one is
    # removed by a later push, once stale.
    if tf.io.gfile.exists(aside):
      tf.io.gfile.rmtree(aside)
    raise
  # One rename: the version folder appears whole or not at all.
  tf.io.gfile.rename(aside, target)
  logging.info('Pusher: model written to %s', target)
  return version, target, True


def _copy_tree(src: str, dst: str, skip: str) -> None:
  """Copies the files under `src` to `dst`, but `src`/`skip`, over what
  `dst` holds. (io_utils.copy_dir removes `dst` first, and with it the
  record that marks an unfinished version as this model's.)"""
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


def _unfinished(serving_dir: str, record: dict) -> Optional[str]:
  """The version a killed push of this same model left unfinished (its
  record, no saved_model.pb), newest first, if any."""
  for number in sorted(numbered(serving_dir), reverse=True):
    folder = _join(serving_dir, str(number))
    if tf.io.gfile.exists(_join(folder, SAVED_MODEL)):
      continue
    held = read_record(folder) or {}
    if all(held.get(k) == v for k, v in record.items()):
      return str(number)
  return None


def _push_to_object_storage(model_path: str, serving_dir: str, record: dict,
                            now: float) -> Tuple[str, str, bool]:
  """Object storage has no atomic rename. The version folder gets its record
  first, then the files, saved_model.pb last: a version is there once its
  saved_model.pb is (TFX's and TF Serving's convention). A push killed
  midway leaves a folder without one; the next push of the same model
  finishes that version rather than numbering another."""
  version = _unfinished(serving_dir, record)
  if version:
    logging.warning('Pusher: finishing version %s, which a killed push of '
                    'this model left without its %s', version, SAVED_MODEL)
  else:
    version = str(max([int(now)] + [v + 1 for v in numbered(serving_dir)]))
  target = _join(serving_dir, version)
  tf.io.gfile.makedirs(target)
  _write_record(target, record, version, now)
  _copy_tree(model_path, target, skip=SAVED_MODEL)
  faults.pause_point('pusher_mid_copy')
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
    version, target, _ = push(model_path,
                              destination.filesystem.base_directory,
                              source=model.uri)
    faults.pause_point('pusher_renamed')
    self._MarkPushed(model_push, pushed_destination=target,
                     pushed_version=version)
