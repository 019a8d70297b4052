"""AutoScale's selection methods over one Graph-RAE space: the closed loop, its ablations and the
baselines (Ray-free; the ``rounds`` step of :mod:`mosaic_ray.stages.autoscale` calls them).

Every method picks ``budget`` synthetic scenes (rows of the synthetic pool) for one training
on the whole real training split plus those scenes (AUTOSCALE.md §3). The loop methods pick
anew every round from the feedback of the rounds before; the one-shot baselines pick once
(round 1), from the real-only round 0 where they need feedback.

=========================  =====================================================================
method                     selection
=========================  =====================================================================
``autoscale``              round 1: pure retrieval (Eq. 8, all gains 0); round r ≥ 2: Cluster-GA
                           (predictor Eq. 3-4 fitted on rounds 0..r-1, EG step t = r − 2 from the
                           best round, Eq. 5-7) gives per-cluster quotas m_k and gains ĝ, then
                           Eq. 8 retrieval under those quotas. Anchors: the calibration scenes
                           where the newest round's planner scores lowest.
``autoscale_no_ga``        ablation "w/o Cluster-GA" (AutoScale Table 4): every round pure
                           retrieval (gains 0, no quotas), anchors from the newest planner.
``autoscale_no_retrieval`` ablation "w/o retrieval": round 1 a uniform sample; round r ≥ 2 the
                           Cluster-GA quotas filled by a seeded uniform sample within each cluster.
``uniform``                a seeded uniform sample of the pool (Uniform).
``chameleon``              Chameleon (kernel-ridge leverage of the synthetic clusters' mean
                           Graph-RAE embeddings, :class:`~mosaic_ray.selection.baselines.ChameleonStrategy`).
``iwr``                    IWR (Xie et al., CoRL 2025): PCA + Gaussian KDE density ratio of the
                           target (round 0's lowest-scoring calibration scenes, the same anchor
                           rule as retrieval) to the prior (the pool); the highest weights
                           (:class:`~mosaic_ray.autoscale.iwr.ImportanceWeightedRetrieval`).
``all_synthetic``          the whole pool (its budget is the pool size).
=========================  =====================================================================

The ablation "w/o contrastive and metric regularisers" is a Graph-RAE setting
(``autoscale.graph_rae.lambda_c = 0``, ``lambda_m = 0``), run as its own experiment.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mosaic_ray.autoscale.iwr import ImportanceWeightedRetrieval
from mosaic_ray.autoscale.mixture import MixtureOptimizer
from mosaic_ray.autoscale.predictor import ClusterPerformancePredictor
from mosaic_ray.autoscale.retrieval import AnchorRetriever, select_anchors

__all__ = ["LOOP_METHODS", "ONE_SHOT_METHODS", "ClusterSpace", "Observation", "cluster_scores",
           "select_round", "method_rounds"]

log = logging.getLogger(__name__)

#: methods that choose anew every round from the previous rounds' feedback
LOOP_METHODS = ("autoscale", "autoscale_no_ga", "autoscale_no_retrieval")
#: methods that choose once (round 1)
ONE_SHOT_METHODS = ("uniform", "chameleon", "iwr", "all_synthetic")


@dataclass(frozen=True)
class ClusterSpace:
    """The Graph-RAE space the methods select in.

    Attributes:
        synthetic_emb: (n_syn, d) float32 synthetic pool embeddings (L2-normalised).
        synthetic_clusters: (n_syn,) int64 GMM cluster of each pool scene.
        calibration_emb: (n_cal, d) float32 calibration embeddings.
        calibration_clusters: (n_cal,) int64.
        real_counts: (K,) float64 n_k^real, real training scenes per cluster.
        similarity: (K, K) float64 RBF transfer matrix A.
        calibration_mixture: (K,) float64 π (share of calibration scenes per cluster).
    """

    synthetic_emb: np.ndarray
    synthetic_clusters: np.ndarray
    calibration_emb: np.ndarray
    calibration_clusters: np.ndarray
    real_counts: np.ndarray
    similarity: np.ndarray
    calibration_mixture: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.real_counts.size)

    @property
    def capacity(self) -> np.ndarray:
        """(K,) int64 synthetic scenes available per cluster."""
        return np.bincount(self.synthetic_clusters, minlength=self.n_clusters).astype(np.int64)


@dataclass(frozen=True)
class Observation:
    """One observed round of a loop: what was trained and how it scored on calibration.

    Attributes:
        synthetic_counts: (K,) float64 synthetic scenes per cluster in its training set.
        cluster_scores: (K,) float64 mean calibration EPDMS per cluster (0..1).
        clip_scores: (n_cal,) float64 calibration EPDMS per scene (0..1), calibration order.
    """

    synthetic_counts: np.ndarray
    cluster_scores: np.ndarray
    clip_scores: np.ndarray


def cluster_scores(clip_scores: Any, clusters: Any, n_clusters: int) -> np.ndarray:
    """Per-cluster mean of calibration scores, shape (K,), float64; a cluster without calibration
    scenes gets the overall mean (its π_k is 0, so it never moves the overall score S).

    Raises:
        ValueError: lengths differ or a score is not finite."""
    s = np.asarray(clip_scores, dtype=np.float64)
    c = np.asarray(clusters, dtype=np.int64)
    if s.shape != c.shape or s.ndim != 1 or s.size == 0:
        raise ValueError(f"clip_scores {s.shape} and clusters {c.shape} must be 1-D of one non-zero length")
    if not np.all(np.isfinite(s)):
        raise ValueError("calibration scores must be finite")
    n = np.bincount(c, minlength=n_clusters).astype(np.float64)
    tot = np.bincount(c, weights=s, minlength=n_clusters)
    return np.where(n > 0, tot / np.maximum(n, 1.0), float(s.mean()))


def method_rounds(method: str, rounds: int) -> list[int]:
    """The rounds (1-based) a method trains in: every round for loop methods, round 1 otherwise."""
    if method in LOOP_METHODS:
        return list(range(1, int(rounds) + 1))
    if method in ONE_SHOT_METHODS:
        return [1]
    raise ValueError(f"unknown AutoScale method {method!r}")


def _rng(seed: int, *parts: Any) -> np.random.Generator:
    return np.random.default_rng([int(seed)] + [zlib.crc32(str(p).encode()) for p in parts])


def _uniform(n: int, budget: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=int(budget), replace=False)).astype(np.int64)


def _within_clusters(clusters: np.ndarray, quotas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = []
    for k, q in enumerate(np.asarray(quotas, dtype=np.int64)):
        if q <= 0:
            continue
        idx = np.flatnonzero(clusters == k)
        out.append(rng.choice(idx, size=min(int(q), idx.size), replace=False))
    return np.sort(np.concatenate(out)).astype(np.int64) if out else np.zeros(0, np.int64)


def select_round(method: str, space: ClusterSpace, budget: int, round_: int, history: Sequence[Observation],
                 opts: Any, seed: int) -> tuple[np.ndarray, dict]:
    """The synthetic pool rows ``method`` trains on in round ``round_`` (see the module table).

    Args:
        space: the Graph-RAE space.
        budget: B, synthetic scenes (ignored by ``all_synthetic``).
        round_: 1-based round.
        history: observations of rounds 0 .. round_ − 1 of this loop (round 0: real only).
        opts: the :class:`~mosaic_ray.config.AutoScaleConfig` (constants of Eq. 4-8, baselines).
        seed: the loop's seed (uniform draws, Chameleon's order).

    Returns:
        ``(rows, info)``: (b,) int64 distinct pool rows (b = budget unless the pool is short) and
        a JSON-able dict of the round's decision (gains, quotas, EG step size, anchors...).

    Raises:
        ValueError: unknown method, a round outside the method's rounds, or history shorter
            than ``round_``.
    """
    if round_ not in method_rounds(method, getattr(opts, "rounds", round_)):
        raise ValueError(f"{method} does not train in round {round_}")
    if len(history) < round_:
        raise ValueError(f"round {round_} needs the observations of rounds 0..{round_ - 1}, got {len(history)}")
    n = space.synthetic_clusters.size
    b = min(int(budget), n)
    k = space.n_clusters
    rng = _rng(seed, method, b, round_)
    latest = history[round_ - 1]
    info: dict[str, Any] = {"method": method, "round": round_}
    if method == "all_synthetic":
        return np.arange(n, dtype=np.int64), info
    if method == "uniform":
        return _uniform(n, b, rng), info
    if method == "chameleon":
        from mosaic_ray.selection.baselines import ChameleonStrategy
        from mosaic_ray.selection.strategies import PoolView

        pool = PoolView(np.array([f"s{i:08d}" for i in range(n)], dtype=object),
                        np.array([f"c{c:04d}" for c in space.synthetic_clusters], dtype=object),
                        np.zeros(n), embeddings=space.synthetic_emb)
        strat = ChameleonStrategy(lam=opts.chameleon_lambda, seed=seed)
        rows = np.sort(strat.order(pool, b)).astype(np.int64)
        info["weights"] = {kk: round(v, 6) for kk, v in strat.weights_.items()}
        return rows, info
    if method == "iwr":
        anchors = select_anchors(space.calibration_clusters, latest.clip_scores, quantile=opts.anchor_quantile,
                                 n_per_cluster=opts.anchors_per_cluster)
        dims = int(min(opts.iwr_pca_dims, anchors.size - 1, n - 1))
        if dims < 1:
            raise ValueError(f"iwr: {anchors.size} target scenes are too few for a KDE")
        if dims < opts.iwr_pca_dims:
            log.warning("iwr: PCA dims lowered from %d to %d (%d target scenes)", opts.iwr_pca_dims, dims, anchors.size)
        iwr = ImportanceWeightedRetrieval(n_components=dims, bandwidth=opts.iwr_bandwidth,
                                          random_state=opts.cluster_seed)
        iwr.fit(space.calibration_emb[anchors], space.synthetic_emb)
        info.update(targets=int(anchors.size), pca_dims=dims)
        return np.sort(iwr.select(b)).astype(np.int64), info

    # the loop methods
    ga = method in ("autoscale", "autoscale_no_retrieval") and round_ >= 2
    gains, quotas = np.zeros(k), None
    if ga:
        predictor = ClusterPerformancePredictor(alpha=opts.ridge_alpha, recency_decay=opts.recency_decay)
        predictor.fit(space.real_counts, np.stack([h.synthetic_counts for h in history[:round_]]),
                      np.stack([h.cluster_scores for h in history[:round_]]), similarity=space.similarity,
                      calibration_mixture=space.calibration_mixture)
        opt = MixtureOptimizer(eta0=opts.eta0, n_steps=opts.eg_steps or max(1, opts.rounds - 1),
                               n_inner_steps=opts.eg_inner_steps, gradient_scaling=opts.gradient_scaling,
                               n_perturb=opts.repair_candidates, perturb_scale=opts.repair_scale,
                               random_state=seed)
        prop = opt.propose(predictor, step=round_ - 2, budget=b, capacity=space.capacity)
        gains, quotas = prop.gains, prop.allocation
        info.update(eta=prop.eta, step=prop.step, repaired=prop.repaired, best_round=predictor.best_round_,
                    beta=predictor.beta_.round(6).tolist(), gamma=predictor.gamma_.round(6).tolist(),
                    mixture=prop.mixture.round(6).tolist(), gains=gains.round(6).tolist(),
                    quotas=quotas.tolist())
    if method == "autoscale_no_retrieval":
        rows = _uniform(n, b, rng) if quotas is None else _within_clusters(space.synthetic_clusters, quotas, rng)
        return rows, info
    retriever = AnchorRetriever(anchor_quantile=opts.anchor_quantile, n_anchors_per_cluster=opts.anchors_per_cluster,
                                n_neighbors=opts.n_neighbors, gain_offset=opts.gain_offset,
                                score_ceiling=opts.score_ceiling).fit(space.synthetic_emb)
    res = retriever.retrieve(space.calibration_emb, space.calibration_clusters, latest.clip_scores, gains, b,
                             candidate_clusters=space.synthetic_clusters if quotas is not None else None,
                             quotas=quotas)
    info.update(anchors=int(res.anchors.size))
    return np.sort(res.indices).astype(np.int64), info
