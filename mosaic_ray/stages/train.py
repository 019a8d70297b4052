"""The train step: the final planner per (method, budget, seed) on D_train ∪ D_sel.

The grid's cells (:class:`~mosaic_ray.stages.grid.Cell`) come from the select step's manifest,
in config method order, with the full-pool reference first when ``train.full_pool`` is set
(paper Fig. 5). :func:`mosaic_ray.stages.grid.run_grid` runs the cells without a stored result
as concurrent Ray Tune trials, each a Ray Train run and a validation evaluation; a finished
cell is never redone unless forced, so an interrupted grid resumes cell by cell.

Each cell also carries the resource-seconds its method spent before training
(:func:`selection_overhead_cpu_s`: the base model and the scoring pass for model-based
methods, D_train's scoring for coreset, the pilot runs for MOSAIC; paper Fig. 11).
"""

from __future__ import annotations

import logging
from collections import defaultdict

from mosaic_ray import layout
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.selection.methods import ResolvedMethod
from mosaic_ray.stages.fingerprint import cell_fingerprint, config_value
from mosaic_ray.stages.grid import Cell, cell_is_current, run_grid
from mosaic_ray.stages.score import load_scores
from mosaic_ray.stages.step import Context, Step, needs_of
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)


def selection_overhead_cpu_s(cfg: ExperimentConfig, storage: Storage, method: ResolvedMethod) -> float:
    """Resource-seconds (CPU·s) ``method`` spends before its final training (paper Fig. 11)."""
    spec = method.spec
    if not spec.uses_base_model:
        return 0.0
    total = 0.0
    if storage.is_done(layout.BASE_RECORD):
        b = storage.done_payload(layout.BASE_RECORD)
        total += b.get("wall_time_s", 0.0) * cfg.train.num_workers * cfg.train.cpus_per_worker
    records = [layout.SCORE] + ([layout.SCORE_TRAIN] if spec.needs_train_embeddings else [])
    for rec in records:
        if storage.is_done(rec):
            sc = storage.done_payload(rec)
            reserved = sc.get("reserved_cpus")
            if reserved is None:  # records written before issue 14: one pool of `actors` actors
                reserved = sc.get("actors", 1) * cfg.score.num_cpus_per_actor
            total += sc.get("wall_time_s", 0.0) * reserved
    if method.pilot_set and storage.exists(layout.pilot_table(method.pilot_set)):
        times = storage.read_table(layout.pilot_table(method.pilot_set)).column("trial_time_s").to_pylist()
        total += sum(t for t in times if t == t) * cfg.pilot.cpus_per_trial
    return round(total, 1)


#: config the final trainings read (the recipe is ``planner.*`` with ``train.*`` overrides)
TRAIN_KEYS = ("train", "planner")


def cell_parts(cfg: ExperimentConfig, base_fingerprint: str | None) -> dict:
    """What every grid cell's fingerprint shares: :data:`TRAIN_KEYS`' values and the base model's
    fingerprint (cells start from it or train from scratch on its vocabulary)."""
    return {**{k: config_value(cfg, k) for k in TRAIN_KEYS}, "upstream base": base_fingerprint}


def grid_cells(cfg: ExperimentConfig, storage: Storage, base_fingerprint: str | None = None) -> list[Cell]:
    """Every (method, budget, seed) cell of the grid, the full-pool reference first if asked;
    each with its fingerprint (:func:`~mosaic_ray.stages.fingerprint.cell_fingerprint`)."""
    sel = storage.read_json(layout.LAWS)
    by = defaultdict(list)
    for r in storage.read_table(layout.MANIFEST).to_pylist():
        by[(r["method"], r["budget"])].append(r)
    cells = []
    for m in cfg.resolved_methods():
        extra = selection_overhead_cpu_s(cfg, storage, m)
        for b in sel["budgets"]:
            ids = [r["clip_id"] for r in sorted(by[(m.method, b)], key=lambda r: r["step"])]
            cells += [Cell(m.method, b, s, ids, extra) for s in cfg.train.seeds]
    for name in cfg.selection.shuffle_methods():  # further Random shuffles (after the configured methods)
        for b in sel["budgets"]:
            ids = [r["clip_id"] for r in sorted(by[(name, b)], key=lambda r: r["step"])]
            if not ids:
                raise RuntimeError(f"no {name} selection at budget {b} in the manifest; rerun the select step")
            cells += [Cell(name, b, s, ids, 0.0) for s in cfg.train.seeds]
    if cfg.train.full_pool:
        # the usable pool: clips the score step rejected are trained on by no cell
        pool_ids = sorted(load_scores(storage).table.column("clip_id").to_pylist())
        # first: the reference line every method is read against, even in a cut-short grid
        cells = [Cell("full", len(pool_ids), s, pool_ids, 0.0) for s in cfg.train.seeds] + cells
    parts = cell_parts(cfg, base_fingerprint)
    for c in cells:
        c.fingerprint = cell_fingerprint(parts, c.method, c.budget, c.seed, c.pool_ids)
    return cells


def _base_fp(ctx: Context) -> str | None:
    fp = ctx.fingerprints.get("base")
    return fp.digest if fp is not None else None


def run_train(ctx: Context) -> dict:
    """Run the grid cells without a stored result of the same fingerprint (all when forced)."""
    cells = grid_cells(ctx.cfg, ctx.storage, _base_fp(ctx))
    results = run_grid(ctx.cfg, ctx.storage, cells, force=ctx.force)
    return {"runs": len(results), "cells": sorted(results)}


def _complete(ctx: Context, payload: dict) -> bool:
    """Recorded complete and every configured cell has its stored result, of its fingerprint."""
    return all(cell_is_current(ctx.storage, c) for c in grid_cells(ctx.cfg, ctx.storage, _base_fp(ctx)))


#: the train step (needs the select step's manifest)
STEP = Step("train", run_train, needs=needs_of({layout.MANIFEST: "select", layout.LAWS: "select"}),
            outputs=(layout.TRAIN_RESULTS,), record=layout.TRAIN, complete=_complete,
            config_keys=TRAIN_KEYS, upstream=("base", "select"), rerun="resume",
            describe=lambda p: f"{p['runs']} grid cells")
