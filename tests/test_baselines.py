"""Tests for mosaic_ray.selection.baselines: the §7.3 baselines and MOSAIC's ablations.

Small constructed pools with known answers (hand-built points, a hand-computed Chameleon case).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mosaic_ray.config import KNOWN_METHODS
from mosaic_ray.selection.methods import BASELINE_METHODS
from mosaic_ray.selection.baselines import (ChameleonStrategy, CoresetStrategy,
                                            MosaicNoClusterStrategy, MosaicNoRankStrategy,
                                            UncertaintyStrategy, chameleon_weights,
                                            k_center_greedy, leverage_scores, unranked_order)
from mosaic_ray.selection.scaling_law import ScalingLaw
from mosaic_ray.selection.strategies import (MosaicStrategy, PoolView, known_strategies,
                                             make_strategy)


def _pool(n: int = 60, doms=("a", "b", "c"), d: int = 8, seed: int = 0) -> PoolView:
    rng = np.random.default_rng(seed)
    ids = np.array([f"clip{i:03d}" for i in range(n)], dtype=object)
    domains = np.array([doms[i % len(doms)] for i in range(n)], dtype=object)
    return PoolView(ids, domains, rng.random(n), embeddings=rng.normal(size=(n, d)),
                    entropy=rng.random(n) * 3.0)


def _permuted(pool: PoolView, seed: int = 1) -> PoolView:
    p = np.random.default_rng(seed).permutation(len(pool))
    return PoolView(pool.clip_ids[p], pool.domains[p], pool.importance[p],
                    None if pool.embeddings is None else pool.embeddings[p],
                    None if pool.entropy is None else pool.entropy[p])


def _laws(pool: PoolView) -> dict:
    return {d: ScalingLaw(a=0.02 * (i + 1), tau=5.0 + 3 * i) for i, d in enumerate(pool.domain_names)}


def _all_strategies(pool: PoolView) -> list:
    return [make_strategy("random"), make_strategy("mosaic", laws=_laws(pool)),
            make_strategy("uncertainty"),
            make_strategy("coreset", train_embeddings=np.random.default_rng(9).normal(
                size=(5, pool.embeddings.shape[1]))),
            make_strategy("coreset"), make_strategy("chameleon"),
            make_strategy("chameleon", weighting="inverse"), make_strategy("mosaic_no_cluster"),
            make_strategy("mosaic_no_rank", laws=_laws(pool))]


# ---------------------------------------------------------------------- all strategies
def test_registry_and_config_know_every_method():
    for name in BASELINE_METHODS:
        assert name in known_strategies()
        assert name in KNOWN_METHODS
    assert set(known_strategies()) <= set(KNOWN_METHODS)


def test_every_strategy_exact_distinct_nested_and_errors():
    pool = _pool(60)
    budgets = [1, 7, 30, 60]
    for strat in _all_strategies(pool):
        sels = strat.select(pool, budgets)
        assert sorted(sels) == budgets
        big = sels[60]
        for b in budgets:
            s = sels[b]
            assert len(s) == b == s.budget, strat.name
            assert len(set(s.clip_ids.tolist())) == b, strat.name
            assert set(s.clip_ids.tolist()) <= set(pool.clip_ids.tolist())
            np.testing.assert_array_equal(s.clip_ids, big.clip_ids[:b])  # nested
            np.testing.assert_array_equal(pool.clip_ids[s.pool_indices], s.clip_ids)
            np.testing.assert_array_equal(pool.domains[s.pool_indices], s.domains)
            np.testing.assert_array_equal(s.steps, np.arange(b))
        with pytest.raises(ValueError, match="exceeds the pool"):
            strat.select(pool, [10, 61])
        with pytest.raises(ValueError):
            strat.select(pool, [0])


def test_strategies_independent_of_row_order():
    pool = _pool(45)
    perm = _permuted(pool)
    for s1, s2 in zip(_all_strategies(pool), _all_strategies(perm)):
        a, b = s1.select(pool, [20])[20], s2.select(perm, [20])[20]
        np.testing.assert_array_equal(a.clip_ids, b.clip_ids, err_msg=s1.name)


def test_missing_inputs_raise():
    pool = PoolView(np.array(["a", "b"], object), np.array(["x", "y"], object), np.array([0.1, 0.2]))
    for name in ("uncertainty", "coreset", "chameleon"):
        with pytest.raises(ValueError, match="needs PoolView"):
            make_strategy(name).select(pool, [1])
    with pytest.raises(ValueError, match="no scaling law"):
        make_strategy("mosaic_no_rank", laws={"x": ScalingLaw(1.0, 1.0)}).select(pool, [1])
    with pytest.raises(ValueError, match="weighting"):
        ChameleonStrategy(weighting="bogus")


# ---------------------------------------------------------------------- uncertainty
def test_uncertainty_picks_highest_entropy_ties_by_id_nan_last():
    ids = np.array(["e", "d", "c", "b", "a", "f"], dtype=object)
    ent = np.array([0.5, 2.0, 1.0, 2.0, np.nan, 0.1])
    pool = PoolView(ids, np.array(["x"] * 6, object), np.zeros(6), entropy=ent)
    sel = UncertaintyStrategy().select(pool, [1, 3, 6])
    assert sel[1].clip_ids.tolist() == ["b"]  # tie 2.0 between b and d: lower id first
    assert sel[3].clip_ids.tolist() == ["b", "d", "c"]
    assert sel[6].clip_ids.tolist() == ["b", "d", "c", "e", "f", "a"]  # NaN last


# ---------------------------------------------------------------------- coreset
def test_coreset_picks_farthest_point_first_from_training_set():
    train = np.array([[0.0, 0.0]], np.float32)
    pts = np.array([[1, 0], [5, 0], [0, 3], [-2, 0]], np.float32)
    order, d = k_center_greedy(pts, 4, train, return_distances=True)
    # (5,0) is 5 from the origin; then (0,3): min(3, √34); then (-2,0): min(2, √13, 7);
    # then (1,0): min(1, 4, √10, 3)
    assert order.tolist() == [1, 2, 3, 0]
    np.testing.assert_allclose(d, [5.0, 3.0, 2.0, 1.0], rtol=1e-6)
    pool = PoolView(np.array(["p0", "p1", "p2", "p3"], object), np.array(["x"] * 4, object),
                    np.zeros(4), embeddings=pts)
    sel = CoresetStrategy(train_embeddings=train).select(pool, [1, 2, 4])
    assert sel[1].clip_ids.tolist() == ["p1"]
    assert sel[4].clip_ids.tolist() == ["p1", "p2", "p3", "p0"]


def test_coreset_respects_training_set():
    pts = np.array([[10, 10.1], [0, 0], [1, 0]], np.float32)
    # training point at (10, 10): the pool point next to it comes last
    assert k_center_greedy(pts, 3, np.array([[10, 10]], np.float32)).tolist() == [1, 2, 0]
    # training point at the origin: (10, 10.1) first, (0, 0) (a duplicate) last
    assert k_center_greedy(pts, 3, np.array([[0, 0]], np.float32)).tolist() == [0, 2, 1]


def _brute_k_center(X, T, b):
    X64, T64 = X.astype(np.float64), T.astype(np.float64)
    chosen = []
    mind = np.min(np.linalg.norm(X64[:, None] - T64[None], axis=2), axis=1)
    for _ in range(b):
        mind_masked = mind.copy()
        mind_masked[chosen] = -np.inf
        j = int(np.argmax(mind_masked))
        chosen.append(j)
        mind = np.minimum(mind, np.linalg.norm(X64 - X64[j], axis=1))
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coreset_matches_brute_force_and_chunking(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    T = rng.normal(size=(40, 6)).astype(np.float32)
    ref = _brute_k_center(X, T, 50)
    assert k_center_greedy(X, 50, T).tolist() == ref
    # tiny blocks: same answer
    assert k_center_greedy(X, 50, T, chunk_size=64, train_chunk_size=16).tolist() == ref


def test_coreset_without_training_set_seeded_and_ties_by_id():
    X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    a = k_center_greedy(X, 10, None, seed=3)
    assert a.tolist() == k_center_greedy(X, 10, None, seed=3).tolist()
    assert len(set(a.tolist())) == 10
    # four copies of one point, equidistant from the training point: lowest tie rank first
    dup = np.array([[1, 0]] * 4, np.float32)
    assert k_center_greedy(dup, 4, np.zeros((1, 2), np.float32),
                           tie_rank=np.array([3, 1, 2, 0])).tolist() == [3, 1, 2, 0]
    with pytest.raises(ValueError, match="non-finite"):
        k_center_greedy(np.array([[np.nan, 0.0]], np.float32), 1)
    with pytest.raises(ValueError, match="shape"):
        k_center_greedy(X, 1, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="budget"):
        k_center_greedy(X, 51)


# ---------------------------------------------------------------------- chameleon
def _toy_chameleon_pool() -> PoolView:
    # domain means: a = (1, 0), b = (0, 1), c = (1, 1)
    emb = np.array([[0.5, 0], [1.5, 0], [0, 0.2], [0, 1.8], [1, 1], [1, 0], [1, 2]], np.float32)
    doms = np.array(["a", "a", "b", "b", "c", "c", "c"], object)
    return PoolView(np.array([f"k{i}" for i in range(7)], object), doms, np.zeros(7), embeddings=emb)


def test_chameleon_weights_match_hand_computation():
    # K = X Xᵀ = [[1,0,1],[0,1,1],[1,1,2]]; (K + I)⁻¹ = [[5,1,-2],[1,5,-2],[-2,-2,4]] / 8;
    # S_i = [K (K + I)⁻¹]_ii = 1 − [(K + I)⁻¹]_ii = (3/8, 3/8, 1/2).
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(leverage_scores(X, 1.0), [3 / 8, 3 / 8, 1 / 2], atol=1e-12)
    e = [math.exp(3 / 8), math.exp(3 / 8), math.exp(1 / 2)]
    np.testing.assert_allclose(chameleon_weights(X), np.array(e) / sum(e), atol=1e-12)
    ei = [math.exp(8 / 3), math.exp(8 / 3), math.exp(2)]
    np.testing.assert_allclose(chameleon_weights(X, weighting="inverse"), np.array(ei) / sum(ei),
                               atol=1e-12)
    # the strategy computes the same from the pool's domain means
    strat = ChameleonStrategy()
    w = strat.weights(_toy_chameleon_pool())
    np.testing.assert_allclose([w["a"], w["b"], w["c"]], np.array(e) / sum(e), atol=1e-6)
    np.testing.assert_allclose([strat.leverage_[d] for d in "abc"], [3 / 8, 3 / 8, 1 / 2], atol=1e-6)
    # λ: S = w/(w+λ) for a single domain with ‖x‖² = w
    np.testing.assert_allclose(leverage_scores(np.array([[2.0, 0.0]]), lam=4.0), [0.5])
    with pytest.raises(ValueError):
        leverage_scores(X, lam=0.0)


def test_chameleon_sampling_nested_follows_weights_and_exhausts():
    pool = _toy_chameleon_pool()
    sel = ChameleonStrategy(seed=5).select(pool, [3, 7])
    assert sorted(sel[7].clip_ids.tolist()) == sorted(pool.clip_ids.tolist())
    # within each domain, clips come in unranked_order
    within = unranked_order(pool, 5)
    for dom, idx in within.items():
        got = [i for i in sel[7].pool_indices.tolist() if pool.domains[i] == dom]
        assert got == idx.tolist()
    # composition follows α on a large pool (no domain exhausted)
    rng = np.random.default_rng(0)
    n = 9000
    doms = np.array(["a", "b", "c"] * (n // 3), object)
    means = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0]}
    emb = np.array([means[d] for d in doms]) + rng.normal(0, 0.01, (n, 2))
    big = PoolView(np.array([f"z{i:05d}" for i in range(n)], object), doms, np.zeros(n),
                   embeddings=emb)
    strat = ChameleonStrategy(weighting="inverse")  # α ≈ (0.40, 0.40, 0.19)
    comp = strat.select(big, [2000])[2000].composition
    for d in "abc":
        assert abs(comp[d] / 2000 - strat.weights_[d]) < 0.04
    assert strat.select(big, [2000])[2000].clip_ids.tolist() == \
        ChameleonStrategy(weighting="inverse").select(big, [2000])[2000].clip_ids.tolist()


# ---------------------------------------------------------------------- ablations
def test_mosaic_no_cluster_takes_lowest_importance():
    ids = np.array(["c", "a", "b", "d", "e"], dtype=object)
    imp = np.array([0.3, 0.9, 0.3, np.nan, 0.1])
    pool = PoolView(ids, np.array(["x", "y", "x", "y", "y"], object), imp)
    sel = MosaicNoClusterStrategy().select(pool, [1, 3, 5])
    assert sel[1].clip_ids.tolist() == ["e"]
    assert sel[3].clip_ids.tolist() == ["e", "b", "c"]  # tie 0.3: b before c
    assert sel[5].clip_ids.tolist() == ["e", "b", "c", "a", "d"]  # NaN last
    # the B lowest, whatever the domains
    p = _pool(50)
    got = set(MosaicNoClusterStrategy().select(p, [12])[12].clip_ids.tolist())
    assert got == set(p.clip_ids[np.argsort(p.importance)[:12]].tolist())


def test_unranked_order_seeded_per_domain_and_row_order_free():
    pool = _pool(30)
    o = unranked_order(pool, 7)
    assert list(o) == ["a", "b", "c"]
    for dom, idx in o.items():
        assert sorted(idx.tolist()) == np.flatnonzero(pool.domains == dom).tolist()
    assert any(not np.array_equal(unranked_order(pool, 8)[d], o[d]) for d in o)
    perm = _permuted(pool)
    op = unranked_order(perm, 7)
    for d in o:
        assert pool.clip_ids[o[d]].tolist() == perm.clip_ids[op[d]].tolist()
    # a domain's order does not depend on the other domains being there
    keep = pool.domains != "b"
    sub = PoolView(pool.clip_ids[keep], pool.domains[keep], pool.importance[keep])
    assert sub.clip_ids[unranked_order(sub, 7)["a"]].tolist() == pool.clip_ids[o["a"]].tolist()


def test_mosaic_no_rank_takes_each_domain_in_random_order():
    pool = _pool(60)
    laws = _laws(pool)
    nr = MosaicNoRankStrategy(laws, seed=11).select(pool, [25, 60])
    mo = MosaicStrategy(laws).select(pool, [25])
    # same allocation as MOSAIC (same laws), different clips within domains
    assert nr[25].composition == mo[25].composition
    assert nr[25].domains.tolist() == mo[25].domains.tolist()
    order = unranked_order(pool, 11)
    for dom in pool.domain_names:
        got = [i for i in nr[25].pool_indices.tolist() if pool.domains[i] == dom]
        assert got == order[dom][:len(got)].tolist()
    assert nr[25].clip_ids.tolist() != mo[25].clip_ids.tolist()
    # a law that dominates: the first picks all come from that domain, in its random order
    strong = {d: ScalingLaw(a=(10.0 if d == "b" else 0.001), tau=50.0) for d in pool.domain_names}
    sel = MosaicNoRankStrategy(strong, seed=11).select(pool, [5])[5]
    assert sel.pool_indices.tolist() == unranked_order(pool, 11)["b"][:5].tolist()
