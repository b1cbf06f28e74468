"""Which module a model is built on, worked out where it is needed.

Module facts (the size images run at, the text encoder's preprocessing
companion) are resolved inside the step that needs them, from the config the
step was handed and, for the Trainer, the ModuleSelector's choice: nothing is
computed on the machine that launches or compiles the run and threaded
through the DAG.

  Transform:  `transform_size` (images are written at this size: the
              largest any selection candidate runs at, when there are any);
  Trainer:    `choose` (the selector's choice, or the config's module);
  selector:   each candidate's own facts (module_selector/executor.py);
  Compressor: nothing; it reads the Trainer's export and its Model artifact.
"""

import dataclasses
import functools
import logging
import os
from typing import Optional

from hubpipe.components.hub_modules import inspect as inspect_lib
from hubpipe.components.hub_modules import resolve as hub_resolve

# What the ModuleSelector writes into the HyperParameters the Trainer reads.
SELECTOR = 'ModuleSelector'
# The no-reuse candidate's handle (modeling/no_reuse.py): no module at all.
NO_REUSE = 'no-reuse'


@dataclasses.dataclass(frozen=True)
class ModuleChoice:
  """The module a model is built on.

  handle: as configured (an offline name, a folder or a URL);
  input_size: images: the [height, width] the module runs at (None: text);
  preprocessor: a BERT encoder's preprocessing companion, else None;
  selected_by: 'config', or SELECTOR.
  """
  handle: str
  input_size: Optional[list] = None
  preprocessor: Optional[str] = None
  selected_by: str = 'config'

  @property
  def reuses(self) -> bool:
    """False for the no-reuse model, which is trained from scratch."""
    return self.handle != NO_REUSE

  @property
  def resolved(self) -> Optional[str]:
    return hub_resolve.resolve(self.handle) if self.reuses else None

  @property
  def resolved_preprocessor(self) -> Optional[str]:
    return hub_resolve.resolve(self.preprocessor) if self.preprocessor else None

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _describe(handle: str):
  """inspect.describe, once per module version and process, eagerly (the
  Transform asks while its preprocessing_fn is being traced)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  resolved = hub_resolve.resolve(handle)
  marker = os.path.join(resolved, 'saved_model.pb')
  stamp = (tf.io.gfile.stat(marker).mtime_nsec if tf.io.gfile.exists(marker)
           else None)
  return _describe_once(handle, resolved, stamp)


@functools.lru_cache(maxsize=None)
def _describe_once(handle: str, resolved: str, stamp):
  del resolved, stamp  # The cache key: a module rebuilt in place is new.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.init_scope():
    if not tf.executing_eagerly():
      raise RuntimeError(
          'hubpipe inspects the module eagerly; this preprocessing_fn is '
          'traced in TF1 graph mode (force_tf_compat_v1): turn that off.')
    return inspect_lib.describe(handle)


def candidate_size(candidate) -> Optional[list]:
  """The [height, width] a selection candidate (a handle, or a mapping with
  `handle` and maybe `input_size`) is probed at when that does not depend on
  the Transform: its input_size, else the size its module is made for; None
  for a module of any size, or one that cannot be inspected here (the
  ModuleSelector reports that one as skipped)."""
  if isinstance(candidate, str):
    candidate = {'handle': candidate}
  if candidate.get('input_size'):
    return list(candidate['input_size'])
  try:
    info = _describe(candidate['handle'])
  except (hub_resolve.ModuleNotFound, hub_resolve.ModuleUnavailable,
          inspect_lib.IncompatibleModule, ValueError) as err:
    logging.warning('the selection candidate %s cannot be inspected here '
                    '(%s): the images are not sized for it', candidate['handle'],
                    err)
    return None
  if info.modality != 'image' or not info.input_size:
    return None
  return list(info.input_size)


def own_size(config, info) -> Optional[list]:
  """The size a selection candidate without an input_size runs at, by the
  rule the Transform sized the images by: the size its module is made for
  (`info`: its inspect.describe), unless module.input_size fixes the
  Transform's size, at which such a candidate then runs (None)."""
  if config.module.input_size or not info.input_size:
    return None
  return list(info.input_size)


def transform_size(config, info=None) -> list:
  """Images: the [height, width] the Transform writes: module.input_size;
  else, with selection candidates, the largest size any of them runs at
  (per dimension), so that each candidate sees the images at its own size,
  scaled down in the model and never up from a smaller copy; else the size
  module.handle is made for (`info`: its inspect.describe, if at hand)."""
  if config.module.input_size:
    return list(config.module.input_size)
  candidates = _selection_candidates(config)
  sizes = [size for size in map(candidate_size, candidates) if size]
  if sizes:
    return [max(h for h, _ in sizes), max(w for _, w in sizes)]
  info = info or _describe(config.module.handle)
  if not info.input_size:
    raise inspect_lib.IncompatibleModule(
        f'module.handle {config.module.handle} takes images of any size: set '
        'module.input_size: [height, width].')
  return list(info.input_size)


def _selection_candidates(config) -> list:
  """selection.candidates, or [] when the step was not handed them."""
  from hubpipe.pipeline.config import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    return list(config.selection.candidates or [])
  except ConfigError:  # a section the step was not handed
    return []


def preprocessor_for(handle: str, configured: Optional[str], info=None
                     ) -> Optional[str]:
  """A BERT encoder's preprocessing companion: `configured`, else the one its
  metadata names; None for modules that take their input as it is (`info`:
  the module's inspect.describe, if at hand)."""
  info = info or _describe(handle)
  if info.output_kind != inspect_lib.BERT_ENCODER:
    return None
  return configured or info.preprocessor


def choose(config, hyperparameters: Optional[dict],
           images_at: Optional[list]) -> ModuleChoice:
  """The Trainer's module: the ModuleSelector's choice when the
  HyperParameters carry one (as the Tuner's would), else module.handle.
  images_at: the size the Transform wrote the images at (None: text); a
  module with no input_size of its own runs at it."""
  choice = hyperparameters or {}
  if choice.get('selected_by') == SELECTOR:
    return ModuleChoice(
        handle=choice['module_handle'],
        input_size=(list(choice['input_size']) if choice.get('input_size')
                    else images_at),
        preprocessor=choice.get('preprocessor'), selected_by=SELECTOR)
  preprocessor = None
  if config.modality == 'text':
    preprocessor = preprocessor_for(config.module.handle,
                                    config.module.preprocessor)
  return ModuleChoice(handle=config.module.handle, input_size=images_at,
                      preprocessor=preprocessor)
