"""Ray Train runs are reproducible and resumable (issue 11 part 7, issue 15): two trainings of
one config and seed give bit-identical weights, a killed worker resumes from the latest
checkpoint to the same weights, and rerunning a finished run hands back its checkpoint without
starting Ray Train. One uninterrupted run, trained beside the killed one, is the reference for
all three. Identical pilot ΔU, laws, selections and final EPDMS over the whole pipeline:
tests/test_pipeline_e2e.py::test_same_config_twice_gives_the_same_numbers."""

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

EPOCHS = 24  # long enough to kill a worker mid-run (checkpoints every 3 epochs)


@pytest.fixture(scope="module")
def setup(ingested_run, tmp_path_factory):
    cfg, st, _ = copy_run(ingested_run, tmp_path_factory.mktemp("tr"), "resume",
                          planner={**TINY_PLANNER, "batch_size": 16},
                          train={"num_workers": 2, "cpus_per_worker": 0.5, "checkpoint_every": 3})
    buf = io.BytesIO()
    np.save(buf, build_vocabulary(expert_futures(load_clips(st, "train")), 16))
    st.write_bytes("planner/vocabulary.npy", buf.getvalue())
    return cfg, st


def _weights(st, rel):
    return load_checkpoint(st.path(rel)).state_dict()


def test_killed_worker_resumes_to_the_same_weights_and_a_rerun_resumes(setup):
    """The reference and the run whose worker is killed train side by side (1 CPU each)."""
    cfg, st = setup
    for f in ACTOR_PID_DIR.glob("train-*"):
        f.unlink()
    out: dict = {}
    runs = {name: threading.Thread(target=lambda n=name: out.update(
        {n: train_planner(cfg, st, name=n, epochs=EPOCHS, seed=3)})) for name in ("uninterrupted", "killed")}
    for th in runs.values():
        th.start()
    t0 = time.time()

    def checkpoints() -> int:  # the first one is surely registered once a second one exists
        return sum(p.startswith("train_runs/killed-") and "/checkpoint_" in p and p.endswith("train_state.pt")
                   for p in st.list("train_runs", recursive=True))

    while not (list(ACTOR_PID_DIR.glob("train-killed-*")) and checkpoints() >= 2):
        assert time.time() - t0 < 120 and runs["killed"].is_alive(), "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(1.0)  # the controller registers reported checkpoints on its next poll
    victim = int(sorted(ACTOR_PID_DIR.glob("train-killed-*"))[-1].read_text())
    os.kill(victim, signal.SIGKILL)
    for th in runs.values():
        th.join(timeout=300)
    assert set(out) == {"uninterrupted", "killed"}, "a training did not finish after a worker was killed"
    ref, killed = out["uninterrupted"], out["killed"]
    assert killed["run_name"] != ref["run_name"]  # two separate runs of the same settings
    assert ref["resumed_from_epoch"] == 0  # the reference ran uninterrupted
    assert 0 < killed["resumed_from_epoch"] < EPOCHS  # restarted from a checkpoint, not from scratch
    # same config and seed, two DDP workers: the same weights, bit for bit, the kill included
    a, b = _weights(st, ref["checkpoint"]), _weights(st, killed["checkpoint"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between two trainings of one config and seed"
    # a finished run is not retrained: its final checkpoint comes back, no worker starts
    pids = set(ACTOR_PID_DIR.glob("train-*"))
    st.delete(ref["checkpoint"])
    again = train_planner(cfg, st, name="uninterrupted", epochs=EPOCHS, seed=3)
    assert again["run_name"] == ref["run_name"] and again["resumed_from_epoch"] == EPOCHS
    assert set(ACTOR_PID_DIR.glob("train-*")) == pids
    assert _weights(st, again["checkpoint"]).keys() == a.keys()
    assert all(torch.equal(_weights(st, again["checkpoint"])[k], a[k]) for k in a)


def test_the_seed_decides_the_weights(ngsim_clips):
    """The shared loop in-process: the same seed twice gives bit-identical weights, another seed
    other weights (the Ray Train workers seed the same way)."""
    from mosaic_ray.planner.features import featurize_clips
    from mosaic_ray.planner.model import PlannerSpec, VocabularyPlanner
    from mosaic_ray.planner.training import fit

    clips = ngsim_clips("US101/USA_US101-22_1_T-1.xml")[:24]
    spec = PlannerSpec(vocab_size=8, embed_dim=16, hidden_dim=16, max_agents=4, max_lanes=8)
    anchors = torch.from_numpy(build_vocabulary(expert_futures(clips), 8))
    feats = featurize_clips(clips, spec.features, with_prev=False)

    def train(seed):
        torch.manual_seed(seed)
        m = VocabularyPlanner(spec, anchors)
        fit(m, feats, epochs=2, lr=1e-3, weight_decay=0.0, batch_size=8, seed=seed)
        return m.state_dict()

    w5, w5b, w6 = train(5), train(5), train(6)
    assert all(torch.equal(w5[k], w5b[k]) for k in w5)
    assert not all(torch.equal(w5[k], w6[k]) for k in w5)
