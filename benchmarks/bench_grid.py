"""Grid-cell throughput: final trainings through Ray Train vs inside their Tune trial (issue 12 part 6).

    .venv/bin/python benchmarks/bench_grid.py [--config jobs/ngsim_demo.yaml] [--cells 4]
        [--budget 150] [--epochs 60] [--rounds 2] [--settings ...] [--tag TAG]

Prepares (or reuses) a run of the config up to its base model (``ingest`` and ``base``
steps), then runs the same ``--cells`` grid cells (Random selections of ``--budget`` pool
clips, seeds 0..cells-1, ``--epochs`` epochs from scratch, test EPDMS) through
:func:`mosaic_ray.stages.grid.run_grid` under each setting, interleaved over ``--rounds``
rounds (each round in fresh result folders, so nothing resumes). Settings (default: the
first, the fourth and the fifth):

* ``ray_train_2w_mlp``: the grid as the issue found it: ``train.backend: ray_train``, 2 DDP
  workers × 0.5 CPU, one cell at a time, the ``mlp`` scoring head (``planner.head``);
* ``ray_train_2w``: the same with the ``additive`` head;
* ``ray_train_1w``: Ray Train with one worker × 1 CPU, 2 cells at a time (additive head);
* ``in_trial_mlp``: the same loop inside the Tune trial, one worker × 1 CPU, 2 cells at a time,
  ``mlp`` head (with the split memo: D_train, the pool and test featurised once per trial
  process, :mod:`mosaic_ray.stages.split_memo`);
* ``in_trial``: in-trial with the ``additive`` head (the configs' default today).

Every setting evaluates through the split memo (the trial process keeps the featurised test
split), so the Ray Train settings are slightly faster than the grid was before the memo: the
speed-ups against ``ray_train_2w_mlp`` understate those against the grid the issue measured.

Reported per setting: wall seconds of the whole grid, cells per hour, and the per-cell
training / evaluation seconds from the stored results; for the two one-worker settings also
whether their weights are bit-identical (they should be). Results go to
``benchmarks/results/grid_<date>[_<tag>].json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_RT2 = {"backend": "ray_train", "num_workers": 2, "cpus_per_worker": 0.5, "concurrency": 1}
_IN = {"backend": "in_trial", "num_workers": 1, "cpus_per_worker": 1.0, "concurrency": 2}
#: name -> {"train": train.* values, "head": planner.head}
SETTINGS = {
    "ray_train_2w_mlp": {"train": _RT2, "head": "mlp"},
    "ray_train_2w": {"train": _RT2, "head": "additive"},
    "ray_train_1w": {"train": {"backend": "ray_train", "num_workers": 1, "cpus_per_worker": 1.0, "concurrency": 2},
                     "head": "additive"},
    "in_trial_mlp": {"train": _IN, "head": "mlp"},
    "in_trial": {"train": _IN, "head": "additive"},
}
BASELINE = "ray_train_2w_mlp"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "jobs" / "ngsim_demo.yaml"))
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "bench_grid"))
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--budget", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=[BASELINE, "in_trial_mlp", "in_trial"], choices=list(SETTINGS))
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import numpy as np
    import torch

    from mosaic_ray.config import load_config, validate_config
    from mosaic_ray.pipeline import run_steps
    from mosaic_ray.planner.model import load_checkpoint
    from mosaic_ray.stages.grid import Cell, run_grid
    from mosaic_ray.stages.runtime import ray_session
    from mosaic_ray.stages.step import Context

    raw = load_config(args.config, {"output_dir": args.output_dir}).model_dump(mode="json")
    raw["name"] = "grid_bench"
    cfg0 = validate_config(raw)
    t0 = time.time()
    run_steps(cfg0, ["ingest", "base"])  # skipped where already complete
    prep_s = time.time() - t0
    st = Context.for_config(cfg0).storage
    pool = sorted(st.read_table("ingest/clips/pool", columns=["clip_id"]).column("clip_id").to_pylist())
    rng = np.random.default_rng(42)
    ids = [str(x) for x in rng.permutation(pool)[: args.budget]]
    cells = [Cell("random", args.budget, s, ids) for s in range(args.cells)]

    runs: dict[str, list[dict]] = {k: [] for k in args.settings}
    with ray_session(cfg0):
        for rnd in range(args.rounds):
            for name in args.settings:
                r = dict(raw)
                r["train"] = {**raw["train"], **SETTINGS[name]["train"], "epochs": args.epochs,
                              "seeds": list(range(args.cells))}
                r["planner"] = {**raw["planner"], "head": SETTINGS[name]["head"]}
                cfg = validate_config(r)
                sub = Context.for_config(cfg).storage
                for c in cells:  # fresh results and training runs: nothing resumes
                    c2 = Cell(c.method, c.budget, c.seed, c.pool_ids)
                    if sub.exists(c2.result_path):
                        sub.delete(c2.result_path)
                if sub.exists("train_runs"):
                    sub.delete("train_runs")
                t = time.time()
                out = run_grid(cfg, sub, [Cell(c.method, c.budget, c.seed, c.pool_ids) for c in cells], force=True)
                wall = time.time() - t
                weights = {}
                for k, res in out.items():
                    sd = load_checkpoint(sub.path(res["checkpoint"])).state_dict()
                    weights[k] = {n: v.clone() for n, v in sd.items()}
                runs[name].append({
                    "round": rnd, "wall_s": round(wall, 1), "cells_per_hour": round(3600 * len(cells) / wall, 1),
                    "train_s": [res["wall_time_s"] for res in out.values()],
                    "eval_s": [res["eval_time_s"] for res in out.values()],
                    "cell_s": [res["cell_time_s"] for res in out.values()],
                    "epdms": {k: (res.get("test") or res.get("validation"))["epdms"] for k, res in out.items()},
                    "_weights": weights})
                print(f"round {rnd} {name}: {wall:.1f} s for {len(cells)} cells "
                      f"({3600 * len(cells) / wall:.0f} cells/h)", flush=True)

    same = None
    if "ray_train_1w" in runs and "in_trial" in runs:
        a, b = runs["ray_train_1w"][0]["_weights"], runs["in_trial"][0]["_weights"]
        same = all(torch.equal(a[k][n], b[k][n]) for k in a for n in a[k])
    summary = {}
    for name, rs in runs.items():
        for r in rs:
            r.pop("_weights")
        summary[name] = {"setting": SETTINGS[name],
                         "median_wall_s": statistics.median(r["wall_s"] for r in rs),
                         "median_cells_per_hour": statistics.median(r["cells_per_hour"] for r in rs),
                         "median_train_s_per_cell": statistics.median(x for r in rs for x in r["train_s"]),
                         "median_eval_s_per_cell": statistics.median(x for r in rs for x in r["eval_s"]),
                         "median_cell_s_in_trial": statistics.median(x for r in rs for x in r["cell_s"]),
                         "runs": rs}
    base = summary.get(BASELINE, {}).get("median_cells_per_hour")
    for name in summary:
        if base:
            summary[name][f"speedup_vs_{BASELINE}"] = round(summary[name]["median_cells_per_hour"] / base, 2)
    result = {"date": dt.date.today().isoformat(), "machine": platform.platform(), "cpus": __import__("os").cpu_count(),
              "config": args.config, "cells": args.cells, "budget": args.budget, "epochs": args.epochs,
              "rounds": args.rounds, "prepare_s": round(prep_s, 1),
              "one_worker_weights_bit_identical": same, "settings": summary}
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"grid_{result['date']}{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    for name, s in summary.items():
        print(f"{name}: {s['median_cells_per_hour']:.0f} cells/h (median wall {s['median_wall_s']:.1f} s; "
              f"train {s['median_train_s_per_cell']:.1f} s, eval {s['median_eval_s_per_cell']:.1f} s per cell)"
              + (f", {s[f'speedup_vs_{BASELINE}']}x" if f"speedup_vs_{BASELINE}" in s else ""))
    print(f"one-worker weights bit-identical: {same}; written {path}")


if __name__ == "__main__":
    main()
