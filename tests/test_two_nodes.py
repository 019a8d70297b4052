"""Issue 14: the two-stage score step on a real two-node Ray cluster, storage on S3 only.

`ray start --head` (1 CPU, its own ports) and a second `ray start --address ...` (1 CPU) on
this machine form the cluster; the run lives in moto's S3 server on 127.0.0.1 (the pool
shards, the planner checkpoint and every output: no local path is shared between the nodes);
`ray job submit` runs `mosaic-ray score`. The planner pool has one actor and the EPDMS pool two
(0.5 CPU each: 1.5 CPUs, more than one node holds), so the actors must spread over both nodes;
Ray's State API tells where each ran."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY_PLANNER, copy_run, write_untrained_base
from test_cluster import _free_port, _stop_cluster

pytestmark = pytest.mark.ray  # starts its own two-node cluster with `ray start`


def _start(bin_dir: Path, env: dict, *args: str) -> None:
    ports = [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
             f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
             f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}"]
    out = subprocess.run([str(bin_dir / "ray"), "start", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                          "--disable-usage-stats", *args, *ports], env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_score_job_on_two_nodes_with_s3_storage(ingested_run, s3_server, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors, list_nodes

    from mosaic_ray.stages.ingest import load_clips
    from mosaic_ray.config import StorageConfig
    from mosaic_ray.storage import Storage

    # the run, uploaded to S3: ingest outputs and an (untrained) planner checkpoint
    cfg, local, raw = copy_run(ingested_run, tmp_path / "local", "twonode", planner={**TINY_PLANNER})
    write_untrained_base(cfg, local, load_clips(local, "train"), load_clips(local, "pool"))
    s3cfg = StorageConfig(endpoint_url=s3_server, region="us-east-1")
    remote = Storage("s3://mosaic-test/twonode-runs/twonode", s3cfg)
    root = Path(local.root)
    for f in sorted((root / "ingest").rglob("*")):  # completion records (_SUCCESS.json) included
        if f.is_file():
            remote.write_bytes(str(f.relative_to(root)), f.read_bytes())
    Storage("s3://mosaic-test/twonode-ckpt", s3cfg).write_bytes("base.pt", local.read_bytes("planner/base.pt"))
    pool = sorted(local.read_table("ingest/clips/pool", columns=["clip_id"]).column("clip_id").to_pylist())
    job_cfg = {**raw, "output_dir": "s3://mosaic-test/twonode-runs", "ray": {"num_cpus": None},
               "storage": {"endpoint_url": s3_server, "region": "us-east-1"},
               "score": {"checkpoint": "s3://mosaic-test/twonode-ckpt/base.pt",
                         "plan": {"min_actors": 1, "max_actors": 1},
                         "epdms": {"min_actors": 2, "max_actors": 2, "batch_size": 8}}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job_cfg))

    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S="120")
    env.pop("RAY_ADDRESS", None)
    # Unix socket paths must stay short; each node its own temp dir (one shared runtime_resources
    # folder would let the second node's runtime-env agent delete the job's working dir)
    temp = Path(tempfile.mkdtemp(prefix="r2n-", dir="/tmp"))
    temp2 = Path(tempfile.mkdtemp(prefix="r2w-", dir="/tmp"))
    port, dash = _free_port(), _free_port()
    api = f"http://127.0.0.1:{dash}"
    try:
        _start(bin_dir, env, "--head", f"--port={port}", f"--dashboard-port={dash}", "--include-dashboard=true",
               f"--temp-dir={temp}")
        _start(bin_dir, env, f"--address=127.0.0.1:{port}", f"--temp-dir={temp2}")
        submit = [str(bin_dir / "ray"), "job", "submit", "--address", api, "--no-wait",
                  "--working-dir", str(ROOT), "--",
                  sys.executable, "jobs/run_experiment.py", "--command", "score", str(tmp_path / "job.yaml"), "--log-level", "debug"]
        t0 = time.time()
        while True:  # the job agent registers after `ray start` returns (seen in CI)
            out = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=400)
            if out.returncode == 0 or "No available agent" not in out.stdout + out.stderr or time.time() - t0 > 60:
                break
            time.sleep(2)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        job_id = re.search(r"Job '([^']+)' submitted successfully", out.stdout + out.stderr).group(1)
        # the job's status through the SDK (`ray job submit` without --no-wait reports it ~5 s
        # late: its log tail sleeps 1 s at a time on both ends)
        client = JobSubmissionClient(api)
        while not (status := client.get_job_status(job_id)).is_terminal():
            assert time.time() - t0 < 400, f"job {job_id} still {status} after 400 s"
            time.sleep(0.2)
        assert status == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-3000:]
        actors = list_actors(address=api, detail=True, limit=1000)
        alive = {n.node_id for n in list_nodes(address=api) if n.state == "ALIVE"}
    finally:
        _stop_cluster(temp2, temp, gcs_port=port, grace_s=0.0)  # nothing of it needs a clean exit
    assert len(alive) == 2
    by_stage: dict[str, set] = {}
    for a in actors:
        for stage in ("score_plan", "score_epdms"):
            if f"MapBatches({stage})" in a.class_name:
                by_stage.setdefault(stage, set()).add(a.node_id)
    assert by_stage.get("score_plan") and len(by_stage.get("score_epdms", ())) >= 1, actors
    assert set().union(*by_stage.values()) == alive  # the actors ran on both nodes
    # every pool clip scored exactly once, all of it on S3
    scores = remote.read_table("score/scores", columns=["clip_id", "status"])
    ids = scores.column("clip_id").to_pylist()
    assert sorted(ids) == pool and len(set(ids)) == len(ids)
    assert set(scores.column("status").to_pylist()) == {"ok"}
    done = remote.done_payload("score")
    assert done["rows"] == len(pool) and done["pipeline"] == "two_stage"
    assert done["actors"] == {"plan": [1, 1], "epdms": [2, 2]}
