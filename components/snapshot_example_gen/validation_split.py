"""Carves the validation split out of train: seeded, stratified by label.

TFX's ExampleGen divides one input split by hash buckets, but it cannot
divide train further once the data comes as train/ and eval/ folders, and a
hash bucket per example is stratified only on average: a class of 12
examples may end up with none in validation. Here every example gets a
seeded hash of its bytes; per class, the `fraction` of its examples with the
smallest hashes go to validation (at least one when the class has two or
more, never the last one; identical records count once and go together).
ExampleGen applies it while it writes train (content_order.py): only
(label, hash) pairs are grouped, not the examples, a few dozen bytes per
example, on one worker per class.

The same data and seed give the same split on every run and every runner;
another seed gives another split.
"""

import hashlib
from typing import Iterable, Tuple, Union

import tensorflow as tf

Record = Union[bytes, tf.train.Example]


def _example(record: Record) -> tf.train.Example:
  return (tf.train.Example.FromString(record) if isinstance(record, bytes)
          else record)


def to_bytes(record: Record) -> bytes:
  """The record's bytes (a tf.Example serialized deterministically)."""
  return (record if isinstance(record, bytes)
          else record.SerializeToString(deterministic=True))


def label_of(record: Record, label_feature: str) -> str:
  """The example's label as text ('' when it has none: the schema check
  reports that; here it is one more stratum)."""
  feature = _example(record).features.feature
  if label_feature not in feature:
    return ''
  value = feature[label_feature]
  kind = value.WhichOneof('kind')
  values = list(getattr(value, kind).value) if kind else []
  return repr(values[0]) if values else ''


def hash_int(record: Record, seed: int, salt: str = '') -> int:
  """A seeded, uniform 64-bit integer from the example's bytes (`salt`
  keeps hashes drawn for different purposes independent)."""
  prefix = f'{salt}:{seed}:' if salt else f'{seed}:'
  digest = hashlib.sha256(prefix.encode() + to_bytes(record)).digest()
  return int.from_bytes(digest[:8], 'big')


def hash_of(record: Record, seed: int, salt: str = '') -> float:
  """hash_int as a number in [0, 1)."""
  return hash_int(record, seed, salt) / 2.0**64


def count_for(total: int, fraction: float) -> int:
  """How many of a class's `total` examples go to validation."""
  if total < 2:
    return 0
  return min(total - 1, max(1, round(fraction * total)))


def cut(item: Tuple[str, Iterable[float]], fraction: float
        ) -> Tuple[str, float]:
  """(label, the largest hash that goes to validation; -1: none)."""
  label, hashes = item
  # Identical records share a hash and go the same way: count distinct ones,
  # so that a class of copies keeps one in train.
  hashes = sorted(set(hashes))
  count = count_for(len(hashes), fraction)
  return label, (hashes[count - 1] if count else -1.0)
