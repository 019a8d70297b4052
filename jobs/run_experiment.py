"""Entrypoint for `ray job submit`: run one mosaic_ray experiment on the cluster.

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python jobs/run_experiment.py jobs/ngsim_demo.yaml --set output_dir=s3://bucket/runs

Inside a job RAY_ADDRESS is set, so the pipeline connects to the cluster instead of starting
a local Ray; the working directory (this repository) is on the workers' import path.
Any `mosaic-ray` command works: `python jobs/run_experiment.py --command score CONFIG ...`.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from mosaic_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    command = "run"
    if args[:1] == ["--command"]:
        command, args = args[1], args[2:]
    sys.exit(main([command, *args]))
