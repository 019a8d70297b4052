"""Which final-training recipe lets more data help? (issue 12 part 3), measured on calibration.

    .venv/bin/python benchmarks/bench_recipe.py CONFIG [--budgets 0 25 60 120 250 500]
        [--seeds 0 1 2] [--recipes continue_8ep continue_steps scratch_60ep] [--steps 100]
        [--workers 2] [--tag TAG]

CONFIG names a finished run (``mosaic-ray run CONFIG``: ingest, base model, select). For every
recipe, budget and training seed this trains a planner on D_train ∪ Random's selection at that
budget (the run's ``select/manifest.parquet``, method ``random``; budget 0 = D_train alone,
the control) with the project's one training loop (``train_planner_in_process``: the loop,
seeding and row order of the grid's one-worker cells) and scores it on the **calibration**
split: a recipe is tuning, so the test split is not read. Recipes (all other settings are the
config's ``planner.*`` recipe: AdamW, lr, warm-up then cosine decay, batch, mirror):

* ``continue_8ep``: continue ``planner/base.pt`` for 8 epochs (the benchmark's recipe until
  now; optimizer steps grow with the data: 3 at D_train alone per epoch ... 11 at 500 clips).
* ``continue_steps``: continue ``planner/base.pt`` for a fixed number of optimizer steps
  (``--steps``, rounded up to whole epochs), whatever the data size.
* ``scratch_60ep``: train from scratch for 60 epochs (the demo's finals; steps grow with the
  data, as the paper's trainings do), with the original ``mlp`` scoring head.
* ``scratch_60ep_additive``: the same with the ``additive`` scoring head (``planner.head``,
  half the training step's cost).
* ``scratch_12ep_additive`` / ``scratch_24ep_additive``: for runs in the paper's clip unit
  (``ingest.clip_s``: 10 s clips of frames 0.5 s apart, about 5 frames per clip): 12 epochs over
  frames are the optimizer steps of 60 epochs over one window per clip; 24 doubles them.
* ``scratch_<N>steps_additive`` (any N, e.g. ``scratch_600steps_additive``): from scratch for
  exactly N optimizer steps whatever the data size (``planner.steps: N``), additive head.

The ``continue_*`` recipes continue ``planner/base.pt`` and so keep its head.

Cells run ``--workers`` at a time in separate processes (one torch thread each), each result is
stored as it finishes under ``<run>/recipe_bench/`` (a rerun skips finished cells). The summary
(``benchmarks/results/recipe_<tag>_<date>.json`` and a plot next to it) gives, per recipe and
budget, the mean calibration EPDMS over seeds with a 95 % interval (paired bootstrap over
calibration clips and seeds, :func:`mosaic_ray.evaluate.stats.paired_bootstrap_diff`) of the
difference to the recipe's own budget-0 control and to the base model, and the training steps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

RECIPES = {
    "continue_8ep": {"init": "base", "epochs": 8},
    "continue_steps": {"init": "base", "steps": None},  # --steps
    "scratch_60ep": {"init": "scratch", "epochs": 60, "head": "mlp"},
    "scratch_60ep_additive": {"init": "scratch", "epochs": 60, "head": "additive"},
    # the paper's clip unit (ingest.clip_s: 10, stride_s: 0.5): ~5 frames per clip, so 12 epochs over
    # frames take the optimizer steps of 60 over one window per clip; 24 doubles them
    "scratch_12ep_additive": {"init": "scratch", "epochs": 12, "head": "additive"},
    "scratch_24ep_additive": {"init": "scratch", "epochs": 24, "head": "additive"},
}


_FIXED_STEPS = re.compile(r"scratch_(\d+)steps_additive")


def _spec(recipe: str) -> dict:
    """The recipe's settings: one of :data:`RECIPES` or ``scratch_<N>steps_additive``.

    Raises:
        ValueError: an unknown recipe name.
    """
    if recipe in RECIPES:
        return RECIPES[recipe]
    m = _FIXED_STEPS.fullmatch(recipe)
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"unknown recipe {recipe!r}: one of {sorted(RECIPES)} or scratch_<N>steps_additive")
    return {"init": "scratch", "epochs": 1, "head": "additive", "fixed_steps": int(m.group(1))}


def _recipe_name(name: str) -> str:
    """argparse type: a recipe name, checked by :func:`_spec`."""
    try:
        _spec(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def _cell_key(recipe: str, budget: int, seed: int) -> str:
    return f"{recipe}-b{budget}-s{seed}"


def _run_cell(config_path: str, recipe: str, budget: int, seed: int, steps: int) -> dict:
    """One training + calibration evaluation in this (worker) process; returns its result."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from mosaic_ray import layout
    from mosaic_ray.config import load_config
    from mosaic_ray.data.split import CALIBRATION
    from mosaic_ray.planner.training import TrainRecipe, recipe_from_config
    from mosaic_ray.stages.base import evaluate_checkpoint
    from mosaic_ray.stages.ingest import load_clips
    from mosaic_ray.stages.step import Context
    from mosaic_ray.stages.trainer import train_planner_in_process

    cfg = load_config(config_path)
    st = Context.for_config(cfg).storage
    spec = _spec(recipe)
    if "head" in spec:  # a scratch recipe builds the model from cfg.planner
        cfg = cfg.model_copy(update={"planner": cfg.planner.model_copy(update={"head": spec["head"]})})
    key = _cell_key(recipe, budget, seed)
    out = f"recipe_bench/{key}.json"
    if st.exists(out):
        return st.read_json(out)
    pool_ids = None
    if budget > 0:
        t = st.read_table(layout.MANIFEST, columns=["method", "budget", "clip_id"])
        m = np.asarray(t.column("method").to_pylist())
        b = np.asarray(t.column("budget").to_pylist())
        pool_ids = [c for c, keep in zip(t.column("clip_id").to_pylist(), (m == "random") & (b == budget)) if keep]
        if len(pool_ids) != budget:
            raise ValueError(f"Random's selection at budget {budget}: {len(pool_ids)} clips in the manifest")
    base_recipe = recipe_from_config(cfg, "base")
    if "fixed_steps" in spec:  # planner.steps: train_planner_in_process sets the epochs that reach it
        base_recipe = replace(base_recipe, steps=spec["fixed_steps"])
    n_rows = st.read_table("ingest/clips/train", columns=["clip_id"]).num_rows + budget
    epochs = spec["epochs"] if "epochs" in spec else math.ceil(steps / base_recipe.steps_per_epoch(n_rows))
    t0, c0 = time.time(), time.process_time()
    info = train_planner_in_process(cfg, st, name=f"recipe-{key}", epochs=epochs, seed=seed, pool_ids=pool_ids,
                                    init_checkpoint="planner/base.pt" if spec["init"] == "base" else None,
                                    recipe=base_recipe, label="recipe_bench")
    train_cpu = time.process_time() - c0
    util = evaluate_checkpoint(st, info["checkpoint"], clips=load_clips(st, CALIBRATION))
    n_rows = int(info.get("n_train", n_rows))  # training rows (frames) as trained
    trained = TrainRecipe(**info["recipe"])  # as trained (a fixed step count sets the epochs)
    res = {"recipe": recipe, "budget": budget, "seed": seed, "init": spec["init"], "epochs": trained.epochs,
           "rows": n_rows, "optimizer_steps": trained.total_steps(n_rows),
           "train_cpu_s": round(train_cpu, 1), "cell_wall_s": round(time.time() - t0, 1),
           "calibration": util}
    st.write_json(out, res)
    return res


def _base_calibration(config_path: str) -> dict:
    from mosaic_ray.config import load_config
    from mosaic_ray.data.split import CALIBRATION
    from mosaic_ray.stages.base import evaluate_checkpoint
    from mosaic_ray.stages.ingest import load_clips
    from mosaic_ray.stages.step import Context

    cfg = load_config(config_path)
    st = Context.for_config(cfg).storage
    out = "recipe_bench/base.json"
    if not st.exists(out):
        st.write_json(out, {"calibration": evaluate_checkpoint(st, "planner/base.pt", clips=load_clips(st, CALIBRATION))})
    return st.read_json(out)


def _points(iv) -> dict:
    """An :class:`~mosaic_ray.evaluate.stats.Interval` of a difference in EPDMS points (x100)."""
    return {"mean": round(100 * iv.estimate, 2), "lo": round(100 * iv.lo, 2), "hi": round(100 * iv.hi, 2)}


def _summarise(results: list[dict], base: dict, boot: int) -> dict:
    import numpy as np

    from mosaic_ray.evaluate.stats import paired_bootstrap_diff

    bpc = base["calibration"]["per_clip"]
    ids = list(bpc["clip_id"])  # one clip order for every cell
    base_row = np.asarray(bpc["epdms"], dtype=np.float64)[None]

    def matrix(rows: list[dict]) -> np.ndarray:
        """(seeds, clips) per-clip calibration EPDMS (0..1) in the base model's clip order."""
        m = []
        for r in sorted(rows, key=lambda r: r["seed"]):
            pc = r["calibration"]["per_clip"]
            order = {c: i for i, c in enumerate(pc["clip_id"])}
            m.append([pc["epdms"][order[c]] for c in ids])
        return np.asarray(m, dtype=np.float64)

    out: dict = {"base_epdms": round(100 * base["calibration"]["epdms"], 2), "recipes": {}}
    for recipe in sorted({r["recipe"] for r in results}):
        rows = [r for r in results if r["recipe"] == recipe]
        budgets = sorted({r["budget"] for r in rows})
        ctrl = matrix([r for r in rows if r["budget"] == 0]) if 0 in budgets else None
        table = []
        for b in budgets:
            m = matrix([r for r in rows if r["budget"] == b])
            entry = {"budget": b, "seeds": len(m), "epdms_mean": round(100 * float(m.mean()), 2),
                     "epdms_per_seed": [round(100 * float(x), 2) for x in m.mean(1)],
                     "optimizer_steps": sorted({r["optimizer_steps"] for r in rows if r["budget"] == b}),
                     "train_cpu_s_mean": round(float(np.mean([r["train_cpu_s"] for r in rows if r["budget"] == b])), 1)}
            entry["minus_base"] = _points(paired_bootstrap_diff(m, base_row, n_boot=boot, seed=0))
            if ctrl is not None and b > 0:
                entry["minus_control"] = _points(paired_bootstrap_diff(m, ctrl, n_boot=boot, seed=0))
            table.append(entry)
        means = [e["epdms_mean"] for e in table]
        out["recipes"][recipe] = {"table": table,
                                  "monotone_steps": sum(b >= a for a, b in zip(means, means[1:])),
                                  "steps_between_budgets": len(means) - 1}
    return out


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for recipe, r in summary["recipes"].items():
        b = [max(e["budget"], 10) for e in r["table"]]
        ax.plot(b, [e["epdms_mean"] for e in r["table"]], marker="o", label=recipe)
        lo = [summary["base_epdms"] + e["minus_base"]["lo"] for e in r["table"]]
        hi = [summary["base_epdms"] + e["minus_base"]["hi"] for e in r["table"]]
        ax.fill_between(b, lo, hi, alpha=0.15)
    ax.axhline(summary["base_epdms"], color="k", ls="--", lw=1, label="base model")
    ax.set_xscale("log")
    ax.set_xlabel("Random's selection (clips; 10 = D_train alone)")
    ax.set_ylabel("calibration EPDMS")
    ax.set_title("Training recipes: Random's curve on calibration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("--budgets", nargs="+", type=int, default=[0, 25, 60, 120, 250, 500])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), type=_recipe_name,
                    help=f"{', '.join(RECIPES)} or scratch_<N>steps_additive")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps of continue_steps")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--tag", default="ngsim")
    a = ap.parse_args(argv)
    from tqdm.auto import tqdm

    t0 = time.time()
    base = _base_calibration(a.config)
    jobs = [(r, b, s) for s in a.seeds for b in a.budgets for r in a.recipes]
    results = []
    with ProcessPoolExecutor(a.workers) as ex:
        futs = {ex.submit(_run_cell, a.config, r, b, s, a.steps): (r, b, s) for r, b, s in jobs}
        for f in tqdm(as_completed(futs), total=len(futs), desc="recipe cells"):
            res = f.result()
            results.append(res)
            print(f"{_cell_key(res['recipe'], res['budget'], res['seed'])}: calibration EPDMS "
                  f"{100 * res['calibration']['epdms']:.2f} ({res['optimizer_steps']} steps, "
                  f"{res['train_cpu_s']} CPU-s)", flush=True)
    summary = {"command": " ".join(["benchmarks/bench_recipe.py", *(argv or sys.argv[1:])]),
               "date": dt.date.today().isoformat(), "wall_s": round(time.time() - t0, 1),
               "budgets": a.budgets, "seeds": a.seeds, "steps": a.steps, **_summarise(results, base, a.boot),
               "cells": [{k: v for k, v in r.items() if k != "calibration"} | {"epdms": r["calibration"]["epdms"]}
                         for r in results]}
    dest = HERE / "results" / f"recipe_{a.tag}_{summary['date']}.json"
    dest.write_text(json.dumps(summary, indent=1))
    _plot(summary, dest.with_suffix(".png"))
    for recipe, r in summary["recipes"].items():
        print(recipe, [(e["budget"], e["epdms_mean"], e["minus_base"]) for e in r["table"]])
    print(f"written {dest} ({summary['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
