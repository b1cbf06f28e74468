"""Peak memory of ExampleGen's writer against TFX's, side by side.

Writes N random 200 KB records (incompressible, like JPEGs) with TFX's
WriteSplit (what TFX's ExampleGen executors write with: a Reshuffle, then
beam.io.WriteToTFRecord) and with hubpipe's content-order writer
(components/snapshot_example_gen/content_order.py), each in its own process
on DirectRunner (in_memory: everything in the one process, so its peak RSS
counts it all), at two data sizes, and prints the peak RSS of each, its
growth over the RSS after imports, and the ratios. The content-order writer
sorts externally (spill buffers per hash range, one shard in memory at a
time), so its peak should not grow with the data.

  python benchmarks/example_gen_memory.py [--sizes-mb 150 600]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

RECORD_BYTES = 200 * 1024


def _rss_mb() -> float:
  with open('/proc/self/status') as status:
    for line in status:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  return 0.0


def _child(writer: str, megabytes: int, folder: str) -> None:
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import PipelineOptions
  from tfx.components.example_gen import write_split
  from tfx.proto import example_gen_pb2
  from hubpipe.components.snapshot_example_gen import content_order

  base = _rss_mb()
  count = megabytes * (1 << 20) // RECORD_BYTES

  def record(i):
    return os.urandom(RECORD_BYTES - 16) + b'%016d' % i

  start = time.time()
  options = PipelineOptions(direct_running_mode='in_memory')
  with beam.Pipeline(options=options) as p:
    records = (p | beam.Create(range(count)) | beam.Reshuffle()
               | beam.Map(record))
    if writer == 'tfx':
      _ = records | write_split.WriteSplit(
          folder, example_gen_pb2.FORMAT_TFRECORDS_GZIP, {})
    else:
      _ = records | content_order.WriteInContentOrder(
          folder, 0, folder + '.spill',
          ranges=content_order.ranges_for(megabytes << 20))
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps({'peak_mb': peak, 'growth_mb': peak - base,
                    'seconds': time.time() - start,
                    'files': len(os.listdir(folder))}))


def _measure(writer, megabytes):
  with tempfile.TemporaryDirectory() as tmp:
    out = subprocess.run(
        [sys.executable, __file__, '--child', writer, str(megabytes),
         os.path.join(tmp, 'out')], check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--sizes-mb', type=int, nargs=2, default=[150, 600])
  parser.add_argument('--child', nargs=3)
  args = parser.parse_args()
  if args.child:
    writer, megabytes, folder = args.child
    _child(writer, int(megabytes), folder)
    return
  small, large = args.sizes_mb
  rows = {}
  for writer in ('tfx', 'content_order'):
    for size in (small, large):
      rows[writer, size] = result = _measure(writer, size)
      print(f'{writer:14s} {size:5d} MB: peak RSS {result["peak_mb"]:6.0f} MB'
            f' (+{result["growth_mb"]:.0f} MB after imports),'
            f' {result["seconds"]:5.1f} s, {result["files"]} files')
  for writer in ('tfx', 'content_order'):
    ratio = rows[writer, large]['peak_mb'] / rows[writer, small]['peak_mb']
    print(f'{writer}: peak at {large} MB / at {small} MB = {ratio:.2f}x')
  for size in (small, large):
    ratio = rows['content_order', size]['peak_mb'] / rows['tfx', size]['peak_mb']
    time_ratio = (rows['content_order', size]['seconds'] /
                  rows['tfx', size]['seconds'])
    print(f'{size} MB: content_order / tfx peak = {ratio:.2f}x, '
          f'time = {time_ratio:.2f}x')


if __name__ == '__main__':
  main()
