"""Faults and interruptions in the score stage: every pool clip exactly once, same values."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

from conftest import ACTOR_PID_DIR, ROOT, TINY_PLANNER, copy_run
from mosaic_ray.planner.features import featurize_clips
from mosaic_ray.planner.futures import expert_futures
from mosaic_ray.planner.model import PlannerSpec, VocabularyPlanner, build_vocabulary, save_checkpoint
from mosaic_ray.planner.training import fit
from mosaic_ray.stages.ingest import load_clips
from mosaic_ray.stages.score import run_score


@pytest.fixture(scope="module")
def prepared(ingested_run, tmp_path_factory):
    """A copy of the shared ingested run re-sharded small (6 clips: many tasks) and a tiny
    planner at planner/base.pt."""
    cfg, st, raw = copy_run(ingested_run, tmp_path_factory.mktemp("fault_runs"), "faults", shard_size=6,
                            ray={"num_cpus": 2}, planner=TINY_PLANNER,
                            score={"batch_size": 6, "num_actors": 2})
    assert len(st.list("ingest/clips/pool", ".parquet")) >= 8  # re-cut into shards of 6
    spec = PlannerSpec.from_config(cfg.planner)
    train = load_clips(st, "train")
    anchors = build_vocabulary(expert_futures(train + load_clips(st, "pool")), spec.vocab_size)
    model = VocabularyPlanner(spec, torch.from_numpy(anchors))
    fit(model, featurize_clips(train, spec.features, with_prev=False), epochs=2, lr=1e-3,
        weight_decay=0.0, batch_size=16, seed=0)
    st.makedirs("planner")
    save_checkpoint(model, st.path("planner/base.pt"))
    ref = run_score(cfg, st, "planner/base.pt", out="score_reference")
    assert ref["shards"] >= 8
    return raw, cfg, st


def _scores(st, out):
    t = st.read_table(f"{out}/scores").sort_by("clip_id")
    return t.column("clip_id").to_pylist(), np.asarray(t.column("importance").to_pylist())


def _wait_for(pred, timeout=120.0):
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_killing_a_scoring_actor_keeps_every_clip_once(prepared):
    _, cfg, st = prepared
    # the two-stage step's EPDMS actors record "score_epdms-<pid>" (the one-pool stage "score-<pid>")
    for f in ACTOR_PID_DIR.glob("score*-*"):
        f.unlink()
    result = {}
    th = threading.Thread(target=lambda: result.update(run_score(cfg, st, "planner/base.pt", out="score_killed")))
    th.start()
    def live_epdms_actor() -> int | None:
        # the EPDMS pool autoscales: an actor that recorded its PID may have been retired since
        for f in sorted(ACTOR_PID_DIR.glob("score_epdms-*")):
            pid = int(f.read_text())
            if psutil.pid_exists(pid):
                return pid
        return None

    _wait_for(lambda: len(st.list("score_killed/scores", ".parquet")) >= 1 and live_epdms_actor() is not None)
    while True:
        victim = live_epdms_actor()
        assert victim is not None, "no live EPDMS actor left to kill"
        try:
            os.kill(victim, signal.SIGKILL)
            break
        except ProcessLookupError:  # it exited between the check and the kill
            continue
    th.join(timeout=300)
    assert not th.is_alive() and result, "the stage did not finish after an actor was killed"
    ids, imp = _scores(st, "score_killed")
    ref_ids, ref_imp = _scores(st, "score_reference")
    assert ids == ref_ids and len(set(ids)) == len(ids)  # every pool clip exactly once
    np.testing.assert_allclose(imp, ref_imp)
    assert result["rows"] == len(ref_ids)


def test_interrupted_driver_resumes_and_matches(prepared, tmp_path, ray_local):
    raw, cfg, st = prepared
    # a separate driver process scores into score_interrupted on the same Ray cluster; kill it
    # once some shards are written, then resume in this process
    cfg_path = tmp_path / "faults.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    script = (
        "import sys; from mosaic_ray.config import load_config; from mosaic_ray.storage import Storage;"
        "from mosaic_ray.stages.runtime import ray_session; from mosaic_ray.stages.score import run_score;"
        "cfg = load_config(sys.argv[1]);"
        "exec('with ray_session(cfg):\\n    run_score(cfg, Storage(cfg.run_uri), \"planner/base.pt\", out=\"score_interrupted\")')"
    )
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address,
               PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", script, str(cfg_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: len(st.list("score_interrupted/scores", ".parquet")) >= 2, timeout=180)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = len(st.list("score_interrupted/scores", ".parquet"))
    assert not st.is_done("score_interrupted")
    payload = run_score(cfg, st, "planner/base.pt", out="score_interrupted")
    assert payload["shards_resumed"] >= min(done_before, 2)
    ids, imp = _scores(st, "score_interrupted")
    ref_ids, ref_imp = _scores(st, "score_reference")
    assert ids == ref_ids and len(set(ids)) == len(ids)
    np.testing.assert_allclose(imp, ref_imp)


def test_bad_shards_are_reported_before_work_starts(prepared):
    _, cfg, st = prepared
    shards = st.list("ingest/clips/pool", ".parquet")
    victim = Path(st.path(shards[0]))
    good = victim.read_bytes()
    try:
        victim.write_bytes(good[: len(good) // 3])  # truncated Parquet
        with pytest.raises(ValueError, match="unreadable Parquet"):
            run_score(cfg, st, "planner/base.pt", out="score_bad")
        import pyarrow.parquet as pq

        victim.write_bytes(good)
        pq.write_table(pq.read_table(victim).drop_columns(["ego_states"]), victim)  # missing column
        with pytest.raises(ValueError, match="missing columns"):
            run_score(cfg, st, "planner/base.pt", out="score_bad")
        victim.write_bytes(good)
        dup = Path(st.path("ingest/clips/pool/shard-99999.parquet"))
        dup.write_bytes(good)  # the same clips twice
        with pytest.raises(ValueError, match="duplicated frame ids"):
            run_score(cfg, st, "planner/base.pt", out="score_bad")
        dup.unlink()
    finally:
        victim.write_bytes(good)
    assert not st.exists("score_bad/scores")  # nothing started
