"""Identical reruns (issue 11 part 7): the same training twice gives bit-identical weights, and
the same pilot trials twice give identical ΔU, on real NGSIM clips through Ray Train / Ray Tune."""

import io

import numpy as np
import pytest
import torch

from conftest import copy_run
from mosaic_ray.planner.futures import expert_futures
from mosaic_ray.planner.model import build_vocabulary, load_checkpoint
from mosaic_ray.stages.ingest import load_clips, load_split
from mosaic_ray.stages.pilot import run_pilots
from mosaic_ray.stages.trainer import train_planner


@pytest.fixture(scope="module")
def setup(ingested_run, tmp_path_factory):
    cfg, st, _ = copy_run(
        ingested_run, tmp_path_factory.mktemp("det"), "determinism",
        planner={"vocab_size": 16, "embed_dim": 32, "hidden_dim": 32, "max_agents": 8, "max_lanes": 16,
                 "batch_size": 16},
        pilot={"sizes": [4], "seeds": [0, 1], "epochs": 2, "cpus_per_trial": 0.5, "max_concurrent_trials": 2},
        train={"num_workers": 2, "cpus_per_worker": 0.5})
    buf = io.BytesIO()
    np.save(buf, build_vocabulary(expert_futures(load_clips(st, "train")), 16))
    st.write_bytes("planner/vocabulary.npy", buf.getvalue())
    return cfg, st


def _weights(st, rel):
    return load_checkpoint(st.path(rel)).state_dict()


def test_two_trainings_give_bit_identical_weights_and_pilots_identical_delta_u(setup):
    cfg, st = setup
    a = train_planner(cfg, st, name="det_a", epochs=3, seed=5)
    b = train_planner(cfg, st, name="det_b", epochs=3, seed=5)
    assert a["run_name"] != b["run_name"] and b["resumed_from_epoch"] == 0  # two separate runs
    wa, wb = _weights(st, a["checkpoint"]), _weights(st, b["checkpoint"])
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs between two identical trainings"
    assert a["loss"] == b["loss"]
    c = train_planner(cfg, st, name="det_c", epochs=3, seed=6)  # the seed matters
    assert not all(torch.equal(wa[k], v) for k, v in _weights(st, c["checkpoint"]).items())

    # pilot trials (Ray Tune, in-process training) twice on a tiny ranked set
    pool = load_split(st, "pool", columns=["clip_id", "site"]).to_pylist()
    ranked = {}
    for r in pool:
        ranked.setdefault(r["site"], []).append(r["clip_id"])
    ranked = {d: ids[::-1][:6] for d, ids in sorted(ranked.items())[:2]}  # any fixed order will do
    p1 = run_pilots(cfg, st, ranked, a["checkpoint"], 0.5, name="det_p1")
    p2 = run_pilots(cfg, st, ranked, a["checkpoint"], 0.5, name="det_p2")
    assert p1.num_rows == 2 * len(ranked)
    assert p1.column("delta_u").to_pylist() == p2.column("delta_u").to_pylist()
    assert p1.select(["domain", "n", "seed"]).equals(p2.select(["domain", "n", "seed"]))
