"""Greedy first-difference allocation of a clip budget over domains (MOSAIC Algorithm 1, §3.2.3).

Given per-domain scaling laws ΔU_i, MOSAIC repeatedly takes the next-ranked clip of the domain
with the largest marginal gain δ_i(b_i) = ΔU_i(b_i + 1) − ΔU_i(b_i) until the budget B is spent.
For a_i ≥ 0 every ΔU_i is concave, the objective Σ_i ΔU_i(n_i) is separable and concave, and
the greedy allocation is optimal for every B; because the greedy never revisits a choice, the
selections for increasing B are prefixes of one order (nested).

Non-positive laws. A domain with a_i ≤ 0 has δ_i ≤ 0 for every b, so it is only drawn from
once every domain with a positive marginal gain is at capacity (or its gain has underflowed to
0). The budget must be filled, so the greedy then keeps taking the largest (least negative)
marginal gain. For a_i < 0 the law is convex and greedy is a heuristic there, not an optimum.
"""

from __future__ import annotations

import heapq
from typing import Any, Iterable, Sequence

import numpy as np

from mosaic_ray.selection.budgets import budget_count
from mosaic_ray.selection.scaling_law import ScalingLaw

__all__ = ["greedy_allocate", "nested_selection", "within_domain_ranks", "allocation_gain",
           "validate_budget"]


def validate_budget(budget: Any, name: str = "budget") -> int:
    """A budget as a non-negative int clip count (:func:`mosaic_ray.selection.budgets.budget_count`).

    Raises
    ------
    ValueError
        (:class:`~mosaic_ray.selection.budgets.BudgetError`) a bool, a non-integer or a
        negative value.
    """
    return budget_count(budget, name)


def _capacities(capacities: Any, m: int) -> np.ndarray:
    caps = np.asarray(capacities)
    if caps.ndim != 1 or caps.shape[0] != m:
        raise ValueError(f"capacities must have shape ({m},) to match the laws, got {caps.shape}")
    if caps.size and not np.issubdtype(caps.dtype, np.integer):
        if not (np.issubdtype(caps.dtype, np.floating) and np.all(np.isfinite(caps))
                and np.all(caps == np.round(caps))):
            raise ValueError("capacities must be integer clip counts")
    caps = caps.astype(np.int64)
    if np.any(caps < 0):
        raise ValueError(f"capacities must be >= 0, got {caps.tolist()}")
    return caps


def greedy_allocate(laws: Sequence[ScalingLaw], capacities: Any, budget: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Allocate ``budget`` clips over M domains by greedy first differences (Algorithm 1, l. 5–14).

    Parameters
    ----------
    laws : sequence of M :class:`ScalingLaw`
        Domain i's fitted law ΔU_i.
    capacities : array-like, shape (M,), int
        Clips available in each domain (ranked pool size). Domains at capacity are skipped.
    budget : int
        Number of clips B to select, 0 ≤ B ≤ Σ capacities.

    Returns
    -------
    counts : np.ndarray, shape (M,), int64
        n_i, clips taken from each domain; sums to B.
    order : np.ndarray, shape (B,), int32
        Domain index chosen at each selection step; ``order[:B']`` is the greedy order for any
        smaller budget B' (nested).

    Notes
    -----
    With every a_i ≥ 0 the marginals are non-increasing and the greedy equals taking the B
    largest δ_i(b) (ties: lower domain index, then lower b), computed without stepping
    (:func:`_greedy_threshold`, vectorised); otherwise a max-heap keyed on δ_i(b_i) gives
    O(B log M). Both give the same counts and order; ties go to the lowest domain index.
    When all remaining marginal gains are ≤ 0 the greedy still fills the budget by taking the
    largest one (see module docstring).

    Raises
    ------
    ValueError
        If ``budget`` is negative or not an integer, capacities are malformed, or
        ``budget > sum(capacities)``.
    """
    laws = list(laws)
    m = len(laws)
    for i, law in enumerate(laws):
        if not isinstance(law, ScalingLaw):
            raise ValueError(f"laws[{i}] is not a ScalingLaw: {law!r}")
    caps = _capacities(capacities, m)
    b_total = validate_budget(budget)
    pool = int(caps.sum())
    if b_total > pool:
        raise ValueError(f"budget {b_total} exceeds the pool: the {m} domains hold only {pool} "
                         f"clips (capacities {caps.tolist()})")
    if b_total == 0:
        return np.zeros(m, dtype=np.int64), np.empty(0, dtype=np.int32)
    if all(law.a >= 0 and law.exponential for law in laws):  # non-increasing marginals: the vectorised equivalent
        return _greedy_threshold(laws, caps, b_total)
    return _greedy_heap(laws, caps, b_total)


def _greedy_heap(laws: Sequence[ScalingLaw], caps: np.ndarray, b_total: int) -> tuple[np.ndarray, np.ndarray]:
    """The greedy with a max-heap, O(B log M) Python steps (any sign of a_i)."""
    m = len(laws)
    counts = np.zeros(m, dtype=np.int64)
    order = np.empty(b_total, dtype=np.int32)
    heap = [(-laws[i].marginal(0), i) for i in range(m) if caps[i] > 0]
    heapq.heapify(heap)
    for step in range(b_total):
        _, i = heapq.heappop(heap)
        order[step] = i
        counts[i] += 1
        c = int(counts[i])
        if c < caps[i]:
            heapq.heappush(heap, (-laws[i].marginal(c), i))
    return counts, order


def _marginals(a: np.ndarray, tau: np.ndarray, c: np.ndarray, dom: np.ndarray, b: np.ndarray) -> np.ndarray:
    """δ for (domain, b) pairs, the same expression as :meth:`ScalingLaw.marginal`."""
    return a[dom] * np.exp(-b / tau[dom]) * c[dom]


def _count_ge(a: np.ndarray, tau: np.ndarray, c: np.ndarray, caps: np.ndarray, lam: float) -> np.ndarray:
    """Per domain, how many of δ_i(0..cap_i-1) are ≥ ``lam`` (δ_i non-increasing in b)."""
    m = len(a)
    if lam <= 0.0:
        return caps.copy()
    head = a * c  # δ_i(0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        est = np.floor(tau * np.log(head / lam)) + 1.0
    est = np.where(np.isposinf(est), caps, np.nan_to_num(est, nan=0.0))  # head/λ overflowed: all b
    k = np.where(head >= lam, np.clip(est, 0, caps), 0).astype(np.int64)
    idx = np.arange(m)
    for _ in range(64):  # fix the closed-form estimate against the computed values
        up = (k < caps) & (_marginals(a, tau, c, idx, np.minimum(k, np.maximum(caps - 1, 0))) >= lam)
        down = (k > 0) & (_marginals(a, tau, c, idx, np.maximum(k - 1, 0)) < lam)
        if not (up.any() or down.any()):
            break
        k = k + up - down
    return k


def _greedy_threshold(laws: Sequence[ScalingLaw], caps: np.ndarray, b_total: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The greedy's result without stepping: for non-increasing marginals (all a_i ≥ 0) the
    greedy takes exactly the B largest δ_i(b), ties to the lower domain index then the lower b.
    The B-th largest value λ* is found by bisection over float64 bit patterns (values ≥ 0 order
    like their bits); counts follow in closed form, and the selection order is one stable sort
    of the B taken marginals. O(M log range + B log B) in numpy: B = 10^7 over M = 10^3 domains
    in about a second on one core (BENCHMARKS.md)."""
    m = len(laws)
    a = np.array([law.a for law in laws], float)
    tau = np.array([law.tau for law in laws], float)
    c = np.array([-np.expm1(-1.0 / law.tau) for law in laws], float)
    caps = caps.astype(np.int64)
    lo, hi = np.float64(0.0).view(np.int64), np.float64(max(float((a * c).max()), 0.0)).view(np.int64)
    # largest λ with count_ge(λ) ≥ B (count_ge(0) = Σ caps ≥ B)
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        if _count_ge(a, tau, c, caps, float(np.int64(mid).view(np.float64))).sum() >= b_total:
            lo = mid
        else:
            hi = mid - 1
    lam = float(np.int64(lo).view(np.float64))
    n_gt = _count_ge(a, tau, c, caps, float(np.nextafter(lam, np.inf))) if lam < np.inf else np.zeros(m, np.int64)
    n_ge = _count_ge(a, tau, c, caps, lam)
    extra = b_total - int(n_gt.sum())
    ties = n_ge - n_gt  # values equal to λ*, taken by domain index then b
    take = np.minimum(ties, np.maximum(extra - np.concatenate([[0], np.cumsum(ties)[:-1]]), 0))
    counts = n_gt + take
    dom = np.repeat(np.arange(m, dtype=np.int32), counts)
    # The taken marginals, domain by domain (contiguous slices of ``dom``): the expression of
    # :func:`_marginals` with scalars instead of 10^7-element gathers, bit-identical to it.
    vals = np.empty(b_total, dtype=np.float64)
    steps = -np.arange(int(counts.max()) if m else 0, dtype=np.int64)
    pos = 0
    for i in np.flatnonzero(counts):
        n = int(counts[i])
        vals[pos:pos + n] = a[i] * np.exp(steps[:n] / tau[i]) * c[i]
        pos += n
    # Descending by value, stable (ties keep (domain, b) order). Marginals are ≥ 0 here, so
    # their float64 bit patterns order like the values: sort the negated int64 view.
    order = dom[np.argsort(-vals.view(np.int64), kind="stable")]
    return counts.astype(np.int64), order.astype(np.int32)


def allocation_gain(laws: Sequence[ScalingLaw], counts: Any) -> float:
    """Estimated utility gain Σ_i ΔU_i(n_i) of an allocation (paper Eq. 3).

    ``counts`` is (M,) clip counts ≥ 0. Returns a float in the laws' utility units.
    Raises ValueError on a length mismatch or negative counts.
    """
    laws = list(laws)
    n = np.asarray(counts, dtype=np.float64)
    if n.shape != (len(laws),):
        raise ValueError(f"counts must have shape ({len(laws)},), got {n.shape}")
    return float(sum(law(float(k)) for law, k in zip(laws, n)))


def within_domain_ranks(order: Any, n_domains: int | None = None) -> np.ndarray:
    """Rank (0-based) within its domain of the clip drawn at each step of a greedy ``order``.

    ``order`` is (B,) int domain indices; returns (B,) int64 where entry s counts how many
    earlier steps drew from ``order[s]``'s domain. Raises ValueError on negative indices or
    indices ≥ ``n_domains`` when given.
    """
    o = np.asarray(order, dtype=np.int64).ravel()
    if o.size and o.min() < 0:
        raise ValueError("order holds negative domain indices")
    if n_domains is not None and o.size and o.max() >= n_domains:
        raise ValueError(f"order holds domain index {o.max()} >= n_domains={n_domains}")
    ranks = np.empty(o.size, dtype=np.int64)
    for d in np.unique(o):
        pos = np.flatnonzero(o == d)
        ranks[pos] = np.arange(pos.size)
    return ranks


def _budget_list(budgets: Iterable[Any], limit: int) -> list[int]:
    out = sorted({validate_budget(b) for b in budgets})
    for b in out:
        if b > limit:
            raise ValueError(f"budget {b} exceeds the greedy order's length {limit}")
    return out


def nested_selection(order: Any, ranked_clip_ids_per_domain: Sequence[Sequence[Any]],
                     budgets: Iterable[int]) -> dict[int, np.ndarray]:
    """Turn one greedy ``order`` into nested clip selections for several budgets (Algorithm 1).

    Parameters
    ----------
    order : array-like, shape (B_max,), int
        Domain index per selection step, from :func:`greedy_allocate` at the largest budget.
    ranked_clip_ids_per_domain : sequence of M sequences
        Domain i's clip ids in rank order (most important, i.e. lowest base EPDMS, first).
    budgets : iterable of int
        Budgets 0 ≤ B ≤ B_max; duplicates are dropped.

    Returns
    -------
    dict[int, np.ndarray]
        Budget → (B,) object array of clip ids in selection order; the selection for a smaller
        budget is a prefix of every larger one.

    Raises
    ------
    ValueError
        If a budget exceeds ``len(order)`` or a domain runs out of ranked clips.
    """
    o = np.asarray(order, dtype=np.int64).ravel()
    ranked = [np.asarray(list(ids), dtype=object) for ids in ranked_clip_ids_per_domain]
    ranks = within_domain_ranks(o, len(ranked))
    bs = _budget_list(budgets, o.size)
    ids = np.empty(o.size, dtype=object)
    for s, (d, r) in enumerate(zip(o, ranks)):
        if r >= ranked[d].size:
            raise ValueError(f"domain {d} has only {ranked[d].size} ranked clips but step {s} "
                             f"asks for rank {r}")
        ids[s] = ranked[d][r]
    return {b: ids[:b].copy() for b in bs}
