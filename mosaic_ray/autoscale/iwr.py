"""Importance-weighted retrieval (IWR; Xie et al., CoRL 2025), the baseline AutoScale compares
with (AutoScale §5.1; ``../shared/docs/AUTOSCALE.md`` "IWR").

Target scenes (here: the calibration failures) and prior scenes (the synthetic pool) are embedded
in the same latent space, reduced with PCA (fitted on target ∪ prior), and their densities are
estimated with Gaussian KDE (:class:`scipy.stats.gaussian_kde`). Each pool scene x gets the
importance weight

    w(x) = p_target(x) / p_prior(x),

computed as ``exp(log p_target − log p_prior)``, and the highest-weighted scenes are retrieved
(ties: lower pool index). Optionally (``n_neighbors``), only pool scenes among the nearest
neighbours of some target scene (L2 in the PCA space, faiss ``IndexFlatL2``) are eligible first
("nearest-neighbour retrieval by weight"); the rest of the budget is then filled by weight.

Settings the sources leave open (PCA size, KDE bandwidth, whether embeddings are L2-normalised)
are parameters. With ``n_components`` equal to the embedding width and ``normalize=False`` the
ratio equals the KDE ratio in the original space (both KDEs use data-covariance bandwidths, so
the affine PCA map cancels in the ratio).
"""

from __future__ import annotations

import logging
from typing import Any

import faiss
import numpy as np
from scipy.stats import gaussian_kde
from sklearn.decomposition import PCA

from mosaic_ray.autoscale.clusters import as_embeddings, l2_normalize

__all__ = ["ImportanceWeightedRetrieval"]

log = logging.getLogger(__name__)


class ImportanceWeightedRetrieval:
    """IWR over a pool (see the module docstring).

    Parameters
    ----------
    n_components : int or None — PCA size (None: no PCA); must be below both set sizes so the
        KDE covariances are non-singular.
    bandwidth : str or float or callable — ``bw_method`` of :class:`scipy.stats.gaussian_kde`
        ("scott", "silverman", or a factor multiplying the data covariance).
    normalize : bool — L2-normalise embeddings before PCA.
    n_neighbors : int, optional — restrict the first pick to the n_neighbors nearest pool scenes
        of each target scene.
    max_kde_samples : int, optional — a KDE over a set larger than this is built on a seeded
        random subsample of that size (evaluating an exact KDE of the whole pool at every pool
        scene costs O(n_prior²)); ``None``: always exact. Weights are still computed for every
        pool scene.
    random_state : int — seeds PCA.

    Attributes (after :meth:`fit`)
    ------------------------------
    pca_ : PCA or None
    target_kde_, prior_kde_ : gaussian_kde
    log_weights_ : np.ndarray, shape (n_prior,), float64 — log p_target − log p_prior.
    weights_ : np.ndarray, shape (n_prior,), float64 — the importance weights.
    prior_reduced_, target_reduced_ : np.ndarray, float64 — the PCA-space points.
    """

    def __init__(self, n_components: int | None = 8, *, bandwidth: Any = "scott",
                 normalize: bool = True, n_neighbors: int | None = None,
                 max_kde_samples: int | None = 10_000, random_state: int = 0):
        self.n_components = n_components
        self.bandwidth = bandwidth
        self.normalize = normalize
        self.n_neighbors = n_neighbors
        self.max_kde_samples = max_kde_samples
        self.random_state = random_state

    def fit(self, target_embeddings: Any, prior_embeddings: Any) -> "ImportanceWeightedRetrieval":
        """Fit PCA and both KDEs, weight every prior scene; returns self.

        target_embeddings : shape (n_target, d); prior_embeddings : shape (n_prior, d).
        """
        t = as_embeddings(target_embeddings, "target_embeddings", min_rows=2)
        p = as_embeddings(prior_embeddings, "prior_embeddings", min_rows=2, dim=t.shape[1])
        nc = self.n_components
        if self.n_neighbors is not None and (int(self.n_neighbors) != self.n_neighbors or self.n_neighbors < 1):
            raise ValueError(f"n_neighbors must be an int ≥ 1 or None, got {self.n_neighbors!r}")
        cap = self.max_kde_samples
        if cap is not None and (int(cap) != cap or cap < 2):
            raise ValueError(f"max_kde_samples must be an int ≥ 2 or None, got {cap!r}")
        if self.normalize:
            t, p = l2_normalize(t), l2_normalize(p)
        if nc is not None:
            if isinstance(nc, bool) or not isinstance(nc, (int, np.integer)) or not 1 <= nc <= t.shape[1]:
                raise ValueError(f"n_components must be an int in [1, {t.shape[1]}] or None, got {nc!r}")
            dims = nc
        else:
            dims = t.shape[1]
        if min(t.shape[0], p.shape[0]) <= dims:
            raise ValueError(f"Gaussian KDE in {dims} dims needs more than {dims} target and prior "
                             f"scenes (got {t.shape[0]} and {p.shape[0]}); lower n_components")
        if cap is not None and cap <= dims:
            raise ValueError(f"max_kde_samples={cap} must exceed the KDE's {dims} dims")
        if nc is not None:
            self.pca_ = PCA(n_components=nc, random_state=self.random_state).fit(np.vstack([t, p]))
            zt, zp = self.pca_.transform(t), self.pca_.transform(p)
        else:
            self.pca_ = None
            zt, zp = t, p
        rng = np.random.default_rng(self.random_state)

        def sample(z: np.ndarray) -> np.ndarray:
            if cap is None or z.shape[0] <= cap:
                return z
            return z[np.sort(rng.choice(z.shape[0], size=int(cap), replace=False))]

        try:
            self.target_kde_ = gaussian_kde(sample(zt).T, bw_method=self.bandwidth)
            self.prior_kde_ = gaussian_kde(sample(zp).T, bw_method=self.bandwidth)
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise ValueError(f"Gaussian KDE failed (degenerate embeddings?): {exc}") from None
        self.log_weights_ = self.target_kde_.logpdf(zp.T) - self.prior_kde_.logpdf(zp.T)
        self.weights_ = np.exp(self.log_weights_)
        self.target_reduced_, self.prior_reduced_ = zt, zp
        self.n_features_in_ = t.shape[1]
        log.info("IWR: %d target, %d prior scenes in %d dims", zt.shape[0], zp.shape[0], zp.shape[1])
        return self

    def ranking(self) -> np.ndarray:
        """All prior rows by weight, highest first (ties: lower index), shape (n_prior,), int64."""
        if not hasattr(self, "log_weights_"):
            raise ValueError("ImportanceWeightedRetrieval is not fitted; call fit(...) first")
        lw = self.log_weights_
        return np.lexsort((np.arange(lw.size), -lw)).astype(np.int64)

    def select(self, budget: int) -> np.ndarray:
        """The ``budget`` retrieved prior rows in retrieval order, shape (budget,), int64."""
        order = self.ranking()
        b = int(budget)
        if b != budget or not 0 <= b <= order.size:
            raise ValueError(f"budget must be an int in [0, {order.size}], got {budget!r}")
        if self.n_neighbors is None:
            return order[:b]
        zp = np.ascontiguousarray(self.prior_reduced_, dtype=np.float32)
        index = faiss.IndexFlatL2(zp.shape[1])
        index.add(zp)
        k = min(int(self.n_neighbors), zp.shape[0])
        _, ids = index.search(np.ascontiguousarray(self.target_reduced_, dtype=np.float32), k)
        near = np.zeros(order.size, dtype=bool)
        near[ids[ids >= 0]] = True
        first = order[near[order]]
        rest = order[~near[order]]
        return np.concatenate([first, rest])[:b]
