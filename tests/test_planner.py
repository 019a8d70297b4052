"""The vocabulary planner on real NGSIM clips: features, vocabulary, training, checkpoints."""

import numpy as np
import pytest
import torch

from conftest import ngsim_file
from mosaic_ray.data.commonroad import cut_file
from mosaic_ray.planner.features import featurize_clips, mirror_batch
from mosaic_ray.planner.model import (PlannerSpec, VocabularyPlanner, build_vocabulary, entropy_from_logits,
                                      load_checkpoint, save_checkpoint)
from mosaic_ray.planner.training import (NonFiniteTrainingError, TrainRecipe, fit, plan_batches, recipe_from_config,
                                        shard_rows, train_loop)

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


@pytest.mark.parametrize("head", ["mlp", "additive"])
def test_both_scoring_heads_learn_and_a_checkpoint_keeps_its_head(clips, tmp_path, head):
    spec = PlannerSpec(**{**SPEC.__dict__, "head": head})
    f = featurize_clips(clips, spec.features)
    model = VocabularyPlanner(spec, torch.from_numpy(build_vocabulary(f["target"], spec.vocab_size)))
    n_head = sum(p.numel() for p in model.head.parameters())
    H = spec.hidden_dim
    assert n_head == ((H * H + H) + (H + 1) if head == "mlp" else H + 1)
    hist = fit(model, f, epochs=8, lr=3e-3, weight_decay=0.0, batch_size=32, seed=0)
    assert hist[-1] < 0.9 * hist[0]  # (8 epochs: about 0.8x for either head)
    save_checkpoint(model, str(tmp_path / "p.pt"))
    again = load_checkpoint(str(tmp_path / "p.pt"))
    assert again.spec.head == head
    np.testing.assert_array_equal(plan_batches(again, f)["logits"], plan_batches(model, f)["logits"])


def test_a_spec_stored_before_the_head_field_is_the_mlp_head():
    stored = {k: v for k, v in SPEC.__dict__.items() if k != "head"}
    assert PlannerSpec.from_dict(stored).head == "mlp"
    assert PlannerSpec().head == "additive"
    with pytest.raises(ValueError, match="unknown planner head"):
        PlannerSpec(head="transformer")


def test_bad_anchor_shape():
    with pytest.raises(ValueError, match="anchors"):
        VocabularyPlanner(SPEC, torch.zeros(4, 6, 3))


def test_recipe_comes_from_the_planner_section_with_explicit_overrides(tmp_path):
    from conftest import DATA_DIR
    from mosaic_ray.config import validate_config

    raw = {"name": "r", "data_dir": str(DATA_DIR), "selection": {"budgets": [5]},
           "planner": {"lr": 1e-3, "warmup_steps": 7, "batch_size": 32, "base_epochs": 9},
           "pilot": {"epochs": 3}, "train": {"epochs": 4, "lr": 5e-4}}
    cfg = validate_config(raw)
    base, pilot, final = (recipe_from_config(cfg, k) for k in ("base", "pilot", "final"))
    assert (base.lr, base.warmup_steps, base.batch_size, base.epochs) == (1e-3, 7, 32, 9)
    assert pilot == TrainRecipe(**{**base.to_dict(), "epochs": 3})  # pilot.lr: null = the recipe's, no factor
    assert final.lr == 5e-4 and final.epochs == 4 and final.warmup_steps == 7
    assert recipe_from_config(cfg, "pilot", epochs=11).epochs == 11
    with pytest.raises(ValueError, match="kind"):
        recipe_from_config(cfg, "other")
    r = TrainRecipe(lr=1.0, warmup_steps=4, epochs=1, min_lr_ratio=0.1)
    assert r.lr_at(0, 100) == pytest.approx(0.25 * 0.5 * (1 + np.cos(0)))
    assert r.lr_at(100, 100) == pytest.approx(0.1)  # the floor


def test_a_fixed_step_recipe_runs_exactly_its_steps_whatever_the_data_size(clips):
    """``planner.steps``: every training takes the same optimizer steps (the last epoch stops
    part-way, the cosine schedule spans the steps); without it, epochs × steps per epoch."""
    from conftest import DATA_DIR
    from mosaic_ray.config import validate_config

    cfg = validate_config({"name": "r", "data_dir": str(DATA_DIR), "selection": {"budgets": [5]},
                           "planner": {"batch_size": 16, "steps": 13, "base_epochs": 2}, "pilot": {"epochs": 3}})
    for kind in ("base", "pilot", "final"):
        assert recipe_from_config(cfg, kind).steps == 13  # one recipe: the step count is the planner's
    r = recipe_from_config(cfg, "pilot")
    assert r.for_rows(40).epochs == 5 and r.for_rows(300).epochs == 1 and r.for_rows(16).epochs == 13
    assert TrainRecipe(epochs=4).for_rows(1000).epochs == 4 and "steps" not in TrainRecipe().to_dict()
    assert r.to_dict()["steps"] == 13 and TrainRecipe(**r.to_dict()) == r
    with pytest.raises(ValueError, match="invalid recipe"):
        TrainRecipe(steps=0)
    f = featurize_clips(clips[:40], SPEC.features, with_prev=False)
    anchors = torch.from_numpy(build_vocabulary(f["target"], 16))
    for n_rows in (40, 25):
        data = shard_rows({k: v[:n_rows] for k, v in f.items()})
        rec = r.for_rows(n_rows)
        seen = []
        train_loop(VocabularyPlanner(SPEC, anchors), data, rec, seed=0, on_epoch=lambda s: seen.append(s.step))
        assert seen[-1] == 13 and len(seen) == rec.epochs  # exactly the steps, over ceil(13 / 3 or 2) epochs
    unbounded = []
    train_loop(VocabularyPlanner(SPEC, anchors), shard_rows(f), TrainRecipe(batch_size=16, epochs=5), seed=0,
               on_epoch=lambda s: unbounded.append(s.step))
    assert unbounded[-1] == 15  # no steps: 5 epochs × 3


def test_training_is_independent_of_row_order_once_rows_are_canonical(clips):
    f = featurize_clips(clips[:40], SPEC.features, with_prev=False)
    anchors = torch.from_numpy(build_vocabulary(f["target"], 16))
    perm = np.random.default_rng(0).permutation(len(f["target"]))
    shuffled = {k: v[perm] for k, v in f.items()}
    recipe = TrainRecipe(lr=3e-3, batch_size=16, epochs=2)
    out = []
    for data in (f, shuffled):
        torch.manual_seed(0)
        m = VocabularyPlanner(SPEC, anchors)
        train_loop(m, shard_rows(data), recipe, seed=1)
        out.append(m.state_dict())
    for k in out[0]:
        assert torch.equal(out[0][k], out[1][k]), k


def test_non_finite_loss_stops_with_the_run_and_step(clips):
    f = featurize_clips(clips[:20], SPEC.features, with_prev=False)
    model = VocabularyPlanner(SPEC, torch.from_numpy(build_vocabulary(f["target"], 8)))
    f["ego"] = f["ego"].copy()
    f["ego"][3] = np.inf
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteTrainingError, match=r"tiny run: loss became nan at epoch 0, step 0"):
        train_loop(model, f, TrainRecipe(batch_size=64, epochs=2), seed=0, name="tiny run")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no step was taken
