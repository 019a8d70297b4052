"""Selection at scale: the greedy allocator and the k-center coreset (issue 5 targets).

    .venv/bin/python benchmarks/bench_selection.py [--quick] [--cases allocator coreset]
        [--repeats N] [--tag TAG]

* allocator: B = 10^7 clips over M = 10^3 domains with random saturating laws (target ≤ 2 s);
* coreset: k-center greedy on 10^6 × 128 float32 embeddings from a 10^4-clip training set,
  B = 10^4 (time and peak memory; O(pool) memory: a running min-distance vector).

Each case runs in a fresh process (single thread: OMP/MKL threads = 1 unless --threads) so its
peak RSS (``ru_maxrss``) is its own; with ``--repeats N`` each case runs N times (fresh
processes) and the minimum and median seconds are kept with every run's figure. Results go to
benchmarks/results/selection_<date>[_<tag>].json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

CASES = {
    "allocator": """
import time, numpy as np, resource
from mosaic_ray.selection.allocator import greedy_allocate
from mosaic_ray.selection.scaling_law import ScalingLaw
rng = np.random.default_rng(0)
M, B = {M}, {B}
laws = [ScalingLaw(a=float(rng.uniform(0.1, 5)), tau=float(rng.uniform(100, 20000))) for _ in range(M)]
caps = rng.integers(B // M, 3 * B // M, M)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); counts, order = greedy_allocate(laws, caps, B); dt_ = time.perf_counter() - t
assert counts.sum() == B and len(order) == B
print({{"seconds": dt_, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss0 / 1024, "M": M, "B": B}})
""",
    "coreset": """
import time, numpy as np, resource
from mosaic_ray.selection.baselines import k_center_greedy
rng = np.random.default_rng(0)
N, D, T, B = {N}, 128, {T}, {Bc}
X = rng.standard_normal((N, D), dtype=np.float32)
Xt = rng.standard_normal((T, D), dtype=np.float32)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); out = k_center_greedy(X, B, Xt); dt_ = time.perf_counter() - t
idx = out[0] if isinstance(out, tuple) else out
assert len(set(np.asarray(idx).tolist())) == B
print({{"seconds": dt_, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss0 / 1024, "data_mb": (X.nbytes + Xt.nbytes) / 2**20, "N": N, "D": D, "T": T, "B": B}})
""",
}


def run_case(code: str, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    pre = f"import torch; torch.set_num_threads({threads})\n"
    out = subprocess.run([sys.executable, "-c", pre + code], env=env, capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])  # a dict literal printed by the case


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    sizes = (dict(M=100, B=10**5, N=10**5, T=10**3, Bc=10**3) if args.quick
             else dict(M=10**3, B=10**7, N=10**6, T=10**4, Bc=10**4))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    res = {"date": dt.date.today().isoformat(), "machine": f"{os.cpu_count()} cores, {cpu}, no GPU",
           "python": platform.python_version(), "threads": args.threads, "quick": args.quick}
    for case in args.cases:
        runs = [run_case(CASES[case].format(**sizes), args.threads) for _ in range(args.repeats)]
        res[case] = min(runs, key=lambda r: r["seconds"])
        if args.repeats > 1:
            secs = sorted(r["seconds"] for r in runs)
            res[case].update(repeats=args.repeats, seconds_median=secs[len(secs) // 2], seconds_all=secs)
        print(case, res[case], flush=True)
    suffix = ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    out = Path(__file__).parent / "results" / f"selection_{res['date']}{suffix}.json"
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
