"""Shared fixtures: one real local Ray instance per test session, the real NGSIM data."""

from __future__ import annotations

import os
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
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


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
