"""AutoScale's Ray-free core on constructed cases: clusters + RBF matrix, the Eq. 3-4 predictor,
EG mixture steps (Eq. 5-7), Eq. 8 retrieval and IWR."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import gaussian_kde

from mosaic_ray.autoscale.clusters import SceneClusters, cluster_mixture, rbf_similarity, stratified_holdout
from mosaic_ray.autoscale.iwr import ImportanceWeightedRetrieval
from mosaic_ray.autoscale.mixture import (MixtureOptimizer, eg_step, feasible_bounds, half_cosine_step,
                                          is_feasible, normalize_gains, project_feasible,
                                          synthetic_allocation)
from mosaic_ray.autoscale.predictor import ClusterPerformancePredictor, mixture_from_counts, round_features
from mosaic_ray.autoscale.retrieval import AnchorRetriever, retrieval_priority, select_anchors


# ------------------------------------------------------------------------------------ clusters
def _blobs(seed=0, n=40, d=8, k=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    return np.vstack([c + 0.2 * rng.normal(size=(n, d)) for c in centres])


def test_gmm_is_seeded_and_rbf_is_symmetric_with_unit_diagonal():
    x = _blobs()
    a = SceneClusters(n_clusters=3, n_components=4, random_state=7).fit(x)
    b = SceneClusters(n_clusters=3, n_components=4, random_state=7).fit(x)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.predict(x[::5]), b.predict(x[::5]))
    assert a.labels_.dtype == np.int64 and a.labels_.shape == (120,)
    assert sorted(a.counts_.tolist()) == [40, 40, 40]          # the three blobs are recovered
    assert a.means_.shape == (3, 4)
    s = a.similarity_
    np.testing.assert_allclose(s, s.T)
    np.testing.assert_allclose(np.diag(s), 1.0)
    assert np.all((s > 0) & (s <= 1))
    np.testing.assert_array_equal(a.predict(x), a.labels_)      # calibration scenes: same partition
    pi = a.mixture(x[:40])
    assert pi.shape == (3,) and pi.max() == 1.0


def test_rbf_hand_case_median_heuristic_and_cosine():
    mu = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    a, sigma = rbf_similarity(mu, bandwidth=5.0)
    assert sigma == 5.0
    assert a[0, 1] == pytest.approx(math.exp(-25 / 50))
    assert a[0, 2] == pytest.approx(math.exp(-100 / 50))
    _, med = rbf_similarity(mu)                                 # off-diagonal distances 5, 10, 5
    assert med == pytest.approx(5.0)
    c, _ = rbf_similarity(np.array([[1.0, 0.0], [0.0, 2.0]]), bandwidth=1.0, metric="cosine")
    assert c[0, 1] == pytest.approx(math.exp(-1 / 2))          # cosine distance 1
    with pytest.raises(ValueError):
        rbf_similarity(mu, metric="manhattan")


def test_cluster_input_errors():
    with pytest.raises(ValueError, match="2-D"):
        SceneClusters(2, 2).fit(np.zeros(10))
    with pytest.raises(ValueError, match="n_components"):
        SceneClusters(2, 50).fit(_blobs(d=4))
    with pytest.raises(ValueError, match="not fitted"):
        SceneClusters(2, 2).predict(np.zeros((3, 4)))
    np.testing.assert_allclose(cluster_mixture(np.array([0, 0, 2]), 3), [2 / 3, 0, 1 / 3])


# ----------------------------------------------------------------------------------- predictor
REAL = np.array([120.0, 60.0, 30.0, 15.0])
A4 = np.array([[1.0, 0.5, 0.1, 0.0], [0.5, 1.0, 0.3, 0.1], [0.1, 0.3, 1.0, 0.4], [0.0, 0.1, 0.4, 1.0]])
BETA = np.array([0.04, 0.08, -0.02, 0.05])
GAMMA = np.array([-0.10, 0.05, 0.20, -0.03])
PI = np.array([0.4, 0.3, 0.2, 0.1])


def _rounds(noise=0.0, n_rounds=7, seed=0):
    rng = np.random.default_rng(seed)
    syn = np.vstack([np.zeros(4), rng.integers(0, 300, size=(n_rounds - 1, 4))]).astype(float)
    log_n, rho = round_features(REAL, syn, A4)
    scores = 0.5 + BETA * log_n + GAMMA * rho + noise * rng.normal(size=syn.shape)
    return syn, scores


def test_predictor_recovers_parameters_noise_free():
    syn, scores = _rounds()
    p = ClusterPerformancePredictor(alpha=1e-10).fit(REAL, syn, scores, similarity=A4, calibration_mixture=PI)
    np.testing.assert_allclose(p.beta_, BETA, atol=1e-6)
    np.testing.assert_allclose(p.gamma_, GAMMA, atol=1e-6)
    assert p.pairs_.shape == (21, 2) and p.design_.shape == (84, 8)
    # every observed round is reproduced from every reference round
    for r in range(7):
        np.testing.assert_allclose(p.predict(p.mixtures_[r], p.totals_[r], reference=0), scores[r], atol=1e-8)
    assert p.best_round_ == int(np.argmax(scores @ PI))


def test_predictor_recovers_parameters_with_small_noise_and_recency_weights():
    syn, scores = _rounds(noise=1e-3, n_rounds=12, seed=1)
    p = ClusterPerformancePredictor(alpha=1e-8, recency_decay=0.9).fit(REAL, syn, scores, similarity=A4,
                                                                      calibration_mixture=PI)
    np.testing.assert_allclose(p.beta_, BETA, atol=0.01)
    np.testing.assert_allclose(p.gamma_, GAMMA, atol=0.03)
    assert p.sample_weight_.max() == 1.0 and p.sample_weight_.min() == pytest.approx(0.9 ** 10)


def test_predictor_ridge_is_the_closed_form_and_gradient_matches_finite_differences():
    syn, scores = _rounds(noise=1e-2, n_rounds=4, seed=2)
    p = ClusterPerformancePredictor(alpha=0.5, recency_decay=0.7).fit(REAL, syn, scores, similarity=A4,
                                                                     calibration_mixture=PI)
    phi, w, y = p.design_, np.diag(p.sample_weight_), p.target_
    theta = np.linalg.inv(phi.T @ w @ phi + 0.5 * np.eye(8)) @ phi.T @ w @ y
    np.testing.assert_allclose(p.coef_, theta, rtol=1e-8, atol=1e-12)
    mix, total = p.mixtures_[2], p.totals_[2]
    g = p.gradient(mix, total)
    eps = 1e-6
    for i, j in [(0, 1), (1, 3), (2, 0)]:                      # directions along the simplex
        d = np.zeros(4)
        d[i], d[j] = 1.0, -1.0
        fd = (p.predict_score(mix + eps * d, total) - p.predict_score(mix - eps * d, total)) / (2 * eps)
        assert fd == pytest.approx(g[i] - g[j], rel=1e-5, abs=1e-9)


def test_predictor_input_errors():
    syn, scores = _rounds()
    with pytest.raises(ValueError, match="at least 2"):
        ClusterPerformancePredictor().fit(REAL, syn[:1], scores[:1])
    with pytest.raises(ValueError, match="shape"):
        ClusterPerformancePredictor().fit(REAL, syn, scores[:, :3])
    with pytest.raises(ValueError, match="similarity"):
        ClusterPerformancePredictor().fit(REAL, syn, scores, similarity=np.eye(3))
    with pytest.raises(ValueError, match="recency_decay"):
        ClusterPerformancePredictor(recency_decay=0).fit(REAL, syn, scores)
    p = ClusterPerformancePredictor().fit(REAL, syn, scores)
    with pytest.raises(ValueError, match="sum to 1"):
        p.predict(np.array([0.5, 0.5, 0.5, 0.5]))


# ----------------------------------------------------------------------------------- mixture
def test_half_cosine_schedule():
    assert half_cosine_step(0, 8, 0.4) == pytest.approx(0.4)
    assert half_cosine_step(4, 8, 0.4) == pytest.approx(0.2)
    assert half_cosine_step(8, 8, 0.4) == pytest.approx(0.0, abs=1e-15)
    assert half_cosine_step(12, 8, 0.4) == pytest.approx(0.0, abs=1e-15)
    etas = [half_cosine_step(t, 8, 0.4) for t in range(9)]
    for t, e in enumerate(etas):
        assert e == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * t / 8)))
    assert all(a > b for a, b in zip(etas, etas[1:]))
    with pytest.raises(ValueError):
        half_cosine_step(0, 0, 1.0)


def test_eg_step_is_eq6():
    w = np.array([0.5, 0.3, 0.2])
    g = np.array([1.0, 0.0, -2.0])
    eta = 0.7
    num = np.array([0.5 * math.exp(0.7), 0.3, 0.2 * math.exp(-1.4)])
    np.testing.assert_allclose(eg_step(w, g, eta), num / num.sum(), rtol=1e-12)
    np.testing.assert_allclose(eg_step(w, g + 5.0, eta), num / num.sum(), rtol=1e-12)  # shift-invariant
    out = eg_step(w, 800.0 * g, 1.0)                           # no overflow
    assert np.all(np.isfinite(out)) and out.sum() == pytest.approx(1.0)


def _fitted():
    syn, scores = _rounds(noise=0.0, n_rounds=5, seed=3)
    return ClusterPerformancePredictor(alpha=1e-6).fit(REAL, syn, scores, similarity=A4, calibration_mixture=PI)


def test_optimizer_step_follows_eq6_when_feasible():
    p = _fitted()
    budget = int(p.totals_[p.best_round_] - REAL.sum())       # the best round's budget: start is feasible
    cap = np.full(4, 10_000)
    opt = MixtureOptimizer(eta0=0.3, n_steps=6, gradient_scaling="none")
    prop = opt.propose(p, step=2, budget=budget, capacity=cap)
    total = REAL.sum() + budget
    start = p.mixtures_[p.best_round_]
    np.testing.assert_allclose(prop.start, start)
    eta = 0.3 * 0.5 * (1 + math.cos(math.pi * 2 / 6))
    assert prop.eta == pytest.approx(eta)
    g = p.gradient(start, total)
    expected = start * np.exp(eta * g) / np.sum(start * np.exp(eta * g))
    np.testing.assert_allclose(prop.mixture, expected, rtol=1e-12)
    assert not prop.repaired
    lo, hi = feasible_bounds(REAL, cap, total)
    assert is_feasible(prop.mixture, lo, hi)
    # Eq. 7: the predicted gain from the start mixture, min-max normalised
    delta = p.predict(prop.mixture, total) - p.predict(start, total)
    np.testing.assert_allclose(prop.predicted_gain, delta)
    np.testing.assert_allclose(prop.gains, (delta - delta.min()) / (delta.max() - delta.min()))
    assert prop.allocation.sum() == budget and np.all(prop.allocation >= 0)
    # max_abs scaling: the largest log-change of a weight is eta
    prop2 = MixtureOptimizer(eta0=0.02, n_steps=6).propose(p, step=0, budget=budget, capacity=cap)
    assert not prop2.repaired
    c = g - start @ g
    np.testing.assert_allclose(prop2.mixture, eg_step(start, c / np.abs(c).max(), 0.02), rtol=1e-12)


def test_optimizer_repairs_to_feasible_mixture_within_capacities():
    p = _fitted()
    budget, cap = 200, np.array([5, 150, 30, 40])
    total = REAL.sum() + budget
    lo, hi = feasible_bounds(REAL, cap, total)
    for step in range(3):
        prop = MixtureOptimizer(eta0=3.0, n_steps=3, n_perturb=8).propose(p, step, budget, cap)
        assert is_feasible(prop.mixture, lo, hi)
        assert prop.allocation.sum() == budget
        assert np.all(prop.allocation <= cap) and np.all(prop.allocation >= 0)
        assert np.all((prop.gains >= 0) & (prop.gains <= 1))
    assert MixtureOptimizer(eta0=3.0, n_steps=3).propose(p, 0, budget, cap).repaired
    with pytest.raises(ValueError, match="exceeds the pool"):
        MixtureOptimizer().propose(p, 0, 1000, cap)
    r1 = MixtureOptimizer.initial(4)
    np.testing.assert_array_equal(r1.gains, np.zeros(4))
    assert r1.mixture is None and r1.allocation is None


def test_projection_allocation_and_gain_normalisation_hand_cases():
    lo, hi = np.array([0.1, 0.1, 0.0]), np.array([0.2, 1.0, 1.0])
    v = np.array([0.7, 0.2, 0.1])
    w = project_feasible(v, lo, hi)
    # KL projection: w = clip(c v): cluster 0 capped at 0.2, the others keep their ratio 2:1
    np.testing.assert_allclose(w, [0.2, 0.8 * 2 / 3, 0.8 / 3], atol=1e-10)
    # m = max(0, w (N + B) − n_real) rescaled to B, capped, integer
    m = synthetic_allocation(np.array([0.5, 0.3, 0.2]), np.array([40, 20, 0]), 40, np.array([100, 100, 100]))
    np.testing.assert_array_equal(m, [10, 10, 20])
    m = synthetic_allocation(np.array([0.5, 0.3, 0.2]), np.array([40, 20, 0]), 40, np.array([100, 100, 5]))
    np.testing.assert_array_equal(m, [18, 17, 5])              # 15 excess split 10:10, remainder to index 0
    np.testing.assert_allclose(normalize_gains(np.array([0.2, -0.1, 0.5])), [0.5, 0.0, 1.0])
    np.testing.assert_array_equal(normalize_gains(np.array([0.3, 0.3])), [0.0, 0.0])
    np.testing.assert_allclose(mixture_from_counts([1, 1], [2, 0]), [0.75, 0.25])


# --------------------------------------------------------------------------------- retrieval
CAL = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
CAL_CLUSTERS = np.array([0, 0, 1, 1])
CAL_SCORES = np.array([0.2, 0.9, 0.5, 1.0])
POOL = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])


def test_retrieval_ranks_hand_computed_case():
    # anchors (lowest half per cluster): cal 0 (cluster 0, s=0.2) and cal 2 (cluster 1, s=0.5)
    np.testing.assert_array_equal(select_anchors(CAL_CLUSTERS, CAL_SCORES, quantile=0.5), [0, 2])
    gains = np.array([0.0, 1.0])
    # factors (1 + g) (1 − s): anchor 0: 1 · 0.8 = 0.8; anchor 2: 2 · 0.5 = 1.0
    # best pair per candidate:  x0: max(0.8·1, 1.0·0) = 0.8 (a0)    x1: max(0, 1.0·1) = 1.0 (a2)
    #   x2: max(0.8·0.7071, 1.0·0.7071) = 0.7071 (a2)   x3: max(0.8·0.6, 1.0·0.8) = 0.8 (a2)
    #   x4: max(−0.8, 0) = 0 (a2)      order: x1, x0 (tie with x3, lower index first), x3, x2, x4
    expected = [1, 0, 3, 2, 4]
    expected_prio = [1.0, 0.8, 0.8, math.sqrt(0.5), 0.0]
    expected_anchor = [2, 0, 2, 2, 2]
    r = AnchorRetriever(anchor_quantile=0.5, n_neighbors=5).fit(POOL)
    res = r.retrieve(CAL, CAL_CLUSTERS, CAL_SCORES, gains, 5)
    np.testing.assert_array_equal(res.indices, expected)
    np.testing.assert_allclose(res.priority, expected_prio, atol=1e-6)
    np.testing.assert_array_equal(res.anchor, expected_anchor)
    np.testing.assert_array_equal(res.anchors, [0, 2])
    top3 = r.retrieve(CAL, CAL_CLUSTERS, CAL_SCORES, gains, 3)
    np.testing.assert_array_equal(top3.indices, [1, 0, 3])
    # one neighbour per anchor reaches only 2 distinct candidates: the search widens by itself
    narrow = AnchorRetriever(anchor_quantile=0.5, n_neighbors=1).fit(POOL)
    np.testing.assert_array_equal(narrow.retrieve(CAL, CAL_CLUSTERS, CAL_SCORES, gains, 5).indices, expected)
    # round 1 (zero gains): factors 0.8 (anchor 0) and 0.5 (anchor 2)
    #   x0: 0.8, x1: 0.5, x2: max(0.8·0.7071, 0.5·0.7071) = 0.5657, x3: max(0.48, 0.4) = 0.48, x4: 0
    res0 = r.retrieve(CAL, CAL_CLUSTERS, CAL_SCORES, np.zeros(2), 4)
    np.testing.assert_array_equal(res0.indices, [0, 2, 1, 3])
    np.testing.assert_array_equal(res0.anchor, [0, 0, 2, 0])
    assert retrieval_priority(0.5, 0.2, 0.5) == pytest.approx(1.5 * 0.8 * 0.5)


def test_retrieval_quotas_and_errors():
    r = AnchorRetriever(anchor_quantile=0.5, n_neighbors=5).fit(POOL)
    pool_clusters = np.array([0, 1, 0, 1, 0])
    res = r.retrieve(CAL, CAL_CLUSTERS, CAL_SCORES, np.array([0.0, 1.0]), 3,
                     candidate_clusters=pool_clusters, quotas=np.array([2, 1]))
    np.testing.assert_array_equal(res.indices, [1, 0, 2])      # x3 skipped: cluster 1 is full
    res = r.retrieve(CAL, CAL_CLUSTERS, CAL_SCORES, np.array([0.0, 1.0]), 4,
                     candidate_clusters=pool_clusters, quotas=np.array([1, 1]))
    np.testing.assert_array_equal(res.indices, [1, 0, 3, 2])   # unmet places filled in rank order
    with pytest.raises(ValueError, match="budget"):
        r.retrieve(CAL, CAL_CLUSTERS, CAL_SCORES, np.zeros(2), 6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        r.retrieve(CAL, CAL_CLUSTERS, CAL_SCORES * 2, np.zeros(2), 2)
    with pytest.raises(ValueError, match="columns"):
        r.retrieve(np.ones((4, 3)), CAL_CLUSTERS, CAL_SCORES, np.zeros(2), 2)
    with pytest.raises(ValueError, match="not fitted"):
        AnchorRetriever().retrieve(CAL, CAL_CLUSTERS, CAL_SCORES, np.zeros(2), 2)


# --------------------------------------------------------------------------------------- IWR
def test_iwr_weights_match_hand_computed_kde_ratio_1d():
    target = np.array([[0.0], [1.0], [2.0]])
    prior = np.array([[0.0], [2.0], [4.0], [6.0]])
    iwr = ImportanceWeightedRetrieval(n_components=None, normalize=False, bandwidth=0.5).fit(target, prior)

    def kde(data, x):
        h = 0.5 * np.std(data, ddof=1)                         # scipy: factor × data std
        return np.mean(np.exp(-0.5 * ((x[:, None] - data[None, :]) / h) ** 2), axis=1) / (h * math.sqrt(2 * math.pi))

    xs = prior[:, 0]
    expected = kde(target[:, 0], xs) / kde(prior[:, 0], xs)
    np.testing.assert_allclose(iwr.weights_, expected, rtol=1e-10)
    np.testing.assert_array_equal(iwr.select(2), np.argsort(-expected, kind="stable")[:2])


def test_iwr_pca_space_ratio_equals_scipy_ratio_and_nn_mode():
    rng = np.random.default_rng(5)
    target = rng.normal(loc=[1.0, 0.5], scale=0.5, size=(12, 2))
    prior = rng.normal(size=(20, 2))
    iwr = ImportanceWeightedRetrieval(n_components=2, normalize=False).fit(target, prior)
    expected = gaussian_kde(target.T)(prior.T) / gaussian_kde(prior.T)(prior.T)
    np.testing.assert_allclose(iwr.weights_, expected, rtol=1e-8)
    np.testing.assert_array_equal(iwr.select(20), np.argsort(-expected, kind="stable"))
    nn = ImportanceWeightedRetrieval(n_components=2, normalize=False, n_neighbors=1).fit(target, prior)
    sel = nn.select(5)
    near = {int(np.argmin(((prior - t) ** 2).sum(1))) for t in target}
    order = [int(i) for i in np.argsort(-expected, kind="stable")]
    # the nearest pool scene of some target first (by weight), then the others by weight
    assert sel.tolist() == ([i for i in order if i in near] + [i for i in order if i not in near])[:5]
    with pytest.raises(ValueError, match="more than"):
        ImportanceWeightedRetrieval(n_components=2).fit(target[:2], prior)
    sub = [ImportanceWeightedRetrieval(n_components=2, max_kde_samples=8, random_state=1).fit(target, prior)
           for _ in range(2)]
    assert sub[0].weights_.shape == (20,)
    np.testing.assert_array_equal(sub[0].weights_, sub[1].weights_)   # seeded subsample


# ------------------------------------------------------------------------------ composition
def test_one_closed_loop_round_composes():
    rng = np.random.default_rng(9)
    real = _blobs(seed=9, n=30, d=6, k=3)
    pool = _blobs(seed=9, n=60, d=6, k=3) + 0.05 * rng.normal(size=(180, 6))
    cal = _blobs(seed=9, n=10, d=6, k=3)
    cl = SceneClusters(n_clusters=3, n_components=4, random_state=0).fit(real)
    cal_lab, pool_lab = cl.predict(cal), cl.predict(pool)
    cap = np.bincount(pool_lab, minlength=3)
    retr = AnchorRetriever(n_anchors_per_cluster=2, n_neighbors=8).fit(pool)
    budget = 45
    r1 = retr.retrieve(cal, cal_lab, rng.uniform(size=30), MixtureOptimizer.initial(3).gains, budget)
    assert r1.indices.size == budget and np.unique(r1.indices).size == budget
    syn = np.vstack([np.zeros(3), np.bincount(pool_lab[r1.indices], minlength=3)])
    scores = np.array([[0.5, 0.6, 0.7], [0.55, 0.58, 0.75]])
    pred = ClusterPerformancePredictor(alpha=1e-2).fit(cl.counts_, syn, scores, similarity=cl.similarity_,
                                                      calibration_mixture=cl.mixture(cal))
    prop = MixtureOptimizer(eta0=0.5, n_steps=4).propose(pred, 0, budget, cap)
    r2 = retr.retrieve(cal, cal_lab, rng.uniform(size=30), prop.gains, budget,
                       candidate_clusters=pool_lab, quotas=prop.allocation)
    assert r2.indices.size == budget
    np.testing.assert_array_equal(np.bincount(pool_lab[r2.indices], minlength=3), prop.allocation)


def test_stratified_holdout_keeps_the_pool_mixture_and_is_seeded():
    lab = np.repeat(np.arange(4), [50, 30, 15, 5])
    idx = stratified_holdout(lab, 20, 4, seed=3)
    assert idx.dtype == np.int64 and len(idx) == len(set(idx.tolist())) == 20 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(np.bincount(lab[idx], minlength=4), [10, 6, 3, 1])  # 20 x the pool's shares
    odd = stratified_holdout(lab, 7, 4, seed=0)  # quotas 3.5, 2.1, 1.05, 0.35: largest remainders win
    np.testing.assert_array_equal(np.bincount(lab[odd], minlength=4), [4, 2, 1, 0])
    np.testing.assert_array_equal(stratified_holdout(lab, 20, 4, seed=3), idx)
    assert not np.array_equal(stratified_holdout(lab, 20, 4, seed=4), idx)
    assert stratified_holdout(lab, 0, 4, seed=0).size == 0
    assert len(stratified_holdout(lab, 100, 4, seed=0)) == 100
    with pytest.raises(ValueError):
        stratified_holdout(lab, 101, 4, seed=0)
    with pytest.raises(ValueError):
        stratified_holdout(np.array([0, 4]), 1, 4, seed=0)
