"""The vocabulary planner on real NGSIM clips: features, vocabulary, training, checkpoints."""

import numpy as np
import pytest
import torch

from conftest import ngsim_file
from mosaic_ray.data.commonroad import cut_file
from mosaic_ray.planner.features import featurize_clips, mirror_batch
from mosaic_ray.planner.model import (PlannerSpec, VocabularyPlanner, build_vocabulary, entropy_from_logits,
                                      load_checkpoint, save_checkpoint)
from mosaic_ray.planner.training import fit, plan_batches

SPEC = PlannerSpec(vocab_size=32, embed_dim=32, hidden_dim=32, max_agents=8, max_lanes=12)


@pytest.fixture(scope="module")
def clips():
    out = []
    for f in ("US101/USA_US101-22_1_T-1.xml", "Lankershim/USA_Lanker-2_13_T-1.xml"):
        out += cut_file(str(ngsim_file(f)))[0]
    return out


def test_features_are_ego_relative(clips):
    f = featurize_clips(clips[:5], SPEC.features)
    assert f["ego"].shape == (5, 16, 5) and f["agents"].shape == (5, 8, 10)
    np.testing.assert_allclose(f["ego"][:, -1, :2], 0.0, atol=1e-6)  # ego at the origin at t0
    np.testing.assert_allclose(f["ego"][:, -1, 2], 1.0, atol=1e-6)  # heading 0: cos = 1
    assert (f["target"][:, -1, 0] > 0).mean() > 0.8  # recorded vehicles mostly drive forward
    assert f["prev_valid"].dtype == bool and f["prev_valid"].any()
    m = mirror_batch(mirror_batch(f))
    for k in ("ego", "agents", "lanes", "route", "target"):
        np.testing.assert_array_equal(m[k], f[k])
    assert np.allclose(mirror_batch(f)["target"][..., 1], -f["target"][..., 1])


def test_vocabulary_has_k_anchors_and_a_stop(clips):
    fut = featurize_clips(clips, SPEC.features, with_prev=False)["target"]
    a = build_vocabulary(fut, 16)
    assert a.shape == (16, 8, 3)
    assert np.abs(a).sum(axis=(1, 2)).min() == 0.0  # one stationary anchor
    assert build_vocabulary(fut[:5], 16).shape[0] == 5  # never more anchors than futures
    with pytest.raises(ValueError):
        build_vocabulary(np.full((3, 8, 3), np.nan), 4)


def test_training_improves_imitation_and_checkpoints_round_trip(clips, tmp_path):
    f = featurize_clips(clips, SPEC.features)
    anchors = torch.from_numpy(build_vocabulary(f["target"], SPEC.vocab_size))
    model = VocabularyPlanner(SPEC, anchors)

    def ade(m):
        out = plan_batches(m, f)
        return np.linalg.norm(out["trajectory"][..., :2] - f["target"][..., :2], axis=-1).mean()

    before = ade(model)
    hist = fit(model, f, epochs=15, lr=3e-3, weight_decay=0.0, batch_size=32, seed=0)
    assert hist[-1] < hist[0]
    assert ade(model) < 0.7 * before
    out = plan_batches(model, f)
    assert out["logits"].shape == (len(clips), SPEC.vocab_size)
    assert out["embedding"].shape == (len(clips), SPEC.embed_dim)
    np.testing.assert_allclose(out["entropy"], entropy_from_logits(out["logits"]), rtol=1e-4)
    save_checkpoint(model, str(tmp_path / "p.pt"))
    again = plan_batches(load_checkpoint(str(tmp_path / "p.pt")), f)
    np.testing.assert_array_equal(again["choice"], out["choice"])


def test_bad_anchor_shape():
    with pytest.raises(ValueError, match="anchors"):
        VocabularyPlanner(SPEC, torch.zeros(4, 6, 3))
