"""PNG figures of a run's ``summary.json`` (MOSAIC paper Figs. 3–5).

Every function takes the summary dict (layout in :mod:`mosaic_ray.report.report`) and an
output path, writes one PNG and returns the path, or returns ``None`` without writing when
the section it needs is missing or empty. Figures are built with :class:`matplotlib.figure.Figure`
and the Agg canvas directly, so no pyplot state or global backend is touched (safe in
worker processes and threads). EPDMS and ΔU are drawn ×100 (the paper's convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_scaling_curves", "plot_selection_order", "plot_composition",
           "plot_epdms_vs_budget", "budget_items", "ordered_domains"]

_DPI = 110


def budget_items(d: Mapping[Any, Any] | None) -> list[tuple[int, Any]]:
    """``[(int(budget), value), ...]`` sorted by budget; keys that are not integers are skipped."""
    out = []
    for k, v in (d or {}).items():
        try:
            out.append((int(k), v))
        except (TypeError, ValueError):
            continue
    return sorted(out, key=lambda kv: kv[0])


def ordered_domains(summary: Mapping[str, Any]) -> list[str]:
    """All domain names mentioned in the summary, sorted (stable colours across plots)."""
    names: set[str] = set()
    names.update((summary.get("domains") or {}).keys())
    names.update(((summary.get("data") or {}).get("pool_by_domain") or {}).keys())
    for per_budget in (summary.get("selection") or {}).values():
        for entry in (per_budget or {}).values():
            names.update(((entry or {}).get("composition") or {}).keys())
    for seq in (summary.get("selection_order") or {}).values():
        names.update(str(s) for s in (seq or []))
    return sorted(str(n) for n in names)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _colors(domains: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(domains) <= 10 else "tab20"]
    return {d: cmap(i % cmap.N) for i, d in enumerate(domains)}


def _new_figure(w: float, h: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: the report helpers load without it
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, format="png", dpi=_DPI, bbox_inches="tight")
    return p


def plot_scaling_curves(summary: Mapping[str, Any], path: str | Path) -> Path | None:
    """Per-domain fitted ΔU_i(n) = a_i(1 − e^(−n/τ_i)) with pilot points (paper Fig. 3).

    A domain whose fit is degenerate is drawn as the policy's curve (``knots_n``/``knots_u``,
    dashed); ``band_n``/``band_lo``/``band_hi`` are drawn as a shaded 95 % band over pilot seeds.

    Uses ``summary["domains"][d]`` keys ``a``, ``tau``, ``size`` and ``pilot_points``
    (``[[n, ΔU, seed], ...]``); x is clips added, y is ΔEPDMS ×100. The curve spans up to the
    domain size (or 2.5× the largest pilot size when sizes are missing).
    Returns the PNG path, or None when there are no domains with a law or pilot points.
    """
    doms = summary.get("domains") or {}
    if not doms:
        return None
    colors = _colors(ordered_domains(summary))
    x_max = 0.0
    for info in doms.values():
        pts = np.asarray([p[:2] for p in (info or {}).get("pilot_points") or []], dtype=float)
        pmax = float(pts[:, 0].max()) if pts.size else 0.0
        x_max = max(x_max, float((info or {}).get("size") or 0), 2.5 * pmax)
    if x_max <= 0:
        x_max = 1.0
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    drew = False
    xs = np.linspace(0.0, x_max, 400)
    for name in sorted(doms):
        info = doms[name] or {}
        c = colors.get(str(name))
        a, tau = _num(info.get("a")), _num(info.get("tau"))
        has_curve = np.isfinite(a) and np.isfinite(tau) and tau > 0
        if has_curve:
            knots = info.get("knots_n") or []
            if knots:  # the degenerate-fit policy's curve is what the selection used
                ys = np.interp(xs, knots, info.get("knots_u") or [])
                label = f"{name} ({info.get('status')}: interpolation, flat tail)"
            else:
                ys = a * -np.expm1(-xs / tau)
                label = f"{name} (100a={100 * a:.2f}, τ={tau:.0f})"
            ax.plot(xs, 100.0 * ys, color=c, ls="--" if knots else "-", label=label)
        if info.get("band_n"):
            ax.fill_between(np.asarray(info["band_n"], float), 100.0 * np.asarray(info["band_lo"], float),
                            100.0 * np.asarray(info["band_hi"], float), color=c, alpha=0.15, lw=0)
        pts = np.asarray([p[:2] for p in info.get("pilot_points") or []], dtype=float)
        if pts.size:
            ax.scatter(pts[:, 0], 100.0 * pts[:, 1], color=c, s=22, zorder=3,
                       label=None if has_curve else str(name))
        drew = drew or has_curve or bool(pts.size)
    if not drew:
        return None
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("clips added from domain")
    ax.set_ylabel("ΔEPDMS ×100")
    ax.set_title("Per-domain scaling laws (lines; bands: 95 % over pilot seeds) and pilot runs (points)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_selection_order(summary: Mapping[str, Any], path: str | Path,
                         method: str = "mosaic") -> Path | None:
    """Which domain each selection step drew from (paper Fig. 4), plus cumulative counts.

    Top panel: one row per domain, a mark at every step that drew from it. Bottom panel:
    cumulative clips per domain vs step. Uses ``summary["selection_order"][method]`` (falls back
    to the first method present). Returns the PNG path, or None when no order is recorded.
    """
    orders = summary.get("selection_order") or {}
    seq = orders.get(method)
    if not seq:
        seq = next((v for v in orders.values() if v), None)
        method = next((k for k, v in orders.items() if v), method)
    if not seq:
        return None
    seq = [str(s) for s in seq]
    domains = sorted(set(seq))
    colors = _colors(ordered_domains(summary))
    steps = np.arange(len(seq))
    arr = np.asarray(seq, dtype=object)
    fig = _new_figure(8.0, 5.5)
    ax1 = fig.add_subplot(2, 1, 1)
    ax2 = fig.add_subplot(2, 1, 2, sharex=ax1)
    for row, d in enumerate(domains):
        hit = arr == d
        # contiguous runs as bars (compact even for thousands of steps)
        edges = np.diff(np.concatenate([[0], hit.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        ax1.broken_barh([(s - 0.5, e - s) for s, e in zip(starts, ends)], (row - 0.4, 0.8),
                        facecolors=colors.get(d))
        ax2.step(steps + 1, np.cumsum(hit), where="post", color=colors.get(d), label=d)
    ax1.set_yticks(range(len(domains)), domains)
    ax1.set_ylim(-0.6, len(domains) - 0.4)
    ax1.set_title(f"{method}: domain drawn at each selection step")
    ax2.set_xlabel("selection step")
    ax2.set_ylabel("clips taken (cumulative)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    return _save(fig, path)


def plot_composition(summary: Mapping[str, Any], path: str | Path) -> Path | None:
    """Stacked bars of domain shares of the selected set, per budget, one panel per method.

    Uses ``summary["selection"][method][str(B)]["composition"]``; bar heights are fractions of
    the budget (labelled with the budget). Returns the PNG path, or None when absent.
    """
    sel = {m: v for m, v in (summary.get("selection") or {}).items() if budget_items(v)}
    if not sel:
        return None
    domains = ordered_domains(summary)
    colors = _colors(domains)
    n = len(sel)
    fig = _new_figure(max(4.0, 3.2 * n), 4.2)
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    for ax, (method, per_budget) in zip(axes, sel.items()):
        items = budget_items(per_budget)
        x = np.arange(len(items))
        bottom = np.zeros(len(items))
        for d in domains:
            counts = np.array([float(((e or {}).get("composition") or {}).get(d, 0))
                               for _, e in items])
            totals = np.array([max(float(sum(((e or {}).get("composition") or {}).values())), 1.0)
                               for _, e in items])
            share = counts / totals
            if np.any(share > 0):
                ax.bar(x, share, bottom=bottom, color=colors[d], label=d, width=0.7)
                bottom += share
        ax.set_xticks(x, [str(b) for b, _ in items], rotation=45)
        ax.set_ylim(0, 1.0)
        ax.set_title(method)
        ax.set_xlabel("budget (clips)")
    axes[0].set_ylabel("share of selected clips")
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=8,
               bbox_to_anchor=(0.5, 1.08))
    return _save(fig, path)


def plot_epdms_vs_budget(summary: Mapping[str, Any], path: str | Path) -> Path | None:
    """Validation EPDMS ×100 (mean ± std over seeds) vs budget per method (paper Fig. 5).

    The base model, the full-pool training (method ``full``) and the logged human, when
    present, are horizontal lines. The x axis is
    logarithmic when budgets span more than 10×. Returns the PNG path, or None when there
    are no results.
    """
    res = {m: budget_items(v) for m, v in (summary.get("results") or {}).items()}
    res = {m: v for m, v in res.items() if v}
    full = res.pop("full", None)
    if not res and not full:
        return None
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    all_b: list[int] = []
    for method, items in res.items():
        b = np.array([k for k, _ in items], dtype=float)
        mean = np.array([float((e or {}).get("epdms_mean", np.nan)) for _, e in items])
        std = np.array([float((e or {}).get("epdms_std") or 0.0) for _, e in items])
        ax.errorbar(b, 100 * mean, yerr=100 * std, marker="o", capsize=3, label=method)
        all_b.extend(b.tolist())
    base = (summary.get("base") or {}).get("epdms")
    if base is not None:
        ax.axhline(100 * float(base), color="k", ls="--", lw=1, label="base")
    if full:
        fb, fe = full[-1]
        ax.axhline(100 * float(fe.get("epdms_mean", np.nan)), color="tab:red", ls="-.", lw=1,
                   label=f"full pool ({fb} clips)")
    human = (summary.get("human") or {}).get("epdms")
    if human is not None:
        ax.axhline(100 * float(human), color="0.5", ls=":", lw=1, label="human (logged)")
    pos = [b for b in all_b if b > 0]
    if pos and max(pos) / min(pos) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("budget (clips selected)")
    ax.set_ylabel("test EPDMS ×100")
    ax.set_title("EPDMS vs budget (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_epdms_vs_compute(summary: Mapping[str, Any], path: str | Path) -> Path | None:
    """Validation EPDMS ×100 vs CPU-seconds spent (selection + final training) per method,
    one point per budget (paper Fig. 11). Returns None when no result carries compute."""
    res = {m: budget_items(v) for m, v in (summary.get("results") or {}).items()}
    pts = {}
    for m, items in res.items():
        xy = [(float((e or {}).get("compute_cpu_s", np.nan)), float((e or {}).get("epdms_mean", np.nan)))
              for _, e in items]
        xy = [(x, y) for x, y in xy if np.isfinite(x) and np.isfinite(y)]
        if xy:
            pts[m] = sorted(xy)
    if not pts:
        return None
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for m, xy in pts.items():
        x, y = zip(*xy)
        ax.plot(x, 100 * np.asarray(y), marker="o", label=m)
    base = (summary.get("base") or {}).get("epdms")
    if base is not None:
        ax.axhline(100 * float(base), color="k", ls="--", lw=1, label="base")
    ax.set_xlabel("compute spent (CPU·s: selection + final training)")
    ax.set_ylabel("test EPDMS ×100")
    ax.set_title("EPDMS vs compute")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
