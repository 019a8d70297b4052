"""Cluster configs against Ray's own schema and KubeRay manifests, and the helpers that start and
stop a `ray start` cluster of its own (used by tests/test_two_nodes.py, which submits a real
job with `ray job submit --working-dir` to a two-node cluster).

The config checks read Ray's schema file and version without importing Ray (they belong to the
Ray-free core)."""

import importlib.metadata
import importlib.util
import json
import shutil
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import ROOT

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


_HANDED_OUT: set[int] = set()


def _free_port() -> int:
    """A free port, never one this process handed out before: the OS may give the port it just
    released to the next bind, and Ray refuses one port for two of its components."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _stop_cluster(*temps: Path, gcs_port: int | None = None, grace_s: float = 3.0) -> None:
    """Stop only the clusters started with ``--temp-dir`` one of ``temps`` (``ray stop`` would
    stop every Ray instance on the machine, the test session's included), and the processes
    given the head's GCS address (``gcs_port``: the Ray Client server names no temp dir): SIGTERM
    to all of them and their children at once, SIGKILL to what still runs after ``grace_s`` (a
    raylet waits up to 10 s for its workers; nothing of a test cluster needs a clean exit)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            args = p.info["cmdline"] or []
            if any(str(t) in a for t in temps for a in args) or (
                    gcs_port is not None and any(a.startswith("--address=") and a.endswith(f":{gcs_port}")
                                                 for a in args)):
                # with their children: agents rename themselves (ray::DashboardAgent) and would
                # outlive a raylet that is killed before it stops them
                for q in [p, *p.children(recursive=True)]:
                    found[q.pid] = q
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    mine = list(found.values())
    for p in mine:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    for temp in temps:
        shutil.rmtree(temp, ignore_errors=True)
