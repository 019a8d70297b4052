"""Anchor-based retrieval of synthetic scenes (AutoScale §4.3, Eq. 8;
``../shared/docs/AUTOSCALE.md`` "Retrieval").

**Anchors** are the calibration scenes where the current planner scores lowest, chosen per
cluster (:func:`select_anchors`): in each cluster the ``anchor_quantile`` share of its
calibration scenes with the lowest scores (at least one), or the ``n_anchors_per_cluster``
lowest when that is set. Ties break by index.

**Priority (Eq. 8, reconstructed form).** For anchor a (cluster c(a), score s_a ∈ [0, 1]) and
candidate x,

    priority(a, x) = (gain_offset + ĝ_{c(a)}) · (score_ceiling − s_a) · cos(z_a, z_x),

with ``gain_offset = score_ceiling = 1`` as in AUTOSCALE.md; ĝ are the normalised cluster gains
of Eq. 7 (zeros in round 1).

**Ranking.** For every anchor the ``n_neighbors`` nearest candidates by cosine similarity are
found with faiss (``IndexFlatIP`` on L2-normalised float32 vectors: exact search). All
(anchor, candidate) pairs are pooled into one ranking; a candidate reached from several anchors
keeps its best pair (duplicates resolved by the maximum priority); candidates are ordered by
priority descending, ties by candidate index ascending, and the top ``budget`` are taken. When
the pooled pairs hold fewer than ``budget`` distinct candidates (or, with quotas, fewer of some
cluster than its quota and the pool allow) the search is repeated with twice as many neighbours
(up to the whole pool).

**Per-cluster quotas (optional).** When ``quotas`` (the m_k of Eq. 6's allocation) and the
candidates' clusters are given, the ranking is walked in order and a candidate is skipped once
its own cluster's quota is full; with ``fill_unmet`` the remaining places are then filled from
the skipped candidates in rank order (so exactly ``budget`` come back when the pool allows).
The paper's prose ranks globally only; quotas are how this implementation lets the EG mixture
shape the selection (interpretation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from mosaic_ray.autoscale.clusters import as_embeddings, l2_normalize

__all__ = ["select_anchors", "retrieval_priority", "AnchorRetriever", "RetrievalResult"]

log = logging.getLogger(__name__)


def _labels(x: Any, name: str, n: int) -> np.ndarray:
    lab = np.asarray(x)
    if lab.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {lab.shape}")
    if n and (not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0):
        raise ValueError(f"{name} must be non-negative integer cluster ids")
    return lab.astype(np.int64)


def _scores(x: Any, name: str, n: int) -> np.ndarray:
    s = np.asarray(x, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s < 0) or np.any(s > 1):
        raise ValueError(f"{name} must be finite scores in [0, 1] (e.g. EPDMS)")
    return s


def select_anchors(clusters: Any, scores: Any, *, quantile: float = 0.2,
                   n_per_cluster: int | None = None) -> np.ndarray:
    """Indices of the anchor scenes (lowest scores per cluster), shape (n_anchors,), int64, sorted.

    clusters : shape (n,), int — cluster of each calibration scene.
    scores : shape (n,), float in [0, 1] — the current planner's score on each.
    quantile : share of each cluster's scenes taken (ceil, at least 1); ignored when
        ``n_per_cluster`` is set.
    """
    raw = np.asarray(clusters)
    if raw.ndim != 1:
        raise ValueError(f"clusters must be 1-D, got shape {raw.shape}")
    lab = _labels(raw, "clusters", raw.shape[0])
    s = _scores(scores, "scores", lab.shape[0])
    if n_per_cluster is None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
    elif int(n_per_cluster) != n_per_cluster or n_per_cluster < 1:
        raise ValueError(f"n_per_cluster must be an int ≥ 1, got {n_per_cluster!r}")
    out = []
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        order = idx[np.lexsort((idx, s[idx]))]
        take = int(n_per_cluster) if n_per_cluster is not None else max(1, int(np.ceil(quantile * idx.size)))
        out.append(order[:take])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def retrieval_priority(gain: Any, score: Any, cosine: Any, *, gain_offset: float = 1.0,
                       score_ceiling: float = 1.0) -> np.ndarray:
    """Eq. 8 (reconstructed): ``(gain_offset + ĝ_c(a)) · (score_ceiling − s_a) · cos(z_a, z_x)``.

    Broadcasts its arguments (e.g. gain, score of shape (A, 1) against cosine (A, k)); float64.
    """
    return ((gain_offset + np.asarray(gain, dtype=np.float64))
            * (score_ceiling - np.asarray(score, dtype=np.float64))
            * np.asarray(cosine, dtype=np.float64))


@dataclass(frozen=True)
class RetrievalResult:
    """Selected candidates in rank order.

    indices : shape (b,), int64 — pool rows, best first (b = budget unless the pool is short).
    priority : shape (b,), float64 — each one's best priority.
    anchor : shape (b,), int64 — calibration row of the anchor that gave it.
    anchors : shape (n_anchors,), int64 — all anchor rows used.
    """

    indices: np.ndarray
    priority: np.ndarray
    anchor: np.ndarray
    anchors: np.ndarray


class AnchorRetriever:
    """Eq. 8 retrieval over a synthetic pool (see the module docstring).

    Parameters
    ----------
    anchor_quantile : float — share of each cluster's calibration scenes used as anchors.
    n_anchors_per_cluster : int, optional — fixed anchor count per cluster (overrides the quantile).
    n_neighbors : int — first search width per anchor (grown when too few distinct candidates).
    gain_offset, score_ceiling : float — the constants of Eq. 8's reconstructed form.
    fill_unmet : bool — with quotas, fill places left by full clusters from the skipped ones.

    Attributes (after :meth:`fit`)
    ------------------------------
    index_ : faiss.IndexFlatIP over the L2-normalised pool (float32).
    n_candidates_ : int, n_features_in_ : int.
    """

    def __init__(self, *, anchor_quantile: float = 0.2, n_anchors_per_cluster: int | None = None,
                 n_neighbors: int = 256, gain_offset: float = 1.0, score_ceiling: float = 1.0,
                 fill_unmet: bool = True):
        self.anchor_quantile = anchor_quantile
        self.n_anchors_per_cluster = n_anchors_per_cluster
        self.n_neighbors = n_neighbors
        self.gain_offset = gain_offset
        self.score_ceiling = score_ceiling
        self.fill_unmet = fill_unmet

    def fit(self, candidate_embeddings: Any) -> "AnchorRetriever":
        """Index the synthetic pool's embeddings (shape (n_pool, d)); returns self."""
        if int(self.n_neighbors) != self.n_neighbors or self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be an int ≥ 1, got {self.n_neighbors!r}")
        x = as_embeddings(candidate_embeddings, "candidate_embeddings")
        self.pool_ = l2_normalize(x)
        z = np.ascontiguousarray(self.pool_, dtype=np.float32)
        self.index_ = faiss.IndexFlatIP(z.shape[1])
        self.index_.add(z)
        self.n_candidates_ = z.shape[0]
        self.n_features_in_ = z.shape[1]
        return self

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities (float64) and pool rows (int64) of the k nearest, each (n_q, k).

        faiss finds the neighbours in float32; their cosines are then recomputed in float64 so
        that priorities (and ties between them) do not depend on float32 rounding.
        """
        if not hasattr(self, "index_"):
            raise ValueError("AnchorRetriever is not fitted; call fit(candidate_embeddings) first")
        q = as_embeddings(queries, "queries", dim=self.n_features_in_)
        qz = np.ascontiguousarray(l2_normalize(q), dtype=np.float32)
        k = min(int(k), self.n_candidates_)
        _, ids = self.index_.search(qz, k)
        ids = ids.astype(np.int64)
        qn = l2_normalize(q)
        sims = np.full(ids.shape, -np.inf)
        for lo in range(0, ids.shape[0], 256):
            blk = ids[lo:lo + 256]
            ok = blk >= 0
            vec = self.pool_[np.where(ok, blk, 0)]
            sims[lo:lo + 256] = np.where(ok, np.einsum("qd,qkd->qk", qn[lo:lo + 256], vec), -np.inf)
        return sims, ids

    def retrieve(self, calibration_embeddings: Any, calibration_clusters: Any, calibration_scores: Any,
                 gains: Any, budget: int, *, candidate_clusters: Any = None,
                 quotas: Any = None) -> RetrievalResult:
        """Select ``budget`` pool scenes by Eq. 8.

        Parameters
        ----------
        calibration_embeddings : shape (n_cal, d) — embeddings of the calibration scenes.
        calibration_clusters : shape (n_cal,), int — their clusters.
        calibration_scores : shape (n_cal,), float in [0, 1] — the current planner's scores.
        gains : shape (K,), float — normalised cluster gains ĝ (Eq. 7); zeros in round 1.
        budget : int — B ≥ 0 (at most the pool size).
        candidate_clusters : shape (n_pool,), int, optional — pool clusters (needed for quotas).
        quotas : shape (K,), int, optional — per-cluster synthetic budget m_k.
        """
        if not hasattr(self, "index_"):
            raise ValueError("AnchorRetriever is not fitted; call fit(candidate_embeddings) first")
        cal = as_embeddings(calibration_embeddings, "calibration_embeddings", dim=self.n_features_in_)
        n_cal = cal.shape[0]
        lab = _labels(calibration_clusters, "calibration_clusters", n_cal)
        s = _scores(calibration_scores, "calibration_scores", n_cal)
        g = np.asarray(gains, dtype=np.float64)
        if g.ndim != 1 or not np.all(np.isfinite(g)):
            raise ValueError("gains must be a finite 1-D array (one entry per cluster)")
        if lab.max() >= g.size:
            raise ValueError(f"calibration cluster {lab.max()} has no gain (gains has {g.size} entries)")
        b = int(budget)
        if b != budget or b < 0 or b > self.n_candidates_:
            raise ValueError(f"budget must be an int in [0, {self.n_candidates_}], got {budget!r}")
        cand_lab = None
        q = None
        if quotas is not None:
            if candidate_clusters is None:
                raise ValueError("quotas need candidate_clusters")
            cand_lab = _labels(candidate_clusters, "candidate_clusters", self.n_candidates_)
            q = np.asarray(quotas)
            if q.shape != g.shape or not np.issubdtype(q.dtype, np.integer) or np.any(q < 0):
                raise ValueError(f"quotas must be non-negative ints of shape {g.shape}")
            if cand_lab.max() >= g.size:
                raise ValueError("candidate_clusters has ids beyond the gains' length")
            in_pool = np.bincount(cand_lab, minlength=g.size)

        anchors = select_anchors(lab, s, quantile=self.anchor_quantile,
                                 n_per_cluster=self.n_anchors_per_cluster)
        empty = np.zeros(0, dtype=np.int64)
        if b == 0 or anchors.size == 0:
            return RetrievalResult(empty, np.zeros(0), empty, anchors)

        k = min(int(self.n_neighbors), self.n_candidates_)
        while True:
            sims, ids = self.search(cal[anchors], k)
            pr = retrieval_priority(g[lab[anchors]][:, None], s[anchors][:, None], sims,
                                    gain_offset=self.gain_offset, score_ceiling=self.score_ceiling)
            cand, prio, anc = self._pool(ids, pr, anchors)
            enough = cand.size >= b
            if enough and q is not None:
                reached = np.bincount(cand_lab[cand], minlength=g.size)
                enough = bool(np.all(reached >= np.minimum(q, in_pool)))
            if enough or k >= self.n_candidates_:
                break
            k = min(2 * k, self.n_candidates_)
        if cand.size < b:
            log.warning("only %d distinct candidates for a budget of %d", cand.size, b)
        if q is None:
            take = np.arange(min(b, cand.size))
        else:
            take = self._with_quotas(cand_lab[cand], q, b)
        return RetrievalResult(cand[take], prio[take], anc[take], anchors)

    @staticmethod
    def _pool(ids: np.ndarray, pr: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best pair per candidate, ordered by priority desc, candidate index asc."""
        valid = ids.ravel() >= 0
        c = ids.ravel()[valid]
        p = pr.ravel()[valid]
        a = np.repeat(anchors, ids.shape[1])[valid]
        # best pair per candidate: sort by (candidate, −priority, anchor), keep the first
        o = np.lexsort((a, -p, c))
        c, p, a = c[o], p[o], a[o]
        first = np.ones(c.size, dtype=bool)
        first[1:] = c[1:] != c[:-1]
        c, p, a = c[first], p[first], a[first]
        o = np.lexsort((c, -p))
        return c[o], p[o], a[o]

    def _with_quotas(self, clusters: np.ndarray, quotas: np.ndarray, budget: int) -> np.ndarray:
        used = np.zeros_like(quotas)
        keep, skipped = [], []
        for i, c in enumerate(clusters):
            if len(keep) == budget:
                break
            if used[c] < quotas[c]:
                used[c] += 1
                keep.append(i)
            else:
                skipped.append(i)
        if self.fill_unmet and len(keep) < budget:
            rest = skipped + list(range(len(keep) + len(skipped), clusters.size))
            keep.extend(rest[:budget - len(keep)])
            keep.sort()
        return np.asarray(keep, dtype=np.int64)
