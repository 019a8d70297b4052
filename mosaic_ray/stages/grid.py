"""The experiment grid: final trainings per (method, budget, seed) as concurrent Ray Tune trials.

Each grid cell trains a planner on D_train ∪ D_sel with Ray Train (the ``TorchTrainer`` is
built inside the Tune function, as Train V2 requires) or, for one-worker cells, with the same
loop inside the trial (``train.backend``; no worker-group start-up per cell), evaluates it on
the test split and stores ``train/results/<key>.json`` (its ``test`` entry: the test split's
EPDMS, terms and per-clip scores). Cells already stored are skipped, so an
interrupted grid resumes where it stopped; the cells still to run are scheduled
``train.concurrency`` at a time within the cluster's resources (a Ray Train cell's trial
reserves no CPU of its own, its Train workers and Ray Data tasks reserve theirs; an in-trial
cell reserves ``train.cpus_per_worker``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field

from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.split import TEST
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class Cell:
    """One grid cell: a method's selection at a budget, trained with one seed."""

    method: str
    budget: int
    seed: int
    pool_ids: list[str] = field(default_factory=list)
    compute_extra_s: float = 0.0  # resource-seconds spent before training (scoring, pilots)
    fingerprint: str | None = None  # what made its result (:func:`~mosaic_ray.stages.fingerprint.cell_fingerprint`)

    @property
    def key(self) -> str:
        return f"{self.method}-b{self.budget}-s{self.seed}"

    @property
    def result_path(self) -> str:
        return f"train/results/{self.key}.json"


def cell_is_current(storage: Storage, cell: Cell) -> bool:
    """Whether ``cell`` has a stored result made from its fingerprint (a cell without a
    fingerprint: any stored result)."""
    if not storage.exists(cell.result_path):
        return False
    return cell.fingerprint is None or storage.read_json(cell.result_path).get("fingerprint") == cell.fingerprint


def _cell_trial(config: dict, cells: dict | None = None, storage: Storage | None = None) -> None:
    """Tune trainable for one grid cell: Ray Train run with the final-training recipe
    (``recipe_from_config(cfg, "final")``), test-split evaluation, stored result.
    ``cells`` and ``storage`` come through the object store (``tune.with_parameters``)."""
    from ray import tune

    from mosaic_ray.config import ExperimentConfig
    from mosaic_ray.stages.base import evaluate_checkpoint
    from mosaic_ray.planner.training import recipe_from_config
    from mosaic_ray.stages.trainer import train_planner, train_planner_in_process

    cell = Cell(**cells[config["cell"]])
    cfg = ExperimentConfig.model_validate(config["cfg"])
    st = storage
    t0 = time.time()
    train = train_planner_in_process if cfg.train.in_trial else train_planner
    info = train(cfg, st, name=cell.key, epochs=cfg.train.epochs, seed=cell.seed,
                         pool_ids=cell.pool_ids or None,
                         init_checkpoint="planner/base.pt" if cfg.train.init == "base" else None,
                         fresh=bool(config.get("fresh", False)), recipe=recipe_from_config(cfg, "final"))
    t_eval = time.time()
    util = evaluate_checkpoint(st, info["checkpoint"])  # refuses NaN/inf weights or a NaN EPDMS
    eval_s = time.time() - t_eval
    cpus = cfg.train.num_workers * cfg.train.cpus_per_worker
    res = {"method": cell.method, "budget": cell.budget, "seed": cell.seed, "fingerprint": cell.fingerprint,
           **info, TEST: util,
           "eval_time_s": round(eval_s, 1), "cell_time_s": round(time.time() - t0, 1),
           "compute_cpu_s": round(info["wall_time_s"] * cpus + eval_s + cell.compute_extra_s, 1)}
    st.write_json(cell.result_path, res)
    tune.report({"epdms": util["epdms"], "key": cell.key})


def run_grid(cfg: ExperimentConfig, storage: Storage, cells: list[Cell], force: bool = False) -> dict:
    """Run the cells not yet stored (all with ``force``); returns ``{key: result}`` for all cells.

    Each result (``train/results/<key>.json``) holds the training info of
    :func:`~mosaic_ray.stages.trainer.train_planner` (with the recipe used), ``test``
    (mean EPDMS in [0, 1] and the nine terms) and timings in seconds.

    Raises:
        RuntimeError: a cell failed after its retry (its error is in the message).
    """
    from ray import tune

    from mosaic_ray.stages.runtime import tune_progress_callback

    todo = [c for c in cells if force or not cell_is_current(storage, c)]
    stale = [c.key for c in todo if not force and storage.exists(c.result_path)]
    if stale:
        log.warning("[train] %d stored cell result(s) were made under other inputs and are redone: %s",
                    len(stale), ", ".join(stale[:8]) + (" ..." if len(stale) > 8 else ""))
    if todo:
        conc = cfg.train.concurrency
        keys = [c.key for c in todo]  # the caller's order (config methods first to last)
        by_key = {c.key: asdict(c) for c in todo}
        digest = hashlib.sha1(json.dumps(keys).encode()).hexdigest()[:8]
        log.info("[train] %d of %d grid cells to run, %d at a time (%d finished earlier)",
                 len(todo), len(cells), conc, len(cells) - len(todo))
        # in_trial: the trial trains, so it reserves the worker's CPUs; otherwise it only waits
        # while its Train workers and Ray Data tasks reserve theirs
        cpu = cfg.train.cpus_per_worker if cfg.train.in_trial else 0
        trainable = tune.with_resources(tune.with_parameters(_cell_trial, cells=by_key, storage=storage),
                                        {"cpu": cpu, "memory": 256 * 1024**2})
        tuner = tune.Tuner(
            trainable,
            param_space={"cell": tune.grid_search(keys), "cfg": cfg.model_dump(mode="json"), "fresh": force},
            tune_config=tune.TuneConfig(max_concurrent_trials=conc, reuse_actors=True,
                                        trial_dirname_creator=lambda t: f"cell-{t.config['cell']}-{t.trial_id}"),
            run_config=tune.RunConfig(
                storage_path=storage.path("tune"),  # in-filesystem path (no scheme)
                storage_filesystem=None if storage.is_local else storage.fs,
                name=f"grid-{digest}-{int(time.time())}", verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
                callbacks=[tune_progress_callback(
                    "train", len(todo), lambda r: f"{r['key']}: test EPDMS {100 * r['epdms']:.2f}")]),
        )
        grid = tuner.fit()
        errors = [str(r.error) for r in grid if r.error is not None]
        if errors:
            raise RuntimeError(f"{len(errors)} grid cell(s) failed; first error: {errors[0][:2000]}")
    out = {}
    for c in cells:
        if not storage.exists(c.result_path):
            raise RuntimeError(f"grid cell {c.key} has no stored result")
        out[c.key] = storage.read_json(c.result_path)
    return out
