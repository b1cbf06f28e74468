"""The `hubpipe` command line.

  hubpipe run [--config FILE] [--workdir DIR]   run the DAG locally
  hubpipe assets [--config FILE]                fetch and build what a config needs
"""

import argparse
import os
import sys
import warnings

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Google client libraries warn about Python versions on import, in every Beam
# worker process too (they inherit this variable).
os.environ.setdefault('PYTHONWARNINGS', 'ignore::FutureWarning')
warnings.filterwarnings('ignore', category=FutureWarning)


def _load(path):
  from hubpipe.pipeline.config import ConfigError, load_config
  try:
    return load_config(path)
  except ConfigError as err:
    print(f'hubpipe: bad config: {err}', file=sys.stderr)
    sys.exit(2)


def cmd_run(args) -> int:
  from hubpipe.pipeline import local_runner, summary
  config = _load(args.config)
  workdir = args.workdir or os.path.join('work', config.name)
  result = local_runner.run(config, workdir)
  print()
  print(summary.render(result))
  return 0 if result['status'] in ('succeeded', 'not_blessed') else 1


def cmd_assets(args) -> int:
  """Fetches the data set and builds the modules the config names (idempotent)."""
  from hubpipe.components.assets import AssetError
  from hubpipe.pipeline import local_runner
  config = _load(args.config)
  try:
    input_base, input_size = local_runner.prepare_inputs(config)
    print(f'data: {input_base}')
    from hubpipe.components.hub_modules import resolve
    for handle in filter(None, (config.module.handle,
                                config.module.control_handle)):
      print(f'module {handle}: {resolve.resolve(handle)}')
  except (AssetError, ValueError) as err:
    print(f'hubpipe: {err}', file=sys.stderr)
    return 1
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='hubpipe',
      description='Reuse pretrained TF Hub modules in a TFX pipeline.')
  sub = parser.add_subparsers(dest='command', required=True)
  run = sub.add_parser('run', help='run the pipeline locally (LocalDagRunner)')
  run.add_argument('--config', help='YAML config (default: the Fashion-MNIST demo)')
  run.add_argument('--workdir', help='work dir (default: work/<pipeline name>)')
  run.set_defaults(func=cmd_run)
  assets = sub.add_parser('assets', help='fetch data and build modules for a config')
  assets.add_argument('--config', help='YAML config (default: the demo)')
  assets.set_defaults(func=cmd_assets)
  args = parser.parse_args(argv)
  return args.func(args)


if __name__ == '__main__':
  sys.exit(main())
