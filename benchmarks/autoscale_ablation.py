"""Paired by seed: a line of the AutoScale benchmark (main run) minus the same line of the run without the Graph-RAE regularisers, test EPDMS.

    python benchmarks/autoscale_ablation.py MAIN_SUMMARY NOREG_SUMMARY OUT_JSON
"""
import json, math, sys
from scipy import stats
import numpy as np
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
rows = lambda s: {(r["method"], r["budget"]): r for r in s["results"]}
ra, rb = rows(a), rows(b)
out = []
for key in sorted(set(ra) & set(rb), key=lambda k: (k[1], k[0])):
    x, y = ra[key], rb[key]
    common = [s for s in x["seeds"] if s in y["seeds"]]
    dx = np.array([x["test_epdms_per_seed"][x["seeds"].index(s)] for s in common])
    dy = np.array([y["test_epdms_per_seed"][y["seeds"].index(s)] for s in common])
    d = dx - dy
    hw = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    out.append({"method": key[0], "budget": key[1], "with_reg": float(dx.mean()), "without_reg": float(dy.mean()),
                "diff": float(d.mean()), "ci95": float(hw), "wins": int((d > 0).sum()), "n": len(d)})
    print(f"| {key[0]} | {key[1]} | {100*dx.mean():.2f} | {100*dy.mean():.2f} | {100*d.mean():+.2f} ± {100*hw:.2f} | {(d>0).sum()}/{len(d)} |")
json.dump(out, open(sys.argv[3], "w"), indent=1)
