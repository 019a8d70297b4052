"""Bootstrap intervals (mosaic_ray.evaluate.stats): coverage on simulated data, and BRMR speed.

Coverage: per setting, ``--datasets`` simulated (method, Random) pairs on the same clips with a
known population difference of 1 EPDMS point (shared clip difficulty, per-clip heterogeneity of
the effect, per-seed offsets, per-(seed, clip) noise); the fraction of 95 % intervals of
``paired_bootstrap_diff`` that contain it, with the few-seed widening on and off (the raw
percentile interval). Speed: ``brmr_bootstrap`` with the own PAVA and with
``sklearn.isotonic.isotonic_regression`` swapped in, in one process, side by side.

    python benchmarks/bench_stats.py --datasets 300 --boot 1000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mosaic_ray.evaluate import stats

SETTINGS = [  # (seeds, clips, sd of seed offsets, sd of per-clip effect heterogeneity)
    (3, 200, 0.01, 0.05), (5, 200, 0.01, 0.05), (5, 200, 0.0, 0.08), (3, 250, 0.02, 0.03)]


def coverage(n_data: int, n_boot: int) -> list[dict]:
    out = []
    for seeds, clips, sd_seed, sd_het in SETTINGS:
        rng = np.random.default_rng(1)
        hit = {"widened": 0, "raw": 0}
        for r in range(n_data):
            clip = rng.normal(0.8, 0.15, clips)
            het = rng.normal(0, sd_het, clips)
            a = clip + 0.01 + het + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, 0.05, (seeds, clips))
            b = clip + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, 0.05, (seeds, clips))
            iv = stats.paired_bootstrap_diff(a, b, n_boot=n_boot, seed=r)
            hit["widened"] += iv.lo <= 0.01 <= iv.hi
            g = np.random.default_rng(r)  # the same resampling without the widening
            wc = stats.bootstrap_weights(g, clips, n_boot)
            wa = stats.bootstrap_weights(g, seeds, n_boot)
            reps = stats.cell_means(a, wa, wc) - stats.cell_means(b, wa, wc)
            raw = stats.percentile_interval(float(a.mean() - b.mean()), reps)
            hit["raw"] += raw.lo <= 0.01 <= raw.hi
        out.append({"seeds": seeds, "clips": clips, "sd_seed": sd_seed, "sd_het": sd_het, "datasets": n_data,
                    "coverage_widened": hit["widened"] / n_data, "coverage_raw": hit["raw"] / n_data})
        print(json.dumps(out[-1]), flush=True)
    return out


def brmr_speed(n_boot: int) -> dict:
    from sklearn.isotonic import isotonic_regression

    rng = np.random.default_rng(0)
    budgets = [25, 50, 100, 200, 400]
    cells = {m: {b: rng.normal(0.8, 0.1, (5, 250)) for b in budgets} for m in ["random"] + [f"m{i}" for i in range(9)]}
    base = rng.normal(0.8, 0.1, 250)
    res = {}
    own = stats.pava
    for name, fn in (("pava", own), ("sklearn", lambda y: np.asarray(isotonic_regression(y), float))):
        stats.pava = fn
        t = time.perf_counter()
        stats.brmr_bootstrap(cells, base, n_boot=n_boot)
        res[f"{name}_s"] = round(time.perf_counter() - t, 2)
    stats.pava = own
    res["what"] = f"10 methods x 5 budgets x 5 seeds x 250 clips, {n_boot} replicates"
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=int, default=300)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    result = {"coverage": coverage(a.datasets, a.boot), "brmr_speed": brmr_speed(2000)}
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(result, fh, indent=1)
