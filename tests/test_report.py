"""Tests for mosaic_ray.report: report.md, PNG figures, BRMR."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mosaic_ray.report.plots import (plot_composition, plot_epdms_vs_budget,
                                     plot_scaling_curves, plot_selection_order)
from mosaic_ray.report.report import PLOT_FILES, TERMS, brmr, render_report, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def example_summary() -> dict:
    """A small but complete summary, as the pipeline would write it (JSON round-tripped)."""
    rng = np.random.default_rng(0)
    domains = {"boston": (0.030, 80.0, 400), "pittsburgh": (0.045, 300.0, 900),
               "singapore": (0.020, 40.0, 300)}
    terms = {t: 0.9 for t in TERMS}
    budgets = [100, 200, 400]
    means = {"mosaic": [0.812, 0.833, 0.851], "random": [0.801, 0.815, 0.830]}
    order = ["boston"] * 30 + ["singapore"] * 20 + ["pittsburgh", "boston"] * 175
    s = {
        "run": {"name": "unit-test", "config_path": "configs/tiny.yaml",
                "wall_time_s": {"ingest": 12.5, "base_train": 300.0, "pilots": 620.25},
                "started": "2025-01-01T00:00:00", "finished": "2025-01-01T00:15:33"},
        "data": {"candidates": 1750, "clips": 1700, "quarantined": 50,
                 "quarantine_reasons": {"short_track": 40, "off_map": 10},
                 "splits": {"validation": 200, "train": 100, "pool": 1400},
                 "segments": {"validation": ["us101_a"], "train": ["i80_b"],
                              "pool": ["us101_b", "i80_a", "lank_1"]},
                 "pool_by_domain": {d: v[2] for d, v in domains.items()}},
        "base": {"epdms": 0.7834, "terms": dict(terms)},
        "human": {"epdms": 0.95, "terms": {t: 0.97 for t in TERMS}},
        "domains": {d: {"size": size, "a": a, "tau": tau, "rmse": 0.002,
                        "pilot_points": [[n, a * (1 - math.exp(-n / tau)) + rng.normal(0, 1e-3), sd]
                                         for n in (50, 100) for sd in (0, 1)]}
                    for d, (a, tau, size) in domains.items()},
        "selection": {
            "mosaic": {str(b): {"composition": {"boston": b // 2, "pittsburgh": b // 4,
                                                "singapore": b // 4}} for b in budgets},
            "random": {str(b): {"composition": {"boston": b // 3, "pittsburgh": b - 2 * (b // 3),
                                                "singapore": b // 3}} for b in budgets},
        },
        "selection_order": {"mosaic": order},
        "results": {m: {str(b): {"epdms_mean": mu, "epdms_std": 0.004, "n_seeds": 3,
                                 "epdms_per_seed": [mu - 0.004, mu, mu + 0.004],
                                 "terms": dict(terms), "compute_cpu_s": 500.0 + 3.0 * b}
                        for b, mu in zip(budgets, v)} for m, v in means.items()},
        "estimated": {"100": 0.815, "200": 0.829, "400": 0.846},
        "domain_variants": {
            "site": {"kind": "metadata", "description": {"sizes": {"boston": 10, "pittsburgh": 12}}},
            "captions": {"kind": "captions", "description": {
                "sizes": {"cap0": 15, "cap1": 7},
                "clusters": [{"label": "cap0", "size": 15, "top_ngrams": ["highway", "lane change"],
                              "example": "Highway scene."},
                             {"label": "cap1", "size": 7, "top_ngrams": ["red light", "stopped"],
                              "example": "Urban scene."}]}},
        },
    }
    return json.loads(json.dumps(s))


def _is_png(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == PNG_SIGNATURE


def test_write_report_full(tmp_path):
    s = example_summary()
    path = write_report(s, tmp_path / "out")
    assert path.name == "report.md" and path.exists()
    text = path.read_text(encoding="utf-8")
    for needle in ("mosaic", "random", "100", "200", "400", "boston", "pittsburgh",
                   "×100", "BRMR", "MOSAIC − Random", "Estimated vs actual", "Wall time"):
        assert needle in text, needle
    # numbers ×100
    assert "78.34" in text  # base EPDMS
    assert "81.20 ± 0.40" in text and "85.10 ± 0.40" in text  # mosaic results
    assert "+1.80" in text  # mosaic − random at 200: 0.833 − 0.815
    assert "1,750" in text and "1,700" in text  # candidates = clips + quarantined
    for t in TERMS:
        assert f"{t} ×100" in text
    for name in PLOT_FILES.values():
        assert (tmp_path / "out" / name).exists(), name
        assert _is_png(tmp_path / "out" / name), name
        assert f"]({name})" in text


def test_report_numbers():
    text = render_report(example_summary())
    # MOSAIC − Random: 100 → +1.10, 200 → +1.80, 400 → +2.10
    assert "+1.10" in text and "+2.10" in text
    # estimated vs actual at 200: 82.90 vs 83.30 → +0.40
    assert "82.90" in text and "+0.40" in text


def test_report_minimal_and_missing_sections(tmp_path):
    path = write_report({}, tmp_path)
    assert path.read_text().startswith("# mosaic_ray report")
    assert not any((tmp_path / n).exists() for n in PLOT_FILES.values())
    s = example_summary()
    for key in ("human", "estimated", "selection_order", "domains", "data"):
        s.pop(key)
    s["results"].pop("random")
    del s["run"]["wall_time_s"]
    s["results"]["mosaic"]["100"].pop("terms")
    path = write_report(s, tmp_path / "partial")
    text = path.read_text()
    assert "mosaic" in text and "MOSAIC − Random" not in text
    assert not (tmp_path / "partial" / PLOT_FILES["order"]).exists()
    assert _is_png(tmp_path / "partial" / PLOT_FILES["epdms"])


def test_plots_return_none_when_missing(tmp_path):
    for fn in (plot_scaling_curves, plot_selection_order, plot_composition, plot_epdms_vs_budget):
        assert fn({}, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()
    p = plot_epdms_vs_budget(example_summary(), tmp_path / "e.png")
    assert p == tmp_path / "e.png" and _is_png(p)


def test_candidates_mismatch_warning():
    s = {"data": {"candidates": 10, "clips": 7, "quarantined": 2}}
    assert "Warning" in render_report(s)
    s = {"data": {"clips": 7, "quarantined": 3}}
    assert "candidate frames (= frames + quarantined) | 10" in render_report(s)  # a frame per clip
    s = {"data": {"clips": 2, "frames": 7, "quarantined": 3}}
    assert "candidate frames (= frames + quarantined) | 10" in render_report(s) and "Warning" not in render_report(s)


def test_brmr_hand_computed():
    res = {
        "random": {"100": {"epdms_mean": 0.80}, "200": {"epdms_mean": 0.82},
                   "400": {"epdms_mean": 0.84}},
        "mosaic": {"100": {"epdms_mean": 0.81}, "200": {"epdms_mean": 0.83},
                   "400": {"epdms_mean": 0.85}},
        "bad": {"100": {"epdms_mean": 0.70}, "200": {"epdms_mean": 0.81},
                "400": {"epdms_mean": 0.815}},
    }
    # with base 0.78 at budget 0: target 0.80 reached at 0 + (0.02/0.03)·100 = 66.67
    b = brmr(res, "mosaic", base_epdms=0.78)
    assert list(b) == [100, 200, 400]
    assert b[100] == pytest.approx(2.0 / 3.0)
    assert b[200] == pytest.approx(150.0 / 200.0)  # between (100, .81) and (200, .83)
    assert b[400] == pytest.approx(300.0 / 400.0)  # between (200, .83) and (400, .85)
    # without base the first budget is an upper bound b_1 / B
    assert brmr(res, "mosaic")[100] == pytest.approx(1.0)
    # reference against itself is 1
    assert all(v == pytest.approx(1.0) for v in brmr(res, "random", base_epdms=0.78).values())
    # never reached -> NaN; reached by interpolation 100 -> 200 at 0.80: 100 + 0.1/0.11·100
    bad = brmr(res, "bad", base_epdms=0.78)
    assert bad[100] == pytest.approx((100 + 100 * 0.10 / 0.11) / 100)
    assert math.isnan(bad[200]) and math.isnan(bad[400])
    with pytest.raises(ValueError):
        brmr(res, "coreset")
