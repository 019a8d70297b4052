"""AutoScale's selection methods, its config section and its checks before work (Ray-free)."""

import numpy as np
import pytest

from mosaic_ray.autoscale.iwr import ImportanceWeightedRetrieval
from mosaic_ray.autoscale.methods import (LOOP_METHODS, MOSAIC_METHOD, ONE_SHOT_METHODS, ClusterSpace, Observation,
                                          cluster_orders, cluster_scores, method_rounds, mosaic_pilots, mosaic_select,
                                          select_round)
from mosaic_ray.config import AUTOSCALE_METHODS, AutoScaleConfig, ConfigError, validate_config


def _space(seed: int = 0, k: int = 3, n_syn: int = 60, n_cal: int = 30, d: int = 6) -> ClusterSpace:
    """Three well-separated clusters along the first axes; real counts 10, 5, 20."""
    rng = np.random.default_rng(seed)
    centres = np.eye(k, d) * 4.0
    syn_c = np.arange(n_syn) % k
    cal_c = np.arange(n_cal) % k
    syn = centres[syn_c] + rng.normal(0, 0.3, (n_syn, d))
    cal = centres[cal_c] + rng.normal(0, 0.3, (n_cal, d))
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    return ClusterSpace(norm(syn), syn_c.astype(np.int64), norm(cal), cal_c.astype(np.int64),
                        np.array([10.0, 5.0, 20.0]), np.exp(-dist ** 2 / 8.0), np.full(k, 1 / k))


def _history(space: ClusterSpace, rounds: int, seed: int = 1) -> list[Observation]:
    rng = np.random.default_rng(seed)
    out = []
    for r in range(rounds):
        s = np.clip(0.5 + 0.05 * r + rng.normal(0, 0.1, space.calibration_clusters.size), 0, 1)
        syn = np.zeros(space.n_clusters) if r == 0 else rng.integers(0, 10, space.n_clusters).astype(float)
        out.append(Observation(syn, cluster_scores(s, space.calibration_clusters, space.n_clusters), s))
    return out


OPTS = AutoScaleConfig(rounds=3, iwr_pca_dims=2, n_neighbors=8, anchor_quantile=0.3)


@pytest.mark.parametrize("method", [m for m in AUTOSCALE_METHODS if m != MOSAIC_METHOD])
def test_every_method_selects_budget_distinct_rows_deterministically(method):
    space, budget = _space(), 12
    for r in method_rounds(method, OPTS.rounds):
        hist = _history(space, r)
        rows, info = select_round(method, space, budget, r, hist, OPTS, seed=3)
        again, _ = select_round(method, space, budget, r, hist, OPTS, seed=3)
        want = space.synthetic_clusters.size if method == "all_synthetic" else budget
        assert rows.dtype == np.int64 and len(set(rows.tolist())) == len(rows) == want
        assert rows.min() >= 0 and rows.max() < space.synthetic_clusters.size
        assert np.array_equal(rows, again)
        assert info["round"] == r


def test_method_rounds_and_unknown_method():
    assert method_rounds("autoscale", 4) == [1, 2, 3, 4] and method_rounds("uniform", 4) == [1]
    assert set(LOOP_METHODS) | set(ONE_SHOT_METHODS) | {MOSAIC_METHOD} == set(AUTOSCALE_METHODS)
    assert method_rounds(MOSAIC_METHOD, 1) == [2]  # pilots in round 1, its selection in round 2
    with pytest.raises(ValueError, match="does not train in round 2"):
        select_round("uniform", _space(), 5, 2, _history(_space(), 2), OPTS, 0)
    with pytest.raises(ValueError, match="needs the observations"):
        select_round("autoscale", _space(), 5, 2, _history(_space(), 1), OPTS, 0)


def test_cluster_scores_hand_case():
    got = cluster_scores([0.2, 0.4, 1.0, 0.0], [0, 0, 2, 2], 4)
    assert np.allclose(got, [0.3, 0.4, 0.5, 0.4])  # empty clusters 1, 3: the overall mean 0.4


def test_round1_retrieval_takes_the_neighbours_of_the_worst_calibration_scene():
    space = _space()
    s = np.ones(space.calibration_clusters.size)
    s[4] = 0.0  # the only failing calibration scene (cluster 1); others score 1: zero demand
    hist = [Observation(np.zeros(3), cluster_scores(s, space.calibration_clusters, 3), s)]
    rows, info = select_round("autoscale", space, 3, 1, hist, OPTS, seed=0)
    cos = space.synthetic_emb @ space.calibration_emb[4]
    assert set(rows.tolist()) == set(np.argsort(-cos)[:3].tolist())
    assert "quotas" not in info  # round 1: no Cluster-GA


def test_round2_autoscale_follows_the_cluster_ga_quotas():
    space = _space()
    rows, info = select_round("autoscale", space, 15, 2, _history(space, 2), OPTS, seed=0)
    q = np.asarray(info["quotas"])
    assert q.sum() == 15 and info["step"] == 0 and np.isclose(info["eta"], OPTS.eta0)
    assert np.array_equal(np.bincount(space.synthetic_clusters[rows], minlength=3), q)
    rows_nr, info_nr = select_round("autoscale_no_retrieval", space, 15, 2, _history(space, 2), OPTS, seed=0)
    assert np.array_equal(np.bincount(space.synthetic_clusters[rows_nr], minlength=3), np.asarray(info_nr["quotas"]))
    _, info_ng = select_round("autoscale_no_ga", space, 15, 2, _history(space, 2), OPTS, seed=0)
    assert "quotas" not in info_ng and "gains" not in info_ng  # the ablation never fits the predictor


def test_iwr_targets_the_lowest_calibration_scores():
    space = _space()
    hist = _history(space, 1)
    rows, info = select_round("iwr", space, 10, 1, hist, OPTS, seed=0)
    from mosaic_ray.autoscale.retrieval import select_anchors

    anchors = select_anchors(space.calibration_clusters, hist[0].clip_scores, quantile=OPTS.anchor_quantile)
    ref = ImportanceWeightedRetrieval(n_components=2, random_state=OPTS.cluster_seed).fit(
        space.calibration_emb[anchors], space.synthetic_emb)
    assert info["targets"] == anchors.size
    assert np.array_equal(rows, np.sort(ref.select(10)))


def test_autoscale_config_section():
    cfg = validate_config({"name": "x", "autoscale": {"budgets": [100, 0.5], "methods": ["autoscale", "iwr"]}})
    assert cfg.selection is None and not cfg.runs_mosaic and cfg.resolved_methods() == []
    assert cfg.autoscale.resolve_budgets(400) == [100, 200]
    with pytest.raises(ConfigError, match="exceeds"):
        cfg.autoscale.resolve_budgets(50)
    for bad, match in [({"methods": ["autoscale", "oracle"]}, "unknown AutoScale methods"),
                       ({"pca_dims": 99}, "exceeds graph_rae.hidden_dim"),
                       ({"graph_rae": {"hidden_dim": 30, "num_heads": 4}}, "multiple of num_heads"),
                       ({"budgets": [-1]}, "budgets must be positive"),
                       ({"synthesize": {"per_clip": 0}}, "per_clip")]:
        with pytest.raises(ConfigError, match=match):
            validate_config({"name": "x", "autoscale": bad})
    with pytest.raises(ConfigError, match="selection: Field required"):
        validate_config({"name": "x"})
    gc = validate_config({"name": "x", "autoscale": {"graph_rae": {"lambda_c": 0, "lambda_m": 0}}}
                         ).autoscale.graph_rae.to_graph_rae_config()
    assert gc.lambda_c == 0 and gc.lambda_m == 0  # the regulariser ablation is a config switch


def test_steps_enabled_by_section():
    from mosaic_ray.pipeline import STEPS

    mosaic = validate_config({"name": "x", "selection": {"budgets": [5]}})
    auto = validate_config({"name": "x", "autoscale": {}})
    both = validate_config({"name": "x", "selection": {"budgets": [5]}, "autoscale": {}})
    on = lambda cfg: {s.name for s in STEPS if s.enabled(cfg)}  # noqa: E731
    assert on(mosaic) == {"ingest", "base", "score", "domains", "pilot", "select", "train", "report"}
    assert on(auto) == {"ingest", "base", "synthesize", "embed", "cluster", "rounds", "autoscale_report"}
    assert on(both) == on(mosaic) | on(auto)


def test_preflight_checks_clusters_and_budgets_against_the_splits(tmp_path):
    from mosaic_ray.preflight import Preflight, PreflightError
    from mosaic_ray.storage import Storage

    cfg = validate_config({"name": "x", "output_dir": str(tmp_path),
                           "autoscale": {"n_clusters": 8, "budgets": [50], "synthesize": {"per_clip": 2}}})
    checks = Preflight(cfg, Storage(cfg.run_uri))
    checks.check_autoscale({"train": 30, "calibration": 5, "test": 4, "pool": 9})  # 8 <= 30 clusters, 50 <= 60 scenes
    with pytest.raises(PreflightError, match="autoscale.n_clusters"):
        checks.check_autoscale({"train": 6, "calibration": 5, "test": 4, "pool": 9})
    with pytest.raises(PreflightError, match="autoscale.budgets"):
        checks.check_autoscale({"train": 20, "calibration": 5, "test": 4, "pool": 9})  # at most 40 synthetic scenes
    with pytest.raises(PreflightError, match="calibration split"):
        checks.check_autoscale({"train": 30, "calibration": 0, "test": 4, "pool": 9})


def test_mosaic_over_clusters_pilots_and_allocation():
    space = _space()  # 20 synthetic scenes per cluster
    pilots = mosaic_pilots(space, [5, 50], seed=0)
    assert [(p["cluster"], p["n"]) for p in pilots] == [(0, 5), (0, 20), (1, 5), (1, 20), (2, 5), (2, 20)]
    orders = cluster_orders(space, 0)
    assert all(np.array_equal(p["rows"], np.sort(orders[p["cluster"]][:p["n"]])) for p in pilots)
    # cluster 1 gains most and keeps gaining; cluster 0 gains nothing; cluster 2 saturates early
    gain = {0: (0.0, 0.0), 1: (0.02, 0.06), 2: (0.02, 0.021)}
    points = [{"cluster": p["cluster"], "n": p["n"], "delta_u": gain[p["cluster"]][p["n"] == 20]} for p in pilots]
    rows, info = mosaic_select(space, 24, points, seed=0)
    counts = np.bincount(space.synthetic_clusters[rows], minlength=3)
    assert rows.size == 24 == len(set(rows.tolist())) and counts[0] == 0 and counts[1] > counts[2]
    assert info["counts"] == {str(k): int(c) for k, c in enumerate(counts)}
    for k in (1, 2):  # within a cluster: the first scenes of its order (nested, like the pilots)
        assert set(rows[space.synthetic_clusters[rows] == k].tolist()) == set(orders[k][:counts[k]].tolist())


def test_autoscale_job_configs():
    from mosaic_ray.config import load_config

    demo = load_config("jobs/autoscale_demo.yaml")
    assert demo.selection is None and demo.autoscale.rounds >= 2
    bench = load_config("jobs/autoscale_benchmark.yaml")
    a = bench.autoscale
    assert set(a.methods) == set(AUTOSCALE_METHODS) and len(a.budgets) == 3 and len(a.seeds) >= 5
