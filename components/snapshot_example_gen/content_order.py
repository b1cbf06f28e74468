"""Writes a split so that its files depend on the examples, not on Beam.

TFX's WriteSplit (beam.io.WriteToTFRecord) lets the runner decide how many
shard files there are and which example lands where and in what order: two
ingestions of the same files give different shards. Everything downstream
that reads in file order then differs too (the Trainer's seeded shuffle,
the seeded samples of the selector and the Compressor), so the same data
could train a different model.

Here every example gets a seeded hash of its bytes (validation_split's, with
its own salt); the number of shards follows from the split's size
(SHARD_BYTES each, before compression); shard i holds the i-th range of
hashes, sorted by hash. The same examples and seed give byte-identical
files on every run and every runner, and a class-sorted or span-ordered
delivery is spread evenly over the files. The price is a GroupByKey over the
split (each shard's records on one worker, SHARD_BYTES at most on average),
where WriteToTFRecord writes bundles as they come.

The files are gzipped TFRecords named as TFX names them, written through
Beam's FileSystems (so gs:// and s3:// work as with WriteToTFRecord).
"""

import math
import struct

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
import crcmod.predefined  # Beam's own dependency for TFRecords

from hubpipe.components.snapshot_example_gen import validation_split

# Serialized bytes per shard file (before compression).
SHARD_BYTES = 64 << 20
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


def shard_count(total_bytes: int, shard_bytes: int = SHARD_BYTES) -> int:
  return max(1, math.ceil(total_bytes / shard_bytes))


def shard_path(split_uri: str, shard: int, shards: int) -> str:
  return FileSystems.join(
      split_uri, f'{FILE_NAME}-{shard:05d}-of-{shards:05d}.gz')


def _write_shard(item, split_uri: str, shards: int) -> str:
  shard, grouped = item
  path = shard_path(split_uri, shard, shards)
  # Identical records share a hash and their bytes: any tie order is the same.
  records = sorted(grouped['records'])
  with FileSystems.create(path, compression_type=CompressionTypes.GZIP) as out:
    for _, data in records:
      out.write(tfrecord(data))
  return path


@beam.ptransform_fn
def WriteInContentOrder(records, split_uri: str, seed: int,  # pylint: disable=invalid-name
                        shard_bytes: int = SHARD_BYTES):
  """Writes `records` (tf.Examples or their bytes) to `split_uri` (see the
  module docstring); every shard is written, an empty split as one empty
  file. Returns the PCollection of written paths."""
  keyed = records | 'Key' >> beam.Map(
      lambda r: (lambda data: (validation_split.hash_of(data, seed, SALT),
                               data))(validation_split.to_bytes(r)))
  shards = (keyed
            | 'Bytes' >> beam.Map(lambda k: len(k[1]))
            | 'Total' >> beam.CombineGlobally(sum)
            | 'Shards' >> beam.Map(shard_count, shard_bytes))
  by_shard = keyed | 'ToShard' >> beam.Map(
      lambda k, n: (min(n - 1, int(k[0] * n)), k),
      n=beam.pvalue.AsSingleton(shards))
  every_shard = shards | 'EveryShard' >> beam.FlatMap(
      lambda n: [(i, None) for i in range(n)])
  return ({'records': by_shard, 'shard': every_shard}
          | 'Group' >> beam.CoGroupByKey()
          | 'Write' >> beam.Map(_write_shard, split_uri,
                                beam.pvalue.AsSingleton(shards)))
