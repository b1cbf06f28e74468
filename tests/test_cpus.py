"""Beam's worker count comes from the CPUs the process may use (the
container's cgroup limit), not from the node's core count."""

import os

import pytest
import yaml

from hubpipe.kubeflow import entrypoint
from hubpipe.pipeline import cpus
from hubpipe.pipeline.config import load_config
from hubpipe.pipeline.pipeline import BEAM_MODE_ENV, BEAM_WORKERS_ENV
from hubpipe.pipeline.pipeline import beam_pipeline_args
from hubpipe.pipeline.pipeline import IN_MEMORY_BELOW_BYTES, running_mode_for


def _cgroup_v2(tmp_path, cpu_max, nested=None):
  """A fake /sys/fs/cgroup (v2) and /proc/self/cgroup."""
  root = tmp_path / 'cgroup'
  folder = root / nested if nested else root
  folder.mkdir(parents=True)
  (folder / 'cpu.max').write_text(cpu_max + '\n')
  proc = tmp_path / 'proc_self_cgroup'
  proc.write_text(f'0::/{nested or ""}\n')
  return str(root), str(proc)


@pytest.fixture
def node_of_64_cores(monkeypatch):
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(64)))


def test_a_two_cpu_pod_on_a_64_core_node_gets_two_workers(tmp_path,
                                                         node_of_64_cores):
  root, proc = _cgroup_v2(tmp_path, '200000 100000')
  assert cpus.cgroup_cpu_limit(root, proc) == 2.0
  assert cpus.available_cpus(root, proc) == 2


def test_a_fractional_limit_rounds_up_and_no_limit_means_every_core(
    tmp_path, node_of_64_cores):
  root, proc = _cgroup_v2(tmp_path / 'half', '50000 100000')
  assert cpus.available_cpus(root, proc) == 1
  root, proc = _cgroup_v2(tmp_path / 'max', 'max 100000')
  assert cpus.cgroup_cpu_limit(root, proc) is None
  assert cpus.available_cpus(root, proc) == 64


def test_a_parent_cgroup_limit_counts_outside_a_container(tmp_path,
                                                         node_of_64_cores):
  root, proc = _cgroup_v2(tmp_path, '400000 100000', nested='kubepods/pod1')
  (tmp_path / 'cgroup' / 'kubepods' / 'cpu.max').write_text('300000 100000')
  assert cpus.available_cpus(root, proc) == 3


def test_cgroup_v1_quota(tmp_path, node_of_64_cores):
  folder = tmp_path / 'cgroup' / 'cpu,cpuacct'
  folder.mkdir(parents=True)
  (folder / 'cpu.cfs_quota_us').write_text('150000')
  (folder / 'cpu.cfs_period_us').write_text('100000')
  assert cpus.available_cpus(str(tmp_path / 'cgroup'),
                             str(tmp_path / 'missing')) == 2


def test_the_affinity_mask_caps_the_count(tmp_path, monkeypatch):
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1, 2})
  root, proc = _cgroup_v2(tmp_path, '800000 100000')
  assert cpus.available_cpus(root, proc) == 3


def test_only_zero_workers_is_resolved():
  args = ['--runner=DirectRunner', '--direct_num_workers=0', '--x=0']
  assert cpus.resolve_beam_workers(args, cpus=3) == [
      '--runner=DirectRunner', '--direct_num_workers=3', '--x=0']
  assert cpus.resolve_beam_workers(['--direct_num_workers', '0'], cpus=2) == [
      '--direct_num_workers=2']
  assert cpus.resolve_beam_workers(['--direct_num_workers=5'], cpus=2) == [
      '--direct_num_workers=5']


def test_local_runs_resolve_zero_when_each_step_runs(monkeypatch):
  """The DAG holds a placeholder (TFX's cache key holds the Beam arguments,
  so a count would rerun every step on a machine with other CPUs); TFX
  resolves it when the step runs."""
  from tfx.dsl.compiler import placeholder_utils
  from tfx.orchestration.portable import data_types
  local = beam_pipeline_args(load_config(None, {}), local=True)
  assert local[0] == '--runner=DirectRunner'
  context = placeholder_utils.ResolutionContext(
      exec_info=data_types.ExecutionInfo())
  for count in ('2', '3'):
    monkeypatch.setenv(BEAM_WORKERS_ENV, count)
    assert placeholder_utils.resolve_placeholder_expression(
        local[2].encode(), context) == f'--direct_num_workers={count}'
  # direct_running_mode: auto (the default): a placeholder too, which the
  # local runner sets by the data's size.
  for mode in ('in_memory', 'multi_processing'):
    monkeypatch.setenv(BEAM_MODE_ENV, mode)
    assert placeholder_utils.resolve_placeholder_expression(
        local[1].encode(), context) == f'--direct_running_mode={mode}'
  # Kubeflow: the 0 itself, for the pod's entry point; a count as given;
  # auto is multi_processing.
  compiled = beam_pipeline_args(load_config(None, {}))
  assert '--direct_num_workers=0' in compiled
  assert '--direct_running_mode=multi_processing' in compiled
  fixed = load_config(None, {'beam.direct_running_mode': 'multi_threading'})
  assert '--direct_running_mode=multi_threading' in beam_pipeline_args(
      fixed, local=True)
  config = load_config(None, {'beam.direct_num_workers': 4})
  assert '--direct_num_workers=4' in beam_pipeline_args(config, local=True)


def test_the_pod_entrypoint_hands_tfx_the_pod_limit(tmp_path, monkeypatch,
                                                   node_of_64_cores):
  """kubeflow/entrypoint.py, as a pod runs it: TFX's container entry point
  gets the cgroup's CPU count in its Beam arguments."""
  from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor
  root, proc = _cgroup_v2(tmp_path, '200000 100000')
  monkeypatch.setattr(cpus, 'CGROUP_ROOT', root)
  monkeypatch.setattr(cpus, 'PROC_CGROUP', proc)
  seen = {}
  monkeypatch.setattr(kubeflow_v2_run_executor, 'main',
                      lambda parsed: seen.update(beam_args=parsed[1]))
  with pytest.raises(SystemExit) as exit_:
    entrypoint.main(['entrypoint', '--executor_class_path', 'x.Executor',
                     '--json_serialized_invocation_args', '{}',
                     '--runner=DirectRunner',
                     '--direct_running_mode=multi_processing',
                     '--direct_num_workers=0'])
  assert exit_.value.code in (None, 0)
  assert '--direct_num_workers=2' in seen['beam_args']
  assert '--direct_num_workers=0' not in seen['beam_args']


def test_auto_running_mode_follows_the_input_size():
  """`direct_running_mode: auto` runs small inputs in memory (no worker
  processes to start) and large ones in worker processes; a mode set in
  the config is kept whatever the size."""
  auto = load_config(None, {})
  assert auto.beam.direct_running_mode == 'auto'
  assert running_mode_for(auto, 2 << 20) == 'in_memory'
  assert running_mode_for(auto, IN_MEMORY_BELOW_BYTES) == 'multi_processing'
  fixed = load_config(None, {'beam.direct_running_mode': 'multi_processing'})
  assert running_mode_for(fixed, 1) == 'multi_processing'
