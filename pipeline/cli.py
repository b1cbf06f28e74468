"""The `hubpipe` command line.

  hubpipe run [--config FILE] [--workdir DIR] [--pipeline-root URI]
                                                run the DAG locally
  hubpipe assets [--config FILE]                fetch and build what a config needs
  hubpipe modules list                          the modules hubpipe builds offline
  hubpipe modules build NAME|--all [--force]    fetch, check and convert
  hubpipe modules inspect HANDLE [--json]       what a module takes and gives
  hubpipe compile --target kubeflow --output FILE.yaml [--config FILE]
      [--image IMAGE] [--pipeline-root URI] [--data-root URI]
                                                the same DAG for Kubeflow
  hubpipe schedule --cron EXPR --package FILE.yaml [--endpoint URL]
      [--experiment NAME] [--name NAME]         a recurring run on Kubeflow
"""

import argparse
import json
import os
import signal
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


def _interrupt(signum, frame):
  raise KeyboardInterrupt(f'signal {signum}')


def cmd_run(args) -> int:
  from hubpipe.pipeline import local_runner, summary
  from hubpipe.pipeline.config import ConfigError, load_config
  try:
    config = load_config(args.config)
  except ConfigError as err:
    print(f'hubpipe: bad config: {err}', file=sys.stderr)
    if args.workdir:  # without it, the work dir is the config's to name
      local_runner.record_failure(args.workdir, args.config, 'config',
                                  f'config: {err}')
    return 2
  from hubpipe.pipeline import workdir_lock
  workdir = args.workdir or os.path.join('work', config.name)
  # SIGTERM (a pod being stopped, `kill`) ends the run as Ctrl-C does: the
  # summary says where it stopped, the copy in progress is cleaned up.
  signal.signal(signal.SIGTERM, _interrupt)
  try:
    result = local_runner.run(config, workdir, pipeline_root=args.pipeline_root,
                              wait=args.wait)
  except workdir_lock.WorkdirBusy as err:
    print(f'hubpipe: {err}', file=sys.stderr)
    return workdir_lock.EXIT_BUSY
  print()
  print(summary.render(result))
  if result['status'] in ('succeeded', 'not_blessed'):
    return 0
  if result['status'] == 'interrupted':
    return 130  # as a shell reports a command stopped by SIGINT
  # 2: the config or its module is wrong; 1: the data, storage or a step.
  return 2 if result.get('failed_step') in local_runner.CONFIG_ERRORS else 1


def cmd_assets(args) -> int:
  """Fetches the data set and builds the modules the config names (idempotent)."""
  from hubpipe.pipeline import local_runner
  config = _load(args.config)
  try:
    inputs = local_runner.prepare_inputs(config)
  except (ValueError, RuntimeError) as err:
    print(f'hubpipe: {err}', file=sys.stderr)
    return 1
  print(f'data: {inputs.input_base}')
  for handle in filter(None, (config.module.handle, config.module.control_handle,
                              inputs.preprocessor)):
    print(f'module: {handle}')
  return 0


def _megabytes(size):
  return 'n/a' if size is None else f'{size / 1e6:.1f} MB'


def cmd_modules(args) -> int:
  from hubpipe.components.hub_modules import registry
  if args.action == 'list':
    modules = sorted(registry.offline_modules().items())
    width = max(len(name) for name, _ in modules)
    for name, description in modules:
      print(f'{name:<{width}}  {description}')
    return 0
  if args.action == 'build' and args.all:
    for name in sorted(registry.offline_modules()):
      print(registry.build(name, force=args.force))
    return 0
  if not args.name:
    print(f'hubpipe: modules {args.action} needs a module', file=sys.stderr)
    return 2
  try:
    if args.action == 'build':
      print(registry.build(args.name, force=args.force))
      return 0
    from hubpipe.components.hub_modules import inspect
    info = inspect.describe(args.name)
  except (ValueError, RuntimeError) as err:
    print(f'hubpipe: {err}', file=sys.stderr)
    return 1
  if args.json:
    print(json.dumps(info.to_dict(), indent=2))
    return 0
  rows = [
      ('handle', f'{info.handle} ({info.kind})'),
      ('resolved', info.resolved),
      ('modality', info.modality),
      ('inputs', '; '.join(f'{k}: {v["dtype"]} {v["shape"]}'
                           for k, v in info.inputs.items())),
      ('value range', info.value_range or 'n/a'),
      ('input size', info.input_size or
       ('any' if info.modality == 'image' else 'n/a')),
      ('outputs', '; '.join(f'{k}: {v["dtype"]} {v["shape"]}'
                            for k, v in info.outputs.items())),
      ('output kind', f'{info.output_kind}'
                      f'{"" if info.output_dim is None else f" ({info.output_dim}-d)"}'),
      ('parameters', f'{info.parameters:,} ({info.trainable_parameters:,} trainable)'),
      ('size on disk', _megabytes(info.size_bytes)),
      ('training argument', info.has_training_argument),
      ('fine-tunable', info.fine_tunable),
      ('preprocessor', info.preprocessor or 'none (takes raw input)'),
  ]
  for key, value in rows:
    print(f'{key + ":":<19} {value}')
  return 0


def cmd_compile(args) -> int:
  """Compiles the config's DAG for Kubeflow Pipelines (KubeflowV2DagRunner)."""
  from hubpipe.components.hub_modules.inspect import IncompatibleModule
  from hubpipe.components.hub_modules.resolve import (ModuleNotFound,
                                                      ModuleUnavailable)
  from hubpipe.kubeflow import runner
  from hubpipe.pipeline.config import ConfigError
  config = _load(args.config)
  try:
    result = runner.compile_pipeline(
        config, args.output, image=args.image,
        pipeline_root=args.pipeline_root, data_root=args.data_root)
  except (ConfigError, IncompatibleModule, ModuleNotFound,
          ModuleUnavailable) as err:
    print(f'hubpipe: {err}', file=sys.stderr)
    return 2
  print(f'compiled "{config.name}" for Kubeflow Pipelines: {result["output"]}')
  print(f'  image:         {result["image"]}')
  print(f'  pipeline root: {result["pipeline_root"]}')
  print(f'  serving dir:   {result["serving_dir"]}')
  for component in result['components']:
    spec = result['resources'].get(component)
    print(f'  {component:<32} ' + (', '.join(
        f'{k} {v}' for k, v in spec.items()) if spec else 'no resources set'))
  return 0


def cmd_schedule(args) -> int:
  """Creates a KFP recurring run of a compiled pipeline."""
  from hubpipe.kubeflow import schedule
  try:
    result = schedule.create_recurring_run(
        args.package, args.cron, endpoint=args.endpoint,
        experiment=args.experiment, job_name=args.name,
        namespace=args.namespace)
  except schedule.ScheduleError as err:
    print(f'hubpipe: {err}', file=sys.stderr)
    return 2
  print(f'scheduled "{result["name"]}" ({result["cron"]}, no catch-up, one '
        f'run at a time) on {result["endpoint"]}: recurring run '
        f'{result["recurring_run_id"]} in experiment {result["experiment_id"]}')
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='hubpipe',
      description='Reuse pretrained TF Hub modules in a TFX pipeline.')
  sub = parser.add_subparsers(dest='command', required=True)
  run = sub.add_parser('run', help='run the pipeline locally (LocalDagRunner)')
  run.add_argument('--config', help='YAML config (default: the Fashion-MNIST demo)')
  run.add_argument('--workdir', help='work dir (default: work/<pipeline name>)')
  run.add_argument('--pipeline-root',
                   help='where artifacts go (default: <workdir>/pipeline_root),'
                   ' e.g. gs://BUCKET/hubpipe or s3://BUCKET/hubpipe; ML '
                   'Metadata, the log and the summary stay in the work dir')
  run.add_argument('--wait', action='store_true',
                   help='if another run holds the work dir, start when it '
                   'ends (default: stop at once, exit status 75)')
  run.set_defaults(func=cmd_run)
  assets = sub.add_parser('assets', help='fetch data and build modules for a config')
  assets.add_argument('--config', help='YAML config (default: the demo)')
  assets.set_defaults(func=cmd_assets)
  modules = sub.add_parser('modules', help='list, build or inspect Hub modules')
  modules.add_argument('action', choices=('list', 'build', 'inspect'))
  modules.add_argument('name', nargs='?',
                       help='build: an offline module; inspect: any handle')
  modules.add_argument('--force', action='store_true', help='build: rebuild')
  modules.add_argument('--all', action='store_true',
                       help='build: every offline module')
  modules.add_argument('--json', action='store_true', help='inspect: as JSON')
  modules.set_defaults(func=cmd_modules)
  comp = sub.add_parser('compile', help='compile the DAG for Kubeflow Pipelines')
  comp.add_argument('--target', choices=('kubeflow',), default='kubeflow')
  comp.add_argument('--config', help='YAML config (default: the demo)')
  comp.add_argument('--output', required=True, help='pipeline file (.yaml)')
  comp.add_argument('--image', help='container image (default: kubeflow.image)')
  comp.add_argument('--pipeline-root',
                    help='artifact root on the cluster (default: '
                    'kubeflow.pipeline_root), e.g. gs://BUCKET/hubpipe')
  comp.add_argument('--data-root',
                    help='the examples on the cluster (default: '
                    'kubeflow.data_root, or the copy in the image for the '
                    'bundled data sets)')
  comp.set_defaults(func=cmd_compile)
  sched = sub.add_parser('schedule',
                         help='schedule recurring runs on Kubeflow Pipelines')
  sched.add_argument('--cron', required=True,
                     help='cron expression, 5 fields ("0 3 * * *") or 6 with '
                     'seconds first')
  sched.add_argument('--package', required=True,
                     help='the compiled pipeline (hubpipe compile --output)')
  sched.add_argument('--endpoint',
                     help='KFP API address (default: $KFP_ENDPOINT)')
  sched.add_argument('--experiment', default='hubpipe')
  sched.add_argument('--name', help='recurring run name (default: '
                     '"<pipeline> (scheduled)")')
  sched.add_argument('--namespace', help='Kubeflow namespace (multi-user)')
  sched.set_defaults(func=cmd_schedule)
  args = parser.parse_args(argv)
  return args.func(args)


def entry() -> None:
  """The `hubpipe` console command."""
  from hubpipe.components import storage
  storage.exit_process(main())


if __name__ == '__main__':
  entry()
