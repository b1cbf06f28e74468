"""Writes a split so that its files depend on the examples, not on Beam.

TFX's WriteSplit (beam.io.WriteToTFRecord) lets the runner decide how many
shard files there are and which example lands where and in what order: two
ingestions of the same files give different shards. Everything downstream
that reads in file order then differs too (the Trainer's seeded shuffle,
the seeded samples of the selector and the Compressor), so the same data
could train a different model.

Here every example gets a seeded hash of its bytes (validation_split's, with
its own salt) and the split is written sorted by it, as an external sort
whose memory does not grow with the split (on DirectRunner a GroupByKey or
a side input over the examples would hold them all in memory):

1. Spill: each bundle appends its examples, unsorted, to one file per range
   of hashes (`ranges` of them, from the data's size) in a scratch folder.
2. Plan: only the files' names and byte counts are grouped; consecutive
   ranges are packed into shards of about SHARD_BYTES (serialized, before
   compression).
3. Merge: each shard reads its ranges' files, sorts them by hash and writes
   one gzipped TFRecord file, named as TFX names them, through Beam's
   FileSystems (gs:// and s3:// work as with WriteToTFRecord).

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
# Spill ranges at most: beyond 256 x SHARD_BYTES a shard is one range.
MAX_RANGES = 256
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
  """Spill ranges for a split of about `total_bytes`: four per shard, so that
  shards pack to about shard_bytes; few for small data (fewer files)."""
  return max(1, min(MAX_RANGES, 4 * math.ceil(total_bytes / shard_bytes)))


def shard_path(split_uri: str, shard: int, shards: int) -> str:
  return FileSystems.join(
      split_uri, f'{FILE_NAME}-{shard:05d}-of-{shards:05d}.gz')


class _Spill(beam.DoFn):
  """Appends each example to its hash range's file (one per range and
  bundle); at the end of the bundle emits (range, path, bytes) for each.
  With `carve`, also emits (label, carve hash) under the tag 'pairs'."""

  def __init__(self, spill_dir: str, seed: int, ranges: int,
               carve: Optional[Tuple[str, int]]):
    self._dir, self._seed, self._ranges, self._carve = (
        spill_dir, seed, ranges, carve)

  def start_bundle(self):
    self._files, self._bytes, self._paths = {}, collections.Counter(), {}
    self._bundle = uuid.uuid4().hex

  def process(self, record):
    data = validation_split.to_bytes(record)
    at = validation_split.hash_of(data, self._seed, SALT)
    part = min(self._ranges - 1, int(at * self._ranges))
    if part not in self._files:
      self._paths[part] = FileSystems.join(
          self._dir, f'{part:03d}-{self._bundle}.tfrecord')
      self._files[part] = FileSystems.create(
          self._paths[part], compression_type=CompressionTypes.UNCOMPRESSED)
    self._files[part].write(tfrecord(data))
    self._bytes[part] += len(data)
    if self._carve:
      label_feature, carve_seed = self._carve
      yield beam.pvalue.TaggedOutput('pairs', (
          validation_split.label_of(data, label_feature),
          validation_split.hash_of(data, carve_seed)))

  def finish_bundle(self):
    for part, f in self._files.items():
      f.close()
      yield window.GlobalWindows.windowed_value(
          (part, self._paths[part], self._bytes[part]))


def plan(spilled: Iterable[Tuple[int, str, int]], shard_bytes: int
         ) -> List[Tuple[int, int, List[str]]]:
  """(shard, shards, spill files) for every shard: consecutive ranges
  packed up to about shard_bytes; an empty split is one empty shard."""
  paths, size = collections.defaultdict(list), collections.Counter()
  for part, path, count in spilled:
    paths[part].append(path)
    size[part] += count
  shards, current, current_bytes = [], [], 0
  for part in sorted(paths):
    if current and current_bytes + size[part] > shard_bytes:
      shards.append(current)
      current, current_bytes = [], 0
    current += sorted(paths[part])
    current_bytes += size[part]
  shards.append(current)
  return [(i, len(shards), files) for i, files in enumerate(shards)]


def _write(split_uri: str, shard: int, shards: int,
           records: List[Tuple[float, bytes]]) -> None:
  # Identical records share a hash and their bytes: any tie order is the same.
  records.sort()
  with FileSystems.create(shard_path(split_uri, shard, shards),
                          compression_type=CompressionTypes.GZIP) as out:
    for _, data in records:
      out.write(tfrecord(data))


def _merge(item, split_uri: str, seed: int, carve, cuts: Dict[str, float]
           ) -> int:
  """Writes one shard (and with `carve` the same shard of validation) from
  its spill files. Returns the examples written."""
  shard, shards, files = item
  kept, carved = [], []
  for path in files:
    for data in read_tfrecords(path):
      key = (validation_split.hash_of(data, seed, SALT), data)
      if carve and validation_split.hash_of(data, carve['seed']) <= cuts[
          validation_split.label_of(data, carve['label_feature'])]:
        carved.append(key)
      else:
        kept.append(key)
  _write(split_uri, shard, shards, kept)
  if carve:
    _write(carve['uri'], shard, shards, carved)
  return len(kept) + len(carved)


def _remove(written: int, spill_dir: str) -> int:
  folder = spill_dir.rstrip('/')
  # Object stores delete a folder by its prefix, with the trailing slash;
  # the local file system deletes the folder itself.
  if '://' in folder:
    folder += '/'
  try:
    FileSystems.delete([folder])
  except BeamIOError as e:  # none made (an empty split), or already gone
    logging.info('spill folder %s not removed: %s', spill_dir, e)
  return written


@beam.ptransform_fn
def WriteInContentOrder(records, split_uri: str, seed: int, spill_dir: str,  # pylint: disable=invalid-name
                        ranges: int = 1, shard_bytes: int = SHARD_BYTES,
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
              lambda kv: plan([s for s in kv[1] if s is not None],
                              shard_bytes))
          | 'Distribute' >> beam.Reshuffle()
          | 'Merge' >> beam.Map(_merge, split_uri, seed, carve, cuts)
          | 'Count' >> beam.CombineGlobally(sum)
          | 'RemoveSpill' >> beam.Map(_remove, spill_dir))
