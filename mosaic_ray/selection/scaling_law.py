"""Per-domain saturating scaling laws, fitted to pilot runs (MOSAIC Section 3.2.2, Eq. 4).

MOSAIC models the utility gain from adding the top-``n`` ranked clips of domain ``i`` to the
training set as

    ΔU_i(n) = a_i · (1 − exp(−n / τ_i)),        n ≥ 0 clips,

which passes through the origin. ``a_i`` (utility units, e.g. EPDMS in 0..1) is the domain's
asymptotic gain, ``τ_i`` (clips) its saturation scale. The two parameters are fitted by bounded
least squares to the pilot points ``(n, ΔU)`` (paper Appendix 9: two pilot sizes per domain,
e.g. 200 and 400 clips; several seeds per size are allowed and simply enter as repeated points).

Design decisions
----------------
* **Sign of a.** ``a`` is *not* bounded at zero by default (``a_bounds=(-inf, inf)``): a domain
  whose pilots hurt the planner gets ``a < 0`` and therefore a negative marginal gain, which
  ranks it *below* every helpful domain and orders hurtful domains by how much they hurt
  (a zero bound would make all of them tie at 0). The allocator
  (:func:`mosaic_ray.selection.allocator.greedy_allocate`) never prefers a non-positive law over
  a positive one; once only non-positive laws are left it still fills the budget by taking the
  largest (least harmful) marginal gain. Pass ``a_bounds=(0.0, np.inf)`` to clamp instead.
* **Single pilot size.** With one distinct positive size the saturation scale is not
  identifiable (any τ fits one mean exactly). The fit then fixes ``τ`` at the pilot size itself
  (clipped to ``tau_bounds``; override with ``single_size_tau``), i.e. it assumes the pilot sits
  one saturation scale in, and solves ``a`` in closed form. ``status = "single_size"``.
* **τ bounds.** The default is ``(1, 100 · max n)``: below one clip the whole gain arrives with
  the first clip, and pilots that show no curvature (ΔU(2n) ≥ 2 ΔU(n)) push τ to the upper
  bound, which makes the law practically linear over 10× the pilot range rather than letting
  ``a`` diverge. Such fits get ``status = "tau_at_upper_bound"``.
* **All-zero gains** give ``a = 0`` (``status = "zero_gain"``), τ at the largest pilot size.

The pipeline fits with :func:`fit_domain_laws` / :func:`fit_pilot_law` (issue 12 part 4), not
with :func:`fit_scaling_law` above: ΔU against the control pilot (n = 0) of the same seed, the
seeds of one size averaged and weighted by their spread, a within the headroom
(−U_control, 1 − U_control), τ within the measured sizes' range, and a fit status per domain
(:data:`FIT_STATUSES`). **Degenerate-fit policy:** a law whose status is not ``ok`` is never
used as the exponential; ΔU is then the concave interpolation of the measured means through
(0, 0), flat beyond the largest pilot size (:func:`concave_interpolation`), and the summary and
report say so per domain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["ScalingLaw", "fit_scaling_law", "fit_domain_laws", "fit_pilot_law", "pilot_gains",
           "concave_interpolation", "bootstrap_laws", "CONTROL_DOMAIN", "FIT_STATUSES", "POLICY_INTERP"]

#: fit statuses
STATUS_GIVEN = "given"
STATUS_OK = "ok"
STATUS_SINGLE = "single_size"
STATUS_ZERO = "zero_gain"
STATUS_TAU_HI = "tau_at_upper_bound"
STATUS_TAU_LO = "tau_at_lower_bound"
STATUS_A_BOUND = "a_at_bound"
STATUS_TAU_BOUND = "tau_at_bound"
STATUS_ONE_SIZE = "one_size"
STATUS_NON_MONOTONE = "non_monotone"
#: the statuses of :func:`fit_pilot_law` (issue 12 part 4); every one but ``ok`` is degenerate
FIT_STATUSES = (STATUS_OK, STATUS_TAU_BOUND, STATUS_A_BOUND, STATUS_ONE_SIZE, STATUS_NON_MONOTONE)
#: the policy for a degenerate fit: the concave interpolation of the measured means, flat tail
POLICY_INTERP = "concave_interpolation"
#: the pilot table's domain name of the control pilots (n = 0: D_train alone, same recipe)
CONTROL_DOMAIN = "_control"


@dataclass(frozen=True)
class ScalingLaw:
    """A fitted saturating law ΔU(n) = a · (1 − exp(−n/τ)) (MOSAIC Eq. 4).

    Attributes
    ----------
    a : float
        Asymptotic utility gain (same units as the ΔU the law was fitted to, e.g. EPDMS 0..1).
        May be negative (a domain that hurts); see the module docstring.
    tau : float
        Saturation scale in clips, finite and > 0.
    rmse : float
        Root-mean-square residual of the fit over all pilot points (NaN for a given law).
    n_points : int
        Number of pilot points used (seeds counted separately).
    n_sizes : int
        Number of distinct positive pilot sizes.
    status : str
        ``"given"`` (constructed by hand), ``"ok"``, ``"single_size"``, ``"zero_gain"``,
        ``"tau_at_upper_bound"``, ``"tau_at_lower_bound"`` or ``"a_at_bound"``.

    Raises
    ------
    ValueError
        If ``a`` is not finite or ``tau`` is not finite and positive.
    """

    a: float
    tau: float
    rmse: float = float("nan")
    n_points: int = 0
    n_sizes: int = 0
    status: str = STATUS_GIVEN
    #: the degenerate-fit policy's law (:data:`POLICY_INTERP`): ΔU is the piecewise-linear curve
    #: through these (n, ΔU) knots, starting at (0, 0), flat beyond the last; empty = the exponential
    knots_n: tuple = ()
    knots_u: tuple = ()
    policy: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "knots_n", tuple(float(v) for v in self.knots_n))
        object.__setattr__(self, "knots_u", tuple(float(v) for v in self.knots_u))
        if len(self.knots_n) != len(self.knots_u) or (self.knots_n and (
                self.knots_n[0] != 0.0 or self.knots_u[0] != 0.0 or any(np.diff(self.knots_n) <= 0)
                or not all(map(math.isfinite, self.knots_u)))):
            raise ValueError("ScalingLaw: knots must start at (0, 0) with increasing n and finite ΔU")
        a, tau = float(self.a), float(self.tau)
        if not math.isfinite(a):
            raise ValueError(f"ScalingLaw: a must be finite, got {self.a!r}")
        if not (math.isfinite(tau) and tau > 0.0):
            raise ValueError(f"ScalingLaw: tau must be finite and > 0, got {self.tau!r}")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "tau", tau)
        object.__setattr__(self, "rmse", float(self.rmse))
        object.__setattr__(self, "n_points", int(self.n_points))
        object.__setattr__(self, "n_sizes", int(self.n_sizes))

    # ------------------------------------------------------------------ evaluation
    def __call__(self, n: Any) -> Any:
        """ΔU(n) for clip counts ``n`` (scalar or array, ≥ 0, any shape).

        Returns a Python float for a scalar ``n`` and a float64 array of ``n``'s shape otherwise.

        Raises
        ------
        ValueError
            If any ``n`` is negative or not finite.
        """
        arr = _as_counts(n, "n")
        if self.knots_n:
            out = np.interp(arr, self.knots_n, self.knots_u)  # flat beyond the last knot
        else:
            out = self.a * -np.expm1(-arr / self.tau)
        return float(out) if np.ndim(out) == 0 else out

    def marginal(self, b: Any) -> Any:
        """First difference δ(b) = ΔU(b+1) − ΔU(b) = a·e^(−b/τ)·(1 − e^(−1/τ)) (paper Eq. 5).

        ``b`` is the number of clips already taken (scalar or array, ≥ 0). Computed in closed
        form so it stays monotone (decreasing for a > 0) at large ``b``. Returns a float for a
        scalar ``b``, a float64 array otherwise.

        Raises
        ------
        ValueError
            If any ``b`` is negative or not finite.
        """
        if self.knots_n:
            arr = _as_counts(b, "b")
            out = np.interp(arr + 1.0, self.knots_n, self.knots_u) - np.interp(arr, self.knots_n, self.knots_u)
            return float(out) if np.ndim(out) == 0 else out
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            if not (math.isfinite(b) and b >= 0):
                raise ValueError(f"b must be finite and >= 0, got {b!r}")
            return self.a * math.exp(-b / self.tau) * -math.expm1(-1.0 / self.tau)
        arr = _as_counts(b, "b")
        out = self.a * np.exp(-arr / self.tau) * -math.expm1(-1.0 / self.tau)
        return float(out) if out.ndim == 0 else out

    @property
    def beneficial(self) -> bool:
        """True when the law predicts a gain (a > 0; with knots: some knot above 0)."""
        return max(self.knots_u) > 0.0 if self.knots_n else self.a > 0.0

    @property
    def exponential(self) -> bool:
        """True when ΔU is the exponential law itself (no knots)."""
        return not self.knots_n

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields (floats, ints, str)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScalingLaw":
        """Inverse of :meth:`to_dict`; keys other than the dataclass fields are ignored."""
        keys = ("a", "tau", "rmse", "n_points", "n_sizes", "status", "knots_n", "knots_u", "policy")
        return cls(**{k: d[k] for k in keys if k in d})


def _as_counts(n: Any, name: str) -> np.ndarray:
    arr = np.asarray(n, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0 (clip counts), got min {arr.min()}")
    return arr


def _closed_form_a(g: np.ndarray, y: np.ndarray, a_bounds: tuple[float, float]) -> float:
    """Least-squares a for fixed τ (model linear in a); clipping is exact for a 1-D quadratic."""
    gg = float(np.dot(g, g))
    a = float(np.dot(g, y)) / gg if gg > 0 else 0.0
    return float(np.clip(a, a_bounds[0], a_bounds[1]))


def fit_scaling_law(
    n: Any,
    delta_u: Any,
    *,
    tau_bounds: tuple[float, float] | None = None,
    a_bounds: tuple[float, float] = (-np.inf, np.inf),
    single_size_tau: float | None = None,
    n_grid: int = 64,
) -> ScalingLaw:
    """Fit ΔU(n) = a·(1 − e^(−n/τ)) through the origin to pilot points (paper Eq. 4, App. 9).

    Parameters
    ----------
    n : array-like, shape (P,), float64
        Pilot sizes in clips (≥ 0; sizes may repeat, one entry per seed). Points at n = 0 are
        allowed (the model predicts 0 there).
    delta_u : array-like, shape (P,), float64
        Measured utility gains U(after) − U(base) for each pilot point (e.g. EPDMS in 0..1).
    tau_bounds : (lo, hi), optional
        Bounds on τ in clips, 0 < lo < hi < inf. Default ``(1, 100 · max n)``.
    a_bounds : (lo, hi)
        Bounds on a; default unbounded (negative a allowed, see module docstring).
    single_size_tau : float, optional
        τ to use when only one distinct positive pilot size exists (default: that size).
    n_grid : int
        Number of log-spaced τ values scanned (with a closed-form a each) to seed the
        multi-start bounded ``scipy.optimize.least_squares`` refinement.

    Returns
    -------
    ScalingLaw
        With ``rmse``, ``n_points``, ``n_sizes`` and ``status`` filled in.

    Raises
    ------
    ValueError
        On NaN/inf input, mismatched or empty arrays, negative sizes, no size > 0, or invalid
        bounds.
    """
    x = np.asarray(n, dtype=np.float64).ravel()
    y = np.asarray(delta_u, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"n and delta_u must have the same length, got {x.size} and {y.size}")
    if x.size == 0:
        raise ValueError("no pilot points given")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("pilot points contain NaN or inf")
    if np.any(x < 0):
        raise ValueError(f"pilot sizes must be >= 0, got min {x.min()}")
    sizes = np.unique(x[x > 0])
    if sizes.size == 0:
        raise ValueError("need at least one pilot size > 0 to fit a scaling law")

    n_max = float(sizes.max())
    if tau_bounds is None:
        lo, hi = 1.0, max(100.0 * n_max, 10.0)
    else:
        lo, hi = (float(v) for v in tau_bounds)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi):
        raise ValueError(f"tau_bounds must satisfy 0 < lo < hi < inf, got {tau_bounds!r}")
    a_lo, a_hi = (float(v) for v in a_bounds)
    if math.isnan(a_lo) or math.isnan(a_hi) or not a_lo < a_hi:
        raise ValueError(f"a_bounds must satisfy lo < hi, got {a_bounds!r}")

    common = dict(n_points=int(x.size), n_sizes=int(sizes.size))

    def rmse_of(a: float, tau: float) -> float:
        return float(np.sqrt(np.mean((a * -np.expm1(-x / tau) - y) ** 2)))

    if np.all(y == 0.0):
        tau = float(np.clip(n_max, lo, hi))
        a = float(np.clip(0.0, a_lo, a_hi))
        return ScalingLaw(a, tau, rmse_of(a, tau), status=STATUS_ZERO, **common)

    if sizes.size == 1:
        tau = float(sizes[0] if single_size_tau is None else single_size_tau)
        tau = float(np.clip(tau, lo, hi))
        a = _closed_form_a(-np.expm1(-x / tau), y, (a_lo, a_hi))
        return ScalingLaw(a, tau, rmse_of(a, tau), status=STATUS_SINGLE, **common)

    # Profile scan over log τ (a in closed form), then bounded least squares from the best
    # few scan points and from each pilot size; keep the lowest cost.
    log_lo, log_hi = math.log(lo), math.log(hi)
    grid = np.linspace(log_lo, log_hi, max(int(n_grid), 2))
    scan = []
    for lt in grid:
        tau = math.exp(lt)
        a = _closed_form_a(-np.expm1(-x / tau), y, (a_lo, a_hi))
        scan.append((rmse_of(a, tau), a, lt))
    scan.sort()
    starts = [(a, lt) for _, a, lt in scan[:4]]
    for s in sizes:
        lt = float(np.clip(math.log(s), log_lo, log_hi))
        starts.append((_closed_form_a(-np.expm1(-x / s), y, (a_lo, a_hi)), lt))

    def resid(p: np.ndarray) -> np.ndarray:
        return p[0] * -np.expm1(-x / math.exp(p[1])) - y

    def jac(p: np.ndarray) -> np.ndarray:
        tau = math.exp(p[1])
        e = np.exp(-x / tau)
        return np.column_stack([-np.expm1(-x / tau), -p[0] * (x / tau) * e])

    best_rmse, best_a, best_lt = scan[0]
    span_a = max(abs(best_a), float(np.max(np.abs(y))), 1e-12)
    for a0, lt0 in starts:
        # least_squares needs x0 strictly inside finite bounds
        eps_a = 1e-9 * span_a
        if math.isfinite(a_lo):
            a0 = max(a0, a_lo + eps_a)
        if math.isfinite(a_hi):
            a0 = min(a0, a_hi - eps_a)
        lt0 = float(np.clip(lt0, log_lo + 1e-9, log_hi - 1e-9))
        try:
            from scipy.optimize import least_squares  # lazy: the config imports this package
            res = least_squares(resid, x0=[a0, lt0], jac=jac, bounds=([a_lo, log_lo], [a_hi, log_hi]),
                                method="trf", x_scale=[span_a, 1.0], xtol=1e-12, ftol=1e-12,
                                gtol=1e-12, max_nfev=2000)
        except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - defensive
            continue
        r = rmse_of(float(res.x[0]), math.exp(float(res.x[1])))
        if r < best_rmse:
            best_rmse, best_a, best_lt = r, float(res.x[0]), float(res.x[1])

    tau = float(np.clip(math.exp(best_lt), lo, hi))
    a = float(best_a)
    status = STATUS_OK
    if best_lt >= log_hi - 1e-6:
        status = STATUS_TAU_HI
    elif best_lt <= log_lo + 1e-6:
        status = STATUS_TAU_LO
    elif (math.isfinite(a_lo) and a <= a_lo + 1e-12 * max(1.0, abs(a_lo))) or (
        math.isfinite(a_hi) and a >= a_hi - 1e-12 * max(1.0, abs(a_hi))
    ):
        status = STATUS_A_BOUND
    return ScalingLaw(a, tau, rmse_of(a, tau), status=status, **common)


def concave_interpolation(n: Any, mean: Any) -> tuple[np.ndarray, np.ndarray]:
    """The least concave majorant of (0, 0) and the per-size mean gains (the degenerate-fit policy).

    Args:
        n: (k,) distinct pilot sizes > 0 in clips; mean: (k,) mean ΔU at them (EPDMS, 0..1).

    Returns:
        ``(knots_n, knots_u)``: the hull's vertices from (0, 0), n ascending. As a law
        (:class:`ScalingLaw` with these knots) it is piecewise linear, concave (so the greedy
        allocation stays optimal up to the last size), passes through every mean on the hull
        (a dip below it is read as noise and bridged) and is flat beyond the largest size: no
        gain is extrapolated past what was measured.
    """
    x = np.concatenate([[0.0], np.asarray(n, dtype=np.float64)])
    y = np.concatenate([[0.0], np.asarray(mean, dtype=np.float64)])
    o = np.argsort(x)
    x, y = x[o], y[o]
    hull: list[int] = []
    for i in range(len(x)):  # upper hull (monotone chain)
        while len(hull) >= 2:
            j, k = hull[-2], hull[-1]
            if (y[k] - y[j]) * (x[i] - x[j]) <= (y[i] - y[j]) * (x[k] - x[j]):
                hull.pop()
            else:
                break
        hull.append(i)
    return x[hull], y[hull]


def fit_pilot_law(n: Any, delta_u: Any, *, a_bounds: tuple[float, float] = (-1.0, 1.0),
                  min_sd: float = 1e-3, n_grid: int = 48) -> ScalingLaw:
    """Fit ΔU(n) = a (1 − e^(−n/τ)) to pilot gains, bounded and weighted (issue 12 part 4).

    The points are averaged per size (the seeds of one size give its mean and spread); the
    means are fitted by weighted least squares with weight ``k / max(sd, min_sd)²`` (k seeds,
    sd their standard deviation; the pooled sd over sizes where a size has one seed), with

    * τ within the measured sizes' range, [smallest size, largest size] (clips);
    * a within ``a_bounds`` — the headroom: (−U_control, 1 − U_control) in EPDMS.

    Status (:data:`FIT_STATUSES`): ``one_size`` (one distinct size: τ not identifiable),
    ``non_monotone`` (going from (0, 0) through the sizes in order, a mean moves against the
    direction of the largest size's mean by more than 1.96 standard errors of the step, or by
    anything when the spread is unknown), ``a_at_bound``, ``tau_at_bound``, else ``ok``. Policy: a law whose status is not ``ok`` is never used as the
    exponential: it carries the knots of :func:`concave_interpolation` of the means
    (``policy = "concave_interpolation"``) and ΔU is that curve; ``a`` and ``tau`` keep the
    bounded fit's values for the report only.

    Args:
        n: (P,) pilot sizes > 0 in clips, one entry per seed.
        delta_u: (P,) gains against the control pilot of the same seed (EPDMS, 0..1).
        a_bounds: (lo, hi) with lo < hi.
        min_sd: floor of the per-size spread in the weights (EPDMS).

    Raises:
        ValueError: empty, mismatched or non-finite input, a size ≤ 0, bad bounds.
    """
    x = np.asarray(n, dtype=np.float64).ravel()
    y = np.asarray(delta_u, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"n and delta_u must be non-empty and of one length, got {x.size} and {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("pilot points contain NaN or inf")
    if np.any(x <= 0):
        raise ValueError("pilot sizes must be > 0 (the control pilot is the origin)")
    a_lo, a_hi = (float(v) for v in a_bounds)
    if not a_lo < a_hi:
        raise ValueError(f"a_bounds must satisfy lo < hi, got {a_bounds!r}")
    sizes = np.unique(x)
    means = np.array([y[x == v].mean() for v in sizes])
    counts = np.array([(x == v).sum() for v in sizes])
    sds = np.array([y[x == v].std(ddof=1) if c > 1 else np.nan for v, c in zip(sizes, counts)])
    pooled = float(np.sqrt(np.nanmean(sds ** 2))) if np.isfinite(sds).any() else float("nan")
    sd = np.where(np.isfinite(sds), sds, pooled if math.isfinite(pooled) else 1.0)
    w = counts / np.maximum(sd, min_sd) ** 2
    se = sd / np.sqrt(counts)
    common = dict(n_points=int(x.size), n_sizes=int(sizes.size))

    def rmse_of(a: float, tau: float) -> float:
        return float(np.sqrt(np.mean((a * -np.expm1(-x / tau) - y) ** 2)))

    def policy(law_a: float, law_tau: float, status: str) -> ScalingLaw:
        kn, ku = concave_interpolation(sizes, means)
        return ScalingLaw(law_a, law_tau, rmse_of(law_a, law_tau), status=status, knots_n=tuple(kn),
                          knots_u=tuple(ku), policy=POLICY_INTERP, **common)

    if sizes.size == 1:
        tau = float(sizes[0])
        a = float(np.clip(means[0] / -math.expm1(-1.0), a_lo, a_hi))
        return policy(a, tau, STATUS_ONE_SIZE)
    lo, hi = float(sizes[0]), float(sizes[-1])
    sw = np.sqrt(w)

    def a_for(tau: float) -> float:
        g = -np.expm1(-sizes / tau)
        return float(np.clip(np.dot(w * g, means) / np.dot(w * g, g), a_lo, a_hi))

    def cost(a: float, tau: float) -> float:
        return float(np.sum(w * (a * -np.expm1(-sizes / tau) - means) ** 2))

    grid = np.exp(np.linspace(math.log(lo), math.log(hi), n_grid))
    scan = sorted((cost(a_for(t), t), t) for t in grid)
    best_c, best_tau = scan[0]
    best_a = a_for(best_tau)
    span = max(abs(best_a), float(np.abs(means).max()), 1e-9)
    for _, t0 in scan[:3]:
        a0 = float(np.clip(a_for(t0), a_lo + 1e-9 * span, a_hi - 1e-9 * span))
        lt0 = float(np.clip(math.log(t0), math.log(lo) + 1e-9, math.log(hi) - 1e-9))
        try:
            from scipy.optimize import least_squares  # lazy: the config imports this package
            res = least_squares(lambda p: sw * (p[0] * -np.expm1(-sizes / math.exp(p[1])) - means), x0=[a0, lt0],
                                bounds=([a_lo, math.log(lo)], [a_hi, math.log(hi)]), method="trf",
                                x_scale=[span, 1.0], xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=500)
        except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - defensive
            continue
        c = cost(float(res.x[0]), math.exp(float(res.x[1])))
        if c < best_c:
            best_c, best_a, best_tau = c, float(res.x[0]), math.exp(float(res.x[1]))
    tau = float(np.clip(best_tau, lo, hi))
    a = float(best_a)
    # monotone in the direction of the largest size's mean, from the origin (0, 0) on
    sgn = 1.0 if means[-1] >= 0 else -1.0
    mm, ss = np.concatenate([[0.0], means]), np.concatenate([[0.0], se])
    known = np.isfinite(sds).any()
    drops = [sgn * (mm[j + 1] - mm[j]) < -(1.96 * math.hypot(ss[j], ss[j + 1]) if known else 0.0)
             for j in range(sizes.size)]
    eps = 1e-6
    if any(drops):
        status = STATUS_NON_MONOTONE
    elif a <= a_lo + eps * max(1.0, abs(a_lo)) or a >= a_hi - eps * max(1.0, abs(a_hi)):
        status = STATUS_A_BOUND
    elif tau <= lo * (1 + eps) or tau >= hi * (1 - eps):
        status = STATUS_TAU_BOUND
    else:
        return ScalingLaw(a, tau, rmse_of(a, tau), status=STATUS_OK, **common)
    return policy(a, tau, status)


def pilot_gains(points: Iterable[Mapping[str, Any]]) -> tuple[dict[str, list[tuple[float, float, int]]], dict[int, float]]:
    """Per domain its pilot points (n, ΔU against the control pilot of the same seed, seed).

    Args:
        points: pilot table rows with ``domain``, ``n``, ``seed``, ``epdms`` and ``delta_u``;
            rows of :data:`CONTROL_DOMAIN` (n = 0) are the control pilots.

    Returns:
        ``(gains, control)``: {domain: [(n, ΔU, seed)]} and {seed: control EPDMS}. Without any
        control row ΔU is the row's ``delta_u`` (against the base model: tables from before
        the control pilots).

    Raises:
        ValueError: control rows exist but a seed has none.
    """
    rows = list(points)
    control = {int(r["seed"]): float(r["epdms"]) for r in rows if str(r["domain"]) == CONTROL_DOMAIN}
    gains: dict[str, list[tuple[float, float, int]]] = {}
    for r in rows:
        d = str(r["domain"])
        if d == CONTROL_DOMAIN:
            continue
        seed = int(r.get("seed", 0))
        if control:
            if seed not in control:
                raise ValueError(f"pilot {d} n={r['n']} seed {seed} has no control pilot of its seed")
            du = float(r["epdms"]) - control[seed]
        else:
            du = float(r["delta_u"])
        gains.setdefault(d, []).append((float(r["n"]), du, seed))
    return gains, control


def fit_domain_laws(points: Iterable[Mapping[str, Any]], a_bounds: tuple[float, float] | None = None
                    ) -> dict[str, "ScalingLaw"]:
    """One law per domain from pilot points (MOSAIC Algorithm 1, step 3; issue 12 part 4).

    Args:
        points: the pilot table's rows (:func:`pilot_gains`): ΔU is measured against the
            control pilot of the same seed, seeds of one size are averaged and weighted by
            their spread (:func:`fit_pilot_law`).
        a_bounds: bounds on a; default the headroom (−U_control, 1 − U_control) with U_control
            the mean control EPDMS (without control rows: (−1, 1)).

    Returns:
        ``{domain: ScalingLaw}`` in sorted domain order, each with its status and, where
        degenerate, the policy's knots.

    Raises:
        ValueError: see :func:`fit_pilot_law` and :func:`pilot_gains`.
    """
    gains, control = pilot_gains(points)
    if a_bounds is None:
        u = float(np.mean(list(control.values()))) if control else 0.0
        a_bounds = (-u, 1.0 - u) if control else (-1.0, 1.0)
    return {d: fit_pilot_law([p[0] for p in pts], [p[1] for p in pts], a_bounds=a_bounds)
            for d, pts in sorted(gains.items())}


def bootstrap_laws(points: Iterable[Mapping[str, Any]], *, n_boot: int = 200, seed: int = 0
                   ) -> list[tuple[float, dict[str, ScalingLaw]]]:
    """Laws refitted on pilot seeds drawn with replacement (the law bands and the estimate's interval).

    One replicate draws as many seeds as were run, with replacement, and keeps every pilot row
    (control rows included) of each drawn seed, as often as it was drawn; then
    :func:`fit_domain_laws` refits every domain.

    Args:
        points: the pilot table's rows (with ``seed``).
        n_boot: replicates; seed: the RNG seed.

    Returns:
        ``n_boot`` pairs (mean control EPDMS of the replicate, NaN without control rows;
        {domain: law}). Empty when fewer than 2 seeds were run (no spread to resample).
    """
    rows = list(points)
    seeds = sorted({int(r.get("seed", 0)) for r in rows})
    if len(seeds) < 2:
        return []
    by_seed = {sd: [r for r in rows if int(r.get("seed", 0)) == sd] for sd in seeds}
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        draw = rng.choice(seeds, size=len(seeds), replace=True)
        rep = []
        for k, sd in enumerate(draw):  # a seed drawn twice: its rows twice, as a distinct seed id
            rep += [{**r, "seed": k} for r in by_seed[int(sd)]]
        ctrl = [float(r["epdms"]) for r in rep if str(r["domain"]) == CONTROL_DOMAIN]
        out.append((float(np.mean(ctrl)) if ctrl else float("nan"), fit_domain_laws(rep)))
    return out
