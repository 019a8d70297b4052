"""Tests for mosaic_ray.selection: scaling-law fit, greedy allocator, strategies."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mosaic_ray.selection.allocator import (allocation_gain, greedy_allocate, nested_selection,
                                            within_domain_ranks)
from mosaic_ray.selection.scaling_law import ScalingLaw, fit_scaling_law
from mosaic_ray.selection.strategies import (MosaicStrategy, PoolView, RandomStrategy,
                                             SelectionStrategy, make_strategy,
                                             rank_within_domains, selection_manifest,
                                             validate_budgets)


# ---------------------------------------------------------------------- scaling law
def test_law_eval_and_marginal():
    law = ScalingLaw(a=2.0, tau=150.0)
    assert law(0) == 0.0
    n = np.array([0.0, 50.0, 150.0, 1e6])
    np.testing.assert_allclose(law(n), 2.0 * (1 - np.exp(-n / 150.0)))
    b = np.arange(10.0)
    np.testing.assert_allclose(law.marginal(b), law(b + 1) - law(b), rtol=1e-10)
    assert law.marginal(3) == pytest.approx(law(4) - law(3), rel=1e-10)
    assert np.all(np.diff(law.marginal(np.arange(1000.0))) < 0)  # concave
    with pytest.raises(ValueError):
        law(-1)
    with pytest.raises(ValueError):
        ScalingLaw(a=float("nan"), tau=1.0)
    with pytest.raises(ValueError):
        ScalingLaw(a=1.0, tau=0.0)
    assert ScalingLaw.from_dict(law.to_dict()) == law


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_fit_recovers_known_law(seed):
    rng = np.random.default_rng(seed)
    n = np.repeat([50.0, 100.0, 200.0, 400.0], 3)
    y = 2.0 * (1 - np.exp(-n / 150.0)) + rng.normal(0.0, 0.05, n.size)
    law = fit_scaling_law(n, y)
    assert law.status == "ok"
    assert law.a == pytest.approx(2.0, rel=0.15)
    assert law.tau == pytest.approx(150.0, rel=0.15)
    assert law.n_points == 12 and law.n_sizes == 4
    assert 0.0 < law.rmse < 0.1


def test_fit_exact_two_sizes():
    # two pilot sizes + origin determine (a, tau) exactly when 1 < r < 2
    a, tau = 0.05, 300.0
    n = np.array([200.0, 400.0])
    law = fit_scaling_law(n, a * (1 - np.exp(-n / tau)))
    assert law.a == pytest.approx(a, rel=1e-5)
    assert law.tau == pytest.approx(tau, rel=1e-5)


def test_fit_negative_and_zero_gains():
    hurt = fit_scaling_law([200, 400, 200, 400], [-0.02, -0.03, -0.025, -0.028])
    assert hurt.a < 0 and not hurt.beneficial
    assert hurt.marginal(0) < 0
    zero = fit_scaling_law([200, 400], [0.0, 0.0])
    assert zero.a == 0.0 and zero.status == "zero_gain"
    clamped = fit_scaling_law([200, 400], [-0.02, -0.03], a_bounds=(0.0, np.inf))
    assert clamped.a == 0.0


def test_fit_single_size_and_linear():
    single = fit_scaling_law([200, 200, 200], [0.03, 0.02, 0.025])
    assert single.status == "single_size" and single.tau == 200.0
    assert single(200) == pytest.approx(0.025, rel=1e-9)
    lin = fit_scaling_law([100, 200], [0.01, 0.03])  # convex: no saturation visible
    assert lin.status == "tau_at_upper_bound"
    assert np.isfinite(lin.a) and lin.a > 0


def test_fit_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        fit_scaling_law([100, 200], [0.1, np.nan])
    with pytest.raises(ValueError):
        fit_scaling_law([100, 200], [0.1])
    with pytest.raises(ValueError):
        fit_scaling_law([], [])
    with pytest.raises(ValueError):
        fit_scaling_law([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError):
        fit_scaling_law([-5, 100], [0.1, 0.2])
    with pytest.raises(ValueError):
        fit_scaling_law([100, 200], [0.1, 0.2], tau_bounds=(10.0, 1.0))


# ---------------------------------------------------------------------- allocator
def _brute_force(laws, caps, budget):
    best = -np.inf
    for counts in itertools.product(*(range(c + 1) for c in caps)):
        if sum(counts) == budget:
            best = max(best, allocation_gain(laws, counts))
    return best


def _random_laws(rng, m=3):
    return [ScalingLaw(a=float(rng.uniform(0.01, 2.0)), tau=float(rng.uniform(0.5, 20.0)))
            for _ in range(m)]


@pytest.mark.parametrize("seed", range(8))
def test_greedy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    laws = _random_laws(rng)
    caps = rng.integers(2, 8, size=3)
    for budget in range(0, min(12, int(caps.sum())) + 1):
        counts, order = greedy_allocate(laws, caps, budget)
        assert counts.dtype == np.int64 and order.dtype == np.int32
        assert counts.sum() == budget and order.shape == (budget,)
        assert np.all(counts <= caps)
        np.testing.assert_array_equal(np.bincount(order, minlength=3), counts)
        assert allocation_gain(laws, counts) == pytest.approx(_brute_force(laws, caps, budget),
                                                              rel=1e-12, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 3.0), st.floats(0.5, 50.0), st.integers(0, 6)),
                min_size=1, max_size=3),
       st.integers(0, 12))
def test_greedy_optimal_property(spec, budget):
    laws = [ScalingLaw(a, t) for a, t, _ in spec]
    caps = [c for _, _, c in spec]
    budget = min(budget, sum(caps))
    counts, _ = greedy_allocate(laws, caps, budget)
    assert allocation_gain(laws, counts) == pytest.approx(_brute_force(laws, caps, budget),
                                                          rel=1e-9, abs=1e-12)


def test_greedy_nested_ties_capacity_and_errors():
    laws = [ScalingLaw(1.0, 10.0), ScalingLaw(1.0, 10.0), ScalingLaw(3.0, 5.0)]
    caps = [5, 5, 2]
    _, full = greedy_allocate(laws, caps, 12)
    for b in range(13):
        counts, order = greedy_allocate(laws, caps, b)
        np.testing.assert_array_equal(order, full[:b])
    # domain 2 is best first but capped at 2; identical laws 0 and 1 alternate, 0 first
    assert full[:2].tolist() == [2, 2]
    assert full[2:6].tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="exceeds the pool"):
        greedy_allocate(laws, caps, 13)
    with pytest.raises(ValueError):
        greedy_allocate(laws, caps, -1)
    with pytest.raises(ValueError):
        greedy_allocate(laws, [1, 2], 1)
    c0, o0 = greedy_allocate(laws, caps, 0)
    assert c0.tolist() == [0, 0, 0] and o0.size == 0


def test_greedy_non_positive_laws():
    laws = [ScalingLaw(-0.5, 10.0), ScalingLaw(0.2, 10.0), ScalingLaw(-0.1, 10.0)]
    counts, order = greedy_allocate(laws, [3, 2, 3], 6)
    # positive domain exhausted first, then the least harmful one
    assert order[:2].tolist() == [1, 1]
    assert order[2].tolist() == 2
    assert counts.sum() == 6


def test_nested_selection():
    order = np.array([1, 0, 1, 1, 0], dtype=np.int32)
    assert within_domain_ranks(order).tolist() == [0, 0, 1, 2, 1]
    ranked = [["a0", "a1"], ["b0", "b1", "b2"]]
    sel = nested_selection(order, ranked, [5, 2, 2, 0])
    assert sorted(sel) == [0, 2, 5]
    assert sel[5].tolist() == ["b0", "a0", "b1", "b2", "a1"]
    assert sel[2].tolist() == sel[5][:2].tolist()
    with pytest.raises(ValueError):
        nested_selection(order, ranked, [6])
    with pytest.raises(ValueError):
        nested_selection(order, [["a0"], ["b0", "b1", "b2"]], [5])


# ---------------------------------------------------------------------- strategies
def _pool(n=60, seed=0, shuffle=None):
    rng = np.random.default_rng(seed)
    ids = np.array([f"clip_{i:03d}" for i in range(n)], dtype=object)
    doms = np.array(["boston", "pittsburgh", "singapore"], dtype=object)[rng.integers(0, 3, n)]
    imp = np.round(rng.uniform(0.3, 1.0, n), 2)  # rounding makes ties
    emb = rng.normal(size=(n, 4))
    if shuffle is not None:
        p = np.random.default_rng(shuffle).permutation(n)
        ids, doms, imp, emb = ids[p], doms[p], imp[p], emb[p]
    return PoolView(ids, doms, imp, embeddings=emb)


LAWS = {"boston": ScalingLaw(0.05, 8.0), "pittsburgh": ScalingLaw(0.08, 30.0),
        "singapore": ScalingLaw(0.04, 5.0)}


def test_pool_view_validation():
    pool = _pool()
    assert pool.embeddings.dtype == np.float32 and len(pool) == 60
    with pytest.raises(ValueError):
        PoolView(["a", "a"], ["x", "x"], [0.1, 0.2])
    with pytest.raises(ValueError):
        PoolView(["a", "b"], ["x"], [0.1, 0.2])


def test_rank_within_domains():
    pool = PoolView(["c", "b", "a", "d", "e"], ["x", "x", "x", "y", "y"],
                    [0.5, 0.2, 0.5, np.nan, 0.9])
    r = rank_within_domains(pool)
    assert list(r) == ["x", "y"]
    assert r["x"].tolist() == [1, 2, 0]  # 0.2 first; tie 0.5 broken by id a < c
    assert r["y"].tolist() == [4, 3]  # NaN last


def test_random_nested_seed_stable_order_independent():
    pool, pool_shuf = _pool(), _pool(shuffle=7)
    budgets = [30, 10, 20, 10]
    s1 = RandomStrategy(seed=42).select(pool, budgets)
    s2 = RandomStrategy(seed=42).select(pool_shuf, budgets)
    s3 = RandomStrategy(seed=1).select(pool, budgets)
    assert sorted(s1) == [10, 20, 30]
    for b in s1:
        assert len(s1[b]) == b and len(set(s1[b].clip_ids)) == b
        assert s1[b].clip_ids.tolist() == s2[b].clip_ids.tolist()
        assert s1[b].clip_ids.tolist() == s1[30].clip_ids[:b].tolist()
        assert s1[b].steps.tolist() == list(range(b))
    assert s1[30].clip_ids.tolist() != s3[30].clip_ids.tolist()
    assert isinstance(RandomStrategy(), SelectionStrategy)


def test_mosaic_nested_ranked_exact():
    pool = _pool()
    ranked = rank_within_domains(pool)
    strat = MosaicStrategy(LAWS)
    sels = strat.select(pool, [5, 25, 50])
    for b, sel in sels.items():
        assert len(sel) == b and len(set(sel.clip_ids.tolist())) == b
        assert sel.clip_ids.tolist() == sels[50].clip_ids[:b].tolist()
        for dom, cnt in sel.composition.items():
            # each domain's clips are its top-ranked ones, taken in rank order
            expected = pool.clip_ids[ranked[dom][:cnt]].tolist()
            assert sel.clip_ids[sel.domains == dom].tolist() == expected
            assert sel.ranks[sel.domains == dom].tolist() == list(range(cnt))
    # composition follows the greedy allocation over sorted domains
    names, counts, _ = strat.allocation(pool, 50)
    assert sels[50].composition == {d: int(c) for d, c in zip(names, counts) if c > 0}
    # independent of the pool's row order
    sels2 = strat.select(_pool(shuffle=3), [50])
    assert sels2[50].clip_ids.tolist() == sels[50].clip_ids.tolist()


def test_strategy_errors_and_registry():
    pool = _pool()
    with pytest.raises(ValueError, match="exceeds the pool size 60"):
        RandomStrategy().select(pool, [61])
    with pytest.raises(ValueError, match="61"):
        MosaicStrategy(LAWS).select(pool, [10, 61])
    with pytest.raises(ValueError):
        validate_budgets([0], 60)
    with pytest.raises(ValueError):
        validate_budgets([2.5], 60)
    with pytest.raises(ValueError, match="boston"):
        MosaicStrategy({"pittsburgh": LAWS["pittsburgh"]}).select(pool, [5])
    with pytest.raises(ValueError, match="known: .*mosaic, .*random"):
        make_strategy("coreset_typo")
    assert make_strategy("random", seed=3).seed == 3
    assert make_strategy("MOSAIC", laws=LAWS).name == "mosaic"


def test_selection_manifest():
    pool = _pool()
    sels = MosaicStrategy(LAWS).select(pool, [3, 6])
    rows = selection_manifest(sels)
    assert len(rows) == 9
    assert set(rows[0]) == {"method", "budget", "clip_id", "domain", "rank", "step"}
    assert [r["budget"] for r in rows] == [3] * 3 + [6] * 6
    assert all(isinstance(r["rank"], int) and isinstance(r["step"], int) for r in rows)


def test_vectorised_greedy_equals_the_heap_greedy():
    """The threshold (water-filling) path reproduces the step-by-step heap greedy exactly."""
    from mosaic_ray.selection.allocator import _greedy_heap, _greedy_threshold

    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(200):
        m = int(rng.integers(1, 6))
        laws = [ScalingLaw(a=0.0 if rng.random() < 0.15 else float(rng.uniform(0, 5)),
                           tau=float(rng.choice([1.0, rng.uniform(1, 300)]))) for _ in range(m)]
        if m > 1 and rng.random() < 0.3:
            laws[1] = laws[0]  # exact ties between domains
        caps = rng.integers(0, 80, m)
        if caps.sum() == 0:
            continue
        budget = int(rng.integers(1, caps.sum() + 1))
        c1, o1 = _greedy_heap(laws, caps, budget)
        c2, o2 = _greedy_threshold(laws, caps, budget)
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(o1, o2)
        checked += 1
    assert checked > 150
