"""How many CPUs this process may use, and Beam's worker count from it.

Beam's DirectRunner reads `--direct_num_workers=0` as "one worker per core"
and counts the cores with multiprocessing.cpu_count(): the node's cores. In a
pod with a CPU limit of 2 on a 64-core node that starts 64 workers, each
loading TensorFlow, throttled to 2 cores between them. hubpipe replaces the 0
with the CPUs the process may really use: the fewest of the cores it may run
on (its affinity mask) and its cgroup's CPU quota (`cpu.max` in cgroup v2,
`cpu.cfs_quota_us` / `cpu.cfs_period_us` in v1, read at the hierarchy's
root, which is the container's own), rounded up. A cgroup without a quota (a
pod with a CPU request and no limit) leaves every core of the affinity mask.

The count is resolved when each step runs, never written into the DAG (TFX's
cache key holds the Beam arguments): the local runner sets an environment
variable that the compiled placeholder reads (pipeline.beam_pipeline_args);
on Kubeflow the pod's entry point (kubeflow/entrypoint.py) replaces the 0.
"""

import math
import os
from typing import List, Optional

CGROUP_ROOT = '/sys/fs/cgroup'
PROC_CGROUP = '/proc/self/cgroup'
WORKERS_FLAG = '--direct_num_workers'


def _read(path: str) -> Optional[str]:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return None


def _cgroup_v2_dirs(root: str, proc_cgroup: str) -> List[str]:
  """The process's cgroup v2 folder and its parents, under `root`."""
  text = _read(proc_cgroup) or ''
  relative = next((line.split('::', 1)[1] for line in text.splitlines()
                   if line.startswith('0::')), '/')
  dirs, path = [], relative.strip('/')
  while True:
    dirs.append(os.path.join(root, path) if path else root)
    if not path:
      return dirs
    path = os.path.dirname(path)


def cgroup_cpu_limit(root: Optional[str] = None,
                     proc_cgroup: Optional[str] = None) -> Optional[float]:
  """The CPU quota of this process's cgroup in CPUs (e.g. 2.0, 0.5), or None
  without a limit. A pod's limit sits in its own cgroup (the container sees
  it at the root of /sys/fs/cgroup); outside a container the parents count."""
  root, proc_cgroup = root or CGROUP_ROOT, proc_cgroup or PROC_CGROUP
  limits = []
  for folder in _cgroup_v2_dirs(root, proc_cgroup):
    fields = (_read(os.path.join(folder, 'cpu.max')) or '').split()
    if len(fields) == 2 and fields[0] != 'max':
      try:
        limits.append(int(fields[0]) / int(fields[1]))
      except (ValueError, ZeroDivisionError):
        pass
  for name in ('cpu', 'cpu,cpuacct'):  # cgroup v1
    quota = _read(os.path.join(root, name, 'cpu.cfs_quota_us'))
    period = _read(os.path.join(root, name, 'cpu.cfs_period_us'))
    try:
      if quota and period and int(quota) > 0 and int(period) > 0:
        limits.append(int(quota) / int(period))
    except ValueError:
      pass
  return min(limits) if limits else None


def available_cpus(root: Optional[str] = None,
                   proc_cgroup: Optional[str] = None) -> int:
  """CPUs this process may use: its affinity mask, capped by its cgroup's
  quota rounded up; at least 1."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  limit = cgroup_cpu_limit(root, proc_cgroup)
  if limit is not None:
    cores = min(cores, math.ceil(limit))
  return max(1, cores)


def resolve_beam_workers(args: List[str], cpus: Optional[int] = None
                         ) -> List[str]:
  """`args` with `--direct_num_workers=0` (or `--direct_num_workers 0`)
  replaced by the CPUs this process may use; other arguments as given."""
  resolved, i = [], 0
  while i < len(args):
    arg = args[i]
    if arg == f'{WORKERS_FLAG}=0':
      arg = f'{WORKERS_FLAG}={cpus or available_cpus()}'
    elif arg == WORKERS_FLAG and i + 1 < len(args) and args[i + 1] == '0':
      arg, i = f'{WORKERS_FLAG}={cpus or available_cpus()}', i + 1
    resolved.append(arg)
    i += 1
  return resolved
