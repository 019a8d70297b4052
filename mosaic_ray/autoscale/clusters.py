"""Scene clusters for AutoScale: PCA + Gaussian mixture on scene embeddings, and the fixed RBF
transfer matrix between cluster centres (AutoScale §4.2 "Data Clustering", Appendix B.4 Eq. 21;
``../shared/docs/AUTOSCALE.md`` "Clusters and mixture").

The paper fits a GMM on the L2-normalised, PCA-reduced Graph-RAE embeddings of the *real*
training scenes, giving K clusters with centroids μ_k and real counts n_k; calibration and
synthetic scenes are assigned to the same clusters (calibration mixture π_k = share of
calibration scenes in cluster k). Cross-cluster transfer uses the RBF kernel

    A_kj = exp(−d(μ_k, μ_j)² / (2σ²)),

with d the Euclidean distance (AUTOSCALE.md) or the cosine distance 1 − cos(μ_k, μ_j) (the
paper's Appendix B.4 says "cosine distance"); ``metric`` picks one. The paper does not give σ:
by default it is the median heuristic (median of the off-diagonal pairwise distances), and a
fixed value can be passed. Both choices are **reconstructed**.

Pre-processing order (reconstructed; the paper only says "PCA before GMM" and "GMM on
L2-normalised vectors"): L2-normalise the raw embeddings → PCA (fitted on the real scenes) →
L2-normalise the reduced vectors → GMM. ``normalize_input`` / ``normalize_reduced`` switch the
two normalisations off.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

__all__ = ["SceneClusters", "rbf_similarity", "as_embeddings", "l2_normalize", "cluster_mixture", "stratified_holdout"]

log = logging.getLogger(__name__)


def as_embeddings(x: Any, name: str = "X", *, dim: int | None = None, min_rows: int = 1) -> np.ndarray:
    """Check an embedding matrix once at the boundary.

    Parameters
    ----------
    x : array-like, shape (n, d)
        Real-valued, finite.
    name : str
        Used in error messages.
    dim : int, optional
        Required number of columns ``d``.
    min_rows : int
        Smallest accepted ``n``.

    Returns
    -------
    np.ndarray, shape (n, d), float64

    Raises
    ------
    ValueError
        Not 2-D, too few rows, wrong width, or non-finite entries.
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array of shape (n, d): {exc}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} has no columns")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns (the fitted width), got {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite entries")
    return arr


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (shape (n, d)) scaled to unit L2 norm; all-zero rows stay zero. float64."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def rbf_similarity(centers: Any, bandwidth: float | None = None, metric: str = "euclidean") -> tuple[np.ndarray, float]:
    """RBF transfer matrix between cluster centres (AutoScale §4.2; Appendix B.4 Eq. 21).

    ``A_kj = exp(−d_kj² / (2σ²))`` with ``d_kj = ‖μ_k − μ_j‖`` (``metric="euclidean"``) or
    ``d_kj = 1 − cos(μ_k, μ_j)`` (``metric="cosine"``). **Reconstructed**: the paper gives
    neither σ nor, consistently, the distance.

    Parameters
    ----------
    centers : array-like, shape (K, p)
        Cluster centres μ_k.
    bandwidth : float, optional
        σ > 0. ``None``: median heuristic, σ = median of the off-diagonal d_kj (σ = 1 when
        K = 1 or all centres coincide).
    metric : {"euclidean", "cosine"}

    Returns
    -------
    A : np.ndarray, shape (K, K), float64
        Symmetric, unit diagonal, entries in (0, 1].
    sigma : float
        The bandwidth used.
    """
    mu = as_embeddings(centers, "centers")
    if metric == "euclidean":
        sq = np.sum(mu * mu, axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * mu @ mu.T, 0.0)
        d = np.sqrt(d2)
    elif metric == "cosine":
        u = l2_normalize(mu)
        d = np.clip(1.0 - u @ u.T, 0.0, 2.0)
    else:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    if bandwidth is None:
        k = mu.shape[0]
        off = d[~np.eye(k, dtype=bool)]
        sigma = float(np.median(off)) if off.size else 1.0
        if not np.isfinite(sigma) or sigma <= 0.0:
            sigma = 1.0
    else:
        sigma = float(bandwidth)
        if not np.isfinite(sigma) or sigma <= 0.0:
            raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth!r}")
    a = np.exp(-(d * d) / (2.0 * sigma * sigma))
    np.fill_diagonal(a, 1.0)
    return a, sigma


def cluster_mixture(labels: Any, n_clusters: int) -> np.ndarray:
    """Share of each cluster among ``labels`` (shape (n,), ints in [0, K)) → shape (K,), float64.

    Used for the calibration mixture π (AutoScale §4.2). An empty ``labels`` raises ValueError.
    """
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.size == 0:
        raise ValueError("labels must be a non-empty 1-D array")
    if not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0 or lab.max() >= n_clusters:
        raise ValueError(f"labels must be integers in [0, {n_clusters})")
    return np.bincount(lab, minlength=n_clusters).astype(np.float64) / lab.size


def stratified_holdout(labels: Any, n: int, n_clusters: int, seed: int) -> np.ndarray:
    """Indices of ``n`` scenes drawn cluster-stratified from ``labels``: the paper's held-out
    calibration set D_cal, "drawn cluster-stratified from the synthetic pool" (AutoScale §3;
    ``../shared/docs/AUTOSCALE.md`` "Setting").

    Each cluster k gets ``n * count_k / N`` scenes rounded by largest remainder (ties to the
    lower cluster index), so the held-out mixture is the pool's to within one scene per cluster;
    within a cluster the scenes are a uniform draw of ``numpy.random.default_rng(seed)``.

    Args:
        labels: (N,) int cluster of every scene, values in [0, n_clusters).
        n: scenes to hold out, 0 <= n <= N.
        n_clusters: K.
        seed: the draw's seed (same inputs -> same indices).

    Returns:
        (n,) int64 sorted indices into ``labels``.

    Raises:
        ValueError: labels not 1-D integers in [0, K), or n outside [0, N].
    """
    lab = np.asarray(labels)
    if lab.ndim != 1 or (lab.size and (not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0
                                       or lab.max() >= n_clusters)):
        raise ValueError(f"labels must be a 1-D array of integers in [0, {n_clusters})")
    if not 0 <= n <= lab.size:
        raise ValueError(f"cannot hold out {n} of {lab.size} scenes")
    counts = np.bincount(lab, minlength=n_clusters).astype(np.int64)
    if n == 0:
        return np.zeros(0, np.int64)
    quota = n * counts / lab.size
    take = np.floor(quota).astype(np.int64)
    rest = n - int(take.sum())
    order = np.lexsort((np.arange(n_clusters), -(quota - take)))  # largest remainder first
    take[order[:rest]] += 1
    rng = np.random.default_rng(seed)
    out = [rng.choice(np.flatnonzero(lab == k), int(take[k]), replace=False) for k in range(n_clusters) if take[k]]
    return np.sort(np.concatenate(out).astype(np.int64))


class SceneClusters:
    """PCA + GMM clusters of scene embeddings and their RBF transfer matrix (AutoScale §4.2).

    Parameters
    ----------
    n_clusters : int
        K (the paper ablates 32 / 64 / 128, 64 best).
    n_components : int or float or None
        PCA size: an int (≤ min(n, d)), a float in (0, 1) (explained-variance fraction), or
        ``None`` (no PCA, the normalised embeddings go to the GMM). Not given in the paper.
    covariance_type : str
        Passed to :class:`sklearn.mixture.GaussianMixture` (``"full"``, ``"diag"``, ...).
    normalize_input, normalize_reduced : bool
        L2-normalise before PCA / after PCA (see the module docstring).
    bandwidth : float, optional
        RBF σ; ``None`` = median heuristic (:func:`rbf_similarity`).
    metric : {"euclidean", "cosine"}
        Distance between centres in the RBF kernel.
    max_iter, n_init, reg_covar, tol : GMM settings.
    random_state : int
        Seeds PCA (randomised solvers) and the GMM, so the same data gives the same labels.

    Attributes (after :meth:`fit`)
    ------------------------------
    pca_ : PCA or None
    gmm_ : GaussianMixture
    means_ : np.ndarray, shape (K, p), float64 — centroids μ_k in the reduced space.
    labels_ : np.ndarray, shape (N,), int64 — cluster of each real scene.
    counts_ : np.ndarray, shape (K,), int64 — n_k, real scenes per cluster.
    similarity_ : np.ndarray, shape (K, K), float64 — the RBF matrix A.
    bandwidth_ : float — σ used.
    n_features_in_ : int
    """

    def __init__(self, n_clusters: int = 64, n_components: int | float | None = 32, *,
                 covariance_type: str = "diag", normalize_input: bool = True,
                 normalize_reduced: bool = True, bandwidth: float | None = None,
                 metric: str = "euclidean", max_iter: int = 200, n_init: int = 1,
                 reg_covar: float = 1e-6, tol: float = 1e-3, random_state: int = 0):
        self.n_clusters = n_clusters
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.normalize_input = normalize_input
        self.normalize_reduced = normalize_reduced
        self.bandwidth = bandwidth
        self.metric = metric
        self.max_iter = max_iter
        self.n_init = n_init
        self.reg_covar = reg_covar
        self.tol = tol
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, real_embeddings: Any) -> "SceneClusters":
        """Fit PCA and the GMM on the real scenes' embeddings (shape (N, d)); returns self."""
        k = self.n_clusters
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"n_clusters must be a positive int, got {k!r}")
        if self.metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {self.metric!r}")
        x = as_embeddings(real_embeddings, "real_embeddings", min_rows=k)
        n, d = x.shape
        nc = self.n_components
        if nc is not None:
            if isinstance(nc, bool):
                raise ValueError("n_components must be an int, a float in (0, 1) or None")
            if isinstance(nc, (int, np.integer)):
                if not 1 <= nc <= min(n, d):
                    raise ValueError(f"n_components={nc} must be in [1, min(n_samples, n_features)="
                                     f"{min(n, d)}]")
            elif isinstance(nc, float):
                if not 0.0 < nc < 1.0:
                    raise ValueError(f"float n_components must be in (0, 1), got {nc}")
            else:
                raise ValueError("n_components must be an int, a float in (0, 1) or None")
        self.n_features_in_ = d
        if self.normalize_input:
            x = l2_normalize(x)
        if nc is not None:
            self.pca_ = PCA(n_components=nc, random_state=self.random_state).fit(x)
            z = self.pca_.transform(x)
        else:
            self.pca_ = None
            z = x
        if self.normalize_reduced:
            z = l2_normalize(z)
        self.gmm_ = GaussianMixture(n_components=k, covariance_type=self.covariance_type,
                                    max_iter=self.max_iter, n_init=self.n_init,
                                    reg_covar=self.reg_covar, tol=self.tol,
                                    random_state=self.random_state).fit(z)
        if not self.gmm_.converged_:
            log.warning("GMM with %d clusters did not converge in %d iterations", k, self.max_iter)
        self.means_ = np.asarray(self.gmm_.means_, dtype=np.float64)
        self.labels_ = self.gmm_.predict(z).astype(np.int64)
        self.counts_ = np.bincount(self.labels_, minlength=k).astype(np.int64)
        empty = int(np.sum(self.counts_ == 0))
        if empty:
            log.warning("%d of %d clusters hold no real scene after hard assignment", empty, k)
        self.similarity_, self.bandwidth_ = rbf_similarity(self.means_, self.bandwidth, self.metric)
        log.info("SceneClusters: %d scenes, %d dims -> %d dims, K=%d, sigma=%.4g", n, d, z.shape[1],
                 k, self.bandwidth_)
        return self

    # ------------------------------------------------------------ inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "gmm_"):
            raise ValueError("SceneClusters is not fitted; call fit(real_embeddings) first")

    def transform(self, embeddings: Any) -> np.ndarray:
        """Reduced, normalised vectors (shape (n, p), float64) the GMM sees for ``embeddings`` (n, d)."""
        self._check_fitted()
        x = as_embeddings(embeddings, "embeddings", dim=self.n_features_in_)
        if self.normalize_input:
            x = l2_normalize(x)
        z = self.pca_.transform(x) if self.pca_ is not None else x
        return l2_normalize(z) if self.normalize_reduced else z

    def predict(self, embeddings: Any) -> np.ndarray:
        """Cluster of each scene (calibration or synthetic), shape (n,), int64."""
        z = self.transform(embeddings)
        return self.gmm_.predict(z).astype(np.int64)

    def predict_proba(self, embeddings: Any) -> np.ndarray:
        """GMM responsibilities, shape (n, K), float64."""
        z = self.transform(embeddings)
        return self.gmm_.predict_proba(z)

    def mixture(self, embeddings: Any) -> np.ndarray:
        """Share of ``embeddings``' scenes per cluster (e.g. the calibration mixture π), shape (K,)."""
        return cluster_mixture(self.predict(embeddings), self.n_clusters)
