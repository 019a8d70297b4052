"""The four disjoint splits (issue 12 part 2): D_train, pool, calibration, test.

Ray-free: the planner on constructed units (disjoint, every clip once, site mix within the
stated tolerance, declared mix honoured), recording groups. With Ray: pilot runs on a run whose
test split is gone still work, so no code path scores pilots on test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mosaic_ray.data.split import (CALIBRATION, MIX_TOLERANCE, POOL, SPLITS, TEST, TRAIN, plan_split,
                                   recording_groups, shared_track_links)

ROOT = Path(__file__).resolve().parent.parent


def _units(rng, sites: dict[str, int]):
    """{unit: clips} and {unit: site}: ``sites`` maps a site to its number of recording units."""
    counts, site_of = {}, {}
    for site, k in sites.items():
        for i in range(k):
            u = f"{site}-{i}"
            counts[u] = int(rng.integers(5, 40))
            site_of[u] = site
    return counts, site_of


@pytest.mark.parametrize("fill", ["best_fit", "random_order"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_four_splits_disjoint_and_within_tolerance_of_the_site_mix(seed, fill):
    counts, site_of = _units(np.random.default_rng(seed), {"US101": 60, "Lankershim": 40, "Peachtree": 12})
    plan = plan_split(counts, site_of, train_fraction=0.10, calibration_fraction=0.10, test_fraction=0.15,
                      seed=seed, fill=fill)
    assert set(plan.assignment) == set(counts) and set(plan.assignment.values()) == set(SPLITS)
    assert sum(plan.counts().values()) == sum(counts.values())  # every clip once
    units = [set(plan.units(sp)) for sp in SPLITS]
    assert all(not (a & b) for i, a in enumerate(units) for b in units[i + 1:])  # disjoint by unit
    total = sum(counts.values())
    for sp, frac in ((TRAIN, 0.10), (CALIBRATION, 0.10), (TEST, 0.15)):
        assert abs(plan.counts()[sp] / total - frac) < 0.03, (sp, plan.counts())
    dev = plan.mix_deviation()
    assert set(dev) == set(SPLITS) and max(dev.values()) <= MIX_TOLERANCE, dev  # the pool too
    assert not any("points from the declared" in n for n in plan.notes)


def test_random_order_fill_spreads_a_split_over_more_recordings():
    """Best fit takes the one large unit that comes closest to a site's target; the random-order
    fill takes the small units that fit under it first, so calibration and test span more
    recordings, within the tolerance of the declared mix and near their clip targets."""
    n_units = {"best_fit": [], "random_order": []}
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        counts, site_of = {}, {}
        for site, big in (("A", 60), ("B", 40)):  # per site one unit of about a split's target ...
            counts[f"{site}-big"], site_of[f"{site}-big"] = big, site
            for i in range(30):  # ... and many small recordings
                counts[f"{site}-{i}"], site_of[f"{site}-{i}"] = int(rng.integers(3, 12)), site
        total = sum(counts.values())
        for fill in n_units:
            plan = plan_split(counts, site_of, train_fraction=0.10, calibration_fraction=0.10, test_fraction=0.15,
                              seed=seed, fill=fill)
            if fill == "random_order":  # (best fit may miss: the big units overshoot some targets)
                assert max(plan.mix_deviation().values()) <= MIX_TOLERANCE, plan.mix_deviation()
                for sp, frac in ((TRAIN, 0.10), (CALIBRATION, 0.10), (TEST, 0.15)):
                    assert abs(plan.counts()[sp] / total - frac) < 0.03, (sp, plan.counts())
            n_units[fill].append(len(plan.units(CALIBRATION)) + len(plan.units(TEST)))
            again = plan_split(counts, site_of, train_fraction=0.10, calibration_fraction=0.10,
                               test_fraction=0.15, seed=seed, fill=fill)
            assert again.assignment == plan.assignment  # the seed fixes the plan
    assert np.mean(n_units["random_order"]) > 1.5 * np.mean(n_units["best_fit"]), n_units
    with pytest.raises(ValueError, match="unknown split fill 'largest'"):
        plan_split(counts, site_of, train_fraction=0.1, calibration_fraction=0.1, test_fraction=0.15, seed=0,
                   fill="largest")


def test_declared_site_mix_is_followed():
    counts, site_of = _units(np.random.default_rng(5), {"A": 80, "B": 80})
    plan = plan_split(counts, site_of, train_fraction=0.1, calibration_fraction=0.1, test_fraction=0.15, seed=0,
                      site_mix={"A": 3, "B": 1})
    assert plan.mix == {"A": 0.75, "B": 0.25}
    for sp in (TRAIN, CALIBRATION, TEST):
        assert abs(plan.site_mix(sp)["A"] - 0.75) <= MIX_TOLERANCE, plan.site_mix(sp)


def test_coarse_units_are_noted_and_fixed_units_honoured():
    counts = {"A-big": 800, "A-small": 30, "B-1": 40, "B-2": 45, "B-3": 50, "B-4": 35}
    site_of = {u: u[0] for u in counts}
    plan = plan_split(counts, site_of, train_fraction=0.1, calibration_fraction=0.1, test_fraction=0.15, seed=0,
                      fixed={TEST: ["B-1"]})
    assert plan.assignment["B-1"] == TEST and plan.assignment["A-big"] == POOL
    assert any("points from the declared" in n for n in plan.notes)  # A cannot be spread over four splits
    with pytest.raises(ValueError, match="two splits"):
        plan_split(counts, site_of, train_fraction=0.1, calibration_fraction=0.1, test_fraction=0.15, seed=0,
                   fixed={TEST: ["B-1"], TRAIN: ["B-1"]})


def _ego_table(rows):
    """A clip table of (source_file, segment, xy track) rows."""
    bufs, shapes = [], []
    for _, _, xy in rows:
        st = np.zeros((len(xy), 4))
        st[:, :2] = xy
        bufs.append(st.astype("<f8").tobytes())
        shapes.append([len(xy), 4])
    return pa.table({"source_file": [r[0] for r in rows], "segment": [r[1] for r in rows],
                     "ego_states": pa.array(bufs, pa.binary()), "ego_states__shape": shapes})


def test_recording_groups_link_files_that_share_a_vehicle():
    t = np.arange(56) * 1.3
    track = np.stack([t, np.full(56, 3.7)], 1)
    stopped = np.tile([[7.0, 1.0]], (20, 1))  # two vehicles stopped at one stop line: no link
    rows = [("S_1.xml", "S", track[:30]), ("S_2.xml", "S", track[20:]),  # one vehicle, two windows
            ("S_3.xml", "S", track + [0, 50.0]), ("T_1.xml", "T", track[:30]),  # another lane; another segment
            ("S_4.xml", "S", stopped), ("S_5.xml", "S", stopped + 0.01)]
    links = shared_track_links(_ego_table(rows))
    assert links == [("S_1.xml", "S_2.xml")]
    units = recording_groups([(r[0], r[1]) for r in rows], links)
    assert units == {"S_1.xml": "S/S_1.xml", "S_2.xml": "S/S_1.xml", "S_3.xml": "S/S_3.xml", "T_1.xml": "T",
                     "S_4.xml": "S/S_4.xml", "S_5.xml": "S/S_5.xml"}


def test_pilot_code_never_names_the_test_split():
    """Static half: the modules the pilot runs use never name the test split (the dynamic
    half below runs pilots with the test split removed)."""
    from mosaic_ray.stages import pilot

    assert pilot.PILOT_SPLIT == CALIBRATION
    for rel in ("mosaic_ray/stages/pilot.py", "mosaic_ray/selection", "mosaic_ray/domains",
                "mosaic_ray/planner/training.py"):
        for path in ([ROOT / rel] if rel.endswith(".py") else sorted((ROOT / rel).glob("*.py"))):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                assert not (isinstance(node, ast.Name) and node.id == "TEST"), f"{path} names TEST"
                assert not (isinstance(node, ast.Constant) and node.value in ("test", "ingest/clips/test")), \
                    f"{path}:{node.lineno} names the test split"


@pytest.mark.ray
def test_pilots_run_without_the_test_split(make_run):
    """Dynamic half: remove the test split; the pilot runs (control + one domain) still score."""
    from mosaic_ray import layout
    from mosaic_ray.stages.ingest import load_clips
    from mosaic_ray.stages.pilot import run_pilots

    from conftest import TINY_PLANNER, write_untrained_base

    cfg, st, _ = make_run("no_test", planner={**TINY_PLANNER, "torch_threads": 1},
                          pilot={"sizes": [2], "seeds": [0], "epochs": 1, "cpus_per_trial": 1.0})
    train, pool = load_clips(st, TRAIN), load_clips(st, POOL)
    write_untrained_base(cfg, st, train, pool)
    st.delete(layout.clips(TEST))
    with pytest.raises(Exception):
        load_clips(st, TEST)  # reading the test split now fails
    ranked = {"d": sorted(c.clip_id for c in pool)[:3]}
    table = run_pilots(cfg, st, {"no_test": ranked}, layout.BASE_CHECKPOINT, 0.5)["no_test"]
    rows = table.to_pylist()
    assert {(r["domain"], r["n"]) for r in rows} == {("_control", 0), ("d", 2)}
    assert all(np.isfinite(r["epdms"]) for r in rows)
