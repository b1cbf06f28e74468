"""Tests for hubpipe.components.datasets.fashion_mnist.

The tests that use the real data fetch the pinned .deb once into data_dir() (run with
HUBPIPE_DATA_DIR=/work/main/data to share the cache).
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import gzip
import io
import json
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from hubpipe.components.datasets import fashion_mnist as fm


def _records(path, image_feature='image', label_feature='label'):
  out = []
  for raw in tf.data.TFRecordDataset(str(path)):
    feature = tf.train.Example.FromString(raw.numpy()).features.feature
    assert set(feature) == {image_feature, label_feature}
    out.append((feature[image_feature].bytes_list.value[0],
                feature[label_feature].int64_list.value[0]))
  return out


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
  header = bytes([0, 0, type_code, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  return header + array.astype(array.dtype.newbyteorder('>')).tobytes()


# ---------------------------------------------------------------- read_idx


def test_read_idx_round_trip(tmp_path):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  (tmp_path / 'x-idx3-ubyte.gz').write_bytes(gzip.compress(_idx_bytes(images)))
  np.testing.assert_array_equal(fm.read_idx(tmp_path / 'x-idx3-ubyte.gz'), images)
  ints = np.array([1, -2, 70000], dtype=np.int32)
  (tmp_path / 'i-idx1').write_bytes(_idx_bytes(ints, 0x0C))
  got = fm.read_idx(tmp_path / 'i-idx1')
  np.testing.assert_array_equal(got, ints)
  assert got.dtype == np.int32 and got.dtype.isnative


@pytest.mark.parametrize('content, reason', [
    (gzip.compress(_idx_bytes(np.zeros((3, 28, 28), np.uint8)))[:-30],
     'cannot be decompressed'),
    (b'plain bytes, not gzip', 'cannot be decompressed'),
    (gzip.compress(b'\x01\x02\x08\x01' + b'\0' * 8), 'two zero bytes'),
    (gzip.compress(b'\x00\x00\x07\x01' + b'\0' * 8), 'unknown type code'),
    (gzip.compress(b'\x00\x00'), 'shorter than'),
    (gzip.compress(_idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-5]), 'truncated'),
    (gzip.compress(_idx_bytes(np.zeros((3,), np.uint8)) + b'extra'), 'data'),
], ids=['truncated-gzip', 'not-gzip', 'bad-magic', 'bad-type', 'short', 'truncated',
        'too-long'])
def test_read_idx_corrupt_file_names_it(tmp_path, content, reason):
  path = tmp_path / 'train-images-idx3-ubyte.gz'
  path.write_bytes(content)
  with pytest.raises(fm.IdxFormatError, match=reason) as info:
    fm.read_idx(path)
  assert str(path) in str(info.value)


def test_load_split_corrupt_source_names_file_and_fix(tmp_path, monkeypatch):
  src = tmp_path / 'unpacked' / 'usr' / 'share' / 'datasets' / 'fashion-mnist'
  src.mkdir(parents=True)
  labels = np.zeros(3, np.uint8)
  (src / 't10k-images-idx3-ubyte.gz').write_bytes(b'garbage')
  (src / 't10k-labels-idx1-ubyte.gz').write_bytes(gzip.compress(_idx_bytes(labels)))
  monkeypatch.setattr(fm, 'source_dir', lambda: src)
  with pytest.raises(fm.IdxFormatError) as info:
    fm.load_split('test')
  assert 't10k-images-idx3-ubyte.gz' in str(info.value)
  assert f'Remove {tmp_path / "unpacked"}' in str(info.value)


# ---------------------------------------------------------------- pure helpers


def test_balanced_indices_spreads_the_remainder():
  labels = np.repeat(np.arange(10), 7)
  idx = fm.balanced_indices(labels, 23, np.random.default_rng(5))
  assert len(set(idx.tolist())) == 23
  counts = np.bincount(labels[idx], minlength=10)
  assert counts.sum() == 23 and set(counts.tolist()) == {2, 3}
  again = fm.balanced_indices(labels, 23, np.random.default_rng(5))
  np.testing.assert_array_equal(idx, again)
  with pytest.raises(ValueError, match='class'):
    fm.balanced_indices(labels, 71, np.random.default_rng(0))


@pytest.mark.parametrize('kwargs, name', [
    (dict(train_examples=0, eval_examples=5), 'train_examples'),
    (dict(train_examples=-3, eval_examples=5), 'train_examples'),
    (dict(train_examples=60001, eval_examples=5), 'train_examples'),
    (dict(train_examples=2.5, eval_examples=5), 'train_examples'),
    (dict(train_examples=True, eval_examples=5), 'train_examples'),
    (dict(train_examples=5, eval_examples=0), 'eval_examples'),
    (dict(train_examples=5, eval_examples=10001), 'eval_examples'),
    (dict(train_examples=5, eval_examples='10'), 'eval_examples'),
    (dict(train_examples=5, eval_examples=5, seed=-1), 'seed'),
    (dict(train_examples=5, eval_examples=5, image_feature=''), 'image_feature'),
    (dict(train_examples=5, eval_examples=5, label_feature='image'), 'label_feature'),
])
def test_prepare_validates_arguments(tmp_path, kwargs, name):
  with pytest.raises(ValueError, match=name):
    fm.prepare(out_dir=tmp_path / 'out', **kwargs)
  assert not (tmp_path / 'out').exists()


def test_class_names():
  assert len(fm.CLASS_NAMES) == 10
  assert fm.CLASS_NAMES[0] == 'T-shirt/top' and fm.CLASS_NAMES[9] == 'Ankle boot'


# ---------------------------------------------------------------- real data


def test_load_split_shapes():
  images, labels = fm.load_split('test')
  assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)


def test_prepare_balanced_png_and_idempotent(tmp_path):
  out = fm.prepare(50, 20, seed=0, out_dir=tmp_path / 'fm')
  assert out == (tmp_path / 'fm').resolve()
  train, eval_ = _records(out / 'train' / 'data.tfrecord'), _records(
      out / 'eval' / 'data.tfrecord')
  assert len(train) == 50 and len(eval_) == 20
  np.testing.assert_array_equal(np.bincount([l for _, l in train]), [5] * 10)
  np.testing.assert_array_equal(np.bincount([l for _, l in eval_]), [2] * 10)
  for png, _ in train[:5] + eval_[:5]:
    image = Image.open(io.BytesIO(png))
    assert image.format == 'PNG' and image.size == (28, 28) and image.mode == 'L'
    assert tf.io.decode_png(png).shape == (28, 28, 1)
  # The images are real Fashion-MNIST images of the labelled class.
  test_images, test_labels = fm.load_split('test')
  for png, label in eval_[:3]:
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    matches = np.flatnonzero((test_images == pixels).all(axis=(1, 2)))
    assert matches.size and label in test_labels[matches]
  assert (out / 'classes.txt').read_text().splitlines() == list(fm.CLASS_NAMES)
  marker = json.loads((out / '.complete').read_text())
  assert marker['train_examples'] == 50 and marker['eval_examples'] == 20
  assert sum(marker['counts']['train'].values()) == 50

  stamp = (out / '.complete').stat().st_mtime_ns
  start = time.monotonic()
  assert fm.prepare(50, 20, seed=0, out_dir=tmp_path / 'fm') == out
  assert time.monotonic() - start < 0.5
  assert (out / '.complete').stat().st_mtime_ns == stamp
  with pytest.raises(ValueError, match='already holds'):
    fm.prepare(50, 20, seed=1, out_dir=tmp_path / 'fm')
  assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]


def test_prepare_seeding(tmp_path):
  a = fm.prepare(23, 11, seed=0, out_dir=tmp_path / 'a')
  b = fm.prepare(23, 11, seed=0, out_dir=tmp_path / 'b')
  c = fm.prepare(23, 11, seed=1, out_dir=tmp_path / 'c')
  d = fm.prepare(30, 11, seed=0, out_dir=tmp_path / 'd')
  read = lambda out, split: _records(out / split / 'data.tfrecord')
  assert read(a, 'train') == read(b, 'train') and read(a, 'eval') == read(b, 'eval')
  assert read(a, 'train') != read(c, 'train')
  # The eval subset depends on seed and eval_examples only.
  assert read(a, 'eval') == read(d, 'eval')
  counts = np.bincount([l for _, l in read(a, 'train')], minlength=10)
  assert counts.sum() == 23 and set(counts.tolist()) == {2, 3}


def test_prepare_feature_names_and_existing_folder(tmp_path):
  out = fm.prepare(10, 10, out_dir=tmp_path / 'named',
                   image_feature='image/encoded', label_feature='y')
  assert len(_records(out / 'train' / 'data.tfrecord', 'image/encoded', 'y')) == 10
  (tmp_path / 'empty').mkdir()
  assert fm.prepare(10, 10, out_dir=tmp_path / 'empty') == (tmp_path / 'empty')
  (tmp_path / 'foreign').mkdir()
  (tmp_path / 'foreign' / 'file').write_text('x')
  with pytest.raises(ValueError, match='no .complete marker'):
    fm.prepare(10, 10, out_dir=tmp_path / 'foreign')


def test_prepare_default_out_dir():
  out = fm.prepare(50, 20)
  assert out == fm.data_dir() / 'datasets' / 'fashion_mnist-50-20-seed0'
  assert (out / '.complete').exists() and (out / 'train' / 'data.tfrecord').exists()


def test_path_only_names_the_folder_without_writing_it(tmp_path, monkeypatch):
  monkeypatch.setenv('HUBPIPE_DATA_DIR', str(tmp_path))
  folder = fm.prepare(7, 3, seed=99, path_only=True)
  assert folder.name == 'fashion_mnist-7-3-seed99'
  assert not folder.exists() and not any(tmp_path.iterdir())
  with pytest.raises(ValueError, match='seed'):
    fm.prepare(7, 3, seed=-1, path_only=True)
