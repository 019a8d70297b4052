"""Per-cluster performance predictor of AutoScale (§4.2 "Cluster Performance Predictor", Eq. 3-5;
``../shared/docs/AUTOSCALE.md`` "Cluster performance predictor").

**Reconstructed form (Eq. 3).** For two observed rounds t, t' the per-cluster calibration score
difference is modelled as

    s_k − s'_k ≈ β_k · [log(1 + ñ_k) − log(1 + ñ'_k)] + γ_k · (ρ_k − ρ'_k),

    ñ_k = Σ_j A_kj · n_j^total          (samples of cluster k counted through the RBF transfer A),
    n_j^total = n_j^real + m_j          (real scenes of cluster j plus the synthetic ones selected),
    ρ_k = m_k / n_k^total               (synthetic share of cluster k; 0 when n_k^total = 0).

β_k is the marginal data return of cluster k, γ_k the effect of its synthetic share. The prose
fixes these ingredients; the combination is reconstructed.

**Fit (Eq. 4).** Every unordered pair of observed rounds (t > t') gives K rows (one per cluster)
of Φ θ ≈ y with θ = [β_1..β_K, γ_1..γ_K]; the closed-form weighted ridge solution is

    θ = (Φᵀ W Φ + λ I)⁻¹ Φᵀ W y,

W diagonal with weight ``recency_decay ** (R − 1 − t)`` for the pair (t, t') (pairs that involve
the newest round weigh 1; ``recency_decay = 1`` weighs all pairs equally). Reconstructed: the
paper says only "a diagonal weight matrix".

**Prediction in mixture space (used by Eq. 5-7).** A mixture w (shape (K,), on the simplex) with
total sample count T = N + B means n^total = T·w, synthetic counts m = max(0, T·w − n^real) and
ρ_k = m_k / (T w_k). The prediction is relative to a reference round r (default: the observed
round with the best overall calibration score S = Σ_k π_k s_k):

    ŝ_k(w) = s_k^r + β_k [log(1 + ñ_k(w)) − log(1 + ñ_k^r)] + γ_k (ρ_k(w) − ρ_k^r),

and the gradient of Ŝ(w) = Σ_k π_k ŝ_k(w) (Eq. 5, chain rule through ñ and ρ) is

    ∂Ŝ/∂w_j = T Σ_k π_k β_k A_kj / (1 + ñ_k)  +  π_j γ_j n_j^real / (T w_j²) · [T w_j > n_j^real].
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = ["ClusterPerformancePredictor", "round_features", "mixture_from_counts", "mixture_features"]

log = logging.getLogger(__name__)


def _vector(x: Any, name: str, k: int | None = None, *, nonneg: bool = False) -> np.ndarray:
    try:
        v = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
    if k is not None and v.shape[0] != k:
        raise ValueError(f"{name} must have length {k} (one entry per cluster), got {v.shape[0]}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} has non-finite entries")
    if nonneg and np.any(v < 0):
        raise ValueError(f"{name} must be non-negative")
    return v


def _similarity(a: Any, k: int) -> np.ndarray:
    if a is None:
        return np.eye(k)
    m = np.asarray(a, dtype=np.float64)
    if m.shape != (k, k):
        raise ValueError(f"similarity must have shape ({k}, {k}), got {m.shape}")
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError("similarity must be finite and non-negative")
    return m


def mixture_from_counts(real_counts: Any, synthetic_counts: Any) -> np.ndarray:
    """Mixture w_k = n_k^total / Σ_j n_j^total (AutoScale §4.2).

    real_counts : shape (K,); synthetic_counts : shape (K,) or (R, K). Returns float64 of the
    shape of ``synthetic_counts``.
    """
    real = np.asarray(real_counts, dtype=np.float64)
    syn = np.asarray(synthetic_counts, dtype=np.float64)
    tot = real + syn
    s = tot.sum(axis=-1, keepdims=True)
    if np.any(s <= 0):
        raise ValueError("a round holds no samples at all")
    return tot / s


def round_features(real_counts: np.ndarray, synthetic_counts: np.ndarray,
                   similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 3 features of observed rounds from counts.

    Parameters
    ----------
    real_counts : shape (K,), float64 — n^real.
    synthetic_counts : shape (R, K), float64 — m per round.
    similarity : shape (K, K), float64 — A.

    Returns
    -------
    log_n : shape (R, K) — log(1 + ñ_k), ñ = A n^total.
    rho : shape (R, K) — m_k / n_k^total (0 where n_k^total = 0).
    """
    tot = real_counts[None, :] + synthetic_counts
    n_tilde = tot @ similarity.T
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(tot > 0, synthetic_counts / np.where(tot > 0, tot, 1.0), 0.0)
    return np.log1p(n_tilde), rho


def mixture_features(mixture: np.ndarray, total: float, real_counts: np.ndarray,
                     similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 3 features of a mixture w (shape (K,)) at total sample count T.

    Returns ``(log_n, rho, n_tilde, drho_dw)``, each shape (K,), float64: log(1 + ñ), the
    synthetic share ρ_k = max(0, T w_k − n_k^real) / (T w_k), ñ = A (T w), and ∂ρ_k/∂w_k.
    """
    tot = total * mixture
    n_tilde = similarity @ tot
    syn = np.maximum(tot - real_counts, 0.0)
    pos = tot > 0
    safe = np.where(pos, tot, 1.0)
    rho = np.where(pos, syn / safe, 0.0)
    active = pos & (tot > real_counts)
    wsafe = np.where(mixture > 0, mixture, 1.0)
    drho = np.where(active, real_counts / (total * wsafe * wsafe), 0.0)
    return np.log1p(n_tilde), rho, n_tilde, drho


class ClusterPerformancePredictor:
    """Eq. 3 predictor fitted by the closed-form weighted ridge of Eq. 4.

    Parameters
    ----------
    alpha : float
        Ridge strength λ ≥ 0 (λ = 0 needs Φᵀ W Φ invertible).
    recency_decay : float
        In (0, 1]; pair (t, t') with t > t' weighs ``recency_decay ** (R − 1 − t)``.

    Attributes (after :meth:`fit`)
    ------------------------------
    beta_, gamma_ : np.ndarray, shape (K,), float64 — β_k, γ_k.
    coef_ : np.ndarray, shape (2K,) — θ = [β, γ].
    pairs_ : np.ndarray, shape (P, 2), int64 — (t, t') with t > t', P = R(R−1)/2.
    design_ : np.ndarray, shape (P·K, 2K) — Φ (row p·K + k: pair p, cluster k).
    target_ : np.ndarray, shape (P·K,) — y; ``sample_weight_`` the diagonal of W.
    real_counts_ (K,), synthetic_counts_ (R, K), scores_ (R, K), similarity_ (K, K),
    calibration_mixture_ (K,), mixtures_ (R, K), totals_ (R,), overall_scores_ (R,) = scores_ @ π,
    best_round_ : int — argmax of overall_scores_ (first on ties); the default reference.
    log_n_, rho_ : np.ndarray, shape (R, K) — features of the observed rounds.
    """

    def __init__(self, alpha: float = 1e-3, recency_decay: float = 1.0):
        self.alpha = alpha
        self.recency_decay = recency_decay

    def fit(self, real_counts: Any, synthetic_counts: Any, scores: Any, *,
            similarity: Any = None, calibration_mixture: Any = None) -> "ClusterPerformancePredictor":
        """Fit β, γ on all pairs of the R ≥ 2 observed rounds; returns self.

        Parameters
        ----------
        real_counts : array-like, shape (K,) — n_k^real (fixed across rounds), ≥ 0.
        synthetic_counts : array-like, shape (R, K) — synthetic scenes per cluster in each round
            (round 0 is usually the real-only baseline, all zeros), ≥ 0.
        scores : array-like, shape (R, K) — per-cluster calibration scores s_k of each round.
        similarity : array-like, shape (K, K), optional — the RBF matrix A (identity if None).
        calibration_mixture : array-like, shape (K,), optional — π (uniform if None); non-negative,
            normalised here.
        """
        alpha = float(self.alpha)
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number ≥ 0, got {self.alpha!r}")
        decay = float(self.recency_decay)
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"recency_decay must be in (0, 1], got {self.recency_decay!r}")
        real = _vector(real_counts, "real_counts", nonneg=True)
        k = real.shape[0]
        syn = np.asarray(synthetic_counts, dtype=np.float64)
        sc = np.asarray(scores, dtype=np.float64)
        if syn.ndim != 2 or syn.shape[1] != k:
            raise ValueError(f"synthetic_counts must have shape (R, {k}), got {syn.shape}")
        if sc.shape != syn.shape:
            raise ValueError(f"scores must have the shape of synthetic_counts {syn.shape}, got {sc.shape}")
        if syn.shape[0] < 2:
            raise ValueError("the predictor needs at least 2 observed rounds (round 1 is pure retrieval)")
        if not (np.all(np.isfinite(syn)) and np.all(np.isfinite(sc))):
            raise ValueError("synthetic_counts and scores must be finite")
        if np.any(syn < 0):
            raise ValueError("synthetic_counts must be non-negative")
        a = _similarity(similarity, k)
        if calibration_mixture is None:
            pi = np.full(k, 1.0 / k)
        else:
            pi = _vector(calibration_mixture, "calibration_mixture", k, nonneg=True)
            if pi.sum() <= 0:
                raise ValueError("calibration_mixture must have a positive sum")
            pi = pi / pi.sum()
        totals = (real[None, :] + syn).sum(axis=1)
        if np.any(totals <= 0):
            raise ValueError("every round must hold at least one sample")

        r = syn.shape[0]
        log_n, rho = round_features(real, syn, a)
        pairs = np.array([(t, s) for t in range(r) for s in range(t)], dtype=np.int64)
        p = pairs.shape[0]
        phi = np.zeros((p * k, 2 * k))
        y = np.empty(p * k)
        wts = np.empty(p * k)
        idx = np.arange(k)
        for i, (t, s) in enumerate(pairs):
            rows = i * k + idx
            phi[rows, idx] = log_n[t] - log_n[s]
            phi[rows, k + idx] = rho[t] - rho[s]
            y[rows] = sc[t] - sc[s]
            wts[rows] = decay ** (r - 1 - t)
        gram = phi.T @ (wts[:, None] * phi) + alpha * np.eye(2 * k)
        rhs = phi.T @ (wts * y)
        try:
            theta = np.linalg.solve(gram, rhs)
        except np.linalg.LinAlgError:
            raise ValueError("Φᵀ W Φ + λ I is singular; use alpha > 0") from None

        self.coef_ = theta
        self.beta_ = theta[:k].copy()
        self.gamma_ = theta[k:].copy()
        self.pairs_ = pairs
        self.design_ = phi
        self.target_ = y
        self.sample_weight_ = wts
        self.real_counts_ = real
        self.synthetic_counts_ = syn
        self.scores_ = sc
        self.similarity_ = a
        self.calibration_mixture_ = pi
        self.totals_ = totals
        self.mixtures_ = (real[None, :] + syn) / totals[:, None]
        self.log_n_ = log_n
        self.rho_ = rho
        self.overall_scores_ = sc @ pi
        self.best_round_ = int(np.argmax(self.overall_scores_))
        self.n_clusters_ = k
        resid = phi @ theta - y
        log.info("predictor fitted on %d rounds (%d pairs), weighted RMSE %.4g", r, p,
                 float(np.sqrt(np.sum(wts * resid * resid) / np.sum(wts))))
        return self

    # ------------------------------------------------------------------ helpers
    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise ValueError("ClusterPerformancePredictor is not fitted; call fit(...) first")

    def _args(self, mixture: Any, total: float | None, reference: int | None) -> tuple[np.ndarray, float, int]:
        self._check_fitted()
        w = _vector(mixture, "mixture", self.n_clusters_, nonneg=True)
        if abs(w.sum() - 1.0) > 1e-6:
            raise ValueError(f"mixture must sum to 1, got {w.sum():.6g}")
        t = float(self.totals_[-1] if total is None else total)
        if not np.isfinite(t) or t <= 0:
            raise ValueError(f"total must be positive, got {total!r}")
        ref = self.best_round_ if reference is None else int(reference)
        if not 0 <= ref < self.scores_.shape[0]:
            raise ValueError(f"reference must index an observed round in [0, {self.scores_.shape[0]})")
        return w, t, ref

    # --------------------------------------------------------------- prediction
    def predict(self, mixture: Any, total: float | None = None, reference: int | None = None) -> np.ndarray:
        """Predicted per-cluster scores ŝ(w), shape (K,), float64.

        mixture : shape (K,), on the simplex. total : T = N + B (default: the newest round's
        total). reference : observed round the relative model starts from (default best_round_).
        """
        w, t, ref = self._args(mixture, total, reference)
        log_n, rho, _, _ = mixture_features(w, t, self.real_counts_, self.similarity_)
        return (self.scores_[ref] + self.beta_ * (log_n - self.log_n_[ref])
                + self.gamma_ * (rho - self.rho_[ref]))

    def predict_score(self, mixture: Any, total: float | None = None, reference: int | None = None) -> float:
        """Predicted overall calibration score Ŝ(w) = Σ_k π_k ŝ_k(w) (float)."""
        return float(self.calibration_mixture_ @ self.predict(mixture, total, reference))

    def predict_gain(self, new_mixture: Any, old_mixture: Any, total: float | None = None) -> np.ndarray:
        """Δŝ_k = ŝ_k(new) − ŝ_k(old) at the same total, shape (K,) (Eq. 7 before normalising)."""
        return self.predict(new_mixture, total) - self.predict(old_mixture, total)

    def jacobian(self, mixture: Any, total: float | None = None) -> np.ndarray:
        """∂ŝ_k/∂w_j, shape (K, K), float64 (independent of the reference round)."""
        w, t, _ = self._args(mixture, total, None)
        _, _, n_tilde, drho = mixture_features(w, t, self.real_counts_, self.similarity_)
        jac = (self.beta_ * t / (1.0 + n_tilde))[:, None] * self.similarity_
        jac[np.diag_indices_from(jac)] += self.gamma_ * drho
        return jac

    def gradient(self, mixture: Any, total: float | None = None) -> np.ndarray:
        """∇_w Ŝ(w) = πᵀ J (Eq. 5, reconstructed through Eq. 3), shape (K,), float64."""
        return self.calibration_mixture_ @ self.jacobian(mixture, total)
