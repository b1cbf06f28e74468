"""DRAFT (issue 18, not yet a test): the kill chain over the tiny DAG.

Each invocation of `hubpipe run` is SIGKILLed (its whole process group) one
second after the run log says the next target component is running; the
last run completes. Measured on 2 cores (main at a5c961c, TFX Pusher):
kills in SnapshotExampleGen, StatisticsGen, Transform, Trainer, Evaluator
and Compressor after 11-25 s each, then the final run in 63.5 s: every
step cached but Compressor and Pusher, one version pushed. 165 s in all.
To do: the Pusher kill points (mid-copy, after the rename), assertions on
ML Metadata states per rerun, no leftovers, and a pytest wrapper.
"""

import json, os, signal, subprocess, sys, time, glob
W = '/tmp/kill/work'
env = dict(os.environ, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2', HUBPIPE_DATA_DIR='/work/main/data', PYTHONWARNINGS='ignore')
def start():
  return subprocess.Popen(['/work/main/.venv/bin/hubpipe', 'run', '--config', 'TINY_CONFIG', '--workdir', W],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
def newest_log():
  logs = sorted(glob.glob(f'{W}/logs/*.log'), key=os.path.getmtime)
  return logs[-1] if logs else None
for target in sys.argv[1:]:
  t0 = time.time(); before = newest_log(); p = start()
  line = f'Component {target} is running.'
  while True:
    log = newest_log()
    if log and log != before and os.path.exists(log) and line in open(log, errors='ignore').read():
      break
    if p.poll() is not None:
      print('finished before', target, p.returncode); break
    time.sleep(0.2)
  time.sleep(1.0)
  if p.poll() is None:
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    print(f'killed in {target} after {time.time()-t0:.1f} s', flush=True)
t0 = time.time(); p = start(); p.wait()
s = json.load(open(f'{W}/summary.json'))
print(f'final run rc={p.returncode} {time.time()-t0:.1f} s status={s["status"]}')
print({c['name']: c['state'] for c in s['components']})
print(os.listdir(f'{W}/serving/tiny-kill') if os.path.isdir(f'{W}/serving/tiny-kill') else 'no serving')
