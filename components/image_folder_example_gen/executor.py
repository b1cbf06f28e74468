"""TFX ExampleGen executor for an image folder: one sub-folder per class, PNG or JPEG files.

Use it as the custom executor of `tfx.components.FileBasedExampleGen` (see the package
docstring for the exact wiring). What it does:

Split patterns. Each input split's pattern is a glob relative to `input_base` that
matches the class folders: `*` for `input_base/<class>/...`, or `train/*` for
`input_base/train/<class>/...`. A pattern that matches one single folder that holds
sub-folders but no image files, such as `train`, is taken as a split folder: its
sub-folders are the class folders (so `train` and `train/*` mean the same).
With one input split, ExampleGen's output_config hash buckets divide the examples
(e.g. train 4 : eval 1); with several input splits (and an empty output_config) each
becomes an output split of the same name.

Class ids. Class folder names (the folder's base name) are sorted in Python string
order (case-sensitive) and numbered 0..K-1. Every input split must have the same set
of class folder names, otherwise `ClassMismatchError`; so the ids mean the same in
every split. The names in id order are written to `classes.txt` in the output
artifact's folder and to its custom property `class_names` (a JSON list).
A class folder without image files, or a single class, is an error
(`NoImagesError`, `TooFewClassesError`): the model would have an output it never
learns, or nothing to tell apart.

Files. Only files directly inside a class folder are read, and only those whose name
ends in .png, .jpg or .jpeg (any case). Anything else (other files, hidden files such
as .DS_Store, sub-folders) is ignored and counted in a log line. Hidden folders (name
starting with '.', e.g. .ipynb_checkpoints) are not classes.

Examples. One tf.Example per image: the encoded file bytes, unchanged, under the
image feature (default `image`) and the class id as int64 under the label feature
(default `label`).

Corrupt images. Every file is read and fully decoded with PIL; one that is empty,
truncated, unreadable, not a PNG/JPEG image or larger than MAX_IMAGE_PIXELS (checked
from its header, before it is decoded) is never dropped silently. With
`on_corrupt='fail'` (default) the executor raises `CorruptImagesError` naming them;
with `on_corrupt='skip'` they are left out and listed (`path<TAB>reason`, one a line)
in `corrupt_images.txt` in the output artifact's folder, which is always written in
skip mode (empty when nothing was skipped), and counted in the artifact's custom
property `skipped_corrupt_images`.

exec_properties read: `input_base`, `input_config`, `output_config`,
`output_data_format` (must be FORMAT_TF_EXAMPLE when set), `output_file_format` (by the
base executor) and `custom_config` (see `parse_custom_config`).

Caching note: FileBasedExampleGen's driver fingerprints (size, mtime) the paths the
split patterns match. Prefer patterns that match the class folders (`*`, `train/*`):
adding, removing or renaming images changes a class folder's mtime, so the cache sees
it; with `train` only the split folder is stat-ed and such changes go unnoticed.
Editing an image in place changes no folder's mtime in either case.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import dataclasses
import io
import json
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
import warnings

from absl import logging
import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from google.protobuf import struct_pb2

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
IMAGE_FORMATS = ('PNG', 'JPEG')
ON_CORRUPT_CHOICES = ('fail', 'skip')
REPORT_FILE = 'corrupt_images.txt'
CLASSES_FILE = 'classes.txt'
MAX_LISTED = 20
# An image with more pixels than this is refused (listed as corrupt) before it
# is decoded: PIL's own decompression-bomb threshold. Decoded to float RGB in
# the Transform, such an image takes over 1 GB; the module sees it at a few
# hundred pixels a side anyway.
MAX_IMAGE_PIXELS = 89_478_485
# Scratch folder inside the output artifact, removed after the run.
_SCRATCH_DIR = '.image_folder_example_gen'
_CORRUPT_TAG = 'corrupt'
_FIX = ('To fix: remove or repair these files, or set data.on_corrupt: skip '
        "(custom_config on_corrupt='skip') to leave them out; the skipped files are "
        f'then listed in the report {REPORT_FILE} in the output Examples artifact.')


class CorruptImagesError(ValueError):
  """Images that cannot be read or decoded, with on_corrupt='fail'."""

  def __init__(self, corrupt: Sequence[Tuple[str, str]], input_base: str):
    self.corrupt = sorted(corrupt)
    self.paths = [p for p, _ in self.corrupt]
    self.count = len(self.corrupt)
    lines = [f'  {p}: {reason}' for p, reason in self.corrupt[:MAX_LISTED]]
    if self.count > MAX_LISTED:
      lines.append(f'  ... and {self.count - MAX_LISTED} more')
    super().__init__(
        f'{self.count} corrupt or unreadable image file(s) under {input_base}:\n' +
        '\n'.join(lines) + '\n' + _FIX)


class ClassMismatchError(ValueError):
  """Input splits with different sets of class folders."""


class NoImagesError(ValueError):
  """No class folders or no image files where the split patterns point."""


class TooFewClassesError(ValueError):
  """A single class folder: nothing to tell apart."""


@dataclasses.dataclass(frozen=True)
class ImageFolderConfig:
  """The executor's options, from exec_properties['custom_config']."""
  image_feature: str = 'image'
  label_feature: str = 'label'
  on_corrupt: str = 'fail'

  def __post_init__(self):
    for name in ('image_feature', 'label_feature'):
      value = getattr(self, name)
      if not isinstance(value, str) or not value:
        raise ValueError(f'custom_config {name} must be a non-empty string, not '
                         f'{value!r}')
    if self.image_feature == self.label_feature:
      raise ValueError('custom_config image_feature and label_feature must differ, '
                       f'both are {self.image_feature!r}')
    if self.on_corrupt not in ON_CORRUPT_CHOICES:
      raise ValueError(f"custom_config on_corrupt must be 'fail' or 'skip', not "
                       f'{self.on_corrupt!r}')


_CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(ImageFolderConfig))


def make_custom_config(image_feature: str = 'image', label_feature: str = 'label',
                       on_corrupt: str = 'fail') -> example_gen_pb2.CustomConfig:
  """The `custom_config` to give FileBasedExampleGen (a Struct packed in CustomConfig)."""
  config = ImageFolderConfig(image_feature, label_feature, on_corrupt)
  struct = struct_pb2.Struct()
  struct.update(dataclasses.asdict(config))
  custom_config = example_gen_pb2.CustomConfig()
  custom_config.custom_config.Pack(struct)
  return custom_config


def _from_dict(values: Mapping[str, Any]) -> ImageFolderConfig:
  unknown = sorted(set(values) - set(_CONFIG_KEYS))
  if unknown:
    raise ValueError(f'custom_config has unknown keys {unknown}; the image folder '
                     f'ExampleGen knows {list(_CONFIG_KEYS)}')
  return ImageFolderConfig(**values)


def _from_proto(custom_config: example_gen_pb2.CustomConfig) -> ImageFolderConfig:
  if not custom_config.HasField('custom_config') or not (
      custom_config.custom_config.type_url):
    return ImageFolderConfig()
  struct = struct_pb2.Struct()
  if not custom_config.custom_config.Unpack(struct):
    raise ValueError(
        'custom_config must pack a google.protobuf.Struct (use make_custom_config), '
        f'not {custom_config.custom_config.type_url}')
  return _from_dict(dict(struct))


def parse_custom_config(value: Union[None, str, Mapping[str, Any],
                                     example_gen_pb2.CustomConfig,
                                     ImageFolderConfig]) -> ImageFolderConfig:
  """Reads exec_properties['custom_config'] into an ImageFolderConfig.

  Accepts None or '' (defaults), the JSON that TFX passes for a CustomConfig proto
  (as made by `make_custom_config`), a CustomConfig proto, a plain dict, or the JSON
  of a plain dict. Keys: image_feature, label_feature, on_corrupt ('fail' | 'skip').
  """
  if value is None or isinstance(value, ImageFolderConfig):
    return value or ImageFolderConfig()
  if isinstance(value, example_gen_pb2.CustomConfig):
    return _from_proto(value)
  if isinstance(value, str):
    if not value.strip():
      return ImageFolderConfig()
    try:
      decoded = json.loads(value)
    except ValueError as e:
      raise ValueError(f'custom_config is not valid JSON: {e}') from e
    if decoded is None:
      return ImageFolderConfig()
    if isinstance(decoded, dict) and set(decoded) <= {'custom_config'}:
      proto = example_gen_pb2.CustomConfig()
      proto_utils.json_to_proto(value, proto)
      return _from_proto(proto)
    value = decoded
  if isinstance(value, Mapping):
    return _from_dict(value)
  raise ValueError(f'custom_config must be a CustomConfig, a dict or JSON, not '
                   f'{type(value).__name__}')


def _is_hidden(name: str) -> bool:
  return name.startswith('.')


def _subdirs(folder: str) -> List[str]:
  return sorted(
      os.path.join(folder, n.rstrip('/')) for n in fileio.listdir(folder)
      if not _is_hidden(n) and fileio.isdir(os.path.join(folder, n.rstrip('/'))))


def _is_image_name(name: str) -> bool:
  return not _is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def list_class_folders(input_base: str, pattern: str) -> Dict[str, List[str]]:
  """Class name -> its folder(s) for one split pattern, the names sorted.

  The pattern (relative to input_base) matches class folders; one matched folder that
  holds sub-folders and no image files is a split folder whose sub-folders are the
  class folders. Hidden folders and matched non-folders are skipped. Several folders
  with the same base name (e.g. from `*/*`) make one class.
  """
  matches = [m.rstrip('/') for m in sorted(fileio.glob(os.path.join(input_base,
                                                                      pattern)))]
  folders = [m for m in matches
             if not _is_hidden(os.path.basename(m)) and fileio.isdir(m)]
  if len(folders) == 1:
    names = [n.rstrip('/') for n in fileio.listdir(folders[0])]
    subfolders = _subdirs(folders[0])
    if subfolders and not any(_is_image_name(n) for n in names):
      folders = subfolders
  classes: Dict[str, List[str]] = {}
  for folder in folders:
    classes.setdefault(os.path.basename(folder), []).append(folder)
  return dict(sorted(classes.items()))


def class_ids(class_names: Sequence[str]) -> Dict[str, int]:
  """Class name -> id: the names sorted in Python string order, numbered from 0."""
  return {name: i for i, name in enumerate(sorted(set(class_names)))}


def list_images(folder: str) -> Tuple[List[str], List[str]]:
  """(image files, ignored entries) directly inside a class folder, both sorted.

  Image files are those whose name ends in .png/.jpg/.jpeg in any case and does not
  start with '.'; everything else, sub-folders included, is ignored.
  """
  images, ignored = [], []
  for name in sorted(n.rstrip('/') for n in fileio.listdir(folder)):
    path = os.path.join(folder, name)
    if _is_image_name(name) and not fileio.isdir(path):
      images.append(path)
    else:
      ignored.append(path)
  return images, ignored


def check_image_bytes(data: bytes) -> str:
  """Returns 'PNG' or 'JPEG' when `data` fully decodes as such an image.

  Raises ValueError with a short reason otherwise: empty, not an image, another image
  format, truncated or otherwise undecodable (PNG chunk checksums are verified too).
  """
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  if not data:
    raise ValueError('empty file (0 bytes)')
  image_format = None
  try:
    with warnings.catch_warnings():
      # Sizes up to twice PIL's limit only warn; they are refused below.
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(data))
    with image:
      image_format = image.format
      width, height = image.size
      if width * height > MAX_IMAGE_PIXELS:
        raise _TooLarge(f'{width}x{height}')
      if image_format in IMAGE_FORMATS:
        image.verify()
    if image_format in IMAGE_FORMATS:
      with Image.open(io.BytesIO(data)) as image:
        image.load()
  except UnidentifiedImageError:
    raise ValueError('not a PNG or JPEG image (unrecognized data)') from None
  except (_TooLarge, Image.DecompressionBombError) as e:
    # PIL refuses the largest sizes itself when it opens them (its message
    # says how many pixels).
    size = str(e) if isinstance(e, _TooLarge) else re.sub(
        r'^Image size \((\d+) pixels\).*', r'\1 pixels', str(e))
    raise ValueError(
        f'too large: {size}, more than the {MAX_IMAGE_PIXELS:,} pixels an '
        'image may have (a decompression bomb?); scale it down (the module '
        'sees images at a few hundred pixels a side) or remove it') from None
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'cannot be decoded as {image_format or "an image"}: '
                     f'{type(e).__name__}: {e}') from None
  if image_format not in IMAGE_FORMATS:
    raise ValueError(f'a {image_format} image, not PNG or JPEG')
  return image_format


class _TooLarge(Exception):
  """An image over MAX_IMAGE_PIXELS (its size in the message)."""


def build_example(image_bytes: bytes, label: int, image_feature: str = 'image',
                  label_feature: str = 'label') -> tf.train.Example:
  """A tf.Example with the encoded image bytes and the int64 class id."""
  return tf.train.Example(features=tf.train.Features(feature={
      image_feature: tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[image_bytes])),
      label_feature: tf.train.Feature(int64_list=tf.train.Int64List(
          value=[int(label)])),
  }))


class _ReadImage(beam.DoFn):
  """(path, label) -> tf.Example, or (path, reason) on the 'corrupt' output."""

  def __init__(self, image_feature: str, label_feature: str):
    super().__init__()
    self._image_feature = image_feature
    self._label_feature = label_feature

  def process(self, element):
    path, label = element
    try:
      with fileio.open(path, 'rb') as f:
        data = f.read()
    except Exception as e:  # pylint: disable=broad-except
      reason = getattr(e, 'message', None) or str(e)
      yield beam.pvalue.TaggedOutput(
          _CORRUPT_TAG, (path, f'unreadable: {type(e).__name__}: {reason}'))
      return
    try:
      check_image_bytes(data)
    except ValueError as e:
      yield beam.pvalue.TaggedOutput(_CORRUPT_TAG, (path, str(e)))
      return
    yield build_example(data, label, self._image_feature, self._label_feature)


def _write_corrupt_list(corrupt: List[Tuple[str, str]], path: str) -> None:
  with fileio.open(path, 'w') as f:
    f.write(''.join(f'{p}\t{reason}\n' for p, reason in sorted(corrupt)))


def _read_corrupt_list(path: str) -> List[Tuple[str, str]]:
  if not fileio.exists(path):
    raise RuntimeError(f'the image check wrote no list of corrupt files to {path}')
  with fileio.open(path, 'r') as f:
    text = f.read()
  return [tuple(line.split('\t', 1)) for line in text.splitlines() if line]


@beam.ptransform_fn
def _ImagesToExamples(pipeline: beam.Pipeline,  # pylint: disable=invalid-name
                      files: List[Tuple[str, int]], image_feature: str,
                      label_feature: str, corrupt_list_path: str):
  """Reads and checks the images; writes the corrupt ones to corrupt_list_path."""
  results = (
      pipeline
      | 'ListImages' >> beam.Create(files)
      | 'Distribute' >> beam.Reshuffle()
      | 'ReadAndCheck' >> beam.ParDo(
          _ReadImage(image_feature, label_feature)).with_outputs(
              _CORRUPT_TAG, main='examples'))
  _ = (results[_CORRUPT_TAG]
       | 'CollectCorrupt' >> beam.combiners.ToList()
       | 'WriteCorruptList' >> beam.Map(_write_corrupt_list, corrupt_list_path))
  return results['examples']


@dataclasses.dataclass
class _SplitPlan:
  name: str
  pattern: str
  class_folders: Dict[str, List[str]]
  files: List[Tuple[str, int]] = dataclasses.field(default_factory=list)
  ignored: List[str] = dataclasses.field(default_factory=list)
  corrupt_list_path: str = ''


def _plan(input_base: str,
          splits: Sequence[Tuple[str, str]]) -> Tuple[List[str], List[_SplitPlan]]:
  """Lists class folders and images of every input split; checks they agree."""
  if not input_base:
    raise ValueError('the image folder ExampleGen needs input_base (the folder with '
                     'one sub-folder per class)')
  if not fileio.isdir(input_base):
    raise NoImagesError(f'input_base {input_base} is not a folder')
  plans = [_SplitPlan(name, pattern, list_class_folders(input_base, pattern))
           for name, pattern in splits]
  for plan in plans:
    if not plan.class_folders:
      raise NoImagesError(
          f"no class folders under input_base {input_base} for split '{plan.name}' "
          f"(pattern '{plan.pattern}'): expected {os.path.join(input_base, plan.pattern)}"
          ' to match folders named after the classes, each holding .png/.jpg/.jpeg '
          'files')
  reference = plans[0]
  for plan in plans[1:]:
    if set(plan.class_folders) != set(reference.class_folders):
      missing = sorted(set(reference.class_folders) - set(plan.class_folders))
      extra = sorted(set(plan.class_folders) - set(reference.class_folders))
      raise ClassMismatchError(
          f"split '{plan.name}' (pattern '{plan.pattern}') and split "
          f"'{reference.name}' (pattern '{reference.pattern}') under {input_base} have "
          f"different class folders: missing in '{plan.name}': {missing}, only in "
          f"'{plan.name}': {extra}. Every split needs the same class folders, since "
          'label ids number the sorted class folder names.')
  ids = class_ids(reference.class_folders)
  for plan in plans:
    empty = []
    for name, folders in plan.class_folders.items():
      count = 0
      for folder in folders:
        images, ignored = list_images(folder)
        plan.files.extend((path, ids[name]) for path in images)
        plan.ignored.extend(ignored)
        count += len(images)
      if not count:
        empty.extend(folders)
    if empty and plan.name not in ('train', 'all'):
      # Only evaluation lacks the class: the model still learns it.
      logging.warning(
          "Image folder ExampleGen: class folder(s) %s of split '%s' hold no "
          '.png/.jpg/.jpeg files: that split has no examples of the class.',
          ', '.join(empty), plan.name)
    elif empty:
      # A class without training examples would still get an id and an
      # output the model never learns.
      raise NoImagesError(
          f"class folder(s) {', '.join(empty)} of split '{plan.name}' hold no "
          '.png/.jpg/.jpeg files (images must lie directly inside the class '
          'folder). Put the images of that class in it, or remove the folder '
          '(from every split) if the class is not wanted.')
    if plan.ignored:
      logging.info(
          "Image folder ExampleGen: split '%s' (pattern '%s'): ignored %d entries "
          'that are not .png/.jpg/.jpeg files, e.g. %s', plan.name, plan.pattern,
          len(plan.ignored), plan.ignored[:5])
    if not plan.files:
      raise NoImagesError(
          f"no .png/.jpg/.jpeg files in the class folders of split '{plan.name}' "
          f"(pattern '{plan.pattern}') under input_base {input_base}"
          f' (ignored {len(plan.ignored)} other entries: {plan.ignored[:5]}). Images '
          'must lie directly inside the class folders.')
    logging.info("Image folder ExampleGen: split '%s' (pattern '%s'): %d images in %d "
                 'classes.', plan.name, plan.pattern, len(plan.files),
                 len(plan.class_folders))
  if len(ids) < 2:
    raise TooFewClassesError(
        f'data root {input_base} holds one class folder ({", ".join(ids)}): a '
        'classifier needs two or more classes. Put each class in a sub-folder '
        f'of its own beside it (e.g. {os.path.join(input_base, "<class>")}/), '
        'or train/ and eval/ folders that each hold the class folders.')
  return list(ids), plans


def check_layout(input_base: str, splits: Sequence[Tuple[str, str]]) -> List[str]:
  """The class names of an image folder, after the checks the executor makes
  before it reads a file (class folders, images in each, the same classes in
  every split, two classes or more); raises the executor's errors. For a
  check before the pipeline starts (the data snapshot)."""
  class_names, _ = _plan(input_base, splits)
  return class_names


@dataclasses.dataclass
class _Run:
  config: ImageFolderConfig
  plans: Dict[str, _SplitPlan]


class Executor(BaseExampleGenExecutor):
  """ExampleGen executor: image folder (one sub-folder per class) -> tf.Examples."""

  _run: Optional[_Run] = None

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    """Returns a factory (exec_properties, split_pattern) -> PTransform of tf.Examples."""
    run = self._run
    if run is None:
      raise RuntimeError('the image folder ExampleGen lists its files in Do(); call '
                         'Executor().Do(...) rather than GenerateExamplesByBeam')

    def make(exec_properties: Dict[str, Any], split_pattern: str) -> beam.PTransform:
      del exec_properties
      plan = run.plans[split_pattern]
      return _ImagesToExamples(  # pylint: disable=no-value-for-parameter
          plan.files, run.config.image_feature, run.config.label_feature,
          plan.corrupt_list_path)

    return make

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    config = parse_custom_config(
        exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY))
    data_format = exec_properties.get(standard_component_specs.OUTPUT_DATA_FORMAT_KEY)
    if data_format and data_format != example_gen_pb2.FORMAT_TF_EXAMPLE:
      raise ValueError('the image folder ExampleGen writes tf.Examples only; '
                       f'output_data_format {data_format} is not supported')
    input_base = exec_properties.get(standard_component_specs.INPUT_BASE_KEY)
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
    class_names, plans = _plan(
        input_base, [(s.name, s.pattern) for s in input_config.splits])

    examples = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.EXAMPLES_KEY])
    scratch = os.path.join(examples.uri, _SCRATCH_DIR)
    if fileio.exists(scratch):
      fileio.rmtree(scratch)
    fileio.makedirs(scratch)
    by_pattern = {}
    for index, plan in enumerate(plans):
      plan.corrupt_list_path = os.path.join(scratch, f'corrupt-{index}.tsv')
      by_pattern.setdefault(plan.pattern, plan)
    plans = list(by_pattern.values())

    self._run = _Run(config, by_pattern)
    try:
      super().Do(input_dict, output_dict, exec_properties)
      corrupt = sorted(c for plan in plans
                       for c in _read_corrupt_list(plan.corrupt_list_path))
    finally:
      self._run = None
      fileio.rmtree(scratch)

    with fileio.open(os.path.join(examples.uri, CLASSES_FILE), 'w') as f:
      f.write(''.join(f'{name}\n' for name in class_names))
    examples.set_string_custom_property('class_names', json.dumps(class_names))

    total = sum(len(plan.files) for plan in plans)
    if corrupt and config.on_corrupt == 'fail':
      raise CorruptImagesError(corrupt, input_base)
    if config.on_corrupt == 'skip':
      report = os.path.join(examples.uri, REPORT_FILE)
      _write_corrupt_list(corrupt, report)
      examples.set_int_custom_property('skipped_corrupt_images', len(corrupt))
      if corrupt:
        logging.warning('Image folder ExampleGen: skipped %d corrupt or unreadable '
                        'image file(s) of %d; they are listed in %s', len(corrupt),
                        total, report)
      if len(corrupt) == total:
        raise NoImagesError(f'all {total} image files under input_base {input_base} '
                            f'are corrupt or unreadable; see {report}')
    logging.info('Image folder ExampleGen: wrote %d examples in %d classes from %s.',
                 total - len(corrupt), len(class_names), input_base)
