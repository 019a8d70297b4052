"""Tests for the pilot laws (issue 12 part 4): control-relative gains, bounded weighted fits,
fit statuses and the degenerate-fit policy (Ray-free)."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic_ray.selection.allocator import greedy_allocate
from mosaic_ray.selection.scaling_law import (CONTROL_DOMAIN, POLICY_INTERP, ScalingLaw, concave_interpolation,
                                              fit_domain_laws, fit_pilot_law, pilot_gains)

SIZES = (10, 30, 100, 300)


def _noisy(a, tau, sd, seeds=3, rng=None):
    rng = rng or np.random.default_rng(0)
    n = np.repeat(SIZES, seeds).astype(float)
    return n, a * (1 - np.exp(-n / tau)) + rng.normal(0, sd, n.size)


def test_known_law_recovered_from_noisy_points_with_status_ok():
    rng = np.random.default_rng(4)
    for a, tau in ((0.05, 60.0), (0.03, 25.0), (-0.02, 80.0)):
        n, y = _noisy(a, tau, 0.002, rng=rng)
        law = fit_pilot_law(n, y, a_bounds=(-0.8, 0.2))
        assert law.status == "ok" and law.exponential and not law.policy, law
        assert law.a == pytest.approx(a, rel=0.2)
        assert law.tau == pytest.approx(tau, rel=0.4)
        assert 10 <= law.tau <= 300  # within the measured sizes


def test_saturated_before_smallest_size_is_flagged_and_interpolated():
    """US101 in the demo: 50 and 150 clips gained the same; the old fit put τ at 1 clip."""
    n = [50, 50, 50, 150, 150, 150]
    y = [0.021, 0.019, 0.020, 0.020, 0.021, 0.019]
    law = fit_pilot_law(n, y, a_bounds=(-0.8, 0.2))
    assert law.status == "tau_at_bound" and law.policy == POLICY_INTERP and not law.exponential
    assert law.tau == pytest.approx(50.0)  # not below the smallest measured size
    # the policy: concave interpolation of the means through (0, 0), flat beyond the largest size
    assert law(0) == 0.0 and law(25) == pytest.approx(0.01, abs=1e-3)
    assert law(150) == pytest.approx(0.02, abs=1e-3) and law(5000) == law(150)
    assert law.marginal(200) == 0.0 and law.marginal(0) == pytest.approx(law(1))
    # the allocator uses the policy's curve: a healthy exponential domain takes the clips past 50
    other = ScalingLaw(0.02, 200.0)
    counts, _ = greedy_allocate([law, other], [400, 400], 300)
    assert counts[0] <= 60 and counts.sum() == 300


def test_degenerate_statuses():
    one = fit_pilot_law([100, 100, 100], [0.01, 0.012, 0.011])
    assert one.status == "one_size" and one(100) == pytest.approx(0.011) and one(400) == one(100)
    drop = fit_pilot_law([10, 10, 10, 100, 100, 100], [0.02, 0.021, 0.019, -0.01, -0.011, -0.009])
    assert drop.status == "non_monotone" and drop.policy == POLICY_INTERP
    # a within the headroom: 1 − U_control = 0.01 here, the points want far more
    capped = fit_pilot_law(*_noisy(0.05, 60.0, 0.001), a_bounds=(-0.9, 0.01))
    assert capped.status == "a_at_bound" and capped.a == pytest.approx(0.01) and capped.policy


def test_concave_interpolation_is_concave_through_origin():
    kn, ku = concave_interpolation([10, 30, 100, 300], [0.01, 0.012, 0.03, 0.031])
    assert kn[0] == 0 and ku[0] == 0
    slopes = np.diff(ku) / np.diff(kn)
    assert np.all(np.diff(slopes) <= 1e-12)


def test_gains_are_measured_against_the_control_of_the_same_seed():
    rows = [{"domain": CONTROL_DOMAIN, "n": 0, "seed": s, "epdms": 0.80 + 0.01 * s, "delta_u": 0.0}
            for s in range(3)]
    rows += [{"domain": "A", "n": n, "seed": s, "epdms": 0.80 + 0.01 * s + 0.03 * (1 - np.exp(-n / 40)),
              "delta_u": 9.9} for n in SIZES for s in range(3)]
    gains, control = pilot_gains(rows)
    assert control == pytest.approx({0: 0.80, 1: 0.81, 2: 0.82})
    assert all(abs(du - 0.03 * (1 - np.exp(-n / 40))) < 1e-12 for n, du, _ in gains["A"])
    laws = fit_domain_laws(rows)
    assert set(laws) == {"A"} and laws["A"].status == "ok"
    assert laws["A"].a == pytest.approx(0.03, rel=1e-3) and laws["A"].tau == pytest.approx(40, rel=1e-3)
    with pytest.raises(ValueError, match="no control"):
        pilot_gains(rows[1:])  # seed 0's control pilot missing


def test_law_with_knots_round_trips():
    law = fit_pilot_law([50, 150], [0.02, 0.02])
    back = ScalingLaw.from_dict(law.to_dict())
    assert back == law and back(75) == law(75)
    with pytest.raises(ValueError):
        ScalingLaw(0.1, 10.0, knots_n=(1.0, 2.0), knots_u=(0.0, 0.1))  # must start at (0, 0)


def test_bootstrap_over_pilot_seeds_and_report_shows_status_policy_and_band(tmp_path):
    from mosaic_ray.report.report import write_report
    from mosaic_ray.selection.scaling_law import bootstrap_laws

    rng = np.random.default_rng(1)
    rows = [{"domain": CONTROL_DOMAIN, "n": 0, "seed": s, "epdms": 0.80 + rng.normal(0, 0.002), "delta_u": 0}
            for s in range(3)]
    ctrl = {r["seed"]: r["epdms"] for r in rows}
    rows += [{"domain": "A", "n": n, "seed": s, "delta_u": 0,
              "epdms": ctrl[s] + 0.04 * (1 - np.exp(-n / 50)) + rng.normal(0, 0.002)} for n in SIZES for s in range(3)]
    rows += [{"domain": "B", "n": n, "seed": s, "delta_u": 0, "epdms": ctrl[s] + 0.01 + rng.normal(0, 0.001)}
             for n in (50, 150) for s in range(3)]
    laws = fit_domain_laws(rows)
    assert laws["A"].status == "ok" and laws["B"].status == "tau_at_bound" and laws["B"].policy
    reps = bootstrap_laws(rows, n_boot=40)
    assert len(reps) == 40 and all(set(r) == {"A", "B"} for _, r in reps)
    at100 = np.array([r["A"](100.0) for _, r in reps])
    assert at100.min() < laws["A"](100.0) < at100.max()
    assert bootstrap_laws([r for r in rows if r["seed"] == 0]) == []  # one seed: no spread to resample
    doms = {d: {"size": 400, **law.to_dict(), "pilot_points": [[50, 0.01, 0]], "band_n": [0, 200, 400],
                "band_lo": [0, 0.005, 0.006], "band_hi": [0, 0.02, 0.03]} for d, law in laws.items()}
    for d in doms.values():
        d.pop("n_points"), d.pop("n_sizes")
        d["knots_n"], d["knots_u"] = list(d["knots_n"]) or None, list(d["knots_u"]) or None
        d["policy"] = d["policy"] or None
    path = write_report({"domains": doms, "control": {"epdms_mean": 0.8, "epdms_per_seed": {"0": 0.8},
                                                      "gain_over_base": 0.01}}, tmp_path)
    text = path.read_text()
    assert "Degenerate fits:** B (tau_at_bound)" in text and "Control pilots" in text
    assert "1 pilot seed(s)" in text  # every pilot point above is seed 0
    assert (tmp_path / "scaling_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_scratch_pilot_starts_where_a_scratch_final_training_starts(tmp_path):
    """pilot.init: scratch gives the base model's spec and vocabulary with fresh weights, seeded as
    train_planner_in_process seeds a from-scratch final training; base gives the checkpoint."""
    import torch

    from mosaic_ray.planner.model import PlannerSpec, VocabularyPlanner, save_checkpoint
    from mosaic_ray.planner.training import seed_torch
    from mosaic_ray.stages.pilot import initial_model

    spec = PlannerSpec(vocab_size=8, embed_dim=16, hidden_dim=16, max_agents=4, max_lanes=8)
    anchors = torch.from_numpy(np.random.default_rng(0).normal(size=(8, 8, 3)).astype(np.float32))
    torch.manual_seed(123)
    base = VocabularyPlanner(spec, anchors)
    save_checkpoint(base, str(tmp_path / "base.pt"))
    again = initial_model(str(tmp_path / "base.pt"), "base", seed=3).state_dict()
    assert all(torch.equal(again[k], v) for k, v in base.state_dict().items())
    fresh = initial_model(str(tmp_path / "base.pt"), "scratch", seed=3)
    seed_torch(3)
    final = VocabularyPlanner(spec, anchors).state_dict()  # what a scratch final training of seed 3 starts from
    assert fresh.spec == spec and torch.equal(fresh.anchors, base.anchors)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in final.items())
    assert not all(torch.equal(fresh.state_dict()[k], v) for k, v in base.state_dict().items())
    with pytest.raises(ValueError, match="pilot.init"):
        initial_model(str(tmp_path / "base.pt"), "warm", seed=3)
