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


def test_two_trainings_give_bit_identical_weights_and_a_rerun_resumes(setup):
    """Two Ray Train runs of one config and seed (two DDP workers) give bit-identical weights;
    running the first again resumes its finished run instead of retraining. (Identical pilot ΔU,
    laws, selections and final EPDMS over the whole pipeline:
    tests/test_pipeline_e2e.py::test_same_config_twice_gives_the_same_numbers.)"""
    cfg, st = setup
    a = train_planner(cfg, st, name="det_a", epochs=1, seed=5)
    b = train_planner(cfg, st, name="det_b", epochs=1, seed=5)
    assert a["run_name"] != b["run_name"] and b["resumed_from_epoch"] == 0  # two separate runs
    wa, wb = _weights(st, a["checkpoint"]), _weights(st, b["checkpoint"])
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs between two identical trainings"
    assert a["loss"] == b["loss"]
    again = train_planner(cfg, st, name="det_a", epochs=1, seed=5)
    assert again["run_name"] == a["run_name"] and again["resumed_from_epoch"] == 1
    assert st.read_bytes(a["checkpoint"]) == st.read_bytes(again["checkpoint"])


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
