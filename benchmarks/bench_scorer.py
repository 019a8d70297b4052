"""EPDMS scorer benchmark: (clip x trajectory) scores per second per core, vectorised vs reference.

Scores the K = 256 anchors of a run's stored trajectory vocabulary on real NGSIM clips of
an ingested run, single-threaded (OMP / MKL / OpenBLAS threads = 1, set before numpy is
imported), with

* the vectorised scorer: ``prepare_scene`` + ``score_trajectories`` (one call per clip: all
  K anchors, the 5 reference proposals and the human future, tracked and scored), and
* the per-step shapely reference (``mosaic_ray.scoring.reference_impl``) on a few clips in
  the same process, whose terms must equal the vectorised ones.

The machine may be shared: each clip is timed ``--repeats`` times and the minimum kept (wall
and process CPU time are both reported). Writes ``benchmarks/results/scorer_<date>.json``.

Usage::

    python benchmarks/bench_scorer.py --run /work/ci_check/runs/ngsim_demo --split pool --clips 200 \
        --ref-clips 3 --repeats 5
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mosaic_ray.scoring.epdms import TERMS, prepare_scene, score_trajectories  # noqa: E402
from mosaic_ray.scoring.reference_impl import ref_score_trajectories  # noqa: E402
from mosaic_ray.stages.ingest import load_clips  # noqa: E402
from mosaic_ray.storage import Storage  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except Exception:  # noqa: BLE001 - informational only
        pass
    return platform.processor() or "unknown"


def time_vectorised(clip, anchors: np.ndarray, repeats: int) -> tuple[float, float, np.ndarray]:
    """Minimum wall and CPU seconds over ``repeats`` of prepare + score; the (K, 9) terms."""
    walls, cpus = [], []
    terms = None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        res = score_trajectories(prepare_scene(clip), anchors)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        terms = res.terms_array()
    return min(walls), min(cpus), terms


def summarize(x: list[float]) -> dict:
    a = np.asarray(x) * 1e3
    return {"mean_ms": round(float(a.mean()), 2), "median_ms": round(float(np.median(a)), 2),
            "p90_ms": round(float(np.percentile(a, 90)), 2), "max_ms": round(float(a.max()), 2)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="/work/ci_check/runs/ngsim_demo", help="an ingested run folder")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--clips", type=int, default=200, help="clips for the vectorised timing")
    ap.add_argument("--ref-clips", type=int, default=3, help="clips for the shapely reference")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    storage = Storage(args.run)
    clips = load_clips(storage, args.split)
    anchors = np.load(Path(args.run) / "planner" / "vocabulary.npy").astype(np.float64)
    K = anchors.shape[0]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(clips))
    vec_clips = [clips[i] for i in order[:args.clips]]
    load0 = os.getloadavg()
    print(f"[bench] {len(vec_clips)} clips x K={K} anchors, repeats={args.repeats}, load avg {load0}", flush=True)

    # warm-up (imports, caches)
    score_trajectories(prepare_scene(vec_clips[0]), anchors)
    walls, cpus = [], []
    t0 = time.perf_counter()
    for c in vec_clips:
        w, cpu, _ = time_vectorised(c, anchors, args.repeats)
        walls.append(w)
        cpus.append(cpu)
    vec_total = time.perf_counter() - t0

    ref_rows = []
    for c in vec_clips[:args.ref_clips]:
        w_vec, c_vec, terms = time_vectorised(c, anchors, args.repeats)
        w0, c0 = time.perf_counter(), time.process_time()
        ref = ref_score_trajectories(c, anchors)
        w_ref, c_ref = time.perf_counter() - w0, time.process_time() - c0
        rt = np.stack([ref["terms"][k] for k in TERMS], -1)
        diff = float(np.nanmax(np.abs(np.nan_to_num(rt, nan=-1) - np.nan_to_num(terms, nan=-1))))
        ref_rows.append({"clip_id": c.clip_id, "vectorised_wall_s": w_vec, "vectorised_cpu_s": c_vec,
                         "reference_wall_s": w_ref, "reference_cpu_s": c_ref,
                         "speedup_wall": w_ref / w_vec, "speedup_cpu": c_ref / c_vec,
                         "max_abs_term_difference": diff})
        print(f"[bench] reference {c.clip_id}: {w_ref:.1f} s vs {w_vec * 1e3:.1f} ms "
              f"({w_ref / w_vec:.0f}x), max |term difference| {diff:.1e}", flush=True)

    mean_wall = float(np.mean(walls))
    mean_cpu = float(np.mean(cpus))
    result = {
        "benchmark": "epdms_scorer",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_scorer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "gpu": None,
                    "python": platform.python_version(), "numpy": np.__version__,
                    "threads": 1, "load_average_at_start": load0, "load_average_at_end": os.getloadavg()},
        "data": {"run": args.run, "split": args.split, "clips": len(vec_clips), "K": K,
                 "mean_agents": float(np.mean([c.num_agents for c in vec_clips])),
                 "mean_lanes": float(np.mean([c.num_lanes for c in vec_clips]))},
        "vectorised": {
            "per_clip_wall": summarize(walls), "per_clip_cpu": summarize(cpus),
            "scores_per_s_per_core_wall": K / mean_wall, "scores_per_s_per_core_cpu": K / mean_cpu,
            "projected_10k_clips_min_wall": 1e4 * mean_wall / 60.0,
            "projected_10k_clips_min_cpu": 1e4 * mean_cpu / 60.0,
            "loop_wall_s": vec_total,
        },
        "reference": {
            "clips": ref_rows,
            "scores_per_s_per_core_wall": (K * len(ref_rows) / sum(r["reference_wall_s"] for r in ref_rows))
            if ref_rows else None,
            "speedup_wall": (sum(r["reference_wall_s"] for r in ref_rows)
                             / sum(r["vectorised_wall_s"] for r in ref_rows)) if ref_rows else None,
            "speedup_cpu": (sum(r["reference_cpu_s"] for r in ref_rows)
                            / sum(r["vectorised_cpu_s"] for r in ref_rows)) if ref_rows else None,
            "max_abs_term_difference": max((r["max_abs_term_difference"] for r in ref_rows), default=None),
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scorer_{dt.date.today().isoformat()}{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    v = result["vectorised"]
    print(f"[bench] vectorised: {v['per_clip_wall']['mean_ms']} ms/clip wall "
          f"({v['per_clip_cpu']['mean_ms']} ms CPU), {v['scores_per_s_per_core_wall']:.0f} scores/s/core, "
          f"10k clips in {v['projected_10k_clips_min_wall']:.1f} min", flush=True)
    if ref_rows:
        r = result["reference"]
        print(f"[bench] reference: {r['scores_per_s_per_core_wall']:.1f} scores/s/core; "
              f"speed-up {r['speedup_wall']:.0f}x wall, {r['speedup_cpu']:.0f}x CPU", flush=True)
    print(f"[bench] wrote {path}", flush=True)
    return result


if __name__ == "__main__":
    main()
