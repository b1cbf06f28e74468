"""The command every hubpipe step runs in its Kubeflow pod.

It is TFX's container entry point (kubeflow_v2_run_executor), with one thing
done first that only the pod can do: `--direct_num_workers=0` becomes the
number of CPUs the pod may use (its cgroup CPU limit, pipeline/cpus.py), not
the node's core count, which Beam would otherwise start a TensorFlow-loaded
worker for each of. `hubpipe compile` writes this module as each step's
command.
"""

import sys
from typing import List, Optional

from hubpipe.pipeline import cpus

TFX_ENTRYPOINT = 'tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor'


def main(argv: Optional[List[str]] = None) -> None:
  from absl import app  # pylint: disable=g-import-not-at-top
  from tfx.orchestration.kubeflow.v2.container import (  # pylint: disable=g-import-not-at-top
      kubeflow_v2_run_executor as tfx_entrypoint)
  argv = list(sys.argv if argv is None else argv)
  argv = argv[:1] + cpus.resolve_beam_workers(argv[1:])
  # TFX's own __main__ block, with the resolved arguments.
  app.run(tfx_entrypoint.main, argv=argv,
          flags_parser=tfx_entrypoint._parse_flags)  # pylint: disable=protected-access


if __name__ == '__main__':
  main()
