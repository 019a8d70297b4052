"""Ray Train runs survive a killed worker and resume from their latest checkpoint. (A rerun of
a finished run resumes instead of retraining: tests/test_determinism.py.)"""

import io
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from conftest import ACTOR_PID_DIR, TINY_PLANNER, copy_run
from mosaic_ray.planner.futures import expert_futures
from mosaic_ray.planner.model import build_vocabulary, load_checkpoint
from mosaic_ray.stages.ingest import load_clips
from mosaic_ray.stages.trainer import train_planner


@pytest.fixture(scope="module")
def setup(ingested_run, tmp_path_factory):
    cfg, st, _ = copy_run(ingested_run, tmp_path_factory.mktemp("tr"), "resume", planner=TINY_PLANNER,
                          train={"num_workers": 2, "cpus_per_worker": 0.5, "checkpoint_every": 5})
    buf = io.BytesIO()
    np.save(buf, build_vocabulary(expert_futures(load_clips(st, "train")), 16))
    st.write_bytes("planner/vocabulary.npy", buf.getvalue())
    return cfg, st


def test_killed_worker_resumes_from_checkpoint_and_matches(setup):
    cfg, st = setup
    epochs = 80  # long enough to kill a worker mid-run (checkpoints every 5 epochs)
    ref = train_planner(cfg, st, name="uninterrupted", epochs=epochs, seed=3)
    for f in ACTOR_PID_DIR.glob("train-*"):
        f.unlink()
    out = {}
    th = threading.Thread(target=lambda: out.update(train_planner(cfg, st, name="killed", epochs=epochs, seed=3)))
    th.start()
    t0 = time.time()
    def checkpoints() -> int:  # the first one is surely registered once a second one exists
        return sum(p.startswith("train_runs/killed-") and "/checkpoint_" in p and p.endswith("train_state.pt")
                   for p in st.list("train_runs", recursive=True))

    while not (list(ACTOR_PID_DIR.glob("train-*")) and checkpoints() >= 2):
        assert time.time() - t0 < 120 and th.is_alive(), "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(1.0)  # the controller registers reported checkpoints on its next poll
    victim = int(sorted(ACTOR_PID_DIR.glob("train-*"))[-1].read_text())
    os.kill(victim, signal.SIGKILL)
    th.join(timeout=300)
    assert out, "the training did not finish after a worker was killed"
    assert 0 < out["resumed_from_epoch"] < epochs  # restarted from a checkpoint, not from scratch
    a = load_checkpoint(st.path(ref["checkpoint"])).state_dict()
    b = load_checkpoint(st.path(out["checkpoint"])).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
