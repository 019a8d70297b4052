"""Identical reruns (issue 11 part 7): the same training twice gives bit-identical weights, and
identical pilot ΔU over the whole pipeline is checked by test_pipeline_e2e."""

import io

import numpy as np
import pytest
import torch

from conftest import copy_run
from mosaic_ray.planner.futures import expert_futures
from mosaic_ray.planner.model import build_vocabulary, load_checkpoint
from mosaic_ray.stages.ingest import load_clips
from mosaic_ray.stages.trainer import train_planner


@pytest.fixture(scope="module")
def setup(ingested_run, tmp_path_factory):
    cfg, st, _ = copy_run(
        ingested_run, tmp_path_factory.mktemp("det"), "determinism",
        planner={"vocab_size": 16, "embed_dim": 32, "hidden_dim": 32, "max_agents": 8, "max_lanes": 16,
                 "batch_size": 16},
        train={"num_workers": 2, "cpus_per_worker": 0.5})
    buf = io.BytesIO()
    np.save(buf, build_vocabulary(expert_futures(load_clips(st, "train")), 16))
    st.write_bytes("planner/vocabulary.npy", buf.getvalue())
    return cfg, st


def _weights(st, rel):
    return load_checkpoint(st.path(rel)).state_dict()


def test_two_trainings_give_bit_identical_weights(setup):
    """Two Ray Train runs of one config and seed (two DDP workers) give bit-identical weights;
    another seed does not. (Identical pilot ΔU, laws, selections and final EPDMS over the whole
    pipeline: tests/test_pipeline_e2e.py::test_same_config_twice_gives_the_same_numbers.)"""
    cfg, st = setup
    a = train_planner(cfg, st, name="det_a", epochs=1, seed=5)
    b = train_planner(cfg, st, name="det_b", epochs=1, seed=5)
    assert a["run_name"] != b["run_name"] and b["resumed_from_epoch"] == 0  # two separate runs
    wa, wb = _weights(st, a["checkpoint"]), _weights(st, b["checkpoint"])
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs between two identical trainings"
    assert a["loss"] == b["loss"]
    c = train_planner(cfg, st, name="det_c", epochs=1, seed=6)  # the seed matters
    assert not all(torch.equal(wa[k], v) for k, v in _weights(st, c["checkpoint"]).items())
