"""Cluster configs against Ray's own schema, KubeRay manifests, and a real `ray job submit`.

The config checks read Ray's schema file and version without importing Ray (they belong to the
Ray-free core); only the `ray start` / `ray job submit` test is marked ``ray``."""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import ROOT, ngsim_file

RAY_DIR = Path(importlib.util.find_spec("ray").origin).parent  # the installed package, not imported
RAY_VERSION = importlib.metadata.version("ray")


def test_launcher_yaml_validates_against_rays_schema():
    schema = json.loads((RAY_DIR / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((ROOT / "cluster_configs" / "aws.yaml").read_text())
    jsonschema.validate(cfg, schema)
    gpu = cfg["available_node_types"]["gpu_workers"]
    assert gpu["min_workers"] <= gpu["max_workers"] <= cfg["max_workers"]
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert any("pip install" in c and "mosaic_ray" in c for c in cfg["setup_commands"])
    bad = dict(cfg, unknown_top_level_key=1)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


@pytest.mark.parametrize("name,kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifests_have_required_fields(name, kind):
    doc = yaml.safe_load((ROOT / "cluster_configs" / "kuberay" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind and doc["metadata"]["name"]
    spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
    if kind == "RayJob":
        assert "mosaic-ray" in doc["spec"]["entrypoint"]
    assert spec["rayVersion"] == RAY_VERSION
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and "rayStartParams" in spec["headGroupSpec"]
    groups = spec["workerGroupSpecs"]
    gpu = [g for g in groups if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                                    for c in g["template"]["spec"]["containers"])]
    assert gpu, "a GPU worker group is required"
    for g in groups:
        assert g["groupName"] and 0 <= g["minReplicas"] <= g["maxReplicas"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray  # starts its own head with `ray start`
def test_ray_job_submit_against_a_local_head(tmp_path):
    """`ray start --head`, then `ray job submit --working-dir` runs a real ingest job (on two
    small real files and a broken one: the job's plumbing is under test, not the ingest)."""
    data = tmp_path / "data"
    data.mkdir()
    for n in ("USA_Peach-2_1_T-1.xml", "USA_Peach-4_3_T-1.xml"):
        (data / n).symlink_to(ngsim_file(f"Peachtree/{n}"))
    (data / "USA_Peach-99_1_T-1.xml").write_text("<commonRoad><lanelet id='1'><leftBound>")
    bin_dir = Path(sys.executable).parent
    port, dash = _free_port(), _free_port()
    # The session's own local Ray instance (``ray_local``) already holds the default agent ports
    # (52365 and friends); a second head on the same ports gets no dashboard agent and answers every
    # submit with 500 "No available agent". Give this head its own ports.
    agent_ports = [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
                   f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"]
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    temp = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))  # Unix socket paths must stay short
    start = [str(bin_dir / "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
             "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp}", *agent_ports]
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=120)
    try:
        cfg = {"name": "job", "data_dir": str(data), "output_dir": str(tmp_path / "runs"),
               "ray": {"num_cpus": None}, "selection": {"budgets": [5]}, "ingest": {"split_mode": "pool"}}
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
        submit = [str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                  "--working-dir", str(ROOT), "--",
                  sys.executable, "jobs/run_experiment.py", "--command", "ingest", str(tmp_path / "job.yaml")]
        t0 = time.time()
        # `ray start` returns before the dashboard's job agent has registered; until it has,
        # the job server answers 500 "No available agent to submit job, please try again
        # later" (seen in CI). Retry only that answer, for up to a minute.
        while True:
            out = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300)
            if out.returncode == 0 or "No available agent" not in out.stdout + out.stderr \
                    or time.time() - t0 > 60:
                break
            time.sleep(2)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "succeeded" in out.stdout
        summary = json.loads((tmp_path / "runs" / "job" / "ingest" / "summary.json").read_text())
        assert summary["candidates"] == summary["clips"] + summary["quarantined"] > 0
        assert summary["files"] == 3 and summary["quarantine_reasons"].get("unreadable_xml") == 1
        assert summary["splits"]["pool"] == summary["clips"] > 0
        assert time.time() - t0 < 300
    finally:
        _stop_cluster(temp)


def _stop_cluster(temp: Path) -> None:
    """Stop only the cluster started with ``--temp-dir=temp`` (``ray stop`` would stop every
    Ray instance on the machine, the test session's included)."""
    import psutil

    mine = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp) in a for a in (p.info["cmdline"] or [])):
                mine.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in mine:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=10)
    for p in alive:
        p.kill()
    shutil.rmtree(temp, ignore_errors=True)
