"""Synthetic scene pool benchmark: scenes per second on one core for the Ray-free core.

Runs :func:`mosaic_ray.autoscale.synthesize.synthesize_clip` (default :class:`SynthesizeConfig`
unless overridden) on real NGSIM clips, single-threaded (OMP / MKL / OpenBLAS threads = 1, set
before numpy is imported), one clip at a time, and prints one JSON object: kept scenes per
second (wall and process CPU), attempts per second, the kept fraction, kept scenes per real
clip, the quarantine reasons and the expert mix. The time per clip covers everything the
stage does per clip except Parquet I/O: perturbation, scene preparation, both experts, the
feasibility checks and the EPDMS scoring.

Clips: those ``cut_file`` cuts from ``--files`` (paths relative to the data folder, default
one recording per site), every ``--stride``-th up to ``--clips`` per file; or, with ``--run``,
the clips of that ingested run's ``--split``.

Usage::

    python benchmarks/bench_synthesize.py --clips 20 [--per-clip 12] [--out results.json]
    python benchmarks/bench_synthesize.py --run runs/ngsim_demo --split train
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mosaic_ray.autoscale.synthesize import SynthesizeConfig, synthesize_clip  # noqa: E402

DEFAULT_FILES = ["US101/USA_US101-22_1_T-1.xml", "Lankershim/USA_Lanker-2_13_T-1.xml",
                 "Peachtree/USA_Peach-2_1_T-1.xml", "Lankershim/USA_Lanker-1_2_T-1.xml"]


def load(args) -> list:
    if args.run:
        from mosaic_ray.stages.ingest import load_clips
        from mosaic_ray.storage import Storage

        return load_clips(Storage(args.run), args.split)[: args.max_clips or None]
    from mosaic_ray.data.commonroad import cut_file

    data = Path(args.data_dir or os.environ.get("MOSAIC_DATA_DIR", ROOT.parent / "shared" / "data" / "commonroad-ngsim"))
    out = []
    for f in args.files:
        out += cut_file(str(data / f))[0][:: args.stride][: args.clips]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="an ingested run folder (default: cut clips from --files)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--max-clips", type=int, default=0, help="with --run: at most this many clips (0: all)")
    ap.add_argument("--data-dir")
    ap.add_argument("--files", nargs="+", default=DEFAULT_FILES)
    ap.add_argument("--clips", type=int, default=20, help="clips per file")
    ap.add_argument("--stride", type=int, default=3, help="every k-th clip of a file")
    ap.add_argument("--per-clip", type=int, default=None, help="override SynthesizeConfig.per_clip")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    over = {"seed": args.seed, **({"per_clip": args.per_clip} if args.per_clip else {})}
    cfg = SynthesizeConfig(**over)
    clips = load(args)
    synthesize_clip(clips[0], cfg)  # warm caches (savgol matrices, imports)
    kept_per_clip, reasons, infeasible, kinds_att, kinds_kept, ms = [], Counter(), Counter(), Counter(), Counter(), []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for c in clips:
        t = time.perf_counter()
        kept, bad = synthesize_clip(c, cfg)
        ms.append(1000 * (time.perf_counter() - t))
        kept_per_clip.append(len(kept))
        for q in bad:
            reasons[q["category"]] += 1
            kinds_att[q["expert_kind"]] += 1
            if q["category"] == "infeasible":
                infeasible[q["reason"]] += 1
        for s in kept:
            kinds_att[s.extra["expert_kind"]] += 1
            kinds_kept[s.extra["expert_kind"]] += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    kept_n = int(sum(kept_per_clip))
    attempts = kept_n + int(sum(reasons.values()))
    per = np.array(kept_per_clip)
    result = {
        "benchmark": "synthesize_clip", "date": dt.date.today().isoformat(), "machine": platform.processor()
        or platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
        "source": args.run or args.files, "real_clips": len(clips), "config": cfg.model_dump(mode="json"),
        "scenes": kept_n, "attempts": attempts, "kept_fraction": round(kept_n / max(attempts, 1), 4),
        "scenes_per_clip_mean": round(float(per.mean()), 3), "scenes_per_clip_min": int(per.min()),
        "clips_at_quota": int((per >= cfg.per_clip).sum()),
        "scenes_per_s_wall": round(kept_n / wall, 2), "scenes_per_s_cpu": round(kept_n / cpu, 2),
        "attempts_per_s_wall": round(attempts / wall, 2),
        "ms_per_real_clip": {"mean": round(float(np.mean(ms)), 1), "median": round(float(np.median(ms)), 1),
                             "max": round(float(np.max(ms)), 1)},
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "quarantine": dict(sorted(reasons.items())), "infeasible": dict(sorted(infeasible.items())),
        "by_kind": {k: {"attempts": kinds_att[k], "kept": kinds_kept[k]} for k in sorted(kinds_att)},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
