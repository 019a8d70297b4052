"""Confidence intervals for the experiment's comparisons (issue 12 part 5; Ray-free).

Every final-training result stores its per-clip EPDMS on the test split (grid results'
``per_clip``), so the intervals here can be recomputed from the stored run at any time.
A *cell* is one method at one budget: an array ``(S, C)`` float64 of EPDMS in [0, 1], one row
per training seed and one column per test clip, the columns of every cell in the same clip
order (:func:`align_cells`).

Resampling scheme (:func:`bootstrap_weights`): one replicate draws the test clips with
replacement (multinomial counts over the C clips, *shared* by every cell of the replicate, so
every comparison is paired over clips) and, per cell, its training seeds with replacement
(cells with the same number of seeds share the draw, i.e. seed ``i`` of a method is paired
with seed ``i`` of Random; with independent seeds this leaves the variance of a difference
unbiased and removes the shared part where seeds share initialisation and batch order). A
replicate's cell mean is ``Σ_s Σ_c w_s w_c x[s, c] / (S C)``.

With few seeds the plain bootstrap under-states the seed component of the variance by the
factor (S − 1)/S, and a variance estimated from 3–5 seeds is itself uncertain. The intervals
of differences and means therefore widen the replicates about the point estimate by
sqrt(S / (S − 1)) (S = the smallest seed count involved) and by :func:`t_widening` (t over z
at the Welch–Satterthwaite degrees of freedom of the seed and clip parts). Measured coverage
at a nominal 95 % on simulated data: see ``tests/test_stats.py`` and BENCHMARKS.md.

BRMR (paper §4.1) is read off *monotone* curves (:func:`isotonic_curve`): the budget-0 point is
the base model's EPDMS on the same clips, each curve is fitted by isotonic regression
(pool-adjacent-violators, :func:`pava`, equal weights per budget) and made strictly
increasing by a slope of :data:`TIE_SLOPE` per clip, so that on a flat stretch Random at B is
credited with B (ties go to the larger budget) and Random's BRMR is exactly 1 at every budget.
A method's BRMR is NaN ("—" in the report) only where its monotone curve never reaches Random's
value within its measured budgets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Interval", "bootstrap_weights", "cell_means", "percentile_interval", "paired_bootstrap_diff",
           "mean_interval", "t_widening", "isotonic_curve", "pava", "first_reach", "brmr_point", "brmr_bootstrap", "align_cells",
           "TIE_SLOPE", "DEFAULT_BOOT", "DEFAULT_LEVEL"]

#: slope (EPDMS per clip) added to isotonic curves to break ties toward the larger budget
TIE_SLOPE = 1e-12
DEFAULT_BOOT = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap confidence interval.

    Attributes:
        estimate: the statistic on the data as measured.
        lo, hi: the interval's ends (``level`` coverage); ``hi`` may be +inf where replicates
            never reach (BRMR), NaN where no replicate gave a number.
        se: the bootstrap standard error (NaN where some replicates are infinite).
        level: nominal coverage, e.g. 0.95.
        n_boot: replicates.
    """

    estimate: float
    lo: float
    hi: float
    se: float = float("nan")
    level: float = DEFAULT_LEVEL
    n_boot: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dict; infinities become None (JSON has none)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @property
    def excludes_zero(self) -> bool:
        """Whether the whole interval lies on one side of 0."""
        return bool(self.lo > 0 or self.hi < 0)


def bootstrap_weights(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """Resampling counts: ``(n_boot, n)`` float64, each row a multinomial draw of n out of n.

    Raises:
        ValueError: n < 1 or n_boot < 1.
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"bootstrap_weights: n={n}, n_boot={n_boot} (both must be >= 1)")
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def cell_means(x: np.ndarray, w_seed: np.ndarray, w_clip: np.ndarray) -> np.ndarray:
    """Replicate means of one cell.

    Args:
        x: (S, C) float64 per-seed, per-clip EPDMS.
        w_seed: (B, S) seed counts; w_clip: (B, C) clip counts (:func:`bootstrap_weights`).

    Returns:
        (B,) float64 weighted means Σ w_s w_c x[s, c] / (S C).
    """
    s, c = x.shape
    return np.sum(w_seed * (w_clip @ x.T), axis=1) / (s * c)


def percentile_interval(estimate: float, reps: np.ndarray, level: float = DEFAULT_LEVEL,
                        n_seeds: int | None = None, scale: float = 1.0,
                        bounds: tuple[float, float] | None = None) -> Interval:
    """Percentile interval of bootstrap replicates, widened for few seeds (module docstring).

    Args:
        estimate: the statistic on the data.
        reps: (B,) replicates; NaN replicates are dropped, +inf kept (then ``hi`` may be inf).
        n_seeds: the smallest seed count involved; > 1 scales the replicates' deviation from
            ``estimate`` by sqrt(S/(S−1)).
        scale: a further factor on the deviations (:func:`t_widening`).
        bounds: the range the statistic cannot leave (a mean EPDMS: (0, 1); a difference of
            two: (−1, 1)); the widened interval is cut to it.

    Raises:
        ValueError: ``level`` not in (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    r = np.asarray(reps, dtype=np.float64)
    r = r[~np.isnan(r)]
    if r.size == 0 or not math.isfinite(estimate):
        return Interval(float(estimate), float("nan"), float("nan"), float("nan"), level, int(np.asarray(reps).size))
    k = float(scale) * (math.sqrt(n_seeds / (n_seeds - 1)) if n_seeds is not None and n_seeds > 1 else 1.0)
    if k != 1.0:
        fin = np.isfinite(r)
        r = r.copy()
        r[fin] = estimate + (r[fin] - estimate) * k
    alpha = (1.0 - level) / 2.0
    big = 1e300  # +inf replicates (never reached) sort last without inf − inf in the interpolation
    lo, hi = (float("inf") if q >= 1e299 else float(q)
              for q in np.quantile(np.minimum(r, big), [alpha, 1.0 - alpha], method="linear"))
    if bounds is not None:  # widening a few clips' spread can reach past what a mean can be
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    se = float(np.std(r, ddof=1)) if np.all(np.isfinite(r)) and r.size > 1 else float("nan")
    return Interval(float(estimate), float(lo), float(hi), se, level, int(np.asarray(reps).size))


def t_widening(a: np.ndarray, b: np.ndarray | None = None, level: float = DEFAULT_LEVEL) -> float:
    """t_df / z: widening of a normal-theory interval for the few seeds behind it.

    The variance of mean(a) − mean(b) has a seed part (per-seed means: paired differences when
    both cells have the same seeds, else Welch's two parts) and a clip part (per-clip
    differences of the seed means); their Welch–Satterthwaite degrees of freedom ``df`` give the
    factor ``t_{df}(q) / z(q)``, q = (1 + level)/2 — about 1 when the clips dominate, up to
    ``t_{S−1}/z`` when the seeds do (S = 3: 2.2). ``b=None``: the mean of ``a`` alone.
    """
    from scipy.stats import norm, t

    parts: list[tuple[float, float]] = []  # (variance contribution, degrees of freedom)
    sa = a.mean(axis=1)
    if b is None:
        if a.shape[0] > 1:
            parts.append((sa.var(ddof=1) / a.shape[0], a.shape[0] - 1))
        clip = a.mean(axis=0)
    else:
        sb = b.mean(axis=1)
        if a.shape[0] == b.shape[0] and a.shape[0] > 1:
            parts.append(((sa - sb).var(ddof=1) / a.shape[0], a.shape[0] - 1))
        else:
            parts += [(x.var(ddof=1) / x.size, x.size - 1) for x in (sa, sb) if x.size > 1]
        clip = a.mean(axis=0) - b.mean(axis=0)
    if clip.size > 1:
        parts.append((clip.var(ddof=1) / clip.size, clip.size - 1))
    num = sum(v for v, _ in parts) ** 2
    den = sum(v * v / d for v, d in parts)
    if num <= 0 or den <= 0:
        return 1.0
    q = 0.5 + level / 2.0
    return float(t.ppf(q, num / den) / norm.ppf(q))


def _check_cells(*cells: np.ndarray) -> list[np.ndarray]:
    out = []
    for x in cells:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"a cell must be (seeds, clips) with both >= 1, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("a cell holds NaN or inf EPDMS")
        out.append(x)
    if len({x.shape[1] for x in out}) > 1:
        raise ValueError(f"cells are scored on different numbers of clips: {[x.shape[1] for x in out]}")
    return out


def paired_bootstrap_diff(a: np.ndarray, b: np.ndarray, *, n_boot: int = DEFAULT_BOOT,
                          level: float = DEFAULT_LEVEL, seed: int = 0) -> Interval:
    """Mean EPDMS of ``a`` minus that of ``b`` with a paired bootstrap interval.

    Args:
        a, b: (S_a, C) and (S_b, C) float64 per-seed, per-clip EPDMS on the same C test clips
            in the same order (e.g. a method and Random at one budget).
        n_boot: replicates; seed: the resampling RNG's seed (same inputs -> same interval).

    Returns:
        :class:`Interval` of mean(a) − mean(b) (EPDMS units, 0..1 scale).

    Raises:
        ValueError: bad shapes, different clip counts, NaN/inf values.
    """
    a, b = _check_cells(a, b)
    rng = np.random.default_rng(seed)
    wc = bootstrap_weights(rng, a.shape[1], n_boot)
    wa = bootstrap_weights(rng, a.shape[0], n_boot)
    wb = wa if b.shape[0] == a.shape[0] else bootstrap_weights(rng, b.shape[0], n_boot)
    reps = cell_means(a, wa, wc) - cell_means(b, wb, wc)
    return percentile_interval(float(a.mean() - b.mean()), reps, level, min(a.shape[0], b.shape[0]),
                               t_widening(a, b, level), bounds=(-1.0, 1.0))


def mean_interval(a: np.ndarray, *, n_boot: int = DEFAULT_BOOT, level: float = DEFAULT_LEVEL,
                  seed: int = 0) -> Interval:
    """Mean EPDMS of one cell (S, C), per-clip EPDMS in [0, 1], with a bootstrap interval over its
    clips and seeds (cut to [0, 1]; a difference's interval to [−1, 1])."""
    (a,) = _check_cells(a)
    rng = np.random.default_rng(seed)
    wc = bootstrap_weights(rng, a.shape[1], n_boot)
    ws = bootstrap_weights(rng, a.shape[0], n_boot)
    return percentile_interval(float(a.mean()), cell_means(a, ws, wc), level, a.shape[0], t_widening(a, None, level),
                               bounds=(0.0, 1.0))


# ---------------------------------------------------------------------- BRMR
def isotonic_curve(budgets: Sequence[float], values: Sequence[float], base: float) -> tuple[np.ndarray, np.ndarray]:
    """A monotone EPDMS-vs-budget curve with the base model at budget 0.

    Args:
        budgets: (k,) measured budgets in clips, > 0.
        values: (k,) mean EPDMS at them.
        base: the base model's mean EPDMS on the same clips (the point at budget 0).

    Returns:
        ``(x, y)``: (k+1,) budgets from 0 ascending and the isotonic (non-decreasing) fit of the
        values plus :data:`TIE_SLOPE` × budget (strictly increasing).

    Raises:
        ValueError: lengths differ, a budget ≤ 0 or repeated, non-finite values.
    """
    x = np.asarray(budgets, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"budgets {x.shape} and values {y.shape} must be 1-D of one length")
    if np.any(x <= 0) or len(np.unique(x)) != len(x):
        raise ValueError(f"budgets must be distinct and > 0, got {x.tolist()}")
    if not (np.all(np.isfinite(y)) and math.isfinite(base)):
        raise ValueError("curve values must be finite")
    o = np.argsort(x)
    xs = np.concatenate([[0.0], x[o]])
    ys = np.concatenate([[float(base)], y[o]])
    return xs, pava(ys) + TIE_SLOPE * xs


def pava(y: Sequence[float]) -> np.ndarray:
    """Isotonic (non-decreasing) least-squares fit with equal weights, pool-adjacent-violators.

    The same fit as ``sklearn.isotonic.isotonic_regression(y)`` (checked in the tests), written
    out because the bootstrap fits tens of thousands of curves of a handful of budgets, where
    sklearn's input validation costs ~20x the fit.

    Args:
        y: (k,) float64 values in budget order.

    Returns:
        (k,) float64 fitted values.
    """
    vals: list[float] = []
    counts: list[int] = []
    for v in map(float, y):
        vals.append(v)
        counts.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            n = counts[-2] + counts[-1]
            vals[-2] = (vals[-2] * counts[-2] + vals[-1] * counts[-1]) / n
            counts[-2] = n
            vals.pop()
            counts.pop()
    return np.repeat(np.array(vals, dtype=np.float64), counts)


def first_reach(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """Smallest budget where the piecewise-linear curve (x, y) reaches ``target``; NaN if never.

    Exact at a knot whose value equals ``target``."""
    for j in range(len(x)):
        if y[j] >= target:
            if j == 0 or y[j] == target:
                return float(x[j])
            return float(x[j - 1] + (target - y[j - 1]) * (x[j] - x[j - 1]) / (y[j] - y[j - 1]))
    return float("nan")


def brmr_point(ref: tuple[np.ndarray, np.ndarray], method: tuple[np.ndarray, np.ndarray]) -> dict[float, float]:
    """BRMR of a method's monotone curve against the reference's, at each reference budget > 0.

    Args:
        ref, method: ``(x, y)`` from :func:`isotonic_curve`.

    Returns:
        {reference budget: B_k / B}; NaN where the method's curve never reaches the reference's
        value within its measured budgets. The reference against itself gives exactly 1.0.
    """
    rx, ry = ref
    mx, my = method
    return {float(b): first_reach(mx, my, float(t)) / float(b) for b, t in zip(rx[1:], ry[1:])}


def brmr_bootstrap(cells: Mapping[str, Mapping[int, np.ndarray]], base: np.ndarray, *, reference: str = "random",
                   n_boot: int = DEFAULT_BOOT, level: float = DEFAULT_LEVEL,
                   seed: int = 0) -> dict[str, dict[int, Interval]]:
    """BRMR of every method against ``reference`` with bootstrap intervals.

    Args:
        cells: method -> budget -> (S, C) per-seed, per-clip EPDMS on the common test clips.
        base: (C,) the base model's per-clip EPDMS on the same clips (budget 0 of every curve).
        reference: the reference method (Random, the paper's).

    Returns:
        method -> reference budget -> :class:`Interval`; the estimate is NaN ("—") where the
        method never reaches Random's value; in a replicate where it never does, that replicate
        counts as +inf (so ``hi`` may be inf). Clips are resampled once per replicate for all
        cells and the base; seeds per cell (:func:`bootstrap_weights`).

    Raises:
        ValueError: no ``reference`` cells, bad shapes, cells on different clips.
    """
    if reference not in cells or not cells[reference]:
        raise ValueError(f"no cells for the reference method {reference!r}; have {sorted(cells)}")
    base = np.asarray(base, dtype=np.float64).ravel()
    flat = {(m, b): x for m, per in cells.items() for b, x in per.items()}
    arrs = dict(zip(flat, _check_cells(*flat.values(), base[None, :])))
    rng = np.random.default_rng(seed)
    C = base.size
    wc = bootstrap_weights(rng, C, n_boot)
    seed_w: dict[int, np.ndarray] = {}
    reps_mean = {}
    for key, x in arrs.items():
        S = x.shape[0]
        if S not in seed_w:
            seed_w[S] = bootstrap_weights(rng, S, n_boot)
        reps_mean[key] = cell_means(x, seed_w[S], wc)
    base_reps = wc @ base / C

    def curve(m: str, means: Mapping[int, float], b0: float):
        bs = sorted(cells[m])
        return isotonic_curve(bs, [means[b] for b in bs], b0)

    point_means = {k: float(x.mean()) for k, x in arrs.items()}
    ref_curve = curve(reference, {b: point_means[(reference, b)] for b in cells[reference]}, float(base.mean()))
    ref_reps = [curve(reference, {b: reps_mean[(reference, b)][r] for b in cells[reference]}, base_reps[r])
                for r in range(n_boot)]
    out: dict[str, dict[int, Interval]] = {}
    for m in cells:
        est = brmr_point(ref_curve, curve(m, {b: point_means[(m, b)] for b in cells[m]}, float(base.mean())))
        reps = np.empty((n_boot, len(est)))
        for r in range(n_boot):
            rc = ref_reps[r]
            mc = rc if m == reference else curve(m, {b: reps_mean[(m, b)][r] for b in cells[m]}, base_reps[r])
            reps[r] = list(brmr_point(rc, mc).values())
        reps[np.isnan(reps)] = np.inf
        n_min = min(arrs[(k, b)].shape[0] for k in (m, reference) for b in cells[k])
        out[m] = {}
        for j, (b, v) in enumerate(est.items()):
            if m == reference:  # exactly 1 in every replicate as well (no spread to widen)
                out[m][int(b)] = Interval(v, 1.0, 1.0, 0.0, level, n_boot)
            else:
                out[m][int(b)] = percentile_interval(v, reps[:, j], level, n_min)
    return out


def align_cells(per_clip: Sequence[Mapping[str, Sequence]]) -> tuple[list[str], list[np.ndarray]]:
    """Per-clip scores of several evaluations in one common clip order.

    Args:
        per_clip: each ``{"clip_id": [...], "epdms": [...]}`` (a stored result's ``per_clip``).

    Returns:
        ``(clip_ids, arrays)``: the clips every evaluation scored, sorted, and per evaluation its
        (C,) float64 EPDMS in that order.

    Raises:
        ValueError: an evaluation repeats a clip id or lists ids and scores of different lengths.
    """
    maps = []
    for pc in per_clip:
        ids, vals = list(map(str, pc["clip_id"])), list(pc["epdms"])
        if len(ids) != len(vals) or len(set(ids)) != len(ids):
            raise ValueError("per-clip scores: ids and scores differ in length or an id repeats")
        maps.append(dict(zip(ids, vals)))
    common = sorted(set.intersection(*(set(m) for m in maps))) if maps else []
    return common, [np.array([m[c] for c in common], dtype=np.float64) for m in maps]
