"""Tests for mosaic_ray.evaluate.stats: paired bootstrap coverage and BRMR on isotonic curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mosaic_ray.evaluate import stats
from mosaic_ray.evaluate.stats import (align_cells, brmr_bootstrap, brmr_point, isotonic_curve,
                                       mean_interval, paired_bootstrap_diff, pava)


def _simulate(rng, seeds: int, clips: int, diff: float, sd_seed: float, sd_het: float):
    """Method a and Random b on the same clips: shared clip difficulty, per-clip treatment
    heterogeneity, per-seed offsets and per-(seed, clip) noise; the population difference is ``diff``."""
    clip = rng.normal(0.8, 0.15, clips)
    het = rng.normal(0.0, sd_het, clips)
    a = clip + diff + het + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, 0.05, (seeds, clips))
    b = clip + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, 0.05, (seeds, clips))
    return a, b


@pytest.mark.parametrize("seeds,sd_seed,sd_het", [(5, 0.01, 0.05), (3, 0.02, 0.03)])
def test_paired_bootstrap_covers_known_difference_at_nominal_rate(seeds, sd_seed, sd_het):
    rng = np.random.default_rng(7)
    reps, hits, widths = 150, 0, []
    for r in range(reps):
        a, b = _simulate(rng, seeds, 120, 0.01, sd_seed, sd_het)
        iv = paired_bootstrap_diff(a, b, n_boot=400, seed=r)
        assert iv.estimate == pytest.approx(a.mean() - b.mean())
        hits += iv.lo <= 0.01 <= iv.hi
        widths.append(iv.hi - iv.lo)
    # nominal 95 %: binomial sd over 150 datasets is 1.8 points
    assert 0.89 <= hits / reps <= 0.995, hits / reps
    # informative, not an interval that covers by being huge: within 3.5x the width of the oracle
    # normal interval from the true sd (the few-seed t widening costs up to 2.7x at 3 seeds)
    sd = math.sqrt(2 * sd_seed ** 2 / seeds + (sd_het ** 2 + 2 * 0.05 ** 2 / seeds) / 120)
    assert np.median(widths) < 3.5 * 2 * 1.96 * sd


def test_paired_bootstrap_is_paired_over_clips_and_reproducible():
    rng = np.random.default_rng(0)
    clip = rng.normal(0.8, 0.2, 300)  # large shared clip effect: unpaired intervals would be wide
    a = clip + 0.02 + rng.normal(0, 0.01, (3, 300))
    b = clip + rng.normal(0, 0.01, (3, 300))
    iv = paired_bootstrap_diff(a, b, n_boot=500, seed=1)
    assert iv.lo > 0 and iv.excludes_zero and iv.hi - iv.lo < 0.02
    assert paired_bootstrap_diff(a, b, n_boot=500, seed=1) == iv
    with pytest.raises(ValueError):
        paired_bootstrap_diff(a, b[:, :10])
    with pytest.raises(ValueError):
        paired_bootstrap_diff(a, np.full_like(b, np.nan))


def test_mean_interval_contains_mean():
    a = np.random.default_rng(2).normal(0.8, 0.1, (4, 80))
    iv = mean_interval(a, n_boot=300)
    assert iv.lo < a.mean() < iv.hi and iv.level == 0.95


def test_intervals_of_a_few_clips_stay_within_what_a_mean_can_be():
    """Seven clips near 0 and 1 (one site's test clips): the few-seed widening alone would reach
    past 1 (seen in the demo's per-site table); the intervals are cut to [0, 1] and [-1, 1]."""
    a = np.array([[1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.1], [1.0, 0.9, 1.0, 0.0, 1.0, 1.0, 0.0],
                  [1.0, 1.0, 0.95, 0.05, 1.0, 1.0, 0.0]])
    iv = stats.mean_interval(a, n_boot=2000)
    assert 0.0 <= iv.lo < iv.estimate < iv.hi <= 1.0
    wide = stats.percentile_interval(iv.estimate, stats.cell_means(a, *(stats.bootstrap_weights(
        np.random.default_rng(0), n, 2000) for n in a.shape)), n_seeds=3, scale=stats.t_widening(a))
    assert wide.hi > 1.0  # what the cut prevents
    d = stats.paired_bootstrap_diff(a, 1.0 - a, n_boot=2000)
    assert -1.0 <= d.lo <= d.hi <= 1.0


def test_isotonic_curve_monotone_with_base_at_zero():
    x, y = isotonic_curve([400, 50, 150], [0.81, 0.80, 0.82], base=0.79)
    assert x.tolist() == [0, 50, 150, 400]
    assert np.all(np.diff(y) > 0)  # strictly increasing (tie slope)
    assert y[0] == pytest.approx(0.79) and y[2] == pytest.approx(y[3], abs=1e-9)  # 0.82, 0.81 pooled


def _cells(rng, means: dict, seeds=3, clips=60):
    clip = rng.normal(0, 0.05, clips)
    return {m: {b: mu + clip + rng.normal(0, 0.01, (seeds, clips)) for b, mu in per.items()}
            for m, per in means.items()}, 0.70 + clip


def test_random_brmr_is_exactly_one_even_when_its_curve_dips():
    rng = np.random.default_rng(3)
    cells, base = _cells(rng, {"random": {50: 0.74, 150: 0.78, 400: 0.77, 800: 0.80},
                               "good": {50: 0.78, 150: 0.80, 400: 0.81, 800: 0.82},
                               "bad": {50: 0.70, 150: 0.71, 400: 0.72, 800: 0.73}})
    out = brmr_bootstrap(cells, base, n_boot=200)
    assert [iv.estimate for iv in out["random"].values()] == [1.0, 1.0, 1.0, 1.0]
    assert all(iv.lo == iv.hi == 1.0 for iv in out["random"].values())
    # random's own curve, refit independently in each replicate, also gives exactly 1
    rc = isotonic_curve([50, 150, 400, 800], [0.74, 0.78, 0.77, 0.80], 0.7)
    assert list(brmr_point(rc, rc).values()) == [1.0, 1.0, 1.0, 1.0]
    good = out["good"]
    assert all(iv.estimate < 1 for iv in good.values()) and good[800].hi < 1
    bad = out["bad"]  # never reaches random's value: "—" (NaN), interval open to +inf
    assert all(math.isnan(iv.estimate) for iv in bad.values())


def test_align_cells_common_clip_order():
    ids, arrs = align_cells([{"clip_id": ["b", "a", "c"], "epdms": [2, 1, 3]},
                             {"clip_id": ["c", "a"], "epdms": [30, 10]}])
    assert ids == ["a", "c"] and arrs[0].tolist() == [1, 3] and arrs[1].tolist() == [10, 30]
    with pytest.raises(ValueError):
        align_cells([{"clip_id": ["a", "a"], "epdms": [1, 2]}])


def test_pava_matches_sklearn():
    from sklearn.isotonic import isotonic_regression

    rng = np.random.default_rng(5)
    for k in (1, 2, 5, 9):
        for _ in range(50):
            y = rng.normal(0, 1, k) + np.linspace(0, 1, k)
            np.testing.assert_allclose(pava(y), isotonic_regression(y), atol=1e-12)


def test_summary_statistics_and_report_from_per_clip_scores():
    """The summary's intervals come from stored per-clip scores; the report prints them."""
    from mosaic_ray.report.report import render_report
    from mosaic_ray.report.summary import Summary, _cell_stats, _statistics

    rng = np.random.default_rng(11)
    ids = [f"c{i:03d}" for i in range(80)]
    clip = rng.normal(0, 0.05, 80)

    def result(m, b, mu, seed):
        e = np.clip(mu + clip + rng.normal(0, 0.01, 80), 0, 1)
        order = rng.permutation(80)  # stored in any clip order
        return {"method": m, "budget": b, "seed": seed, "n_train": 10, "wall_time_s": 1.0,
                "test": {"epdms": float(e.mean()), "terms": {},
                               "per_clip": {"clip_id": [ids[i] for i in order], "epdms": e[order].tolist()}}}

    means = {"random": {50: 0.75, 150: 0.78}, "mosaic": {50: 0.79, 150: 0.80}}
    runs = {m: {str(b): [result(m, b, mu, sd) for sd in range(3)] for b, mu in per.items()}
            for m, per in means.items()}
    base = {"test": {"per_clip": {"clip_id": ids, "epdms": (0.7 + clip).tolist()}}}
    from mosaic_ray.scoring.epdms import TERMS
    for r in (r for per in runs.values() for rs in per.values() for r in rs):
        r["test"]["terms"] = {t: 1.0 for t in TERMS}
    results = {m: {b: _cell_stats(rs) for b, rs in per.items()} for m, per in runs.items()}
    site_of = {c: ("A" if i % 2 else "B") for i, c in enumerate(ids)}
    comparisons, brmr, info, by_site, cmp_site = _statistics(runs, base, results, n_boot=300, site_of_clip=site_of)
    assert set(by_site) == {"A", "B"} and cmp_site["A"]["mosaic"]["50"].estimate > 0
    assert info.n_clips == 80 and info.n_boot == 300
    d = comparisons["mosaic"]["50"]
    assert d.lo > 0 and d.estimate == pytest.approx(results["mosaic"]["50"].epdms_mean
                                                    - results["random"]["50"].epdms_mean)
    assert brmr["random"]["150"].estimate == 1.0 and brmr["mosaic"]["150"].estimate < 1.0
    assert results["random"]["50"].epdms_ci.lo < results["random"]["50"].epdms_mean
    summary = Summary(results=results, comparisons=comparisons, brmr=brmr, statistics=info,
                      comparisons_by_site=cmp_site, results_by_site=by_site)
    text = render_report(Summary.model_validate_json(summary.model_dump_json()))
    assert "Each method − Random" in text and "interval above 0 at 2 of 2 budgets" in text
    assert "1.00 [1.00, 1.00]" in text  # Random's BRMR
    assert "Per site (test)" in text


def test_random_shuffles_config():
    from mosaic_ray.config import SelectionConfig

    sc = SelectionConfig(budgets=[10], methods=["mosaic", "random"], random_shuffles=[1, 2])
    assert sc.shuffle_methods() == {"random_shuffle1": 1, "random_shuffle2": 2}
    assert SelectionConfig(budgets=[10], methods=["mosaic"], random_shuffles=[1]).shuffle_methods() == {}
    with pytest.raises(ValueError):
        SelectionConfig(budgets=[10], random_shuffles=[42])  # that shuffle is Random itself


def test_sanity_line_flags_a_dip_and_a_worse_full_pool():
    from mosaic_ray.report.report import render_report, sanity_checks

    def iv(m, h=0.005):
        return {"estimate": m, "lo": m - h, "hi": m + h}

    res = {"random": {"50": {"epdms_mean": 0.80, "epdms_ci": iv(0.80)}, "150": {"epdms_mean": 0.82, "epdms_ci": iv(0.82)},
                      "400": {"epdms_mean": 0.81, "epdms_ci": iv(0.81)}},
           "mosaic": {"50": {"epdms_mean": 0.83, "epdms_ci": iv(0.83)}},
           "full": {"900": {"epdms_mean": 0.84, "epdms_ci": iv(0.84)}}}
    s = {"results": res, "statistics": {"n_boot": 10, "level": 0.95}}
    checks = sanity_checks(s)
    assert [c[1] for c in checks] == [True, True]  # 0.81 ± 0.005 overlaps 0.82 ± 0.005: within the band
    res["random"]["400"] = {"epdms_mean": 0.79, "epdms_ci": iv(0.79)}
    res["full"]["900"] = {"epdms_mean": 0.80, "epdms_ci": iv(0.80)}
    checks = sanity_checks(s)
    assert [c[1] for c in checks] == [False, False]
    assert "budget 400 is below budget 150" in checks[0][2]
    assert "**FAILS**" in render_report(s)
