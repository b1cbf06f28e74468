"""Fashion-MNIST as tf.Example TFRecords: a balanced, seeded subset of the official splits.

The raw data is the Debian package `dataset-fashion-mnist` (pinned by version and
sha256, fetched once with `assets.fetch_deb` and unpacked under
`data_dir()/datasets/fashion-mnist-deb`). Where the package is installed on the machine
(`/usr/share/datasets/fashion-mnist`), that copy is used directly.

`prepare(train_examples, eval_examples, seed)` writes

  <out>/train/data.tfrecord   balanced subset of the official 60000-image train split
  <out>/eval/data.tfrecord    balanced subset of the official 10000-image test split
  <out>/classes.txt           the 10 class names, one a line, in label-id order
  <out>/.complete             JSON: the arguments and the per-class counts; written last

as uncompressed TFRecords of tf.Example with `image` (PNG bytes, 28x28 grayscale) and
`label` (int64 class id 0..9); the feature names can be chosen.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import functools
import gzip
import io
import re
import zlib
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from hubpipe.components.assets import AssetError, data_dir, extract_deb, fetch_deb
from hubpipe.components.datasets import common

DEB_NAME = 'dataset-fashion-mnist'
DEB_VERSION = '0.0~git20200523.55506a9-1'
DEB_SHA256 = '39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0'
SYSTEM_DIR = Path('/usr/share/datasets/fashion-mnist')
_DEB_SUBDIR = Path('usr/share/datasets/fashion-mnist')

CLASS_NAMES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
    'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28)
# Official split sizes (6000 and 1000 images per class).
SPLIT_SIZES = {'train': 60000, 'test': 10000}

_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
_MARKER_KEYS = ('train_examples', 'eval_examples', 'seed', 'image_feature',
                'label_feature')
_WHAT = 'a prepared Fashion-MNIST subset'  # For the error on a mismatching marker.

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype('u1'), 0x09: np.dtype('i1'), 0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8'),
}


class IdxFormatError(ValueError):
  """An IDX file is corrupt, truncated or not an IDX file at all."""


def read_idx(path: Union[str, Path]) -> np.ndarray:
  """Reads an IDX file (gzip-compressed when its name ends in .gz) into an array.

  The header is checked: two zero bytes, a known type code, the number of dimensions,
  then one big-endian uint32 per dimension; the payload must be exactly the size the
  header announces. Returns a writable array in native byte order.

  Raises:
    FileNotFoundError: the file does not exist.
    IdxFormatError: the file is not valid gzip or not a valid IDX file; the message
      names the file.
  """
  path = Path(path)
  try:
    if path.suffix == '.gz':
      with gzip.open(path, 'rb') as f:
        data = f.read()
    else:
      data = path.read_bytes()
  except FileNotFoundError:
    raise
  except (OSError, EOFError, zlib.error) as e:
    raise IdxFormatError(
        f'{path}: cannot be decompressed ({type(e).__name__}: {e}); the file is '
        'corrupt or truncated') from e

  def bad(what):
    return IdxFormatError(f'{path}: not a valid IDX file: {what}')

  if len(data) < 4:
    raise bad(f'only {len(data)} bytes, shorter than the 4-byte magic number')
  if data[0] != 0 or data[1] != 0:
    raise bad(f'magic number {data[:4].hex()} does not start with two zero bytes')
  dtype = _IDX_DTYPES.get(data[2])
  if dtype is None:
    raise bad(f'unknown type code 0x{data[2]:02x} in magic number {data[:4].hex()}')
  ndim = data[3]
  if ndim == 0:
    raise bad('magic number announces 0 dimensions')
  header = 4 + 4 * ndim
  if len(data) < header:
    raise bad(f'truncated header: {ndim} dimensions need {header} bytes, file has '
              f'{len(data)}')
  shape = tuple(int(d) for d in np.frombuffer(data, dtype='>u4', count=ndim,
                                                  offset=4))
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  actual = len(data) - header
  if actual != expected:
    raise bad(f'header announces shape {shape} ({expected} bytes of data) but the '
              f'file has {actual} bytes of data' +
              (' (truncated)' if actual < expected else ''))
  array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder('='))


def source_dir() -> Path:
  """The folder with the four official .gz files, fetching the package if needed."""
  names = [n for pair in _FILES.values() for n in pair]
  if all((SYSTEM_DIR / n).is_file() for n in names):
    return SYSTEM_DIR
  deb = fetch_deb(DEB_NAME, DEB_VERSION, DEB_SHA256)
  dest = extract_deb(deb, data_dir() / 'datasets' / 'fashion-mnist-deb')
  src = dest / _DEB_SUBDIR
  missing = [n for n in names if not (src / n).is_file()]
  if missing:
    raise AssetError(
        f'{deb.name} unpacked into {dest} lacks {", ".join(missing)} under '
        f'{_DEB_SUBDIR}; remove {dest} so that the package is unpacked again.')
  return src


def load_split(split: str) -> Tuple[np.ndarray, np.ndarray]:
  """Official split 'train' (60000) or 'test' (10000): uint8 images [N,28,28], labels [N].

  The arrays are cached for the process and read-only; copy them to modify.
  """
  if split not in _FILES:
    raise ValueError(f"split must be 'train' or 'test', not {split!r}")
  return _load(split, str(source_dir()))


@functools.lru_cache(maxsize=2)
def _load(split: str, src: str) -> Tuple[np.ndarray, np.ndarray]:
  src = Path(src)
  image_file, label_file = (src / n for n in _FILES[split])
  hint = ('' if src == SYSTEM_DIR else
          f' Remove {src.parents[len(_DEB_SUBDIR.parts) - 1]} to unpack the package '
          'again.')
  try:
    images = read_idx(image_file)
    labels = read_idx(label_file)
  except IdxFormatError as e:
    raise IdxFormatError(f'{e}.{hint}') from e
  if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
    raise IdxFormatError(f'{image_file}: expected uint8 images of shape [N, 28, 28], '
                         f'got {images.dtype} {images.shape}.{hint}')
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise IdxFormatError(f'{label_file}: expected {images.shape[0]} labels, got shape '
                         f'{labels.shape}.{hint}')
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise IdxFormatError(f'{label_file}: labels outside 0..{NUM_CLASSES - 1}.{hint}')
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def balanced_indices(labels: np.ndarray, count: int,
                     rng: np.random.Generator,
                     num_classes: int = NUM_CLASSES) -> np.ndarray:
  """Picks `count` indices into `labels`, equally many per class, in random order.

  Each class gets `count // num_classes`; the remaining `count % num_classes` go one
  each to distinct classes drawn with `rng`. Raises ValueError when a class has fewer
  examples than it needs.
  """
  per_class = np.full(num_classes, count // num_classes)
  per_class[rng.choice(num_classes, count % num_classes, replace=False)] += 1
  chosen = []
  for c in range(num_classes):
    pool = np.flatnonzero(labels == c)
    if per_class[c] > pool.size:
      raise ValueError(f'class {c} has {pool.size} examples, {per_class[c]} needed')
    chosen.append(rng.choice(pool, per_class[c], replace=False))
  return rng.permutation(np.concatenate(chosen))


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a 2-D uint8 array (grayscale)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format='PNG')
  return buf.getvalue()


def _check_count(name: str, value, available: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be a positive integer, not {value!r}')
  if value <= 0:
    raise ValueError(f'{name} must be positive, got {value}')
  if value > available:
    raise ValueError(f'{name}={value} is more than the {available} examples available')
  return int(value)


def _default_out(train: int, eval_: int, seed: int, image_feature: str,
                 label_feature: str) -> Path:
  name = f'fashion_mnist-{train}-{eval_}-seed{seed}'
  if (image_feature, label_feature) != ('image', 'label'):
    safe = lambda s: re.sub(r'[^A-Za-z0-9_.-]', '_', s)
    name += f'-{safe(image_feature)}-{safe(label_feature)}'
  return data_dir() / 'datasets' / name


def _write_split(path: Path, images: np.ndarray, labels: np.ndarray,
                 image_feature: str, label_feature: str) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for image, label in zip(images, labels):
      example = tf.train.Example(features=tf.train.Features(feature={
          image_feature: tf.train.Feature(
              bytes_list=tf.train.BytesList(value=[encode_png(image)])),
          label_feature: tf.train.Feature(
              int64_list=tf.train.Int64List(value=[int(label)])),
      }))
      writer.write(example.SerializeToString())


def prepare(train_examples: int, eval_examples: int, seed: int = 0,
            out_dir: Optional[Union[str, Path]] = None, *,
            image_feature: str = 'image', label_feature: str = 'label',
            path_only: bool = False) -> Path:
  """Writes a balanced, seeded Fashion-MNIST subset as tf.Example TFRecords; returns its folder.

  Args:
    train_examples: examples drawn from the official train split (at most 60000) into
      `<out>/train/data.tfrecord`.
    eval_examples: examples drawn from the official test split (at most 10000) into
      `<out>/eval/data.tfrecord`.
    seed: seeds the draw; the eval subset depends only on seed and eval_examples.
    out_dir: where to write; default
      `data_dir()/datasets/fashion_mnist-{train}-{eval}-seed{seed}` (with the feature
      names appended when they are not image/label).
    image_feature: feature name of the PNG bytes.
    label_feature: feature name of the int64 class id.
    path_only: return the folder the arguments name (checked) without fetching
      or writing anything.

  Each split holds `n // 10` examples of every class, and the `n % 10` left over go
  one each to distinct seeded-random classes; the records are in random order.
  Idempotent: a folder with a matching `.complete` marker is returned at once; one
  prepared with other arguments raises ValueError. The data is written to a temporary
  sibling folder and renamed into place, so `out` never holds a partial result.
  """
  train_examples = _check_count('train_examples', train_examples, SPLIT_SIZES['train'])
  eval_examples = _check_count('eval_examples', eval_examples, SPLIT_SIZES['test'])
  seed = common.check_seed(seed)
  common.check_features('image_feature', image_feature, label_feature)

  out = (Path(out_dir) if out_dir is not None else
         _default_out(train_examples, eval_examples, seed, image_feature,
                      label_feature)).resolve()
  if path_only:  # where it is (or would be) written; nothing fetched
    return out
  wanted = dict(train_examples=train_examples, eval_examples=eval_examples, seed=seed,
                image_feature=image_feature, label_feature=label_feature)
  if common.prepared(out, wanted, _MARKER_KEYS, _WHAT):
    return out

  def write(tmp: Path) -> dict:
    counts = {}
    for split, official, count, stream in (('train', 'train', train_examples, 0),
                                           ('eval', 'test', eval_examples, 1)):
      images, labels = load_split(official)
      if count > labels.shape[0]:
        arg = 'train_examples' if split == 'train' else 'eval_examples'
        raise ValueError(f'{arg}={count} is more than the {labels.shape[0]} examples '
                         f'in the official {official} split')
      rng = np.random.default_rng([seed, stream])
      try:
        idx = balanced_indices(labels, count, rng)
      except ValueError as e:
        arg = 'train_examples' if split == 'train' else 'eval_examples'
        raise ValueError(f'{arg}={count}: {e}') from e
      _write_split(tmp / split / 'data.tfrecord', images[idx], labels[idx],
                   image_feature, label_feature)
      per_class = np.bincount(labels[idx], minlength=NUM_CLASSES)
      counts[split] = {name: int(n) for name, n in zip(CLASS_NAMES, per_class)}
    (tmp / 'classes.txt').write_text(''.join(f'{n}\n' for n in CLASS_NAMES))
    return dict(wanted, dataset='fashion-mnist',
                source=f'{DEB_NAME}={DEB_VERSION}', counts=counts)

  return common.write_prepared(out, wanted, _MARKER_KEYS, _WHAT, write)
