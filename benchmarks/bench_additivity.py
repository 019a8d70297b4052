"""Do two domains' pilot gains add up? (issue 12: why the summed laws miss), on calibration.

    .venv/bin/python benchmarks/bench_additivity.py CONFIG [--domains Lankershim US101]
        [--n 100 100] [--seeds 0 1 2] [--workers 2] [--tag TAG]

MOSAIC's estimate of a mixture's EPDMS is the control plus the sum of the per-domain laws
(MOSAIC Eq. 4 summed over domains), which assumes that the gain of n_A clips of domain A and
the gain of n_B clips of domain B add up when both are trained on together. CONFIG names a
finished run (``mosaic-ray run CONFIG`` up to ``pilot``). With the pilots' own recipe
(``pilot.*``: from scratch or from the base model, the same epochs, the same loop as the pilot
trials, :func:`~mosaic_ray.stages.trainer.train_planner_in_process`) this trains, per seed:

* the control: D_train alone (the pilots' n = 0);
* A: D_train ∪ the top ``n_A`` ranked clips of domain A (what A's pilot of that size trains on);
* B: likewise for domain B;
* A + B: D_train ∪ both sets;
* a long control: D_train alone for as many optimizer steps as A + B takes (epochs scaled up):
  how much of a gain more training of D_train alone gives;

(``--steps``: every arm for that many optimizer steps, ``planner.steps``) and scores each on
the **calibration** split (the pilots' split; test is not read). Reported
(EPDMS points ×100, 95 % paired bootstrap over calibration clips and seeds,
:func:`mosaic_ray.evaluate.stats.paired_bootstrap_diff`): ΔA, ΔB and ΔA+B against the control,
ΔA + ΔB (what the summed laws assume), the interaction ΔA+B − ΔA − ΔB (0 when the gains
add up; negative when part of each domain's gain is shared, e.g. the gain of more optimizer
steps on any data, which the sum counts once per domain), and the long control's gain. Also the
optimizer steps of each training. Result: ``benchmarks/results/additivity_<date>[_<tag>].json``; finished trainings are
kept under ``<run>/additivity_bench/`` (a rerun skips them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def _run(config_path: str, arm: str, ids: list[str], seed: int, epochs: int | None = None,
         steps: int | None = None) -> dict:
    """One pilot-recipe training on D_train ∪ ``ids`` (``epochs``: the recipe's by default) and its
    calibration scores (worker process)."""
    import torch

    torch.set_num_threads(1)
    from mosaic_ray.config import load_config
    from mosaic_ray.data.split import CALIBRATION
    from mosaic_ray.planner.training import TrainRecipe, recipe_from_config
    from mosaic_ray.stages.base import evaluate_checkpoint
    from mosaic_ray.stages.ingest import load_clips
    from mosaic_ray.stages.step import Context
    from mosaic_ray.stages.trainer import train_planner_in_process

    cfg = load_config(config_path)
    st = Context.for_config(cfg).storage
    if steps is not None:  # the fixed-step recipe (planner.steps) instead of the config's
        cfg = cfg.model_copy(update={"planner": cfg.planner.model_copy(update={"steps": steps})})
    out = f"additivity_bench/{arm}-s{seed}" + (f"-steps{steps}" if steps else "") + ".json"
    if st.exists(out):
        return st.read_json(out)
    recipe = recipe_from_config(cfg, "pilot", epochs=epochs)
    t0 = time.time()
    info = train_planner_in_process(cfg, st, name=f"additivity-{arm}-s{seed}", epochs=recipe.epochs, seed=seed,
                                    pool_ids=ids or None, recipe=recipe, label="additivity_bench",
                                    init_checkpoint="planner/base.pt" if cfg.pilot.init == "base" else None)
    util = evaluate_checkpoint(st, info["checkpoint"], clips=load_clips(st, CALIBRATION))
    rows = int(info["n_train"])
    res = {"arm": arm, "seed": seed, "clips": len(ids), "rows": rows,
           "optimizer_steps": TrainRecipe(**info["recipe"]).total_steps(rows),  # as trained (planner.steps)
           "wall_s": round(time.time() - t0, 1), "calibration": util}
    st.write_json(out, res)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("--domains", nargs=2, default=["Lankershim", "US101"])
    ap.add_argument("--n", nargs=2, type=int, default=[100, 100])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=None,
                    help="train every arm for this many optimizer steps (planner.steps) instead of the config's recipe")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import numpy as np

    from mosaic_ray.config import load_config
    from mosaic_ray.evaluate.stats import align_cells, paired_bootstrap_diff
    from mosaic_ray.stages.pilot import pilot_orders
    from mosaic_ray.stages.step import Context

    cfg = load_config(args.config)
    st = Context.for_config(cfg).storage
    order = next(iter(pilot_orders(cfg, st).values()))  # the default (ranked) pilot set
    (a, b), (na, nb) = args.domains, args.n
    for d, n in ((a, na), (b, nb)):
        if d not in order:
            raise SystemExit(f"no domain {d!r} in the run's default pilot set: {sorted(order)}")
        if n > len(order[d]):
            raise SystemExit(f"{d} has {len(order[d])} ranked clips, fewer than {n}")
    arms = {"control": [], "A": order[a][:na], "B": order[b][:nb], "AB": order[a][:na] + order[b][:nb]}
    jobs = [(arm, ids, s, None, args.steps) for s in args.seeds for arm, ids in arms.items()]
    t0 = time.time()
    with ProcessPoolExecutor(args.workers) as ex:
        results = list(ex.map(_run, [args.config] * len(jobs), *zip(*jobs)))
        # the long control: D_train alone for A + B's optimizer steps (whole epochs, rounded up)
        if args.steps is None and cfg.planner.steps is None:  # a fixed step count: every arm takes the same
            steps = {r["arm"]: r["optimizer_steps"] for r in results}
            long_epochs = math.ceil(cfg.pilot.epochs * steps["AB"] / steps["control"])
            arms["control_long"] = []
            jobs = [("control_long", [], s, long_epochs, None) for s in args.seeds]
            results += list(ex.map(_run, [args.config] * len(jobs), *zip(*jobs)))
    wall = time.time() - t0

    # (seeds, clips) calibration EPDMS (0..1) per arm, seeds in order, clips in one common order
    ordered = sorted(results, key=lambda r: (r["arm"], r["seed"]))
    _, rows = align_cells([r["calibration"]["per_clip"] for r in ordered])
    m = {arm: np.stack([x for r, x in zip(ordered, rows) if r["arm"] == arm]) for arm in arms}

    def pts(x: np.ndarray, y: np.ndarray) -> dict:
        iv = paired_bootstrap_diff(x, y, n_boot=args.boot, seed=0)
        return {"mean": round(100 * iv.estimate, 2), "lo": round(100 * iv.lo, 2), "hi": round(100 * iv.hi, 2)}

    summary = {
        "date": dt.date.today().isoformat(), "config": args.config, "domains": {"A": a, "B": b},
        "n": {"A": na, "B": nb}, "seeds": args.seeds, "wall_s": round(wall, 1),
        "epdms": {arm: round(100 * float(v.mean()), 2) for arm, v in m.items()},
        "epdms_per_seed": {arm: [round(100 * float(x), 2) for x in v.mean(1)] for arm, v in m.items()},
        "optimizer_steps": {arm: sorted({r["optimizer_steps"] for r in results if r["arm"] == arm}) for arm in arms},
        "rows": {arm: sorted({r["rows"] for r in results if r["arm"] == arm}) for arm in arms},
        "gain_A": pts(m["A"], m["control"]), "gain_B": pts(m["B"], m["control"]),
        "gain_AB": pts(m["AB"], m["control"]),
        "gain_control_long": pts(m["control_long"], m["control"]) if "control_long" in m else None,
        "steps": args.steps,
        "sum_of_gains": pts(m["A"] + m["B"], 2 * m["control"]),
        "interaction": pts(m["AB"] + m["control"], m["A"] + m["B"]),
    }
    name = f"additivity_{summary['date']}" + (f"_{args.tag}" if args.tag else "") + ".json"
    path = ROOT / "benchmarks" / "results" / name
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("epdms", "epdms_per_seed", "optimizer_steps", "gain_A", "gain_B",
                                              "gain_AB", "sum_of_gains", "interaction", "gain_control_long",
                                              "wall_s")}))
    print(f"written {path}")


if __name__ == "__main__":
    main()
