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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import numpy as np
from scipy.optimize import least_squares

__all__ = ["ScalingLaw", "fit_scaling_law", "fit_domain_laws"]

#: fit statuses
STATUS_GIVEN = "given"
STATUS_OK = "ok"
STATUS_SINGLE = "single_size"
STATUS_ZERO = "zero_gain"
STATUS_TAU_HI = "tau_at_upper_bound"
STATUS_TAU_LO = "tau_at_lower_bound"
STATUS_A_BOUND = "a_at_bound"


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

    def __post_init__(self) -> None:
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
        out = self.a * -np.expm1(-arr / self.tau)
        return float(out) if out.ndim == 0 else out

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
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            if not (math.isfinite(b) and b >= 0):
                raise ValueError(f"b must be finite and >= 0, got {b!r}")
            return self.a * math.exp(-b / self.tau) * -math.expm1(-1.0 / self.tau)
        arr = _as_counts(b, "b")
        out = self.a * np.exp(-arr / self.tau) * -math.expm1(-1.0 / self.tau)
        return float(out) if out.ndim == 0 else out

    @property
    def beneficial(self) -> bool:
        """True when the law predicts a gain (a > 0)."""
        return self.a > 0.0

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields (floats, ints, str)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScalingLaw":
        """Inverse of :meth:`to_dict`; keys other than the dataclass fields are ignored."""
        keys = ("a", "tau", "rmse", "n_points", "n_sizes", "status")
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


def fit_domain_laws(points: Iterable[Mapping[str, Any]]) -> dict[str, "ScalingLaw"]:
    """One law per domain from pilot points (MOSAIC Algorithm 1, step 3).

    Args:
        points: rows with ``domain`` (str), ``n`` (clips) and ``delta_u`` (EPDMS gain, 0..1
            scale), e.g. the pilot step's table as ``to_pylist()``; repeated seeds are repeated
            points.

    Returns:
        ``{domain: ScalingLaw}`` in sorted domain order.

    Raises:
        ValueError: see :func:`fit_scaling_law` (e.g. non-finite gains).
    """
    by_dom: dict[str, list[tuple[float, float]]] = {}
    for r in points:
        by_dom.setdefault(str(r["domain"]), []).append((float(r["n"]), float(r["delta_u"])))
    return {d: fit_scaling_law(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
            for d, pts in sorted(by_dom.items())}
