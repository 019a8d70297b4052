"""The run-folder lock (mosaic_ray/runlock.py): one pipeline per run folder, local and on S3.

Ray-free: the pipeline and CLI checks fail on the lock before any Ray session starts.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from conftest import ROOT
from mosaic_ray.config import StorageConfig
from mosaic_ray.runlock import LOCK_NAME, LockedError, RunLock
from mosaic_ray.storage import Storage


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(st: Storage, **fields) -> None:
    info = {"host": socket.gethostname(), "pid": os.getpid(), "since": "2020-01-01T00:00:00+00:00",
            "since_unix": time.time(), "command": "mosaic-ray score x.yaml", "token": "other", **fields}
    assert st.create_exclusive(LOCK_NAME, json.dumps(info).encode())


@pytest.fixture
def st(tmp_path):
    return Storage(str(tmp_path / "run"))


# ---------------------------------------------------------------- exclusive create
def test_create_exclusive_local_one_winner_and_complete_content(st):
    results, barrier = [], threading.Barrier(8)

    def racer(i):
        barrier.wait()
        results.append((i, st.create_exclusive("x/obj.json", f'{{"i": {i}}}'.encode())))

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, ok in results if ok]
    assert len(winners) == 1
    assert json.loads(st.read_bytes("x/obj.json")) == {"i": winners[0]}
    assert st.create_exclusive("x/obj.json", b"{}") is False
    assert os.listdir(st.path("x")) == ["obj.json"]  # no temporary files left


# ---------------------------------------------------------------- local lock
def test_second_holder_fails_at_once_naming_holder_and_fix(st):
    with RunLock(st, command="mosaic-ray score a.yaml") as lock:
        held = json.loads(st.read_bytes(LOCK_NAME))
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert held["command"] == "mosaic-ray score a.yaml" and held["since"]
        t0 = time.time()
        with pytest.raises(LockedError) as ei:
            RunLock(st, wait_s=0).acquire()
        assert time.time() - t0 < 2
        msg = str(ei.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg
        assert held["since"] in msg and "mosaic-ray score a.yaml" in msg
        assert f"remove {lock.uri} if that process is gone" in msg and "\n" not in msg
    assert not st.exists(LOCK_NAME)


def test_waits_up_to_wait_s(st):
    holder = RunLock(st)
    holder.acquire()
    timer = threading.Timer(0.8, holder.release)
    timer.start()
    t0 = time.time()
    with RunLock(st, wait_s=20):
        assert 0.6 < time.time() - t0 < 10
    timer.join()
    with RunLock(st):
        t0 = time.time()
        with pytest.raises(LockedError, match=r"waited 0.6 s"):
            RunLock(st, wait_s=0.6).acquire()
        assert 0.5 < time.time() - t0 < 5
    assert not st.exists(LOCK_NAME)


def test_released_on_exception_and_keyboard_interrupt(st):
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with RunLock(st):
                assert st.exists(LOCK_NAME)
                raise exc
        assert not st.exists(LOCK_NAME)


def test_stale_lock_of_a_dead_pid_is_taken_over(st, caplog):
    _write_lock(st, pid=_dead_pid())
    with caplog.at_level(logging.WARNING, logger="mosaic_ray.runlock"):
        with RunLock(st):
            held = json.loads(st.read_bytes(LOCK_NAME))
            assert held["pid"] == os.getpid() and held["token"] != "other"
    assert "taking over the stale lock" in caplog.text
    assert not st.exists(LOCK_NAME)


def test_reused_pid_is_stale_but_another_hosts_lock_is_not(st):
    # our own pid, but "taken" long before this process started: a reused pid
    _write_lock(st, since_unix=time.time() - 10 * 365 * 86400)
    with RunLock(st):
        pass
    _write_lock(st, host="some-other-host", pid=_dead_pid())
    with pytest.raises(LockedError, match="on host some-other-host"):
        RunLock(st).acquire()
    assert json.loads(st.read_bytes(LOCK_NAME))["token"] == "other"  # left alone


def test_concurrent_takeover_of_one_stale_lock_has_one_winner(st):
    _write_lock(st, pid=_dead_pid())
    barrier, won, refused = threading.Barrier(6), [], []

    def racer():
        barrier.wait()
        try:
            RunLock(st).acquire()  # released never: the one holder stays
            won.append(1)
        except LockedError:
            refused.append(1)

    threads = [threading.Thread(target=racer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5


def test_release_leaves_a_lock_that_is_no_longer_ours(st, caplog):
    lock = RunLock(st)
    lock.acquire()
    st.delete(LOCK_NAME)
    _write_lock(st, pid=1)  # someone else's now
    with caplog.at_level(logging.WARNING, logger="mosaic_ray.runlock"):
        lock.release()
    assert json.loads(st.read_bytes(LOCK_NAME))["token"] == "other"
    assert "no longer ours" in caplog.text


# ---------------------------------------------------------------- pipeline / CLI
def _config(tmp_path) -> tuple:
    from mosaic_ray.config import validate_config

    raw = {"name": "locked", "data_dir": str(tmp_path / "nodata"), "output_dir": str(tmp_path / "runs"),
           "selection": {"budgets": [5]}}
    (tmp_path / "nodata").mkdir(exist_ok=True)
    path = tmp_path / "locked.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = validate_config(raw)
    return cfg, path, Storage(cfg.run_uri)


def test_run_steps_refuses_a_locked_run_folder(tmp_path):
    from mosaic_ray import pipeline

    cfg, _, st = _config(tmp_path)
    with RunLock(st, command="mosaic-ray run other.yaml"):
        with pytest.raises(LockedError, match="mosaic-ray run other.yaml"):
            pipeline.run_steps(cfg, ["ingest"])
        assert json.loads(st.read_bytes(LOCK_NAME))["command"] == "mosaic-ray run other.yaml"


def test_cli_exits_2_with_one_line_while_another_process_holds_the_lock(tmp_path):
    cfg, path, st = _config(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    with RunLock(st, command="mosaic-ray score held.yaml"):
        p = subprocess.run([sys.executable, "-m", "mosaic_ray.cli", "ingest", str(path)], env=env,
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("mosaic-ray:")]
    assert len(lines) == 1 and "in use by pid" in lines[0] and "mosaic-ray score held.yaml" in lines[0]
    assert "remove " in lines[0] and LOCK_NAME in lines[0]
    assert "Traceback" not in p.stderr and "Started a local Ray" not in p.stderr
    assert not st.exists(LOCK_NAME)


# ---------------------------------------------------------------- S3 (moto's server)
@pytest.fixture
def s3st(s3_server, request):
    return Storage(f"s3://mosaic-test/locks/{request.node.name}",
                   StorageConfig(endpoint_url=s3_server, region="us-east-1"))


def test_s3_exclusive_create_is_conditional(s3st):
    assert s3st.create_exclusive("obj.json", b'{"a": 1}') is True
    assert s3st.create_exclusive("obj.json", b'{"a": 2}') is False  # moto honours If-None-Match: *
    assert json.loads(s3st.read_bytes("obj.json")) == {"a": 1}


def test_s3_lock_refuses_a_second_holder_takes_over_a_stale_one_and_releases(s3st, caplog):
    with RunLock(s3st) as lock:
        assert lock.uri.startswith("s3://mosaic-test/locks/") and s3st.exists(LOCK_NAME)
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            RunLock(s3st).acquire()
    assert not s3st.exists(LOCK_NAME)
    _write_lock(s3st, pid=_dead_pid())
    with caplog.at_level(logging.WARNING, logger="mosaic_ray.runlock"):
        with RunLock(s3st):
            assert json.loads(s3st.read_bytes(LOCK_NAME))["pid"] == os.getpid()
    assert "taking over the stale lock" in caplog.text
    assert not s3st.exists(LOCK_NAME)
