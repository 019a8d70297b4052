"""Ctrl-C and SIGTERM stop a real ``mosaic-ray`` command within seconds (exit 130 / 143), leave
no completion record and no run lock, and a rerun completes.

The score test runs ``python -m mosaic_ray.cli score`` as a subprocess on a private copy of the
shared ingested run with an untrained tiny planner at ``planner/base.pt`` (only the plumbing
matters): Ctrl-C hits a command that started its own local Ray (a user at a terminal); SIGTERM
hits a driver connected to a running cluster (the session's, through ``RAY_ADDRESS``, as under
``ray job submit`` or a scheduler), and the rerun connects to it too. The handler tests run small Ray-free
subprocesses around :func:`mosaic_ray.cli.interrupt_handlers`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from conftest import ROOT, TINY_PLANNER, write_untrained_base

#: how long an interrupted command may take to exit (Ray's shutdown included)
EXIT_WITHIN_S = 10.0


def _env(address: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MOSAIC_PROGRESS="0")
    env.pop("RAY_ADDRESS", None)  # without an address the command starts (and shuts down) its own local Ray
    if address:
        env["RAY_ADDRESS"] = address
    return env


@pytest.fixture
def score_ready(make_run, tmp_path):
    """A run copy in shards of 8 pool clips, an untrained tiny base planner; returns
    ``(config path, storage, address of the session's Ray)``."""
    import ray
    from mosaic_ray.stages.ingest import load_clips

    cfg, st, raw = make_run("signals", shard_size=8, planner=TINY_PLANNER, ray={"num_cpus": 2},
                            score={"batch_size": 4, "num_actors": 1})
    write_untrained_base(cfg, st, load_clips(st, "train"), load_clips(st, "pool"))
    path = tmp_path / "signals.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert len(st.list("ingest/clips/pool", ".parquet")) >= 10
    return path, st, ray.get_runtime_context().gcs_address


def _score(path, log, *extra, new_session=False, address=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mosaic_ray.cli", "score", str(path), *extra], env=_env(address),
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session)


def _interrupt_once_scoring(proc, st, send, timeout=120.0) -> tuple[int, float]:
    """Wait for the first score shard, ``send()`` the signal; returns (exit code, seconds to exit)."""
    t0 = time.time()
    while not st.list("score/scores", ".parquet"):
        assert proc.poll() is None, "the command ended before scoring started"
        assert time.time() - t0 < timeout, "scoring did not start"
        time.sleep(0.05)
    send()
    t1 = time.time()
    try:
        rc = proc.wait(EXIT_WITHIN_S + 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"still alive {EXIT_WITHIN_S + 20:.0f} s after the signal")
    return rc, time.time() - t1


def _interrupted(path, st, tmp_path, name, send, **popen) -> str:
    """Run ``score --force``, stop it with ``send(proc)`` once the first shard is written, check
    it exited at once with no completion record and no lock; returns its log."""
    with open(tmp_path / f"{name}.log", "wb") as log:
        proc = _score(path, log, "--force", **popen)
        rc, took = _interrupt_once_scoring(proc, st, lambda: send(proc))
    out = (tmp_path / f"{name}.log").read_text()
    assert rc == {"sigint": 130, "sigterm": 143}[name], out[-3000:]
    assert took < EXIT_WITHIN_S, f"exited {took:.1f} s after the signal"
    assert not st.is_done("score")  # no record claims completion
    assert not st.exists("_LOCK.json")  # the lock was released
    return out


def test_ctrl_c_and_sigterm_stop_score_at_once_and_a_rerun_completes(score_ready, tmp_path):
    """Ctrl-C (SIGINT to the foreground process group of a command running its own local Ray:
    exit 130), then SIGTERM to a command connected to a running cluster (exit 143, no crash
    dump of Ray's core), then a plain rerun on that cluster that finishes the step and keeps
    the shards finished before the interruption."""
    path, st, address = score_ready
    out = _interrupted(path, st, tmp_path, "sigint", lambda p: os.killpg(p.pid, signal.SIGINT), new_session=True)
    assert "interrupted (SIGINT)" in out
    n_pool = len(st.list("ingest/clips/pool", ".parquet"))
    assert len(st.list("score/scores", ".parquet")) < n_pool  # it really stopped early
    st.delete("score/scores")  # so that the next signal waits for the next run's first shard
    out = _interrupted(path, st, tmp_path, "sigterm", lambda p: p.send_signal(signal.SIGTERM), address=address)
    assert "interrupted (SIGTERM)" in out and "SIGTERM received" not in out
    with open(tmp_path / "rerun.log", "wb") as log:
        rerun = _score(path, log, address=address)
        rc2 = rerun.wait(180)
    out2 = (tmp_path / "rerun.log").read_text()
    assert rc2 == 0, out2[-3000:]
    payload = st.done_payload("score")
    assert payload["shards"] == n_pool and payload["shards_resumed"] >= 1  # finished shards kept
    assert not st.exists("_LOCK.json")


# ---------------------------------------------------------------- the handlers, Ray-free
_PROBE = textwrap.dedent("""
    import signal, sys, time
    from mosaic_ray import cli
    mode = sys.argv[1]
    def library_handler(s, f):  # what Ray Tune / Train install: swallow the signal
        print("library handler ran", flush=True)
    with cli.interrupt_handlers():
        try:
            signal.signal(signal.SIGINT, library_handler)   # refused
            signal.signal(signal.SIGTERM, library_handler)  # refused
            print("ready", flush=True)
            time.sleep(30)
        except KeyboardInterrupt as e:
            print("caught", type(e).__name__, e.signum, flush=True)
            if mode == "slow-cleanup":
                time.sleep(30)  # cleanup that hangs: the watchdog ends the process
            raise SystemExit(128 + e.signum)
""")


def _probe(mode: str, sig: int, ignore_sigint: bool = False, env_extra: dict | None = None):
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    p = subprocess.Popen([sys.executable, "-c", _PROBE, mode], env={**_env(), **(env_extra or {})}, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec)
    assert p.stdout.readline().strip() == "ready"
    t0 = time.time()
    p.send_signal(sig)
    out, _ = p.communicate(timeout=20)
    return p.returncode, out, time.time() - t0


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_raises_in_main_thread_even_when_sigint_was_ignored(sig, code):
    # `cmd &` in a script starts cmd with SIGINT ignored: `kill -INT` must still stop it
    rc, out, took = _probe("plain", sig, ignore_sigint=True)
    assert rc == code and f"caught Interrupted {int(sig)}" in out, out
    assert "library handler ran" not in out and took < 5


def test_cleanup_that_hangs_is_cut_short_by_the_watchdog():
    rc, out, took = _probe("slow-cleanup", signal.SIGINT, env_extra={"MOSAIC_INTERRUPT_GRACE_S": "1"})
    assert rc == 130 and "caught Interrupted 2" in out and "exiting now" in out, out
    assert took < 8
