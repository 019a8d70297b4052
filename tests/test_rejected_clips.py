"""Issue 15, finding 2: rejected clips stay out, and a NaN model is never reported.

Before: two pool clips with NaN ego states were marked ``score_error`` by the score step, yet
one ranked 34th in its domain and MOSAIC selected it; the training loss went NaN and a NaN
model's validation EPDMS was reported as an ordinary result.

Here, on a copy of the session's ingested NGSIM run, NaN ego states are written into three
pool clips (one per site) and one D_train clip *before* scoring; the real score step marks
them ``score_error``. Every later consumer must leave them out: the domain assigners of every
variant, the rank order, the pilots' clip lists, every selection method at every budget (up to
the whole usable pool), the coreset baseline's D_train embeddings and the training datasets;
the domains / select outputs count them by reason. The training loop's and the evaluation's
finiteness checks are unit-tested without Ray.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest import TINY_PLANNER, copy_run, write_untrained_base
from mosaic_ray import layout
from mosaic_ray.config import ConfigError, validate_config
from mosaic_ray.data.clip import T0_INDEX, clip_to_row, clip_schema, clips_from_table
from mosaic_ray.planner.features import featurize_clips
from mosaic_ray.planner.model import PlannerSpec, VocabularyPlanner, build_vocabulary, save_checkpoint
from mosaic_ray.planner.training import (NonFiniteTrainingError, TrainRecipe, drop_nonfinite_rows,
                                        require_finite_weights, train_loop)
from mosaic_ray.selection.methods import METHOD_NAMES
from mosaic_ray.selection.usable import usable
from mosaic_ray.storage import Storage

VARIANTS = [{"name": "site"}, {"name": "emb", "kind": "embedding", "k": 3},
            {"name": "captions", "kind": "captions", "k": 3}]
#: every method of the registry, and domain-based ones under the clustered variants
METHODS = list(METHOD_NAMES) + ["mosaic@captions", "chameleon@emb", "mosaic_no_rank@emb"]
N_POISONED_POOL = 3


def _poison(st: Storage, split: str, ids: set[str]) -> None:
    """NaN in a valid history step of the ego track of each clip in ``ids`` (shards rewritten
    in place, as a shard edited after ingest would be)."""
    for rel in st.list(f"ingest/clips/{split}", ".parquet"):
        t = st.read_table(rel)
        if not set(t.column("clip_id").to_pylist()) & ids:
            continue
        rows = []
        for c in clips_from_table(t):
            if c.clip_id in ids:
                es = c.ego_states.copy()
                es[T0_INDEX - 3, 0] = np.nan
                c = dataclasses.replace(c, ego_states=es)
            rows.append(clip_to_row(c))
        st.write_table(rel, pa.Table.from_pylist(rows, schema=clip_schema()))


def _fake_pilots(st: Storage, name: str, domains: list[str]) -> None:
    """A pilot table for ``domains`` with distinct saturating gains (no Tune run needed)."""
    rows = [{"domain": d, "n": n, "seed": 0, "delta_u": (0.01 + 0.004 * i) * (1 - np.exp(-n / 5.0)),
             "epdms": 0.5, "trial_time_s": 1.0}
            for i, d in enumerate(domains) for n in (2, 4, 8)]
    st.write_table(layout.pilot_table(name), pa.Table.from_pylist(rows))


@pytest.fixture(scope="module")
def rejected(ingested_run, tmp_path_factory):
    """The ingested run with 3 pool clips and 1 D_train clip poisoned, an untrained tiny base
    planner, then the real score, score_train and domains steps; fake pilot tables."""
    from mosaic_ray.stages import domains, score
    from mosaic_ray.stages.ingest import load_clips
    from mosaic_ray.stages.step import Context, run_step

    cfg, st, raw = copy_run(ingested_run, tmp_path_factory.mktemp("runs"), "rejected",
                            planner={**TINY_PLANNER}, score={"batch_size": 16},
                            domains={"variants": VARIANTS},
                            selection={"budgets": [5], "methods": METHODS})
    pool, train = load_clips(st, "pool"), load_clips(st, "train")
    by_site = {}
    for c in sorted(pool, key=lambda c: c.clip_id):
        by_site.setdefault(c.site, c.clip_id)
    bad_pool = set(list(by_site.values())[:N_POISONED_POOL])
    if len(bad_pool) < N_POISONED_POOL:  # fewer sites than that: more clips of one
        bad_pool |= {c.clip_id for c in sorted(pool, key=lambda c: c.clip_id)[-(N_POISONED_POOL - len(bad_pool)):]}
    bad_train = {sorted(c.clip_id for c in train)[0]}
    # an untrained tiny planner stands in for the base model (only the plumbing matters here)
    write_untrained_base(cfg, st, train, pool)
    _poison(st, "pool", bad_pool)
    _poison(st, "train", bad_train)
    ctx = Context(cfg, st)
    out = {name: run_step(step, ctx) for name, step in
           (("score", score.STEP), ("score_train", score.TRAIN_STEP), ("domains", domains.STEP))}
    ok = usable(st.read_table("score/scores"))
    for v in ("site", "captions", "emb"):
        labels = st.read_table(layout.domain_labels(v)) if v != "site" else None
        doms = sorted(set(labels.column("domain").to_pylist())) if labels is not None else \
            sorted(set(ok.table.column("site").to_pylist()))
        _fake_pilots(st, "pilots" if v == "site" else f"pilots-{v}", doms)
        _fake_pilots(st, f"pilots-{v}-unranked", doms)
    return {"cfg": cfg, "st": st, "raw": raw, "bad_pool": bad_pool, "bad_train": bad_train, "out": out,
            "usable_ids": set(ok.table.column("clip_id").to_pylist()), "n_pool": len(pool),
            "n_train": len(train), "spec": PlannerSpec.from_config(cfg.planner)}


def test_the_score_step_marks_the_poisoned_clips_score_error(rejected):
    st, bad = rejected["st"], rejected["bad_pool"]
    rows = {r["clip_id"]: r for r in st.read_table("score/scores").to_pylist()}
    assert len(rows) == rejected["n_pool"]  # every clip keeps its row
    for cid in bad:
        assert rows[cid]["status"].startswith("score_error") and np.isnan(rows[cid]["importance"])
    assert {c for c, r in rows.items() if r["status"] != "ok"} == bad
    assert rejected["out"]["score"]["errors"] == N_POISONED_POOL
    train_rows = {r["clip_id"]: r["status"] for r in st.read_table("score_train/scores").to_pylist()}
    assert {c for c, s in train_rows.items() if s != "ok"} == rejected["bad_train"]


def test_domains_exclude_rejected_clips_and_count_them(rejected):
    from mosaic_ray.stages.domains import ranked_pool

    cfg, st, bad = rejected["cfg"], rejected["st"], rejected["bad_pool"]
    payload = rejected["out"]["domains"]
    assert payload["excluded"] == {"score_error": N_POISONED_POOL}
    assert payload["scored"] == rejected["n_pool"] and payload["usable"] == rejected["n_pool"] - N_POISONED_POOL
    for v in ("site", "emb", "captions"):
        labels = st.read_table(layout.domain_labels(v)).column("clip_id").to_pylist()
        assert set(labels) == rejected["usable_ids"], v
        desc = st.read_json(layout.domain_description(v))
        assert desc["excluded"] == {"score_error": N_POISONED_POOL}
        assert sum(desc["sizes"].values()) == len(rejected["usable_ids"])
        pool, ranked = ranked_pool(cfg, st, v)
        assert not set(pool.clip_ids.tolist()) & bad
        assert sorted(c for ids in ranked.values() for c in ids) == sorted(rejected["usable_ids"])
        assert np.isfinite(pool.importance).all() and np.isfinite(pool.embeddings).all()


def test_pilot_clip_lists_exclude_rejected_clips(rejected):
    from mosaic_ray.stages.pilot import pilot_orders, plan_trials

    orders = pilot_orders(rejected["cfg"], rejected["st"])
    assert set(orders) == {"pilots", "pilots-site-unranked", "pilots-captions", "pilots-emb-unranked"}
    for name, order in orders.items():
        # a pilot larger than every domain takes each domain whole: still no rejected clip
        trials = plan_trials(order, sizes=[2, 10_000], seeds=[0])
        used = {c for t in trials for c in t["clip_ids"]}
        assert used == rejected["usable_ids"], name


@pytest.mark.parametrize("method", METHODS)
def test_no_method_selects_a_rejected_clip_at_any_budget(rejected, method):
    from mosaic_ray.stages.select import run_select
    from mosaic_ray.stages.step import Context

    st, bad, n_ok = rejected["st"], rejected["bad_pool"], len(rejected["usable_ids"])
    raw = {**rejected["raw"], "selection": {"budgets": [1, n_ok // 2, n_ok - 1, n_ok], "methods": [method]}}
    payload = run_select(Context(validate_config(raw), st))
    assert payload["pool_size"] == n_ok and payload["pool_scored"] == rejected["n_pool"]
    assert payload["excluded"] == {"score_error": N_POISONED_POOL}
    man = st.read_table(layout.MANIFEST).to_pylist()
    for b in payload["budgets"]:
        ids = [r["clip_id"] for r in man if r["budget"] == b]
        assert len(set(ids)) == b and not set(ids) & bad, (method, b)
    assert {r["clip_id"] for r in man if r["budget"] == n_ok} == rejected["usable_ids"]


def test_a_budget_above_the_usable_pool_names_the_excluded_clips(rejected):
    from mosaic_ray.stages.select import run_select
    from mosaic_ray.stages.step import Context

    n_ok = len(rejected["usable_ids"])
    raw = {**rejected["raw"], "selection": {"budgets": [n_ok + 1], "methods": ["random"]}}
    with pytest.raises(ConfigError, match=rf"exceeds the pool.*{N_POISONED_POOL} of \d+ scored clips excluded "
                                          rf"\(score_error: {N_POISONED_POOL}\)"):
        run_select(Context(validate_config(raw), rejected["st"]))


def test_training_data_never_holds_a_non_finite_row(rejected):
    """The Ray Train dataset and the pilots' in-process features drop the poisoned D_train
    clip (the scorer rejected it too), keeping every other row."""
    from mosaic_ray.stages.pilot import pilot_features
    from mosaic_ray.stages.trainer import training_dataset

    st, spec = rejected["st"], rejected["spec"]
    picks = sorted(rejected["usable_ids"])[:2]
    ds, n = training_dataset(st, spec, include_train=True, pool_ids=picks)
    ids = [r["clip_id"] for r in ds.select_columns(["clip_id"]).take_all()]
    assert n == len(ids) == rejected["n_train"] - 1 + len(picks)
    assert not set(ids) & rejected["bad_train"] and set(picks) <= set(ids)
    rows = ds.take_all()
    assert all(np.isfinite(r["ego"]).all() and np.isfinite(r["target"]).all() for r in rows)
    anchors = torch.from_numpy(np.load(st.path(layout.VOCABULARY)))
    f = pilot_features(st, picks, None, VocabularyPlanner(spec, anchors))
    assert sorted(f["clip_id"]) == sorted(ids)


# ---------------------------------------------------------------------- no Ray
def test_usable_counts_every_rejection_by_reason():
    t = pa.table({"clip_id": list("abcdef"),
                  "status": ["ok", "score_error: ClipValidationError: ego_states", "decode_error: KeyError",
                             "ok", None, "ok"],
                  "importance": [0.5, np.nan, np.nan, np.nan, 0.4, 0.7],
                  "entropy": [1.0, np.nan, np.nan, 1.0, 1.0, 1.0],
                  "embedding": pa.array([[0.0, 1.0]] * 5 + [[np.inf, 0.0]], pa.list_(pa.float32(), 2))})
    u = usable(t)
    assert u.table.column("clip_id").to_pylist() == ["a"]
    assert u.excluded == {"decode_error": 1, "no_status": 1, "non_finite_score": 2, "score_error": 1}
    assert u.excluded_ids == ("b", "c", "d", "e", "f")
    assert u.accounting() == {"scored": 6, "usable": 1, "excluded": u.excluded}
    assert usable(t.slice(0, 1)).excluded == {}


@pytest.fixture(scope="module")
def tiny(ngsim_clips):
    clips = ngsim_clips("Lankershim/USA_Lanker-2_13_T-1.xml")[:24]
    spec = PlannerSpec(**{**TINY_PLANNER, "vocab_size": 8})
    f = featurize_clips(clips, spec.features, with_prev=False)
    return spec, f, torch.from_numpy(build_vocabulary(f["target"], 8))


def test_train_loop_stops_on_a_batch_with_nan_features(tiny):
    spec, f, anchors = tiny
    data = {k: np.array(v, copy=True) for k, v in f.items()}
    data["agents"][5, 0, 0] = np.nan
    with pytest.raises(NonFiniteTrainingError, match=rf"nan run: loss became nan at epoch 0, step 0 .*"
                                                     rf"1 row\(s\) of the batch have non-finite features "
                                                     rf"\(e\.g\. {data['clip_id'][5]}\)"):
        train_loop(VocabularyPlanner(spec, anchors), data, TrainRecipe(batch_size=64), seed=0, name="nan run")
    kept, dropped = drop_nonfinite_rows(data, "test")
    assert dropped == [str(data["clip_id"][5])] and len(kept["target"]) == len(data["target"]) - 1
    assert train_loop(VocabularyPlanner(spec, anchors), kept, TrainRecipe(batch_size=64), seed=0)


def test_train_loop_stops_when_weights_become_non_finite(tiny):
    spec, f, anchors = tiny
    model = VocabularyPlanner(spec, anchors)

    class NanAfterStep(torch.optim.AdamW):  # a finite loss, then an update that leaves a NaN weight
        def step(self, closure=None):
            out = super().step(closure)
            with torch.no_grad():
                self.param_groups[0]["params"][-1].view(-1)[0] = float("nan")
            return out

    @dataclasses.dataclass(frozen=True)
    class Recipe(TrainRecipe):
        def make_optimizer(self, params):
            return NanAfterStep(params, lr=self.lr)

    epochs = []
    with pytest.raises(NonFiniteTrainingError, match=r"bad step: weight '.+' became non-finite at epoch 0, step 0"):
        train_loop(model, f, Recipe(batch_size=8, epochs=2), seed=0, name="bad step", on_epoch=epochs.append)
    assert epochs == []  # no epoch callback (hence no checkpoint) saw the NaN weights
    with pytest.raises(NonFiniteTrainingError, match=r"that model: 1 of \d+ weight tensors are NaN/inf"):
        require_finite_weights(model, "that model")


def test_a_checkpoint_with_non_finite_weights_is_never_evaluated(tiny, tmp_path, ngsim_clips):
    from mosaic_ray.stages.base import evaluate_checkpoint

    spec, _, anchors = tiny
    model = VocabularyPlanner(spec, anchors)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    st = Storage(str(tmp_path))
    (tmp_path / "planner").mkdir()
    save_checkpoint(model, st.path("planner/bad.pt"))
    with pytest.raises(NonFiniteTrainingError, match=r"planner/bad\.pt: 1 of \d+ weight tensors are NaN/inf"):
        evaluate_checkpoint(st, "planner/bad.pt", clips=ngsim_clips("Lankershim/USA_Lanker-2_13_T-1.xml")[:2])
