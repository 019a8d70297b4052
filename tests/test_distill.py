"""Rule-distillation targets (stage on Ray Data), planner distillation heads, checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest import DATA_DIR, ngsim_file
from mosaic_ray.config import validate_config
from mosaic_ray.data.clip import clips_to_table, replace
from mosaic_ray.data.commonroad import cut_file
from mosaic_ray.planner.features import featurize_clips
from mosaic_ray.planner.model import (PlannerSpec, VocabularyPlanner, build_vocabulary, load_checkpoint,
                                      save_checkpoint)
from mosaic_ray.planner.training import fit, plan_batches, to_tensors
from mosaic_ray.scoring.epdms import TERMS, score_vocabulary
from mosaic_ray.stages.distill import DISTILL_COLUMNS, load_targets, run_distill, targets_for
from mosaic_ray.stages.trainer import featurize_batch
from mosaic_ray.storage import Storage, write_shards

SPEC = PlannerSpec(vocab_size=16, embed_dim=32, hidden_dim=32, max_agents=8, max_lanes=12)


@pytest.fixture(scope="module")
def clips():
    out = []
    for f in ("US101/USA_US101-22_1_T-1.xml", "Lankershim/USA_Lanker-2_13_T-1.xml"):
        out += cut_file(str(ngsim_file(f)))[0][:9]
    return out


@pytest.fixture(scope="module")
def anchors(clips):
    return build_vocabulary(featurize_clips(clips, SPEC.features, with_prev=False)["target"], 16)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, clips, anchors):
    """A run folder with 5 train clips (1 shard) and 13 pool clips (3 shards, one clip broken)."""
    cfg = validate_config({"name": "distill", "data_dir": str(DATA_DIR), "selection": {"budgets": [5]},
                           "output_dir": str(tmp_path_factory.mktemp("distill")),
                           "planner": {"vocab_size": 16, "embed_dim": 32, "hidden_dim": 32, "max_agents": 8,
                                       "max_lanes": 12, "distill": True},
                           "score": {"num_actors": 2},
                           "train": {"num_workers": 1, "cpus_per_worker": 1.0}})
    st = Storage(cfg.run_uri)
    pool = list(clips[5:])
    bad = pool[3].ego_states.copy()
    bad[30:, :2] += 1000.0  # a 1 km jump: the clip decodes but fails validation when scored
    pool[3] = replace(pool[3], ego_states=bad, clip_id="broken-clip")
    write_shards(st, "ingest/clips/train", clips_to_table(clips[:5]), 8)
    write_shards(st, "ingest/clips/pool", clips_to_table(pool), 5)
    buf = io.BytesIO()
    np.save(buf, anchors)
    st.write_bytes("planner/vocabulary.npy", buf.getvalue())
    return cfg, st, clips[:5], pool


def test_distill_stage_writes_exactly_one_row_per_clip(ray_local, small_run, anchors):
    cfg, st, train, pool = small_run
    payload = run_distill(cfg, st)
    assert payload["per_split"] == {"train": {"rows": 5, "ok": 5, "shards": 1},
                                    "pool": {"rows": 13, "ok": 12, "shards": 3}}
    assert payload["K"] == 16 and payload["errors"] == 1
    t = load_targets(st)
    ids = t.column("clip_id").to_pylist()
    assert sorted(ids) == sorted([c.clip_id for c in train + pool]) and len(set(ids)) == len(ids)
    assert t.schema.field("targets").type == pa.list_(pa.float32(), 16 * 9)
    rows = {r["clip_id"]: r for r in t.to_pylist()}
    assert rows["broken-clip"]["status"].startswith("error") and np.isnan(rows["broken-clip"]["targets"]).all()
    # the stored targets are the scorer's terms of every anchor
    got = np.asarray(rows[train[0].clip_id]["targets"], np.float32).reshape(16, 9)
    want = score_vocabulary(train[0], anchors).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want))
    assert np.isnan(got[:, TERMS.index("EC")]).all()
    assert ((got[:, :8] >= 0) & (got[:, :8] <= 1)).all()
    # done: a second call returns the recorded payload without recomputing
    assert run_distill(cfg, st) == payload
    # joined to features by clip id (the Ray Train UDF): (B, K, 8), NaN where unknown
    batch = pa.concat_tables([st.read_table("ingest/clips/pool")])
    f = featurize_batch(batch, SPEC, targets=t)
    assert f["distill_targets"].shape == (13, 16, 8)
    k = [c.clip_id for c in pool].index("broken-clip")
    assert np.isnan(f["distill_targets"][k]).all() and np.isfinite(np.delete(f["distill_targets"], k, 0)).all()
    np.testing.assert_allclose(targets_for(t, [train[0].clip_id], 16)[0], want[:, DISTILL_COLUMNS])
    with pytest.raises(ValueError, match="K="):
        targets_for(t, [train[0].clip_id], 32)


def test_ray_train_uses_distillation_targets_and_matches_the_in_process_loop(ray_local, small_run):
    """A one-worker Ray Train run trains on the distillation targets; the in-process loop (the
    base model's ``train.base_backend: in_process``, the grid's in-trial cells) on the same
    settings gives the same weights bit for bit, and a rerun of it hands the finished run back."""
    from mosaic_ray.stages.trainer import train_planner, train_planner_in_process

    cfg, st, _, _ = small_run
    info = train_planner(cfg, st, name="distilled", epochs=3, seed=0)
    model = load_checkpoint(st.path(info["checkpoint"]))
    assert model.spec.distill and hasattr(model, "distill_head")
    assert np.isfinite(info["loss"])
    assert info["n_train"] == 5 and info["n_distill_targets"] == 5  # every D_train row had targets
    local = train_planner_in_process(cfg, st, name="distilled_local", epochs=3, seed=0, label="in_process")
    assert local["backend"] == "in_process" and local["resumed_from_epoch"] == 0
    assert local["n_distill_targets"] == 5
    a, b = model.state_dict(), load_checkpoint(st.path(local["checkpoint"])).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between Ray Train and the in-process loop"
    again = train_planner_in_process(cfg, st, name="distilled_local", epochs=3, seed=0)
    assert again["run_name"] == local["run_name"] and again["resumed_from_epoch"] == 3


def test_distillation_heads_train_and_choose(clips, anchors):
    spec = PlannerSpec(**{**SPEC.__dict__, "distill": True})
    f = featurize_clips(clips, spec.features, with_prev=False)
    f["distill_targets"] = np.stack([score_vocabulary(c, anchors)[:, DISTILL_COLUMNS] for c in clips]).astype(np.float32)
    f["distill_targets"][0] = np.nan  # a clip without targets is ignored by the loss
    torch.manual_seed(0)
    model = VocabularyPlanner(spec, torch.from_numpy(anchors))

    def bce(m):
        with torch.no_grad():
            t = to_tensors(f, ("ego", "agents", "agents_mask", "lanes", "lanes_attr", "lanes_mask", "route",
                               "distill_targets"))
            _, _, sub = m(t, with_subscores=True)
            return float(m.distill_loss(sub, t["distill_targets"]))

    before = bce(model)
    hist = fit(model, f, epochs=25, lr=3e-3, weight_decay=0.0, batch_size=8, seed=0)
    assert hist[-1] < hist[0]
    assert bce(model) < 0.7 * before
    out = plan_batches(model, f)
    assert out["subscores"].shape == (len(clips), 16, 8)
    assert ((out["subscores"] >= 0) & (out["subscores"] <= 1)).all()
    # the choice maximises the documented combination
    with torch.no_grad():
        logits, _, sub = model(to_tensors(f, ("ego", "agents", "agents_mask", "lanes", "lanes_attr",
                                              "lanes_mask", "route")), with_subscores=True)
        np.testing.assert_array_equal(out["choice"], model.selection_scores(logits, sub).argmax(-1).numpy())
    # without the heads the loss ignores the targets and the choice is the imitation argmax
    plain = VocabularyPlanner(SPEC, torch.from_numpy(anchors))
    fit(plain, f, epochs=1, lr=3e-3, weight_decay=0.0, batch_size=8, seed=0)
    p = plan_batches(plain, f)
    assert "subscores" not in p and (p["choice"] == p["logits"].argmax(-1)).all()


def test_checkpoints_with_and_without_heads_load(tmp_path, clips, anchors):
    f = featurize_clips(clips[:4], SPEC.features, with_prev=False)
    plain = VocabularyPlanner(SPEC, torch.from_numpy(anchors))
    # a checkpoint of the version before distillation: its stored spec has no distill keys
    old = {k: v for k, v in SPEC.__dict__.items() if not k.startswith("distill")}
    torch.save({"spec": old, "state_dict": plain.state_dict(), "extra": {}}, tmp_path / "old.pt")
    again = load_checkpoint(str(tmp_path / "old.pt"))
    assert again.spec.distill is False and not hasattr(again, "distill_head")
    np.testing.assert_array_equal(plan_batches(again, f)["choice"], plan_batches(plain, f)["choice"])
    distilled = VocabularyPlanner(PlannerSpec(**{**SPEC.__dict__, "distill": True, "distill_im_weight": 0.5}),
                                  torch.from_numpy(anchors))
    save_checkpoint(distilled, str(tmp_path / "new.pt"))
    loaded = load_checkpoint(str(tmp_path / "new.pt"))
    assert loaded.spec.distill and loaded.spec.distill_im_weight == 0.5
    np.testing.assert_allclose(plan_batches(loaded, f)["subscores"], plan_batches(distilled, f)["subscores"])


def test_pilot_runs_train_on_the_distillation_targets(ray_local, small_run):
    """Pilots get the same (B, K, 8) targets as the Ray Train path, joined by clip id."""
    from mosaic_ray.planner.training import TrainRecipe, train_loop
    from mosaic_ray.stages.distill import ensure_targets
    from mosaic_ray.stages.pilot import pilot_features

    cfg, st, train, pool = small_run
    t = ensure_targets(cfg, st)  # already computed above: read back, not recomputed
    spec = PlannerSpec(**{**SPEC.__dict__, "distill": True})
    anchors = torch.from_numpy(np.load(st.path("planner/vocabulary.npy")))
    model = VocabularyPlanner(spec, anchors)
    ids = [pool[0].clip_id, "broken-clip"]
    f = pilot_features(st, ids, t, model)
    assert list(f["clip_id"]) == sorted([c.clip_id for c in train] + ids)  # canonical order
    want = targets_for(t, f["clip_id"], 16)
    np.testing.assert_array_equal(f["distill_targets"], want)
    k = list(f["clip_id"]).index("broken-clip")
    assert np.isnan(f["distill_targets"][k]).all() and np.isfinite(np.delete(f["distill_targets"], k, 0)).all()
    hist = train_loop(model, f, TrainRecipe(lr=3e-3, batch_size=4, epochs=2), seed=0, name="pilot-distill")
    assert np.isfinite(hist).all()
    plain = pilot_features(st, ids, t, VocabularyPlanner(SPEC, anchors))  # no heads: no targets
    assert "distill_targets" not in plain
