"""Writes a split so that its files depend on the examples, not on Beam.

TFX's WriteSplit (beam.io.WriteToTFRecord) lets the runner decide how many
shard files there are and which example lands where and in what order: two
ingestions of the same files give different shards. Everything downstream
that reads in file order then differs too (the Trainer's seeded shuffle,
the seeded samples of the selector and the Compressor), so the same data
could train a different model.

Here every example gets a seeded 64-bit hash of its bytes (validation_split's,
with its own salt) and the split is written sorted by it, as an external
sort (on DirectRunner a GroupByKey or a side input over the examples would
hold them all in memory):

1. Spill: each bundle buffers its examples by range of hashes (`ranges` of
   them, sized from an estimate of the data) and writes each range's buffer
   to a new file in a scratch folder when SPILL_BUFFER_BYTES are held and
   at the end of the bundle.
2. Plan: only the files' names and byte counts are grouped. The split's
   serialized bytes alone set the number of shards, N = ceil(bytes /
   SHARD_BYTES); shard j is the j-th of N equal ranges of hashes, and reads
   the spill files of the ranges that overlap it.
3. Merge: each shard keeps its own hashes from those files, sorts them and
   writes one gzipped TFRecord file, named as TFX names them, through
   Beam's FileSystems (gs:// and s3:// work as with WriteToTFRecord).

Memory: a spilling bundle's buffer, and one shard (about SHARD_BYTES, more
when many examples are identical) in each merging worker; with the carve,
also a few dozen bytes per example of train for the per-class cuts.

With `carve`, the split is train and validation is carved out of it while it
is written (validation_split.py): the spill also emits each example's
(label, carve hash), the per-class cuts are computed from those pairs
alone, and the merge sends each example to train's or validation's shard.

The same examples and seed give the same records in the same files on every
run and every runner (the gzip bytes, as far as zlib gives the same output),
and a class-sorted or span-ordered delivery is spread evenly over the files.
Identical records share a hash, so they land in one shard however many
there are.
"""

import collections
import logging
import math
import struct
import uuid
from typing import Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window
import crcmod.predefined  # Beam's own dependency for TFRecords

from hubpipe.components.snapshot_example_gen import validation_split

# Serialized bytes per shard file (before compression).
SHARD_BYTES = 64 << 20
# Spill ranges at most: beyond 256 x SHARD_BYTES a shard reads more spill
# than it keeps (it filters as it reads: more I/O, not more memory).
MAX_RANGES = 256
# Examples a spilling bundle buffers before it writes them out.
SPILL_BUFFER_BYTES = 64 << 20
FILE_NAME = 'data_tfrecord'
# The order's hash is salted apart from the validation carve's, so that the
# carve (smallest hashes per class) is not also the first shard.
SALT = 'order'

_crc32c = crcmod.predefined.mkPredefinedCrcFun('crc-32c')


def _masked_crc(data: bytes) -> int:
  crc = _crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xa282ead8) & 0xffffffff


def tfrecord(data: bytes) -> bytes:
  """One record in TFRecord framing (length, its masked CRC-32C, the data,
  its masked CRC-32C)."""
  length = struct.pack('<Q', len(data))
  return b''.join([length, struct.pack('<I', _masked_crc(length)), data,
                   struct.pack('<I', _masked_crc(data))])


def read_tfrecords(path: str) -> Iterable[bytes]:
  """The records of an uncompressed TFRecord file, CRCs checked."""
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED
                        ) as f:
    while True:
      head = f.read(12)
      if not head:
        return
      length = head[:8]
      data = f.read(struct.unpack('<Q', length)[0])
      crc = f.read(4)
      if (len(head) < 12 or struct.unpack('<I', head[8:])[0] != _masked_crc(
          length) or len(crc) < 4 or struct.unpack('<I', crc)[0] !=
          _masked_crc(data)):
        raise IOError(f'{path}: a truncated or corrupt record.')
      yield data


def ranges_for(total_bytes: int, shard_bytes: int = SHARD_BYTES) -> int:
  """Spill ranges for a split of about `total_bytes` (an estimate: it
  changes which spill files a shard reads, never what the shards hold):
  four per shard, few for small data (fewer files)."""
  return max(1, min(MAX_RANGES, 4 * math.ceil(total_bytes / shard_bytes)))


def shard_path(split_uri: str, shard: int, shards: int) -> str:
  return FileSystems.join(
      split_uri, f'{FILE_NAME}-{shard:05d}-of-{shards:05d}.gz')


def part_of(hashed: int, parts: int) -> int:
  """Which of `parts` equal ranges of 64-bit hashes holds `hashed`."""
  return (hashed * parts) >> 64


def _bounds(part: int, parts: int) -> Tuple[int, int]:
  """The smallest and largest 64-bit hash in range `part` of `parts`."""
  first = lambda p: -((-p << 64) // parts)  # ceil(p * 2**64 / parts)
  return first(part), first(part + 1) - 1


def ranges_of(shard: int, shards: int, ranges: int) -> List[int]:
  """The spill ranges that hold hashes of `shard` (exact, in integers)."""
  low, high = _bounds(shard, shards)
  return [r for r in range(ranges)
          if max(low, _bounds(r, ranges)[0]) <= min(high, _bounds(r, ranges)[1])]


class _Spill(beam.DoFn):
  """Buffers each example under its hash range and, when the bundle's
  buffers reach SPILL_BUFFER_BYTES and at its end, writes each range's
  buffer to a new spill file (created, written and closed at once: no
  handle stays open, whatever the file system buffers per handle). At the
  end of the bundle emits (range, path, bytes) for each file. With `carve`,
  also emits (label, carve hash) under the tag 'pairs'."""

  def __init__(self, spill_dir: str, seed: int, ranges: int,
               carve: Optional[Tuple[str, int]]):
    self._dir, self._seed, self._ranges, self._carve = (
        spill_dir, seed, ranges, carve)

  def start_bundle(self):
    self._buffers, self._buffered = collections.defaultdict(list), 0
    self._spilled = []

  def process(self, record):
    data = validation_split.to_bytes(record)
    part = part_of(validation_split.hash_int(data, self._seed, SALT),
                   self._ranges)
    self._buffers[part].append(data)
    self._buffered += len(data)
    if self._buffered >= SPILL_BUFFER_BYTES:
      self._flush()
    if self._carve:
      label_feature, carve_seed = self._carve
      yield beam.pvalue.TaggedOutput('pairs', (
          validation_split.label_of(data, label_feature),
          validation_split.hash_of(data, carve_seed)))

  def _flush(self):
    for part, records in sorted(self._buffers.items()):
      path = FileSystems.join(self._dir, f'{part:03d}-{uuid.uuid4().hex}')
      with FileSystems.create(
          path, compression_type=CompressionTypes.UNCOMPRESSED) as out:
        out.write(b''.join(tfrecord(data) for data in records))
      self._spilled.append((part, path, sum(len(data) for data in records)))
    self._buffers.clear()
    self._buffered = 0

  def finish_bundle(self):
    self._flush()
    for spilled in self._spilled:
      yield window.GlobalWindows.windowed_value(spilled)


def plan(spilled: Iterable[Tuple[int, str, int]], ranges: int,
         shard_bytes: int) -> List[Tuple[int, int, List[str]]]:
  """(shard, shards, spill files to read) for every shard. The number of
  shards follows from the split's serialized bytes alone; shard j holds the
  j-th of that many equal ranges of hashes, so the layout depends on the
  examples, not on `ranges` or the bundles. An empty split is one empty
  shard."""
  files, total = collections.defaultdict(list), 0
  for part, path, count in spilled:
    files[part].append(path)
    total += count
  shards = max(1, math.ceil(total / shard_bytes))
  return [(j, shards, sorted(p for r in ranges_of(j, shards, ranges)
                             for p in files[r]))
          for j in range(shards)]


def _write(split_uri: str, shard: int, shards: int,
           records: List[Tuple[int, bytes]]) -> None:
  # Identical records share a hash and their bytes: any tie order is the same.
  records.sort()
  with FileSystems.create(shard_path(split_uri, shard, shards),
                          compression_type=CompressionTypes.GZIP) as out:
    for _, data in records:
      out.write(tfrecord(data))


def _merge(item, split_uri: str, seed: int, carve, cuts: Dict[str, float]
           ) -> int:
  """Writes one shard (and with `carve` the same shard of validation) from
  the spill files of its ranges, keeping only its own hashes. Returns the
  examples written."""
  shard, shards, files = item
  kept, carved = [], []
  for path in files:
    for data in read_tfrecords(path):
      hashed = validation_split.hash_int(data, seed, SALT)
      if part_of(hashed, shards) != shard:
        continue
      if carve and validation_split.hash_of(data, carve['seed']) <= cuts[
          validation_split.label_of(data, carve['label_feature'])]:
        carved.append((hashed, data))
      else:
        kept.append((hashed, data))
  _write(split_uri, shard, shards, kept)
  if carve:
    _write(carve['uri'], shard, shards, carved)
  return len(kept) + len(carved)


def remove_folder(folder: str) -> None:
  """Removes a scratch folder (a warning if it cannot)."""
  folder = folder.rstrip('/')
  # Object stores delete a folder by its prefix, with the trailing slash;
  # the local file system deletes the folder itself.
  if '://' in folder:
    folder += '/'
  try:
    if FileSystems.exists(folder) or '://' in folder:
      FileSystems.delete([folder])
  except BeamIOError as e:
    logging.warning('scratch folder %s not removed: %s', folder, e)


def _remove(written: int, spill_dir: str) -> int:
  if written:  # an empty split spilled nothing
    remove_folder(spill_dir)
  return written


@beam.ptransform_fn
def WriteInContentOrder(records, split_uri: str, seed: int, spill_dir: str,  # pylint: disable=invalid-name
                        ranges: int = MAX_RANGES,
                        shard_bytes: int = SHARD_BYTES,
                        carve: Optional[Dict] = None):
  """Writes `records` (tf.Examples or their bytes) to `split_uri` (see the
  module docstring). `spill_dir`: a scratch folder every worker can reach,
  one per split. `carve`: {'uri', 'label_feature', 'fraction', 'seed'}:
  carves that share of each class into the split at carve['uri'].
  Returns a PCollection of one element: the number of examples written.
  The spill folder is removed once every shard is written."""
  carve_args = (carve['label_feature'], carve['seed']) if carve else None
  spilled = records | 'Spill' >> beam.ParDo(
      _Spill(spill_dir, seed, ranges, carve_args)).with_outputs(
          'pairs', main='spilled')
  if carve:
    cuts = (spilled.pairs
            | 'GroupByLabel' >> beam.GroupByKey()
            | 'Cut' >> beam.Map(validation_split.cut, carve['fraction']))
    cuts = beam.pvalue.AsDict(cuts)
  else:
    cuts = beam.pvalue.AsDict(records.pipeline | 'NoCuts' >> beam.Create([]))
  pipeline = records.pipeline
  # One key for every split, even an empty one: the plan always runs.
  return ((spilled.spilled | 'Key' >> beam.Map(lambda s: (None, s)),
           pipeline | 'Always' >> beam.Create([(None, None)]))
          | 'Flatten' >> beam.Flatten()
          | 'Gather' >> beam.GroupByKey()
          | 'Plan' >> beam.FlatMap(
              lambda kv: plan([s for s in kv[1] if s is not None], ranges,
                              shard_bytes))
          | 'Distribute' >> beam.Reshuffle()
          | 'Merge' >> beam.Map(_merge, split_uri, seed, carve, cuts)
          | 'Count' >> beam.CombineGlobally(sum)
          | 'RemoveSpill' >> beam.Map(_remove, spill_dir))
