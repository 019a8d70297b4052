"""Cluster mixture updates of AutoScale: exponentiated-gradient ascent on the predicted score,
half-cosine step schedule, feasibility repair, per-cluster synthetic budgets and normalised
cluster gains (§4.2 "Gradient Ascent Optimization", Eq. 5-7; ``../shared/docs/AUTOSCALE.md``).

Round 1 (:meth:`MixtureOptimizer.initial`): only the baseline observation exists, so there is no
predictor. The cluster gains are all 0 and no per-cluster budget is imposed: retrieval (Eq. 8)
ranks every anchor-candidate pair on demand × similarity alone and takes the global top B. The
mixture of round 1 is therefore *whatever the retrieval induces* (the clusters of the retrieved
scenes plus the real counts, :func:`mosaic_ray.autoscale.predictor.mixture_from_counts`); its
scores are the second observation the predictor needs.

From round 2 (:meth:`MixtureOptimizer.propose`):

1. start from the observed mixture with the best overall calibration score (predictor's
   ``best_round_``), projected onto the new round's feasible set if needed;
2. Eq. 6, the multiplicative EG update ``w_k ← w_k exp(η_t g_k) / Σ_j w_j exp(η_t g_j)`` with
   ``g = ∇_w Ŝ`` (Eq. 5, from the predictor) and ``η_t = η_0 · ½ (1 + cos(π t / T))``
   (:func:`half_cosine_step`). The paper says η is "calibrated" so that a (lost) quantity
   follows the half-cosine; **reconstructed**: with ``gradient_scaling="max_abs"`` (default) the
   gradient is first centred on its w-weighted mean (which EG ignores anyway) and divided by its
   largest absolute entry, so η_t is the largest log-change of any w_k in that step;
   ``gradient_scaling="none"`` applies Eq. 6 to the raw gradient;
3. feasibility (**reconstructed** "lightweight perturbed search"): the constraints are Σ w = 1 and
   0 ≤ T w_k − n_k^real ≤ cap_k (T = N + B, cap_k = synthetic scenes of cluster k in the pool),
   i.e. the box lo_k = n_k^real / T ≤ w_k ≤ hi_k = (n_k^real + cap_k) / T. An infeasible EG
   point v is repaired by the KL (multiplicative) projection ``clip(c·v, lo, hi)`` with c found
   by bisection (:func:`project_feasible`), plus ``n_perturb`` projections of log-normal
   perturbations of v; the candidate with the highest predicted score is kept;
4. Eq. 7: ``Δŝ_k = ŝ_k(w_new) − ŝ_k(w_start)`` (the start mixture of step 1 is the "previous"
   one), min-max normalised to [0, 1] (:func:`normalize_gains`; all-equal gains → zeros);
5. per-cluster synthetic budget ``m_k = max(0, w_k T − n_k^real)`` rescaled to B, capped at
   cap_k and rounded to integers summing to B (:func:`synthetic_allocation`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mosaic_ray.autoscale.predictor import ClusterPerformancePredictor

__all__ = ["half_cosine_step", "eg_step", "feasible_bounds", "is_feasible", "project_feasible",
           "synthetic_allocation", "normalize_gains", "MixtureProposal", "MixtureOptimizer"]

log = logging.getLogger(__name__)


def half_cosine_step(t: int, n_steps: int, eta0: float) -> float:
    """η_t = η_0 · ½ (1 + cos(π t / T)) for step t in [0, T] (η_0 at t = 0, 0 at t = T).

    Steps past T are clamped to T (η = 0). Reconstructed schedule (AutoScale §4.2, Eq. 6).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be ≥ 1, got {n_steps}")
    if t < 0:
        raise ValueError(f"step t must be ≥ 0, got {t}")
    tt = min(t, n_steps)
    return float(eta0) * 0.5 * (1.0 + math.cos(math.pi * tt / n_steps))


def eg_step(mixture: Any, gradient: Any, eta: float) -> np.ndarray:
    """Eq. 6 exactly: ``w_k exp(η g_k) / Σ_j w_j exp(η g_j)``; shapes (K,) → (K,), float64.

    Computed with the exponent shifted by its maximum for stability (the ratio is unchanged).
    """
    w = np.asarray(mixture, dtype=np.float64)
    g = np.asarray(gradient, dtype=np.float64)
    if w.ndim != 1 or g.shape != w.shape:
        raise ValueError(f"mixture and gradient must be 1-D of one length, got {w.shape} and {g.shape}")
    if np.any(w < 0) or not np.all(np.isfinite(w)) or not np.all(np.isfinite(g)) or w.sum() <= 0:
        raise ValueError("mixture must be finite, non-negative with a positive sum; gradient finite")
    e = float(eta) * g
    e = np.exp(e - e.max())
    v = w * e
    return v / v.sum()


def feasible_bounds(real_counts: Any, capacity: Any, total: float) -> tuple[np.ndarray, np.ndarray]:
    """Box of feasible mixtures: lo = n^real / T, hi = (n^real + cap) / T, each shape (K,).

    Raises ValueError when no mixture fits (Σ lo > 1: budget negative; Σ hi < 1: the pool holds
    fewer than B synthetic scenes).
    """
    real = np.asarray(real_counts, dtype=np.float64)
    cap = np.asarray(capacity, dtype=np.float64)
    if real.ndim != 1 or cap.shape != real.shape:
        raise ValueError(f"real_counts and capacity must be 1-D of one length, got {real.shape}, {cap.shape}")
    if np.any(real < 0) or np.any(cap < 0) or not (np.all(np.isfinite(real)) and np.all(np.isfinite(cap))):
        raise ValueError("real_counts and capacity must be finite and non-negative")
    if not total > 0:
        raise ValueError(f"total must be positive, got {total!r}")
    lo, hi = real / total, (real + cap) / total
    if lo.sum() > 1.0 + 1e-9:
        raise ValueError(f"total {total} is smaller than the real set ({real.sum():.0f} scenes)")
    if hi.sum() < 1.0 - 1e-9:
        raise ValueError(f"budget {total - real.sum():.0f} exceeds the pool ({cap.sum():.0f} synthetic scenes)")
    return lo, hi


def is_feasible(mixture: np.ndarray, lo: np.ndarray, hi: np.ndarray, atol: float = 1e-9) -> bool:
    """Whether ``mixture`` (K,) sums to 1 and lies in the box [lo, hi] (within ``atol``)."""
    w = np.asarray(mixture, dtype=np.float64)
    return bool(abs(w.sum() - 1.0) <= atol and np.all(w >= lo - atol) and np.all(w <= hi + atol))


def project_feasible(v: Any, lo: np.ndarray, hi: np.ndarray, *, iters: int = 200) -> np.ndarray:
    """KL projection of v ≥ 0 (shape (K,)) onto {Σ w = 1, lo ≤ w ≤ hi}: ``clip(c·v, lo, hi)``.

    c > 0 by bisection in log space (Σ clip(c v, lo, hi) is non-decreasing in c). Entries with
    v_k = 0 go to lo_k. Assumes Σ lo ≤ 1 ≤ Σ hi (see :func:`feasible_bounds`). Returns float64 (K,).
    """
    v = np.maximum(np.asarray(v, dtype=np.float64), 0.0)
    if lo.sum() >= 1.0 - 1e-15:
        return lo / lo.sum() if lo.sum() > 0 else np.full_like(lo, 1.0 / lo.size)
    if np.sum(hi[v > 0]) + np.sum(lo[v <= 0]) < 1.0 - 1e-12:
        # v has too few positive entries to reach 1 inside the box: lift zeros by a tiny floor
        v = np.where(v > 0, v, 1e-12 * max(v.max(), 1.0))
    s = lambda c: float(np.clip(c * v, lo, hi).sum())  # noqa: E731
    a, b = -60.0, 60.0
    while s(math.exp(a)) > 1.0 and a > -700:
        a -= 60.0
    while s(math.exp(b)) < 1.0 and b < 700:
        b += 60.0
    for _ in range(iters):
        m = 0.5 * (a + b)
        if s(math.exp(m)) < 1.0:
            a = m
        else:
            b = m
    w = np.clip(math.exp(0.5 * (a + b)) * v, lo, hi)
    # remove the bisection residual on the entries strictly inside the box
    free = (w > lo) & (w < hi)
    if np.any(free):
        w[free] += (1.0 - w.sum()) * w[free] / w[free].sum()
        w = np.clip(w, lo, hi)
    return w


def synthetic_allocation(mixture: Any, real_counts: Any, budget: int, capacity: Any) -> np.ndarray:
    """Per-cluster synthetic budget m_k (AutoScale §4.2), shape (K,), int64, Σ m = B, m ≤ cap.

    ``m_k = max(0, w_k (N + B) − n_k^real)`` rescaled to sum to B; shares over a cluster's
    capacity are clipped and the excess is spread over the other clusters in proportion to their
    shares (water-filling); integers by largest remainder (ties: lower cluster index).
    """
    w = np.asarray(mixture, dtype=np.float64)
    real = np.asarray(real_counts, dtype=np.float64)
    cap = np.floor(np.asarray(capacity, dtype=np.float64))
    b = int(budget)
    if b != budget or b < 0:
        raise ValueError(f"budget must be a non-negative int, got {budget!r}")
    if w.ndim != 1 or real.shape != w.shape or cap.shape != w.shape:
        raise ValueError("mixture, real_counts and capacity must be 1-D of one length")
    if cap.sum() < b:
        raise ValueError(f"budget {b} exceeds the pool ({int(cap.sum())} synthetic scenes)")
    if b == 0:
        return np.zeros(w.shape, dtype=np.int64)
    x = np.maximum(w * (real.sum() + b) - real, 0.0)
    x = x * (b / x.sum()) if x.sum() > 0 else cap * (b / cap.sum())
    for _ in range(w.size + 1):
        over = x > cap
        if not np.any(over):
            break
        excess = float(np.sum(x[over] - cap[over]))
        x[over] = cap[over]
        free = x < cap
        base = np.where(free, x, 0.0)
        if base.sum() <= 0:
            base = np.where(free, cap - x, 0.0)
        x = x + excess * base / base.sum()
    m = np.minimum(np.floor(x + 1e-9), cap).astype(np.int64)
    frac = x - m
    left = b - int(m.sum())
    while left > 0:
        room = m < cap
        order = np.lexsort((np.arange(w.size), -np.where(room, frac, -np.inf)))
        for k in order:
            if left == 0:
                break
            if m[k] < cap[k]:
                m[k] += 1
                frac[k] = -1.0
                left -= 1
    return m


def normalize_gains(delta: Any) -> np.ndarray:
    """Eq. 7: min-max normalisation of the predicted gains Δŝ (shape (K,)) to [0, 1].

    All-equal gains carry no ranking information and map to zeros (as in round 1).
    """
    d = np.asarray(delta, dtype=np.float64)
    if d.ndim != 1 or not np.all(np.isfinite(d)):
        raise ValueError("delta must be a finite 1-D array")
    lo, hi = float(d.min()), float(d.max())
    if hi - lo <= 1e-15 * max(1.0, abs(hi)):
        return np.zeros_like(d)
    return (d - lo) / (hi - lo)


@dataclass(frozen=True)
class MixtureProposal:
    """One round's cluster-level decision.

    Attributes
    ----------
    gains : np.ndarray, shape (K,), float64 — normalised gains ĝ for Eq. 8 (zeros in round 1).
    mixture : np.ndarray (K,) or None — the new mixture w (None in round 1: retrieval decides).
    start : np.ndarray (K,) or None — the best-so-far mixture the EG step started from.
    allocation : np.ndarray (K,) int64 or None — per-cluster synthetic budget m_k (Σ = B).
    predicted_gain : np.ndarray (K,) or None — Δŝ before normalisation.
    eta : float — the step size used (0 in round 1).
    step : int — the EG step index t (−1 in round 1).
    repaired : bool — whether the feasibility repair changed an EG iterate.
    """

    gains: np.ndarray
    mixture: np.ndarray | None = None
    start: np.ndarray | None = None
    allocation: np.ndarray | None = None
    predicted_gain: np.ndarray | None = None
    eta: float = 0.0
    step: int = -1
    repaired: bool = False


class MixtureOptimizer:
    """EG ascent on the predicted calibration score (AutoScale Eq. 5-7; see the module docstring).

    Parameters
    ----------
    eta0 : float — η_0 > 0.
    n_steps : int — T of the half-cosine schedule (EG rounds planned, ≥ 1).
    n_inner_steps : int — EG iterations per round (each projected when infeasible); the paper
        describes one.
    gradient_scaling : {"max_abs", "none"} — see the module docstring.
    n_perturb : int — perturbed candidates of the feasibility repair (0: projection only).
    perturb_scale : float — standard deviation of the log-normal perturbation.
    random_state : int — seeds the perturbations.
    """

    def __init__(self, eta0: float = 1.0, n_steps: int = 10, *, n_inner_steps: int = 1,
                 gradient_scaling: str = "max_abs", n_perturb: int = 16, perturb_scale: float = 0.1,
                 random_state: int = 0):
        self.eta0 = eta0
        self.n_steps = n_steps
        self.n_inner_steps = n_inner_steps
        self.gradient_scaling = gradient_scaling
        self.n_perturb = n_perturb
        self.perturb_scale = perturb_scale
        self.random_state = random_state

    def _validate(self) -> None:
        if not (np.isfinite(self.eta0) and self.eta0 > 0):
            raise ValueError(f"eta0 must be positive, got {self.eta0!r}")
        if int(self.n_steps) != self.n_steps or self.n_steps < 1:
            raise ValueError(f"n_steps must be an int ≥ 1, got {self.n_steps!r}")
        if int(self.n_inner_steps) != self.n_inner_steps or self.n_inner_steps < 1:
            raise ValueError(f"n_inner_steps must be an int ≥ 1, got {self.n_inner_steps!r}")
        if self.gradient_scaling not in ("max_abs", "none"):
            raise ValueError(f"gradient_scaling must be 'max_abs' or 'none', got {self.gradient_scaling!r}")
        if int(self.n_perturb) != self.n_perturb or self.n_perturb < 0:
            raise ValueError(f"n_perturb must be an int ≥ 0, got {self.n_perturb!r}")
        if not self.perturb_scale >= 0:
            raise ValueError(f"perturb_scale must be ≥ 0, got {self.perturb_scale!r}")

    @staticmethod
    def initial(n_clusters: int) -> MixtureProposal:
        """Round 1: zero gains, no mixture or per-cluster budget (pure retrieval)."""
        if n_clusters < 1:
            raise ValueError("n_clusters must be ≥ 1")
        return MixtureProposal(gains=np.zeros(n_clusters))

    def scale_gradient(self, gradient: np.ndarray, mixture: np.ndarray) -> np.ndarray:
        """The gradient as the EG step uses it (shape (K,)); identity for ``"none"``."""
        g = np.asarray(gradient, dtype=np.float64)
        if self.gradient_scaling == "none":
            return g
        c = g - float(mixture @ g)
        m = float(np.max(np.abs(c)))
        return c / m if m > 0 else np.zeros_like(c)

    def propose(self, predictor: ClusterPerformancePredictor, step: int, budget: int,
                capacity: Any) -> MixtureProposal:
        """One EG round from the best observed mixture.

        Parameters
        ----------
        predictor : fitted :class:`ClusterPerformancePredictor` (≥ 2 observed rounds).
        step : int — EG step index t ≥ 0 (round r ≥ 2 uses t = r − 2).
        budget : int — B, synthetic scenes of the new round.
        capacity : array-like, shape (K,) — synthetic scenes available per cluster.
        """
        self._validate()
        predictor._check_fitted()
        real = predictor.real_counts_
        k = real.size
        cap = np.asarray(capacity, dtype=np.float64)
        if cap.shape != (k,):
            raise ValueError(f"capacity must have shape ({k},), got {cap.shape}")
        if int(budget) != budget or budget < 0:
            raise ValueError(f"budget must be a non-negative int, got {budget!r}")
        total = float(real.sum() + budget)
        lo, hi = feasible_bounds(real, cap, total)
        rng = np.random.default_rng(self.random_state + int(step))
        eta = half_cosine_step(int(step), int(self.n_steps), float(self.eta0))

        start = predictor.mixtures_[predictor.best_round_].copy()
        if not is_feasible(start, lo, hi):
            start = project_feasible(start, lo, hi)
        w = start
        repaired = False
        for _ in range(int(self.n_inner_steps)):
            g = self.scale_gradient(predictor.gradient(w, total), w)
            v = eg_step(w, g, eta)
            if is_feasible(v, lo, hi):
                w = v
                continue
            repaired = True
            cands = [project_feasible(v, lo, hi)]
            for _ in range(int(self.n_perturb)):
                noisy = v * np.exp(self.perturb_scale * rng.standard_normal(k))
                cands.append(project_feasible(noisy, lo, hi))
            scores = [predictor.predict_score(c, total) for c in cands]
            w = cands[int(np.argmax(scores))]
        delta = predictor.predict_gain(w, start, total)
        gains = normalize_gains(delta)
        alloc = synthetic_allocation(w, real, int(budget), cap)
        log.info("EG step %d: eta=%.4g, predicted S %.4f -> %.4f%s", step, eta,
                 predictor.predict_score(start, total), predictor.predict_score(w, total),
                 " (repaired)" if repaired else "")
        return MixtureProposal(gains=gains, mixture=w, start=start, allocation=alloc,
                               predicted_gain=delta, eta=eta, step=int(step), repaired=repaired)
