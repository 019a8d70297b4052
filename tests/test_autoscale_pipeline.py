"""A small end-to-end AutoScale run on real NGSIM clips: synthesize -> embed -> cluster -> rounds ->
autoscale_report through Ray Data and Ray Tune (tiny planner, tiny Graph-RAE, two rounds)."""

import json
from pathlib import Path

import numpy as np
import pytest

from mosaic_ray.pipeline import run_all, run_steps
from mosaic_ray.stages.step import Context

from conftest import TINY_PLANNER, copy_run, write_untrained_base

SMALL = {
    "ray": {"num_cpus": 2},
    "planner": {**TINY_PLANNER, "base_epochs": 1},
    "train": {"num_workers": 1, "cpus_per_worker": 0.5},
    "autoscale": {
        "synthesize": {"per_clip": 2, "max_attempts_per_clip": 6, "num_cpus_per_actor": 0.5, "num_actors": 1},
        "graph_rae": {"hidden_dim": 16, "num_layers": 1, "num_heads": 2, "max_agents": 4, "max_map": 6,
                      "steps": 12, "batch_size": 8},
        "n_clusters": 3, "pca_dims": 4, "budgets": [8], "methods": ["autoscale", "uniform", "iwr", "mosaic_clusters"],
        "mosaic_pilot_sizes": [4],
        "rounds": 2, "seeds": [0], "epochs": 1, "cpus_per_trial": 1.0, "iwr_pca_dims": 2,
        "test_max_clips": 40, "embed_cpus_per_actor": 0.5, "embed_num_actors": 1, "synthetic_calibration": 6},
}


def _untrained_base(cfg) -> None:
    """Record the base step complete with an untrained planner and its vocabulary
    (conftest.write_untrained_base), so that the pipeline skips the base model's training."""
    from mosaic_ray.data.clip import clips_from_table
    from mosaic_ray.pipeline import STEPS
    from mosaic_ray.stages import base
    from mosaic_ray.stages.fingerprint import fingerprints
    from mosaic_ray.stages.step import record_outputs

    st = Context.for_config(cfg).storage
    write_untrained_base(cfg, st, clips_from_table(st.read_table("ingest/clips/train")),
                         clips_from_table(st.read_table("ingest/clips/pool")))
    record_outputs(base.STEP, Context(cfg, st, fingerprints=fingerprints(cfg, STEPS)), {"stand_in": True})


@pytest.fixture(scope="module")
def as_run(ingested_run, tmp_path_factory):
    raw = dict(SMALL)
    cfg, _, _ = copy_run(ingested_run, tmp_path_factory.mktemp("runs"), "autoscale", **raw)
    # an AutoScale-only config: no selection section, so the MOSAIC steps score .. report are skipped
    from mosaic_ray.config import validate_config

    dumped = cfg.model_dump(mode="json")
    dumped["selection"] = None
    cfg = validate_config(dumped)
    _untrained_base(cfg)  # the rounds read only the vocabulary: no Ray Train run for the base model
    report = run_all(cfg)
    return cfg, Context.for_config(cfg), report


def test_autoscale_pipeline_runs_end_to_end(as_run):
    cfg, run, report = as_run
    st = run.storage
    assert not st.is_done("score") and not st.exists("select/manifest.parquet")  # MOSAIC steps skipped
    assert st.done_payload("planner/base").get("stand_in")  # the recorded base was not redone
    syn = st.done_payload("synthesize")
    real = st.read_table("ingest/clips/train", columns=["clip_id"]).num_rows
    assert syn["source_clips"] == real and syn["attempts"] == syn["kept"] + syn["quarantined"]
    emb = st.done_payload("autoscale/embed")
    assert emb["counts"]["synthetic"] == syn["kept"] and emb["counts"]["real"] == real
    assert emb["shards_resumed"] == 0 and emb["shards"] >= 4  # one actor pool over every role's shards
    g = st.read_json("autoscale/graph_rae.json")
    assert g["steps"] == 12 and np.isfinite(g["last_step"]["total"])
    clusters = st.read_json("autoscale/clusters.json")
    assert sum(clusters["real_counts"]) == real and sum(clusters["capacity"]) == syn["kept"] - 6  # 6 held out
    A = np.asarray(clusters["similarity"])
    assert A.shape == (3, 3) and np.allclose(np.diag(A), 1.0) and np.allclose(A, A.T)
    summary = json.loads(Path(st.path("autoscale/summary.json")).read_text())
    rows = {(r["method"], r["budget"]): r for r in summary["results"]}
    assert set(rows) == {("real_only", 0), ("autoscale", 8), ("uniform", 8), ("iwr", 8), ("mosaic_clusters", 8)}
    assert rows[("autoscale", 8)]["rounds"] == 2 and rows[("uniform", 8)]["rounds"] == 1
    n_test = min(40, st.read_table("ingest/clips/test", columns=["clip_id"]).num_rows)  # test_max_clips: 40
    assert rows[("mosaic_clusters", 8)]["rounds"] == 2 and summary["mosaic_pilot_trainings"] == sum(
        1 for c in st.read_json("autoscale/clusters.json")["capacity"] if c > 0)  # one size per non-empty cluster
    for r in rows.values():
        assert 0.0 <= r["test_epdms_mean"] <= 1.0 and r["n_test_clips"] == n_test
        assert set(r["terms"]) == {"NC", "DAC", "DDC", "TLC", "EP", "TTC", "LK", "HC", "EC"}
    assert "vs_uniform" in rows[("autoscale", 8)]
    comp = {(c["other"], c["other_budget"]): c for c in summary["comparisons"] if c["method"] == "autoscale"}
    assert set(comp) == {("real_only", 0), ("uniform", 8), ("iwr", 8), ("mosaic_clusters", 8)}
    assert comp[("uniform", 8)]["mean"] == rows[("autoscale", 8)]["vs_uniform"]["mean"]
    assert comp[("iwr", 8)]["mean"] == pytest.approx(rows[("autoscale", 8)]["test_epdms_mean"]
                                                     - rows[("iwr", 8)]["test_epdms_mean"])
    assert "autoscale" in Path(report).read_text() and report.endswith("report/autoscale.md")


def test_held_out_synthetic_scenes_are_never_selectable_and_score_every_training(as_run):
    """The held-out synthetic calibration split (the paper's D_cal): 6 scenes drawn
    cluster-stratified out of the synthetic pool, out of every selection, scored by every training."""
    from mosaic_ray.stages.autoscale import cluster_space

    cfg, run, report = as_run
    st = run.storage
    clusters = st.read_json("autoscale/clusters.json")
    held = clusters["synthetic_calibration_ids"]
    kept = st.done_payload("synthesize")["kept"]
    assert len(held) == len(set(held)) == 6 and sum(clusters["synthetic_calibration_counts"]) == 6
    assert sum(clusters["capacity"]) == kept - 6  # capacity counts only selectable scenes
    labels = st.read_table("autoscale/cluster_labels.parquet").to_pylist()
    assert sorted(r["clip_id"] for r in labels if r["role"] == "synthetic_calibration") == sorted(held)
    _, syn_ids, _ = cluster_space(st)
    assert len(syn_ids) == kept - 6 and not set(syn_ids) & set(held)  # what every method selects from
    for key in st.done_payload("autoscale/rounds_step")["keys"]:
        r = st.read_json(f"autoscale/rounds/{key}.json")
        assert r["synthetic_calibration"]["n_clips"] == 6 and 0.0 <= r["synthetic_calibration"]["epdms"] <= 1.0
    summary = json.loads(Path(st.path("autoscale/summary.json")).read_text())
    assert all(r["n_synthetic_calibration"] == 6 for r in summary["results"])
    assert "Held-out synthetic calibration split (6 synthetic scenes" in Path(st.path("report/autoscale.md")).read_text()


def test_rounds_select_budget_scenes_and_round2_uses_cluster_ga(as_run):
    cfg, run, _ = as_run
    st = run.storage
    r1 = st.read_json("autoscale/rounds/autoscale-b8-s0-r1.json")
    r2 = st.read_json("autoscale/rounds/autoscale-b8-s0-r2.json")
    r0 = st.read_json("autoscale/rounds/r0-s0.json")
    assert r0["n_synthetic"] == 0 and r1["n_synthetic"] == 8 == r2["n_synthetic"]
    assert sum(r2["synthetic_counts"]) == 8 and r1["n_real"] == r0["n_real"]
    assert "gains" not in r1["selection"] and r1["selection"]["anchors"] > 0  # round 1: pure retrieval
    sel = r2["selection"]
    assert sel["step"] == 0 and len(sel["quotas"]) == 3 and sum(sel["quotas"]) == 8
    assert abs(sum(sel["mixture"]) - 1.0) < 1e-6 and min(sel["gains"]) == 0.0


def test_mosaic_over_clusters_allocates_from_its_pilots(as_run):
    _, run, _ = as_run
    st = run.storage
    m = st.read_json("autoscale/rounds/mosaic_clusters-b8-s0-r2.json")
    assert m["n_synthetic"] == 8 and sum(int(c) for c in m["selection"]["counts"].values()) == 8
    cap = st.read_json("autoscale/clusters.json")["capacity"]
    assert set(m["selection"]["laws"]) == {str(k) for k in range(3) if cap[k] > 0}
    for k in range(3):
        if cap[k] > 0:  # one pilot per non-empty cluster, its size capped at the cluster's scenes
            p = st.read_json(f"autoscale/rounds/mosaic_pilot-c{k}-n{min(4, cap[k])}-s0.json")
            assert p["synthetic_counts"][k] == p["n_synthetic"] == min(4, cap[k])


def test_rerun_keeps_every_training(as_run):
    cfg, run, _ = as_run
    before = run.storage.done_payload("autoscale/rounds_step")["fingerprints"]
    out = run_steps(cfg, ["rounds"], force=[])
    assert out["rounds"]["fingerprints"] == before
