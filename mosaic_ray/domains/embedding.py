"""Domains from planner embeddings: seeded k-means (MOSAIC §3.2.1, third clustering option).

The pool's planner features (``embedding`` column of the score table, (n, d) float32) are
clustered with k-means; each cluster is a domain. Labels are ``emb0..emb{k-1}`` numbered by
decreasing cluster size in the assigned pool.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mosaic_ray.domains.captions import _cluster_names, _relabel_by_size

__all__ = ["EmbeddingAssigner", "embeddings_from_scores"]


def embeddings_from_scores(scores: Any) -> np.ndarray:
    """(n, d) float32 from a score table's fixed-size-list ``embedding`` column.

    Raises ValueError if the column is missing.
    """
    if "embedding" not in scores.column_names:
        raise ValueError("the score table has no 'embedding' column")
    flat = scores.column("embedding").combine_chunks()
    vals = np.asarray(flat.flatten().to_numpy(zero_copy_only=False), np.float32)
    return vals.reshape(scores.num_rows, -1)


class EmbeddingAssigner:
    """k-means on planner embeddings (Euclidean), seeded.

    Parameters
    ----------
    k : int
        Number of clusters/domains.
    seed : int
        k-means seed.
    backend : {"sklearn", "faiss"}
        ``sklearn.cluster.KMeans`` (exact Lloyd, ``n_init`` restarts; default) or
        ``faiss.Kmeans`` (faster for ~10^6 points; ``n_init`` restarts of ``niter``
        iterations; faiss trains on a seeded sample of at most 256·k points).
    n_init, niter : int
        Restarts (both backends) / iterations (faiss).
    prefix : str
        Label prefix.

    After :meth:`fit_assign`: ``labels_`` (n,) object, ``centroids_`` (k, d) float32 in the
    label order, ``sizes_`` (dict label → count), ``inertia_`` (float, mean squared distance
    to the assigned centroid over the assigned clips).
    """

    kind = "embedding"

    def __init__(self, k: int = 6, seed: int = 0, backend: str = "sklearn", n_init: int = 10,
                 niter: int = 25, prefix: str = "emb"):
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if backend not in ("sklearn", "faiss"):
            raise ValueError(f"unknown k-means backend {backend!r}; use 'sklearn' or 'faiss'")
        self.k, self.seed, self.backend = int(k), int(seed), backend
        self.n_init, self.niter, self.prefix = int(n_init), int(niter), prefix
        self.labels_: np.ndarray | None = None
        self.centroids_: np.ndarray | None = None
        self.sizes_: dict[str, int] = {}
        self.inertia_: float = float("nan")

    def fit_assign(self, embeddings: np.ndarray | None = None, *, scores: Any = None,
                   clip_ids: Sequence[str] | None = None,
                   fit_embeddings: np.ndarray | None = None, **_: Any) -> np.ndarray:
        """Fit k-means on ``embeddings`` (∪ ``fit_embeddings``) and label ``embeddings``' rows.

        Parameters
        ----------
        embeddings : np.ndarray, shape (n, d), optional
            Pool embeddings; default: the ``embedding`` column of ``scores``.
        scores : pyarrow.Table, optional
            Score table (source of embeddings and, for ordering the fit, clip ids).
        clip_ids : sequence of str, shape (n,), optional
            Ids of the rows; when given (or taken from ``scores``) the fit sees the rows sorted
            by id, so the result does not depend on row order.
        fit_embeddings : np.ndarray, shape (m, d), optional
            Extra points (e.g. the training set) used only for fitting.

        Returns (n,) object labels in input row order.

        Raises
        ------
        ValueError
            No embeddings, wrong shapes, non-finite values, or fewer points than k.
        """
        if embeddings is None:
            if scores is None:
                raise ValueError("embedding domains need embeddings or a score table")
            embeddings = embeddings_from_scores(scores)
            if clip_ids is None:
                clip_ids = [str(x) for x in scores.column("clip_id").to_pylist()]
        X = np.ascontiguousarray(embeddings, dtype=np.float32)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"embeddings must have shape (n, d) with n > 0, got {X.shape}")
        n = X.shape[0]
        order = (np.argsort(np.asarray([str(c) for c in clip_ids]), kind="stable")
                 if clip_ids is not None else np.arange(n))
        if order.shape != (n,):
            raise ValueError(f"clip_ids must have {n} entries")
        F = X[order]
        if fit_embeddings is not None and len(fit_embeddings):
            E = np.ascontiguousarray(fit_embeddings, dtype=np.float32)
            if E.ndim != 2 or E.shape[1] != X.shape[1]:
                raise ValueError(f"fit_embeddings must have shape (m, {X.shape[1]}), got {E.shape}")
            F = np.concatenate([F, E])
        if not np.isfinite(F).all():
            raise ValueError("embeddings contain non-finite values")
        if F.shape[0] < self.k:
            raise ValueError(f"{F.shape[0]} points for k={self.k} clusters")
        if self.backend == "sklearn":
            from sklearn.cluster import KMeans

            km = KMeans(n_clusters=self.k, random_state=self.seed, n_init=self.n_init).fit(F)
            C = km.cluster_centers_.astype(np.float32)
        else:
            import faiss

            km = faiss.Kmeans(X.shape[1], self.k, niter=self.niter, nredo=self.n_init,
                              seed=self.seed, verbose=False, min_points_per_centroid=1)
            km.train(F)
            C = np.asarray(km.centroids, dtype=np.float32)
        d2 = (X ** 2).sum(1)[:, None] - 2.0 * X @ C.T + (C ** 2).sum(1)[None, :]
        raw = np.argmin(d2, axis=1)
        # name clusters by size, ties by first occurrence in id order (row-order independent)
        lab_sorted, old_order = _relabel_by_size(raw[order], self.k, self.prefix)
        labels = np.empty(n, dtype=object)
        labels[order] = lab_sorted
        names = _cluster_names(self.k, self.prefix)
        self.centroids_ = C[old_order]
        self.labels_ = labels
        self.sizes_ = {nm: int(np.sum(labels == nm)) for nm in names}
        self.inertia_ = float(np.mean(np.maximum(d2[np.arange(n), raw], 0.0)))
        return labels

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: kind, k, seed, backend, cluster sizes and mean squared distance.

        Raises RuntimeError before fitting."""
        if self.labels_ is None:
            raise RuntimeError("EmbeddingAssigner is not fitted; call fit_assign first")
        return {"kind": self.kind, "k": self.k, "seed": self.seed, "backend": self.backend,
                "inertia": self.inertia_,
                "clusters": [{"label": k, "size": v} for k, v in self.sizes_.items()]}
