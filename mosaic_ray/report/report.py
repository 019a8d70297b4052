"""Render a run's summary into ``report.md`` plus PNG figures (paper §4, Tables 1, 2, 5).

The summary's schema is :class:`mosaic_ray.report.summary.Summary` (versioned; built by
:func:`mosaic_ray.report.summary.build_summary`); :func:`render_report` and
:func:`write_report` take that type or a mapping that validates as it. Every section is
optional: whatever is present is rendered, whatever is missing is skipped.

All EPDMS values in the summary are on the 0..1 scale; the report prints them ×100 (the
paper's convention) and says so in each table header.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mosaic_ray.report.summary import Summary
from mosaic_ray.scoring.epdms import TERMS
from mosaic_ray.report.plots import (budget_items, ordered_domains, plot_composition,
                                     plot_epdms_vs_budget, plot_epdms_vs_compute, plot_scaling_curves,
                                     plot_selection_order)

__all__ = ["TERMS", "brmr", "sanity_checks", "render_report", "write_report", "REPORT_NAME", "PLOT_FILES"]

REPORT_NAME = "report.md"
#: PNG file names written beside report.md
PLOT_FILES = {
    "scaling": "scaling_curves.png",
    "order": "selection_order.png",
    "composition": "composition.png",
    "compute": "epdms_vs_compute.png",
    "epdms": "epdms_vs_budget.png",
}


# ---------------------------------------------------------------------- numbers
def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _x100(v: Any, nd: int = 2) -> str:
    x = _f(v)
    return "—" if not math.isfinite(x) else f"{100.0 * x:.{nd}f}"


def _signed_x100(v: Any, nd: int = 2) -> str:
    x = _f(v)
    return "—" if not math.isfinite(x) else f"{100.0 * x:+.{nd}f}"


def _num(v: Any, fmt: str = "{:.3g}") -> str:
    x = _f(v)
    return "—" if not math.isfinite(x) else fmt.format(x)


def _int(v: Any) -> str:
    x = _f(v)
    return "—" if not math.isfinite(x) else f"{int(round(x)):,}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


# ---------------------------------------------------------------------- BRMR
def _curve(results: Mapping[str, Any], method: str) -> list[tuple[float, float]]:
    pts = []
    for b, e in budget_items(results.get(method)):
        m = _f((e or {}).get("epdms_mean"))
        if math.isfinite(m):
            pts.append((float(b), m))
    return pts


def _first_reach(curve: list[tuple[float, float]], target: float) -> float:
    """Smallest budget where the piecewise-linear curve first reaches ``target`` (NaN if never)."""
    for j, (b, m) in enumerate(curve):
        if m >= target:
            if j == 0:
                return b
            b0, m0 = curve[j - 1]
            return b0 + (target - m0) * (b - b0) / (m - m0)
    return float("nan")


def brmr(results: Mapping[str, Any], method: str, reference: str = "random", *,
         base_epdms: float | None = None) -> dict[int, float]:
    """Budget Ratio to Match Random (paper §4.1): B_k / B for each reference budget B.

    B_k is the budget at which ``method``'s mean-EPDMS-vs-budget curve first reaches the
    reference's mean EPDMS at B, by linear interpolation between the method's measured budgets.
    Lower is better; the reference against itself gives 1.0 (for a monotone curve).

    Parameters
    ----------
    results : mapping
        ``summary["results"]``: method → {str(B): {"epdms_mean": float (0..1), ...}}.
    method, reference : str
        Method to score and the reference method (Random in the paper).
    base_epdms : float, optional
        Base model EPDMS (0..1). When given, the point (0, base) starts the method's curve, so
        B_k can fall below the smallest measured budget (BRMR 0 if the base already matches).

    Returns
    -------
    dict[int, float]
        Reference budget → BRMR, budgets ascending. Edge cases:

        * NaN when the method's curve never reaches the target within its measured budgets
          (no extrapolation beyond the largest budget), or when the method has no finite means.
        * Without ``base_epdms``, if the method already meets the target at its smallest
          measured budget b_1, the value is b_1 / B, an upper bound on the true ratio.

    Raises
    ------
    ValueError
        If ``method`` or ``reference`` has no results.
    """
    for name in (method, reference):
        if not budget_items(results.get(name)):
            raise ValueError(f"no results for method {name!r}; have {sorted(results)}")
    curve = _curve(results, method)
    base = _f(base_epdms)
    if math.isfinite(base) and not any(b == 0 for b, _ in curve):
        curve = [(0.0, base)] + curve
    out: dict[int, float] = {}
    for b, e in budget_items(results[reference]):
        target = _f((e or {}).get("epdms_mean"))
        if b <= 0 or not math.isfinite(target) or not curve:
            out[b] = float("nan")
            continue
        out[b] = _first_reach(curve, target) / b
    return out


# ---------------------------------------------------------------------- sections
def _section_run(s: Mapping[str, Any]) -> list[str]:
    run = s.get("run") or {}
    title = f"# mosaic_ray report — {run.get('name', 'run')}"
    lines = [title, ""]
    meta = [(k, run.get(k)) for k in ("config_path", "started", "finished") if run.get(k)]
    wt = run.get("wall_time_s") or {}
    if wt or run.get("total_wall_time_s"):
        total = _f(run.get("total_wall_time_s", float("nan")))
        if not math.isfinite(total):
            total = sum(_f(v) for v in wt.values() if math.isfinite(_f(v)))
        meta.append(("total wall time", f"{total:,.1f} s ({total / 3600.0:.2f} h)"))
    for k, v in meta:
        lines.append(f"- **{k}**: `{v}`" if k == "config_path" else f"- **{k}**: {v}")
    lines.append("")
    lines.append("EPDMS and its terms are reported ×100 throughout (the paper's convention); "
                 "the summary stores them on the 0..1 scale.")
    return lines + [""]


def _section_data(s: Mapping[str, Any]) -> list[str]:
    data = s.get("data") or {}
    if not data:
        return []
    lines = ["## Data and splits", ""]
    clips, quar, cand = data.get("clips"), data.get("quarantined"), data.get("candidates")
    frames = data.get("frames")
    frames = clips if frames is None else frames  # runs from before frames: one frame per clip
    derived = None
    if frames is not None and quar is not None:
        derived = int(frames) + int(quar)
    if cand is None and derived is not None:
        cand = derived
    rows = []
    if cand is not None:
        rows.append(["candidate frames (= frames + quarantined)", _int(cand)])
    if frames is not None:
        rows.append(["frames kept", _int(frames)])
    if clips is not None:
        rows.append(["clips kept (the selection unit)", _int(clips)])
    if quar is not None:
        rows.append(["quarantined", _int(quar)])
    if rows:
        lines += _table(["count", "n"], rows)
    if cand is not None and derived is not None and int(cand) != derived:
        lines += [f"**Warning:** candidates ({int(cand):,}) ≠ frames + quarantined ({derived:,}).", ""]
    reasons = data.get("quarantine_reasons") or {}
    if reasons:
        lines += ["Quarantine reasons:", ""]
        lines += _table(["reason", "frames"], [[str(k), _int(v)] for k, v in
                                              sorted(reasons.items(), key=lambda kv: -_f(kv[1]))])
    splits = data.get("splits") or {}
    segs = data.get("segments") or {}
    if splits or segs:
        names = list(splits) + [k for k in segs if k not in splits]
        srows = []
        for k in names:
            sl = [str(x) for x in (segs.get(k) or [])]
            shown = ", ".join(sl[:6]) + (f", … (+{len(sl) - 6})" if len(sl) > 6 else "")
            fps = data.get("frames_per_split") or splits
            srows.append([k, _int(splits.get(k)), _int(fps.get(k)), str(len(sl)) if k in segs else "—", shown or "—"])
        lines += ["Splits:", ""]
        lines += _table(["split", "clips", "frames", "segments", "segment names"], srows)
    per_site = data.get("clips_per_site") or {}
    if per_site and data.get("site_mix"):
        sites = sorted(set(data["site_mix"]) | {x for v in per_site.values() for x in (v or {})})
        dev = data.get("mix_deviation") or {}
        rows = [["declared mix"] + [f"{100 * _f(data['site_mix'].get(x, 0)):.1f}%" for x in sites] + ["", ""]]
        for sp, c in per_site.items():
            n = sum((c or {}).values())
            rows.append([sp] + [f"{100 * (c or {}).get(x, 0) / n:.1f}%" if n else "—" for x in sites]
                        + [_int(n), f"{100 * _f(dev.get(sp)):.1f}" if sp in dev else "—"])
        fill = f", filled by {data['split_fill']}" if data.get("split_fill") else ""
        lines += [f"Site mix per split (split unit: {data.get('split_unit') or 'segment'}{fill}; no unit is in two "
                  "splits; train, calibration and test are stratified to the declared mix; pilots are scored on "
                  "calibration, the final tables on test only):", ""]
        lines += _table(["split"] + sites + ["clips", "max deviation (points)"], rows)
    pbd = data.get("pool_by_domain") or {}
    if pbd:
        total = sum(_f(v) for v in pbd.values())
        lines += ["Pool by domain:", ""]
        lines += _table(["domain", "clips", "share"],
                        [[str(d), _int(v), f"{100 * _f(v) / total:.1f}%" if total else "—"]
                         for d, v in sorted(pbd.items())])
    return lines


def _section_base(s: Mapping[str, Any]) -> list[str]:
    rows = []
    for key, label in (("base", "base model"), ("human", "logged human")):
        sec = s.get(key) or {}
        if sec:
            terms = sec.get("terms") or {}
            rows.append([label, _x100(sec.get("epdms"))] + [_x100(terms.get(t)) for t in TERMS])
    if not rows:
        return []
    lines = ["## Base model (test)", ""]
    lines += _table(["", "EPDMS ×100"] + [f"{t} ×100" for t in TERMS], rows)
    by = s.get("base_by_site") or {}
    if len(by) == 2:
        sites = ["all"] + sorted(k for k in set().union(*(set(v) for v in by.values())) if k != "all")

        def cell(sp: str, x: str) -> str:
            v = by[sp].get(x)
            return f"{_x100(v.get('epdms'))} ({_int(v.get('n_clips'))})" if v else "—"

        lines += ["The base model on calibration (where pilots and laws are measured) and on test (the tables), "
                  "EPDMS ×100 (clips):", ""]
        lines += _table(["split"] + sites, [[sp] + [cell(sp, x) for x in sites] for sp in sorted(by)])
        cal, test = (by.get("calibration") or {}).get("all"), (by.get("test") or {}).get("all")
        if cal and test:
            gap = _f(cal["epdms"]) - _f(test["epdms"])
            lines += [f"Calibration − test: {_signed_x100(gap)} points. A large gap means the pilots see less "
                      "(or more) headroom than test: their gains, and the laws' sum, do not carry over one to one.", ""]
    return lines


def _pilot_text(points: Any) -> str:
    groups: dict[float, list[float]] = {}
    for p in points or []:
        if len(p) >= 2:
            groups.setdefault(_f(p[0]), []).append(_f(p[1]))
    if not groups:
        return "—"
    parts = []
    for n in sorted(groups):
        vals = ", ".join(_signed_x100(v) for v in groups[n])
        parts.append(f"n={n:g}: {vals}")
    return "; ".join(parts)


def _section_domains(s: Mapping[str, Any], plot: str | None) -> list[str]:
    doms = s.get("domains") or {}
    if not doms:
        return []
    lines = ["## Per-domain scaling laws", "",
             "ΔU_i(n) = a_i · (1 − exp(−n/τ_i)), fitted through the origin to the pilot runs "
             "(MOSAIC Eq. 4). a_i and the pilot gains are ΔEPDMS ×100; τ_i is in clips.", ""]
    ctrl = s.get("control") or {}
    if ctrl:
        per = ", ".join(f"seed {k}: {_x100(v)}" for k, v in (ctrl.get("epdms_per_seed") or {}).items())
        lines += [f"Control pilots (n = 0: the pilot recipe on D_train alone): EPDMS ×100 {_x100(ctrl.get('epdms_mean'))} "
                  f"({per}); {_signed_x100(ctrl.get('gain_over_base'))} over the base model. Pilot gains below are "
                  "measured against the control of the same seed, the seeds of a size averaged and weighted by "
                  "their spread; a is bounded by the headroom (−U_control, 1 − U_control), τ by the measured "
                  "sizes' range.", ""]
    rows = []
    degenerate = []
    for d in sorted(doms):
        info = doms[d] or {}
        st = info.get("status") or "—"
        if info.get("policy"):
            degenerate.append(f"{d} ({st})")
        rows.append([str(d), _int(info.get("size")), _signed_x100(info.get("a"), 3),
                     _num(info.get("tau"), "{:.1f}"), _x100(info.get("rmse"), 3), st,
                     "interpolation, flat tail" if info.get("policy") else "law",
                     _pilot_text(info.get("pilot_points"))])
    lines += _table(["domain", "pool clips", "a_i (×100)", "τ_i (clips)", "fit RMSE (×100)", "fit status",
                     "used", "pilot ΔEPDMS ×100 per seed"], rows)
    seeds = {int(_f(p[2])) for info in doms.values() for p in ((info or {}).get("pilot_points") or [])
             if len(p) >= 3 and math.isfinite(_f(p[2]))}
    if seeds and len(seeds) < 3:
        lines += [f"**Warning:** {len(seeds)} pilot seed(s); with fewer than 3 the spread of a pilot point is not "
                  "measured, the fit cannot weight the points by it and the law bands are missing or meaningless.", ""]
    if degenerate:
        lines += [f"**Degenerate fits:** {', '.join(degenerate)}. Policy: such a law is not used as the "
                  "exponential; the selection uses the concave interpolation of the measured mean gains through "
                  "(0, 0), flat beyond the largest pilot size (no gain extrapolated past what was measured).", ""]
    if plot:
        lines += [f"![Per-domain scaling curves]({plot})", ""]
    return lines


def _section_selection(s: Mapping[str, Any], plots: Mapping[str, str | None]) -> list[str]:
    sel = s.get("selection") or {}
    order = s.get("selection_order") or {}
    if not sel and not order:
        return []
    lines = ["## Selection", ""]
    domains = ordered_domains(s)
    for method, per_budget in sel.items():
        items = budget_items(per_budget)
        if not items:
            continue
        present = [d for d in domains if any(((e or {}).get("composition") or {}).get(d)
                                             for _, e in items)]
        rows = []
        for b, e in items:
            comp = (e or {}).get("composition") or {}
            rows.append([str(b)] + [_int(comp.get(d, 0)) for d in present]
                        + [_int(sum(_f(v) for v in comp.values()))])
        lines += [f"Composition of **{method}** selections (clips per domain):", ""]
        lines += _table(["budget"] + present + ["total"], rows)
    if plots.get("composition"):
        lines += [f"![Domain composition per budget]({plots['composition']})", ""]
    for method, seq in order.items():
        if not seq:
            continue
        seq = [str(x) for x in seq]
        rows = []
        for d in sorted(set(seq)):
            first = seq.index(d)
            rows.append([d, str(first), _int(seq.count(d))])
        lines += [f"**{method}** selection order over {len(seq):,} steps (largest budget):", ""]
        lines += _table(["domain", "first step drawn", "clips taken"], rows)
    if plots.get("order"):
        lines += [f"![Selection order]({plots['order']})", ""]
    return lines


def _ci_x100(iv: Mapping[str, Any] | None, signed: bool = False) -> str:
    """``est [lo, hi]`` ×100 of an interval statistic ("—" when absent)."""
    if not iv:
        return "—"
    f = _signed_x100 if signed else _x100
    return f"{f(iv.get('estimate'))} [{f(iv.get('lo'))}, {f(iv.get('hi'))}]"


def _brmr_ci(iv: Mapping[str, Any] | None) -> str:
    """BRMR with its interval; "—" where the method never reaches Random, ∞ for an open end."""
    if not iv:
        return "—"
    est, lo, hi = _f(iv.get("estimate")), _f(iv.get("lo")), iv.get("hi")
    hi_s = "∞" if hi is None else _num(hi, "{:.2f}")
    lo_s = "∞" if iv.get("lo") is None and iv.get("hi") is None else _num(lo, "{:.2f}")
    return f"{_num(est, '{:.2f}')} [{lo_s}, {hi_s}]"


def _mean_std(e: Mapping[str, Any]) -> str:
    m, sd = _f(e.get("epdms_mean")), _f(e.get("epdms_std"))
    if not math.isfinite(m):
        return "—"
    return f"{100 * m:.2f} ± {100 * sd:.2f}" if math.isfinite(sd) else f"{100 * m:.2f}"


def _n_seeds(e: Mapping[str, Any]) -> int | None:
    if e.get("n_seeds") is not None:
        return int(e["n_seeds"])
    per = e.get("epdms_per_seed")
    return len(per) if per else None


def _section_results(s: Mapping[str, Any], plot: str | None) -> list[str]:
    res = {m: v for m, v in (s.get("results") or {}).items() if budget_items(v)}
    if not res:
        return []
    base = (s.get("base") or {}).get("epdms")
    brmrs: dict[str, dict[int, float]] = {}
    boot = s.get("brmr") or {}
    if boot:  # isotonic BRMR with bootstrap intervals (summary version 2)
        brmrs = {m: {int(b): _f((iv or {}).get("estimate")) for b, iv in per.items()} for m, per in boot.items()}
    elif "random" in res:
        for m in res:
            if m != "full":  # the full-pool reference has no budget to compare
                brmrs[m] = brmr(res, m, "random", base_epdms=base)
    st = s.get("statistics") or {}
    split = st.get("split") or "test"
    lines = [f"## Results ({split})", ""]
    if boot:
        lines += [f"EPDMS ×100, mean ± std over seeds, and the mean with its {100 * _f(st.get('level')):.0f} % "
                  f"bootstrap interval over the {_int(st.get('n_clips'))} {split} clips and the seeds. "
                  "BRMR = budget the method needs to match Random's EPDMS at this budget ÷ this budget, on "
                  "isotonic (monotone) fits of both curves with the base model at budget 0 (Random exactly 1; "
                  "lower is better; — = the method's curve never reaches Random's value within its measured "
                  "budgets; ∞ = some bootstrap replicates never reach it), with its bootstrap interval.", ""]
    else:
        lines += ["EPDMS ×100, mean ± std over seeds. BRMR = budget the method needs to match "
                  "Random's EPDMS at this budget ÷ this budget (linear interpolation, base model at "
                  "budget 0; lower is better; — = not reached within the measured budgets).", ""]
    rows = []
    for m, v in res.items():
        for b, e in budget_items(v):
            e = e or {}
            ns = _n_seeds(e)
            br = brmrs.get(m, {}).get(b)
            row = [m, str(b), _mean_std(e), "—" if ns is None else str(ns)]
            if boot:
                row += [_ci_x100(e.get("epdms_ci")), _brmr_ci((boot.get(m) or {}).get(str(b)))]
            else:
                row += [_num(br, "{:.2f}") if br is not None else "—"]
            rows.append(row)
    header = ["method", "budget", "EPDMS ×100 (mean ± std)", "seeds"]
    header += ["mean ×100 [95 % CI]", "BRMR [95 % CI]"] if boot else ["BRMR"]
    lines += _table(header, rows)
    budgets = sorted({b for m, v in res.items() if m != "full" for b, _ in budget_items(v)})
    if len(res) > 2 and budgets:
        pe, pb = [], []
        for m, v in res.items():
            if m == "full":
                continue
            by_b = dict(budget_items(v))
            pe.append([m] + [_mean_std(by_b[b] or {}) if b in by_b else "—" for b in budgets])
            if m in brmrs:
                pb.append([m] + [_num(brmrs[m].get(b), "{:.2f}") if brmrs[m].get(b) is not None else "—"
                                 for b in budgets])
        lines += ["", "EPDMS ×100 by method (rows) and budget (columns):", ""]
        lines += _table(["method"] + [str(b) for b in budgets], pe)
        if pb:
            lines += ["", "BRMR by method and budget (vs Random; lower is better):", ""]
            lines += _table(["method"] + [str(b) for b in budgets], pb)
    if plot:
        lines += [f"![EPDMS vs budget]({plot})", ""]
    # nine-term breakdown (paper Table 2)
    trows = []
    bsec = s.get("base") or {}
    if bsec.get("terms"):
        trows.append(["base", "0", _x100(bsec.get("epdms"))]
                     + [_x100(bsec["terms"].get(t)) for t in TERMS])
    for m, v in res.items():
        for b, e in budget_items(v):
            terms = (e or {}).get("terms") or {}
            if terms:
                trows.append([m, str(b), _x100((e or {}).get("epdms_mean"))]
                             + [_x100(terms.get(t)) for t in TERMS])
    if trows:
        lines += ["Sub-metric breakdown (mean over seeds, each ×100):", ""]
        lines += _table(["method", "budget", "EPDMS ×100"] + [f"{t} ×100" for t in TERMS], trows)
    return lines


def _section_comparisons(s: Mapping[str, Any]) -> list[str]:
    """Every method − Random with its paired bootstrap interval (summary version 2)."""
    comp = s.get("comparisons") or {}
    if not comp:
        return []
    st = s.get("statistics") or {}
    budgets = sorted({int(b) for per in comp.values() for b in per})
    rows, wins = [], {}
    for m, per in comp.items():
        rows.append([m] + [_ci_x100(per.get(str(b)), signed=True) for b in budgets])
        ivs = [per[str(b)] for b in budgets if str(b) in per]
        wins[m] = (sum(1 for iv in ivs if _f(iv.get("lo")) > 0), sum(1 for iv in ivs if _f(iv.get("hi")) < 0), len(ivs))
    lines = [f"## Each method − Random ({st.get('split') or 'test'})", "",
             f"Difference of mean EPDMS ×100 with its {100 * _f(st.get('level')):.0f} % paired bootstrap interval "
             f"({_int(st.get('n_boot'))} replicates over the {_int(st.get('n_clips'))} common clips and the training "
             "seeds). Columns are budgets.", ""]
    lines += _table(["method"] + [str(b) for b in budgets], rows)
    lines += [f"- **{m}**: interval above 0 at {w} of {n} budgets, below 0 at {l_}." for m, (w, l_, n) in wins.items()]
    shuffles = [m for m in (s.get("results") or {}) if m.startswith("random_shuffle")]
    if shuffles:  # Random's own spread: the paper's shuffle (seed 42) and the further ones
        res = s["results"]
        rows = []
        for b in budgets:
            ms = [_f((res.get(m) or {}).get(str(b), {}).get("epdms_mean")) for m in ["random"] + shuffles]
            ms = [m for m in ms if math.isfinite(m)]
            if len(ms) > 1:
                rows.append([str(b), str(len(ms)), f"{100 * min(ms):.2f}", f"{100 * max(ms):.2f}",
                             f"{100 * float(np.std(ms, ddof=1)):.2f}"])
        if rows:
            lines += ["", "Random's own spread over shuffles (the paper's seed-42 shuffle and "
                      f"{len(shuffles)} more; each shuffle's mean over its training seeds, ×100):", ""]
            lines += _table(["budget", "shuffles", "min", "max", "std"], rows)
    notes = st.get("notes") or []
    return lines + [""] + [f"> {n}" for n in notes] + ([""] if notes else [])


def sanity_checks(s: Mapping[str, Any]) -> list[tuple[str, bool | None, str]]:
    """The report's sanity line (issue 12 part 3), from the test results' intervals.

    1. Random's curve is non-decreasing within its confidence band: no budget's 95 % interval
       lies wholly below a smaller budget's (i.e. a dip larger than both intervals).
    2. The full pool is not worse than the best subset beyond its band: the full pool's upper
       interval end is not below the best subset's lower end.

    Returns:
        ``[(check, passed, detail)]``; ``passed`` None where the numbers are missing.
    """
    res = s.get("results") or {}
    out: list[tuple[str, bool | None, str]] = []
    rnd = [(b, (e or {}).get("epdms_ci")) for b, e in budget_items(res.get("random"))]
    rnd = [(b, iv) for b, iv in rnd if iv]
    if len(rnd) >= 2:
        bad = [(b1, b2) for i, (b1, iv1) in enumerate(rnd) for b2, iv2 in rnd[i + 1:]
               if _f(iv2.get("hi")) < _f(iv1.get("lo"))]
        out.append(("Random's curve on test is non-decreasing within its confidence band", not bad,
                    "; ".join(f"budget {b2} is below budget {b1} beyond both intervals" for b1, b2 in bad)))
    else:
        out.append(("Random's curve on test is non-decreasing within its confidence band", None,
                    "needs Random at two budgets with intervals"))
    full = [(b, (e or {}).get("epdms_ci")) for b, e in budget_items(res.get("full"))]
    subsets = [(m, b, (e or {}).get("epdms_ci")) for m, per in res.items() if m != "full"
               for b, e in budget_items(per) if (e or {}).get("epdms_ci")]
    if full and full[0][1] and subsets:
        m, b, best = max(subsets, key=lambda t: _f(t[2].get("estimate")))
        ok = _f(full[0][1].get("hi")) >= _f(best.get("lo"))
        out.append(("the full pool is not worse than the best subset beyond its band", ok,
                    f"full pool {_ci_x100(full[0][1])} vs best subset {m} at {b} clips {_ci_x100(best)}"))
    else:
        out.append(("the full pool is not worse than the best subset beyond its band", None,
                    "needs the full-pool line (train.full_pool) and intervals"))
    return out


def _section_sanity(s: Mapping[str, Any]) -> list[str]:
    if not (s.get("results") or {}) or not s.get("statistics"):
        return []
    lines = ["## Sanity line", ""]
    for check, ok, detail in sanity_checks(s):
        mark = "not checked" if ok is None else ("holds" if ok else "**FAILS**")
        lines.append(f"- {check}: {mark}" + (f" ({detail})" if detail else ""))
    if any(ok is False for _, ok, _ in sanity_checks(s)):
        lines += ["", "A failed check means the training recipe lets budget and amount of training (or "
                  "composition) confound the comparison at these budgets; read the tables above with that in mind."]
    return lines + [""]


def _section_sites(s: Mapping[str, Any]) -> list[str]:
    """Per site of the test split: each method's mean and its difference to Random, with intervals."""
    res, cmp_ = s.get("results_by_site") or {}, s.get("comparisons_by_site") or {}
    if not res:
        return []
    lines = ["## Per site (test)", "",
             "Mean EPDMS ×100 [95 % CI] on each site's test clips, and each method − Random on them "
             "(paired bootstrap over that site's clips and the seeds).", ""]
    for site in sorted(res):
        rows = []
        for m, per in res[site].items():
            for b, iv in budget_items(per):
                rows.append([m, str(b), _ci_x100(iv), _ci_x100(((cmp_.get(site) or {}).get(m) or {}).get(str(b)), True)])
        lines += [f"**{site}**", ""] + _table(["method", "budget", "EPDMS ×100 [95 %]", "− Random ×100 [95 %]"], rows)
    return lines


def _section_diff(s: Mapping[str, Any]) -> list[str]:
    if s.get("comparisons"):
        return _section_comparisons(s) + _section_sites(s)
    res = s.get("results") or {}
    mo, ra = dict(budget_items(res.get("mosaic"))), dict(budget_items(res.get("random")))
    common = sorted(set(mo) & set(ra))
    if not common:
        return []
    rows = []
    for b in common:
        em, er = mo[b] or {}, ra[b] or {}
        d = _f(em.get("epdms_mean")) - _f(er.get("epdms_mean"))
        nm, nr = _n_seeds(em), _n_seeds(er)
        sm, sr = _f(em.get("epdms_std")), _f(er.get("epdms_std"))
        se = float("nan")
        if nm and nr and math.isfinite(sm) and math.isfinite(sr):
            se = math.sqrt(sm ** 2 / nm + sr ** 2 / nr)
        rows.append([str(b), _mean_std(em), _mean_std(er), _signed_x100(d), _x100(se)])
    lines = ["## MOSAIC − Random", "",
             "Difference of mean test EPDMS ×100; SE = sqrt(s_M²/n_M + s_R²/n_R).", ""]
    return lines + _table(["budget", "MOSAIC ×100", "Random ×100", "Δ ×100", "SE ×100"], rows)


def _section_estimated(s: Mapping[str, Any]) -> list[str]:
    est = budget_items(s.get("estimated"))
    if not est:
        return []
    actual = dict(budget_items((s.get("results") or {}).get("mosaic")))
    eci = s.get("estimated_ci") or {}
    rows = []
    for b, v in est:
        e = actual.get(b) or {}
        a = _f(e.get("epdms_mean"))
        iv = eci.get(str(b))
        rows.append([str(b), _ci_x100(iv) if iv else _x100(v),
                     _ci_x100(e.get("epdms_ci")) if e.get("epdms_ci") else _x100(a), _signed_x100(a - _f(v))])
    start = ("base EPDMS on test + the control pilots' gain over the base on calibration (the extra "
             "training's shared gain, counted once)" if s.get("control") else "base EPDMS on test")
    lines = ["## Estimated vs actual (MOSAIC)", "",
             f"Estimated = {start} + Σ_i ΔU_i(n_i) from the fitted laws (paper Table 5), with its 95 % interval "
             "over laws refitted on resampled pilot seeds; actual with its bootstrap interval over clips and "
             "seeds; all ×100.", ""]
    return lines + _table(["budget", "estimated ×100 [95 %]", "actual ×100 [95 %]", "actual − estimated"], rows)


def _section_wall(s: Mapping[str, Any]) -> list[str]:
    wt = (s.get("run") or {}).get("wall_time_s") or {}
    if not wt:
        return []
    vals = {k: _f(v) for k, v in wt.items()}
    total = sum(v for v in vals.values() if math.isfinite(v))
    rows = [[str(k), _num(v, "{:,.1f}"), _num(v / 60.0, "{:,.2f}"),
             f"{100 * v / total:.1f}%" if total > 0 and math.isfinite(v) else "—"]
            for k, v in vals.items()]
    rows.append(["**total**", f"{total:,.1f}", f"{total / 60.0:,.2f}", "100.0%" if total else "—"])
    return ["## Wall time per stage", ""] + _table(["stage", "seconds", "minutes", "share"], rows)


# ---------------------------------------------------------------------- entry points
def _section_variants(s: Mapping[str, Any]) -> list[str]:
    """Domain variants (paper Table 8 context) and caption clusters' top n-grams (Table 3)."""
    variants = s.get("domain_variants") or {}
    if len(variants) < 2 and not any((v or {}).get("kind") == "captions" for v in variants.values()):
        return []
    lines = ["## Domain variants", "",
             "Methods named `method@variant` use that variant's domains (paper Table 8); the first "
             "variant is the default.", ""]
    rows = []
    for name, v in variants.items():
        sizes = ((v or {}).get("description") or {}).get("sizes") or {}
        rows.append([name, str(v.get("kind", "")), str(len(sizes)),
                     ", ".join(f"{d}: {n}" for d, n in sorted(sizes.items()))])
    lines += _table(["variant", "kind", "domains", "clips per domain"], rows) + [""]
    for name, v in variants.items():
        clusters = ((v or {}).get("description") or {}).get("clusters") or []
        if (v or {}).get("kind") != "captions" or not clusters:
            continue
        lines += [f"Caption clusters of **{name}**: top TF-IDF n-grams (paper Table 3)", ""]
        lines += _table(["cluster", "clips", "top n-grams", "example caption"],
                        [[str(c.get("label")), str(c.get("size")), ", ".join(c.get("top_ngrams") or []),
                          str(c.get("example", ""))[:160]] for c in clusters]) + [""]
    return lines


def _section_compute(s: Mapping[str, Any], plot: str | None) -> list[str]:
    """EPDMS vs compute spent per method and budget (paper Fig. 11)."""
    res = s.get("results") or {}
    rows = []
    for m, per_b in res.items():
        for b, e in sorted(per_b.items(), key=lambda kv: int(kv[0])):
            c = _f((e or {}).get("compute_cpu_s"))
            if math.isfinite(c):
                rows.append([m, str(b), f"{c:,.0f}", _x100((e or {}).get("epdms_mean"))])
    if not rows:
        return []
    lines = ["## EPDMS vs compute", "",
             "CPU-seconds reserved per (method, budget): the selection's own cost (base model and "
             "scoring pass for model-based methods, pilot runs for MOSAIC) plus the final training "
             "and its evaluation (paper Fig. 11).", ""]
    lines += _table(["method", "budget", "CPU·s", "EPDMS ×100"], rows) + [""]
    if plot:
        lines += [f"![EPDMS vs compute]({plot})", ""]
    return lines


def _section_stale(s: Mapping[str, Any]) -> list[str]:
    """A warning when some recorded outputs were made under other inputs than the config's."""
    steps, results = s.get("stale_steps") or [], s.get("stale_results") or []
    if not steps and not results:
        return []
    out = ["> **Stale outputs.**"]
    if steps:
        out.append(f"> Steps recorded under other inputs than this config: {', '.join(steps)}; "
                   "their numbers below are not this config's (`mosaic-ray run` redoes them).")
    if results:
        out.append(f"> {len(results)} stored grid result(s) left out (other inputs, or not a cell of "
                   f"this config): {', '.join(r.rsplit('/', 1)[-1] for r in results[:6])}"
                   + (" ..." if len(results) > 6 else ""))
    return out + [""]


def render_report(summary: Summary | Mapping[str, Any],
                  plots: Mapping[str, str | None] | None = None) -> str:
    """Markdown text of the report for ``summary`` (no files written).

    ``plots`` maps ``"scaling" | "order" | "composition" | "epdms"`` to relative PNG links
    (None or missing: no image link). Raises nothing for missing optional sections.
    """
    summary = Summary.coerce(summary).as_dict()
    plots = dict(plots or {})
    lines: list[str] = []
    lines += _section_run(summary)
    lines += _section_stale(summary)
    lines += _section_data(summary)
    lines += _section_base(summary)
    lines += _section_domains(summary, plots.get("scaling"))
    lines += _section_selection(summary, plots)
    lines += _section_results(summary, plots.get("epdms"))
    lines += _section_sanity(summary)
    lines += _section_diff(summary)
    lines += _section_estimated(summary)
    lines += _section_compute(summary, plots.get("compute"))
    lines += _section_variants(summary)
    lines += _section_wall(summary)
    links = [(k, v) for k, v in plots.items() if v]
    if links:
        lines += ["## Figures", ""] + [f"- [{v}]({v})" for _, v in links] + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(summary: Summary | Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.md`` and its PNG figures into ``out_dir`` (created if needed).

    Figures: ``scaling_curves.png`` (Fig. 3), ``selection_order.png`` (Fig. 4),
    ``composition.png`` and ``epdms_vs_budget.png`` (Fig. 5), each only when its summary
    section is present. Returns the path of ``report.md``.

    Raises:
        pydantic.ValidationError: ``summary`` does not fit :class:`Summary`.
    """
    summary = Summary.coerce(summary).as_dict()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    makers = {"scaling": plot_scaling_curves, "order": plot_selection_order,
              "composition": plot_composition, "epdms": plot_epdms_vs_budget,
              "compute": plot_epdms_vs_compute}
    links: dict[str, str | None] = {}
    for key, fn in makers.items():
        p = fn(summary, out / PLOT_FILES[key])
        links[key] = PLOT_FILES[key] if p is not None else None
    path = out / REPORT_NAME
    path.write_text(render_report(summary, links), encoding="utf-8")
    return path
