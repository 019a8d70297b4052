"""Shared fixtures: one real local Ray instance per test session, the real NGSIM data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("MOSAIC_DATA_DIR", ROOT.parent / "shared" / "data" / "commonroad-ngsim"))

os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "120")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# fake credentials for moto's S3 server, set before Ray starts so its workers inherit them
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing-key")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# scoring actors record their PIDs here so fault tests can kill a real one (see test_faults.py)
ACTOR_PID_DIR = Path(tempfile.mkdtemp(prefix="mosaic-actor-pids-"))
os.environ["MOSAIC_ACTOR_PID_DIR"] = str(ACTOR_PID_DIR)


def ngsim_file(rel: str) -> Path:
    p = DATA_DIR / rel
    if not p.exists():
        raise FileNotFoundError(f"test data {p} missing: CI needs ../shared beside the checkout")
    return p


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance with 2 CPUs (started once, shut down at the end)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory):
    """A data folder of symlinks to a few real NGSIM files (every site, duplicated files of
    one segment, a map-only file) plus one broken XML file."""
    d = tmp_path_factory.mktemp("ngsim_small")
    files = {
        "US101": ["USA_US101-22_1_T-1.xml", "USA_US101-22_3_T-1.xml", "USA_US101-22_4_T-1.xml",
                  "USA_US101-5_1_T-1.xml", "USA_US101-9_1_T-1.xml", "USA_US101-2_2_S-1.xml"],
        "Lankershim": ["USA_Lanker-1_2_T-1.xml", "USA_Lanker-2_13_T-1.xml"],
        "Peachtree": ["USA_Peach-2_1_T-1.xml", "USA_Peach-4_3_T-1.xml"],
    }
    for site, names in files.items():
        (d / site).mkdir()
        for n in names:
            (d / site / n).symlink_to(ngsim_file(f"{site}/{n}"))
    (d / "US101" / "USA_US101-99_1_T-1.xml").write_text("<commonRoad><lanelet id='1'><leftBound>")
    return d


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server (real HTTP on 127.0.0.1) with a bucket ``mosaic-test``; yields its URL."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="mosaic-test")
    try:
        yield endpoint
    finally:
        server.stop()
