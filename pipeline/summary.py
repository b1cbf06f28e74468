"""The run summary: what ran, how long it took, what came out.

Everything here is read back from ML Metadata and the artifacts it points at, so
the summary describes the run as recorded, cached steps included.
"""

import json
import os
from typing import Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

STATES = {
    metadata_store_pb2.Execution.COMPLETE: 'complete',
    metadata_store_pb2.Execution.CACHED: 'cached',
    metadata_store_pb2.Execution.FAILED: 'failed',
    metadata_store_pb2.Execution.RUNNING: 'running',
    metadata_store_pb2.Execution.CANCELED: 'canceled',
    metadata_store_pb2.Execution.NEW: 'new',
}


def sqlite_store(path: str) -> metadata_store.MetadataStore:
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = path
  config.sqlite.connection_mode = (
      metadata_store_pb2.SqliteMetadataSourceConfig.READONLY)
  return metadata_store.MetadataStore(config)


def _prop(artifact, name):
  value = artifact.custom_properties.get(name)
  if value is None:
    return None
  kind = value.WhichOneof('value')
  return getattr(value, kind) if kind else None


def run_ids(metadata_path: str) -> set:
  """Ids of the pipeline runs ML Metadata holds so far (none when there is
  no database yet, or one the run itself will have to initialise or mend)."""
  from tfx.dsl.io import fileio
  if not fileio.exists(metadata_path):
    return set()
  try:
    return {c.id for c in
            sqlite_store(metadata_path).get_contexts_by_type('pipeline_run')}
  except Exception:  # pylint: disable=broad-except
    return set()


def _latest_run(store, pipeline_name: str, exclude_runs=()):
  runs = [c for c in store.get_contexts_by_type('pipeline_run')
          if c.id not in exclude_runs]
  pipeline = store.get_context_by_type_and_name('pipeline', pipeline_name)
  if pipeline is None or not runs:
    return None
  # Runs of this pipeline: those whose executions belong to the pipeline context.
  mine = {e.id for e in store.get_executions_by_context(pipeline.id)}
  runs = [r for r in runs
          if any(e.id in mine for e in store.get_executions_by_context(r.id))]
  return max(runs, key=lambda c: (c.create_time_since_epoch, c.id), default=None)


def _node_of(store, execution_id: int, pipeline_name: str) -> str:
  for context in store.get_contexts_by_execution(execution_id):
    if context.name.startswith(pipeline_name + '.'):
      return context.name[len(pipeline_name) + 1:]
  return str(execution_id)


def _artifacts(store, execution_id: int, event_type, types: dict) -> list:
  """[(input/output keys, artifact type name, artifact)] of one execution.

  One artifact can fill several inputs (the candidate that is also the
  baseline), so each comes with the set of its keys.
  """
  events = [e for e in store.get_events_by_execution_ids([execution_id])
            if e.type == event_type]
  keys = {e.artifact_id: {step.key for step in e.path.steps
                          if step.HasField('key')} for e in events}
  artifacts = store.get_artifacts_by_id(list(keys)) if keys else []
  return [(keys[a.id], types.get(a.type_id, ''), a) for a in artifacts]


def _example_counts(stats_uri: str) -> dict:
  from tensorflow_metadata.proto.v0 import statistics_pb2
  from tfx.dsl.io import fileio
  counts = {}
  for entry in sorted(e.rstrip('/') for e in fileio.listdir(stats_uri)):
    path = os.path.join(stats_uri, entry, 'FeatureStats.pb')
    if entry.startswith('Split-') and fileio.exists(path):
      stats = statistics_pb2.DatasetFeatureStatisticsList()
      with fileio.open(path, 'rb') as f:
        stats.ParseFromString(f.read())
      counts[entry[len('Split-'):]] = sum(d.num_examples for d in stats.datasets)
  return counts


def _evaluation(uri: str, label_key: str) -> dict:
  import tensorflow_model_analysis as tfma
  overall, per_class, baseline = {}, {}, {}
  for slice_metrics in tfma.load_metrics(uri):
    keys = slice_metrics.slice_key.single_slice_keys
    for kv in slice_metrics.metric_keys_and_values:
      key, value = kv.key, kv.value
      if not value.HasField('double_value') or key.is_diff:
        continue
      number = value.double_value.value
      if key.model_name == 'baseline':
        if not keys:
          baseline[key.name] = number
        continue
      if not keys:
        overall[key.name] = number
      elif keys[0].column == label_key and key.name == 'sparse_categorical_accuracy':
        per_class[str(keys[0].int64_value)] = round(number, 4)
  validation = tfma.load_validation_result(uri)
  failures = []
  for per_slice in validation.metric_validations_per_slice:
    for failure in per_slice.failures:
      failures.append(f'{failure.metric_key.name}'
                      f'{" (" + failure.metric_key.model_name + ")" if failure.metric_key.model_name else ""}: '
                      f'{failure.message or _failed_threshold(failure)}')
  return {'metrics': {k: round(v, 4) for k, v in overall.items()},
          'baseline_metrics': {k: round(v, 4) for k, v in baseline.items()},
          'per_class_accuracy': dict(sorted(per_class.items(),
                                            key=lambda kv: int(kv[0]))),
          'validation_ok': bool(validation.validation_ok),
          'validation_failures': failures}


def _failed_threshold(failure) -> str:
  """What TFMA leaves out of a failure's message: the value and the bound
  it missed."""
  value = failure.metric_value.double_value.value
  threshold = failure.metric_threshold
  if failure.metric_key.is_diff:
    bound = threshold.change_threshold.absolute.value
    return f'change {value:+.4f} against the baseline, allowed {bound:+.4f}'
  bound = threshold.value_threshold.lower_bound.value
  return f'{value:.4f}, below the floor {bound:.4f}'


def _add_report(out: dict, key: str, folder: str, name: str, fields) -> None:
  """out[key]: `fields` of a component's <name>.json, and its <name>.html."""
  from tfx.dsl.io import fileio
  path = os.path.join(folder, f'{name}.json')
  if fileio.exists(path):
    with fileio.open(path) as f:
      report = json.load(f)
    out[key] = {'report_html': os.path.join(folder, f'{name}.html'),
                **{k: report.get(k) for k in fields}}


def collect(metadata_path: str, pipeline_name: str, label_key: str,
            exclude_runs=()) -> dict:
  """The latest run of `pipeline_name`, as recorded in ML Metadata, leaving
  out the runs in `exclude_runs` (ids: those that were there before)."""
  out = {'components': [], 'examples': {}, 'training': {}, 'evaluation': {},
         'blessed': None, 'baseline_model': None, 'pushed': False,
         'pushed_model': None}
  from tfx.dsl.io import fileio
  if not fileio.exists(metadata_path):
    return out
  store = sqlite_store(metadata_path)
  run = _latest_run(store, pipeline_name, exclude_runs)
  if run is None:
    return out
  out['run_id'] = run.name
  types = {t.id: t.name for t in store.get_artifact_types()}
  executions = sorted(store.get_executions_by_context(run.id),
                      key=lambda e: (e.create_time_since_epoch, e.id))
  for execution in executions:
    node = _node_of(store, execution.id, pipeline_name)
    seconds = (execution.last_update_time_since_epoch -
               execution.create_time_since_epoch) / 1000.0
    out['components'].append({
        'name': node, 'state': STATES.get(execution.last_known_state, '?'),
        'seconds': round(seconds, 1)})
    for keys, type_name, artifact in _artifacts(
        store, execution.id, metadata_store_pb2.Event.INPUT, types):
      if 'baseline_model' in keys and node == 'Evaluator':
        # The pushed version it copies; the candidate standing in is none.
        if _prop(artifact, 'baseline_source') == 'pushed':
          out['baseline_model'] = _prop(artifact, 'baseline_path')
      if node == 'Trainer' and type_name == 'Examples':
        spans = json.loads(_prop(artifact, 'spans') or 'null')
        if spans:
          out['trained_on_spans'] = spans
    for _, type_name, artifact in _artifacts(
        store, execution.id, metadata_store_pb2.Event.OUTPUT, types):
      if type_name == 'Examples' and skipped_images(artifact.uri):
        out['skipped_images'] = skipped_images(artifact.uri)
      if type_name == 'ExampleStatistics':
        out['examples'] = _example_counts(artifact.uri)
      elif type_name == 'Examples' and _prop(artifact, 'validation_source'):
        out['validation_source'] = _prop(artifact, 'validation_source')
      elif type_name == 'ModelRun':
        report = os.path.join(artifact.uri, 'training_report.json')
        if fileio.exists(report):
          with fileio.open(report) as f:
            out['training'] = json.load(f)
      elif type_name == 'ModelEvaluation' and fileio.isdir(artifact.uri):
        try:
          out['evaluation'] = _evaluation(artifact.uri, label_key)
        except Exception as err:  # pylint: disable=broad-except
          out['evaluation'] = {'error': f'could not read: {err}'}
      elif type_name == 'ModelBlessing' and node == 'Evaluator':
        out['blessed'] = bool(_prop(artifact, 'blessed'))
      elif type_name == 'hubpipe.CompressionReport':
        _add_report(out, 'compression', artifact.uri, 'compression_report',
                    ('reference_accuracy', 'validation_examples',
                     'eval_examples', 'decision', 'variants', 'skipped',
                     'tflite_ops', 'interpreter', 'left_out'))
      elif type_name == 'hubpipe.ModuleSelection':
        _add_report(out, 'module_selection', artifact.uri, 'module_selection',
                    ('policy', 'rows', 'pareto', 'decision',
                     'selector_seconds', 'train_examples',
                     'validation_examples'))
      elif type_name == 'PushedModel':
        out['pushed'] = bool(_prop(artifact, 'pushed'))
        # A cached Pusher pushed nothing now: its record is an earlier run's.
        out['pushed_now'] = out['pushed'] and (
            execution.last_known_state != metadata_store_pb2.Execution.CACHED)
        out['pushed_model'] = _prop(artifact, 'pushed_destination')
        tflite = os.path.join(out['pushed_model'] or '', 'model.tflite')
        out['pushed_tflite'] = tflite if fileio.exists(tflite) else None
  evaluation = out.get('evaluation') or {}
  if evaluation.get('baseline_metrics') and not out.get('baseline_model'):
    # Nothing pushed yet: the candidate stood in for the baseline. The
    # Evaluator leaves it out (components/evaluator); a run recorded before
    # it did has the candidate's own figures here, not a baseline's.
    evaluation['baseline_metrics'] = {}
  return out


def skipped_images(examples_uri: str) -> Optional[dict]:
  """{count, list} of the images the image folder ExampleGen left out
  (data.on_corrupt: skip; listed one a line in corrupt_images.txt), or
  None when it left out none."""
  from tfx.dsl.io import fileio
  listed = os.path.join(examples_uri, 'corrupt_images.txt')
  if not fileio.exists(listed):
    return None
  with fileio.open(listed) as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  return {'count': len(lines), 'list': listed} if lines else None


def _share(seconds: float, summary: dict) -> str:
  total = summary.get('wall_seconds')
  return f', {seconds / total:.0%} of the run' if total else ''


def _tflite_variant(summary: dict) -> str:
  decision = (summary.get('compression') or {}).get('decision') or {}
  return decision.get('chosen') or 'chosen'


def render(summary: dict) -> str:
  """A readable, terminal-width rendering of the summary."""
  step = summary.get('failed_step')
  lines = [f'hubpipe run: {summary["status"].upper()}'
           f'{" at " + step if step else ""}'
           f'{"  (" + summary["error"] + ")" if summary.get("error") else ""}']
  lines.append(f'  config: {summary.get("config")}')
  module = summary.get('module', {})
  detail = (f'input {module["input_size"]}' if module.get('input_size') else
            f'preprocessor {module.get("preprocessor") or "none"}')
  selected = (summary.get('training') or {}).get('selected_by') == 'ModuleSelector'
  lines.append(f'  module: {module.get("handle")} ({module.get("integration")}, '
               f'{detail})' + ('; the Trainer used the ModuleSelector\'s '
                               'choice, below' if selected else ''))
  if summary.get('examples'):
    lines.append('  examples: ' + ', '.join(
        f'{k} {v}' for k, v in summary['examples'].items()))
    if summary.get('validation_source'):
      lines.append(f'  validation: {summary["validation_source"]}')
  if summary.get('skipped_images'):
    skipped = summary['skipped_images']
    lines.append(f'  skipped: {skipped["count"]} corrupt images '
                 f'(data.on_corrupt: skip), listed in {skipped["list"]}')
  snapshot = summary.get('data_snapshot') or {}
  if snapshot.get('fingerprint'):
    fp = snapshot['fingerprint']
    lines.append(f'  data snapshot: {fp["files"]} files, {fp["bytes"]:,} bytes, '
                 f'sha256 {fp["sha256"][:12]}'
                 + (f', spans {snapshot["spans"]}' if snapshot.get('spans')
                    else '')
                 + (f'; spans {snapshot["waiting_spans"]} wait for their '
                    'ready marker' if snapshot.get('waiting_spans') else ''))
  if summary.get('trained_on_spans'):
    lines.append(f'  trained on spans: {sorted(summary["trained_on_spans"])}')
  if summary.get('components'):
    lines.append('  components:')
    for c in summary['components']:
      lines.append(f'    {c["name"]:<32} {c["state"]:<9} {c["seconds"]:>7.1f} s')
  selection = summary.get('module_selection') or {}
  if selection.get('rows'):
    lines.append(f'  module selector ({selection["policy"]["objective"]}; '
                 f'linear probe on {selection["train_examples"]} train / '
                 f'{selection["validation_examples"]} validation examples, '
                 f'{selection["selector_seconds"]:.0f} s'
                 f'{_share(selection["selector_seconds"], summary)}):')
    lines.append(f'    {"rank":>4} {"candidate":<36} {"val. acc":>9} '
                 f'{"ms b1":>7} {"size MB":>8} {"params":>11}')
    for row in selection['rows']:
      if row.get('rank') is None:
        lines.append(f'    {"-":>4} {row["name"]:<36} skipped: '
                     f'{(row.get("skipped") or "")[:70]}')
        continue
      size = row.get('size_bytes')
      lines.append(
          f'    {row["rank"]:>4} {row["name"]:<36} {row["accuracy"]:>9.4f} '
          f'{row["latency_ms_b1"]:>7.2f} '
          f'{"n/a" if size is None else f"{size / 1e6:.1f}":>8} '
          f'{row.get("parameters") or 0:>11,}'
          f'{"  pareto" if row.get("pareto") else ""}')
    lines.append(f'    decision: {selection["decision"]["reason"]}')
    lines.append(f'    report: {selection["report_html"]}')
  training = summary.get('training') or {}
  if training:
    if training.get('selected_by') == 'ModuleSelector':
      size = training.get('module_input_size')
      lines.append(f'  trainer module: {training["module"]} (chosen by the '
                   f'ModuleSelector){f", input {size}" if size else ""}')
    lines.append(f'  trainer: {training.get("num_classes")} classes, '
                 f'{training.get("epochs")} epochs, {training.get("integration")}, '
                 f'{training.get("strategy")} '
                 f'x{training.get("replicas")}, validation accuracy '
                 f'{training.get("validation_accuracy", 0):.4f}')
    cache = {name: stats for name, stats in
             (training.get('embedding_cache') or {}).items()
             if isinstance(stats, dict) and 'embedded_now' in stats}
    if cache:
      stale = any(c.get('name') == 'Trainer' and c.get('state') == 'cached'
                  for c in summary.get('components') or [])
      lines.append('  embedding cache' + (' (the cached Trainer\'s run)'
                                          if stale else '') + ': ' + '; '.join(
          f'{name} {stats["embedded_now"]} embedded now, '
          f'{stats.get("from_cache", 0)} from the cache'
          for name, stats in cache.items()))
    if training.get('classes_without_validation_examples'):
      lines.append('  warning: no validation examples of class(es) '
                   f'{training["classes_without_validation_examples"]}: add '
                   'examples or a validation/ folder')
    mine = training.get('validation_accuracy', 0)
    for key, what in (('bag_of_words_baseline', 'reference'),
                      ('control', 'control')):
      other = training.get(key)
      if other:
        name = other.get('model') or f'same head on {other["module"]}'
        lines.append(f'  {what}: {name}: validation accuracy '
                     f'{other["validation_accuracy"]:.4f} (value of reuse: '
                     f'{mine - other["validation_accuracy"]:+.4f})')
  evaluation = summary.get('evaluation') or {}
  if evaluation.get('metrics'):
    metrics = evaluation['metrics']
    lines.append('  evaluator (eval split): ' + ', '.join(
        f'{k} {v}' for k, v in sorted(metrics.items())))
    if evaluation.get('baseline_metrics') and summary.get('baseline_model'):
      lines.append('  baseline:  ' + ', '.join(
          f'{k} {v}' for k, v in sorted(evaluation['baseline_metrics'].items())))
    for failure in evaluation.get('validation_failures', []):
      lines.append(f'    failed: {failure}')
  compression = summary.get('compression') or {}
  if compression.get('variants'):
    reference = compression['reference_accuracy']
    lines.append(f'  compressor (uncompressed accuracy: validation '
                 f'{reference["validation"]:.4f}, eval {reference["eval"]:.4f}; '
                 'chosen on validation, eval reported):')
    lines.append(f'    {"variant":<16} {"val. acc":>8} {"drop":>7} {"eval acc":>8} '
                 f'{"drop":>7} {"size MB":>8} {"ratio":>6} {"gzip":>6} '
                 f'{"ms b1":>7} {"speed-up":>8}')
    for v in compression['variants']:
      if v.get('error'):
        lines.append(f'    {v["name"]:<16} failed: {v["error"][:60]}')
        continue
      lines.append(
          f'    {v["name"]:<16} {v["validation_accuracy"]:>8.4f} '
          f'{v["validation_drop"]:>+7.4f} {v["eval_accuracy"]:>8.4f} '
          f'{v["eval_drop"]:>+7.4f} '
          f'{v["size_bytes"] / 1e6:>8.2f} {v["size_ratio"]:>6.2f} '
          f'{v["gzip_ratio"]:>6.2f} {v["latency_ms_b1"]:>7.3f} '
          f'{v["speedup_b1"]:>7.2f}x' + (' (!)' if v.get('latency_unstable')
                                         else ''))
    if any(v.get('latency_unstable') for v in compression['variants']):
      lines.append('    (!) latency unstable: its timing rounds spread '
                   'widely (other load on the machine?); the variants were '
                   'timed side by side, so the speed-ups hold better than '
                   'the milliseconds')
    lines.append(f'    decision: {compression["decision"]["reason"]}')
    lines.append(f'    report: {compression["report_html"]}')
    for name, why in (compression.get('left_out') or {}).items():
      lines.append(f'    left out: {name} ({why})')
  elif compression.get('skipped'):
    lines.append(f'  compressor: skipped: {compression["skipped"]}')
  baseline = summary.get('baseline_model') or (
      summary.get('data_snapshot') or {}).get('baseline')
  lines.append(f'  baseline model: '
               f'{baseline or "none (nothing pushed when this data arrived)"}')
  lines.append(f'  blessed: {summary.get("blessed")}')
  if summary.get('pushed') and summary.get('pushed_now') is False:
    lines.append(f'  pushed: nothing new (the same data and pipeline as the '
                 f'run that pushed {summary.get("pushed_model")})')
  else:
    lines.append(
        f'  pushed: {summary.get("pushed_model") if summary.get("pushed") else "no"}'
        + (f' (+ model.tflite: the {_tflite_variant(summary)} variant)'
           if summary.get('pushed_tflite') else ''))
  if summary.get('wall_seconds') is not None:
    lines.append(f'  wall time: {summary["wall_seconds"]:.1f} s')
  lines.append(f'  summary: {summary.get("summary_path")}')
  return '\n'.join(lines)


def write(summary: dict, path: Optional[str]) -> None:
  from tfx.dsl.io import fileio
  with fileio.open(path, 'w') as f:
    json.dump(summary, f, indent=2, sort_keys=False)
