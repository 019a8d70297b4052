"""``mosaic-ray pilot``: pilot runs on Ray Tune, one trial per (domain, pilot size, seed).

Each trial continues the base checkpoint on D_train ∪ (top-n ranked pool clips of its domain)
for ``pilot.epochs`` epochs and reports its EPDMS U and U − U(base), U being the mean
EPDMS on the calibration split (MOSAIC Algorithm 1, step 2; the test split is for the final
tables only). One control pilot per seed (n = 0, the same
recipe on D_train alone) measures what the extra training gives without added clips; the
select step's laws take ΔU against it (:func:`~mosaic_ray.selection.scaling_law.pilot_gains`). Trials are independent and run concurrently with
``tune.with_resources``; scheduling is FIFO (early stopping would bias the fitted laws).
All pilot sets' trials run in one Tune run, a training two sets share once (the control pilots
among them). An interrupted pilot stage resumes with ``Tuner.restore``.
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import pyarrow as pa

from mosaic_ray import layout
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.split import CALIBRATION
from mosaic_ray.selection.baselines import unranked_order
from mosaic_ray.selection.methods import pilot_sets
from mosaic_ray.stages.domains import ranked_pool
from mosaic_ray.stages.step import Context, Step, needs_of
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)
STAGE = "pilot"
#: the split pilot runs are scored on (issue 12 part 2: never the test split)
PILOT_SPLIT = CALIBRATION


def pilot_features(storage: Storage, clip_ids: list[str], targets: pa.Table | None, model) -> dict[str, np.ndarray]:
    """Training features of one pilot run: D_train ∪ the given pool clips, sorted by clip id
    (:func:`~mosaic_ray.planner.training.shard_rows`), at t0 (shapes of
    :meth:`~mosaic_ray.planner.features.FeatureSpec.shapes`, plus ``clip_id``); with a
    distillation model and ``targets`` also ``distill_targets`` (N, K, 8) float32 (NaN where a
    clip has none), as the Ray Train path gets them.

    Rows with a NaN/inf feature or target (a shard edited after ingest) are dropped with a
    logged count (:func:`~mosaic_ray.planner.training.drop_nonfinite_rows`), as the Ray Train
    path drops them.

    Raises:
        RuntimeError: a clip id is not in the pool shards.
    """
    from mosaic_ray.stages.trainer import training_rows

    try:  # the same rows, order and drops as the grid's in-trial cells
        return training_rows(storage, model.spec, pool_ids=list(clip_ids),
                             targets=targets if getattr(model.spec, "distill", False) else None)
    except ValueError as e:
        raise RuntimeError(f"pilot features: {e}") from e


def initial_model(base_checkpoint: str, init: str, seed: int):
    """The planner a pilot trains: the base checkpoint (``init="base"``), or a fresh
    :class:`~mosaic_ray.planner.model.VocabularyPlanner` of the base model's spec and vocabulary
    seeded as the final trainings seed theirs (``init="scratch"``: ``seed_torch(seed)``, then the
    constructor, as :func:`~mosaic_ray.stages.trainer.train_planner_in_process` does).

    Args:
        base_checkpoint: local path of ``planner/base.pt``.
        init: ``"base"`` or ``"scratch"`` (``pilot.init``).
        seed: the trial's training seed.

    Raises:
        ValueError: unknown ``init``.
    """
    from mosaic_ray.planner.model import VocabularyPlanner, load_checkpoint
    from mosaic_ray.planner.training import seed_torch

    if init not in ("base", "scratch"):
        raise ValueError(f"pilot.init must be 'base' or 'scratch', got {init!r}")
    model = load_checkpoint(base_checkpoint)
    if init == "scratch":
        seed_torch(seed)
        model = VocabularyPlanner(model.spec, model.anchors.detach().clone())
    return model


def _pilot_trial(config: dict, trials: dict | None = None, storage: Storage | None = None,
                 targets: pa.Table | None = None) -> None:
    """Tune trainable: train a planner on D_train ∪ top-n and report its calibration EPDMS
    (continuing the base planner, or from scratch with ``pilot.init: scratch``).

    ``config["trial"]`` is the trial key; ``trials`` (passed through the object store by
    ``tune.with_parameters``, as are ``storage`` and the distillation ``targets``) maps it to
    the domain, size, seed and the clip ids. Training is
    :func:`~mosaic_ray.planner.training.train_loop` with the pilot recipe."""
    import torch
    from ray import tune

    from mosaic_ray.data.clip import clips_from_table
    from mosaic_ray.evaluate.planner_eval import score_planner
    from mosaic_ray.planner.training import NonFiniteTrainingError, TrainRecipe, require_finite_weights, train_loop
    from mosaic_ray.stages import split_memo

    t0 = time.time()
    torch.set_num_threads(config["torch_threads"])
    trial = trials[config["trial"]]
    model = initial_model(storage.local_copy(config["base_checkpoint"]), config.get("init", "base"),
                          int(trial["seed"]))
    try:
        data = pilot_features(storage, trial["clip_ids"], targets, model)
    except RuntimeError as e:
        raise RuntimeError(f"pilot {trial['domain']}/{trial['n']}: {e}") from e
    recipe = TrainRecipe(**config["recipe"]).for_rows(len(data["target"]))  # planner.steps, if set
    train_loop(model, data, recipe, seed=trial["seed"], name=f"pilot {trial['key']}")
    require_finite_weights(model, f"pilot {trial['key']}")  # a NaN model's ΔU is never reported
    # never the test split; read, featurised and prepared once per trial process (split_memo)
    cal, feats, cache = (split_memo.eval_inputs(storage, PILOT_SPLIT, model.spec.features)
                         or (clips_from_table(storage.read_table(layout.clips(PILOT_SPLIT))), None, None))
    util = score_planner(model, cal, model.spec.features, cache=cache, feats=feats).utility()
    if not np.isfinite(util["epdms"]):
        raise NonFiniteTrainingError(f"pilot {trial['key']}: calibration EPDMS is {util['epdms']}; "
                                     "no ΔU is reported for it")
    tune.report({"delta_u": util["epdms"] - config["base_epdms"], "epdms": util["epdms"],
                 "domain": trial["domain"], "label": trial["label"], "n": trial["n"],
                 "seed": trial["seed"],
                 "terms": util["terms"], "trial_time_s": time.time() - t0})


def _trial_dirname(trial) -> str:
    return f"pilot-{trial.config['trial']}-{trial.trial_id}"


def plan_trials(ranked: dict[str, list[str]], sizes: list[int], seeds: list[int], control: bool = True) -> list[dict]:
    """Trials for every domain × size × seed; sizes are capped at the domain's clip count
    (duplicates after capping are dropped). With ``control``, one control pilot per seed first
    (domain :data:`~mosaic_ray.selection.scaling_law.CONTROL_DOMAIN`, n = 0: the same recipe on
    D_train alone), against which the laws measure ΔU (issue 12 part 4)."""
    from mosaic_ray.selection.scaling_law import CONTROL_DOMAIN

    trials = []
    if control:
        trials += [{"key": f"control-s{seed}", "domain": CONTROL_DOMAIN, "n": 0, "seed": int(seed), "clip_ids": []}
                   for seed in seeds]
    for dom in sorted(ranked):
        ids = ranked[dom]
        for n in sorted({min(s, len(ids)) for s in sizes if len(ids) > 0}):
            for seed in seeds:
                trials.append({"key": f"{dom}-n{n}-s{seed}", "domain": dom, "n": int(n), "seed": int(seed),
                               "clip_ids": list(ids[:n])})
    return trials


def _trial_key(trial: dict) -> str:
    """A key naming what a trial trains (its size, seed and clip set), so that a training two
    pilot sets share (every control pilot; a whole domain taken in another order) runs once."""
    digest = hashlib.sha1("\n".join(sorted(trial["clip_ids"])).encode()).hexdigest()[:10]
    return f"n{trial['n']}-s{trial['seed']}-{digest}"


def run_pilots(cfg: ExperimentConfig, storage: Storage, sets: dict[str, dict[str, list[str]]],
               base_checkpoint: str, base_epdms: float, force: bool = False) -> dict[str, pa.Table]:
    """Run (or resume) the pilot trials of several pilot sets in one Tune run; returns one table
    per set (domain, n, seed, delta_u, epdms, …).

    Every set plans its trials with :func:`plan_trials`; a training that two sets share (the
    control pilots, and a domain taken whole in another order: the training rows are sorted by
    clip id) runs once and counts for both. A set finished earlier is read back unless
    ``force``. Each trial trains with the pilot recipe (``recipe_from_config(cfg, "pilot")``: the
    planner's recipe with ``pilot.*`` overrides) for ``pilot.epochs`` epochs, continuing the base
    checkpoint or (``pilot.init: scratch``) from fresh weights seeded by the trial's seed; with
    ``planner.distill`` on the distillation targets too (computed first when missing). Two calls
    with the same inputs on the same machine give identical ``delta_u``.

    Args:
        sets: per pilot set name, per domain, pool clip ids in the order its pilots take them
            (rank order for ranked sets: lowest base EPDMS first).
        base_checkpoint: storage-relative checkpoint the trials continue (with ``pilot.init:
            scratch`` only its spec and vocabulary are used).
        base_epdms: calibration EPDMS of that checkpoint (ΔU is relative to it), in [0, 1].

    Returns:
        per set, a table of ``domain`` (str), ``n`` (int), ``seed`` (int), ``delta_u`` and
        ``epdms`` (float, EPDMS units in [0, 1]), ``trial_time_s``, sorted by (domain, n, seed).

    Raises:
        ValueError: a set has no trials (every domain empty).
        RuntimeError: a trial failed after its retries.
    """
    from ray import tune

    out = {name: storage.read_table(layout.pilot_table(name)) for name in sets
           if storage.is_done(f"{STAGE}/{name}") and not force}
    todo = {name: ranked for name, ranked in sets.items() if name not in out}
    if not todo:
        return out
    from mosaic_ray.planner.training import recipe_from_config
    from mosaic_ray.stages.distill import ensure_targets
    from mosaic_ray.stages.runtime import cluster_cpus, tune_progress_callback

    t0 = time.time()
    planned = {name: plan_trials(ranked, cfg.pilot.sizes, cfg.pilot.seeds, control=cfg.pilot.control)
               for name, ranked in todo.items()}
    by_key: dict[str, dict] = {}
    for name, trials in planned.items():
        if not trials:
            raise ValueError(f"no pilot trials in set {name}: every domain is empty")
        for t in trials:
            t["label"] = f"{name}/{t['domain']}" if len(todo) > 1 else t["domain"]
            by_key.setdefault(_trial_key(t), t)
    recipe = recipe_from_config(cfg, "pilot")
    common = {"base_checkpoint": base_checkpoint, "base_epdms": float(base_epdms), "recipe": recipe.to_dict(),
              "init": cfg.pilot.init, "torch_threads": cfg.planner.torch_threads}
    targets = ensure_targets(cfg, storage) if cfg.planner.distill else None

    max_conc = cfg.pilot.max_concurrent_trials or max(1, int(cluster_cpus() // cfg.pilot.cpus_per_trial))
    storage_path = storage.path("tune")  # with storage_filesystem: the in-filesystem path
    # named by what it runs: a restore only ever resumes the same trials
    exp_name = "pilots-" + hashlib.sha1("\n".join(sorted(by_key)).encode()).hexdigest()[:10]
    trainable = tune.with_resources(tune.with_parameters(_pilot_trial, trials=by_key, storage=storage,
                                                         targets=targets),
                                    {"cpu": cfg.pilot.cpus_per_trial})
    exp_uri = f"{storage_path}/{exp_name}"
    n_planned = sum(len(t) for t in planned.values())
    log.info("[pilot] %d trials for %s (domains × sizes × seeds; %d shared between sets), up to %d at a "
             "time; recipe %s", len(by_key), ", ".join(todo), n_planned - len(by_key), max_conc, recipe.to_dict())
    fs = None if storage.is_local else storage.fs
    if not force and tune.Tuner.can_restore(exp_uri, storage_filesystem=fs):
        tuner = tune.Tuner.restore(exp_uri, trainable=trainable, resume_errored=True, storage_filesystem=fs)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={**common, "trial": tune.grid_search(sorted(by_key))},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_conc, reuse_actors=True,
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(storage_path=storage_path, name=exp_name, storage_filesystem=fs,
                                      failure_config=tune.FailureConfig(max_failures=1),
                                      verbose=0,
                                      callbacks=[tune_progress_callback(
                                          "pilot", len(by_key),
                                          lambda r: f"{r['label']} n={r['n']} seed {r['seed']}: "
                                                    f"ΔU = {100 * r['delta_u']:+.2f} ({r['trial_time_s']:.0f} s)")]),
        )
    grid = tuner.fit()
    metrics = {}
    for r in grid:
        if r.error is not None or not r.metrics or "delta_u" not in r.metrics:
            raise RuntimeError(f"pilot trial failed: {r.error}")
        metrics[r.config["trial"]] = r.metrics
    wall = round(time.time() - t0, 1)
    for name, trials in planned.items():
        rows = []
        for t in trials:
            m = metrics[_trial_key(t)]
            rows.append({"domain": t["domain"], "n": int(t["n"]), "seed": int(t["seed"]),
                         "delta_u": float(m["delta_u"]), "epdms": float(m["epdms"]),
                         "trial_time_s": float(m.get("trial_time_s", np.nan))})
        rows.sort(key=lambda r: (r["domain"], r["n"], r["seed"]))
        out[name] = pa.Table.from_pylist(rows)
        storage.write_table(layout.pilot_table(name), out[name])
        storage.mark_done(f"{STAGE}/{name}", {"trials": len(rows), "wall_time_s": wall, "tune_run": exp_name,
                                                "tune_trials": len(by_key)})
    log.info("[pilot] %d trials done in %.0f s", len(by_key), time.time() - t0)
    return {name: out[name] for name in sets}


def pilot_orders(cfg: ExperimentConfig, storage: Storage) -> dict[str, dict[str, list[str]]]:
    """Per pilot set the methods need (:func:`~mosaic_ray.selection.methods.pilot_sets`), each
    domain's pool clip ids in the order its pilots take them (a trial of size n takes the first
    n): ranked sets by base EPDMS, lowest first; unranked ones in the seeded shuffle of the
    ``mosaic_no_rank`` ablation. The clips come from :func:`~mosaic_ray.stages.domains.ranked_pool`,
    so a clip whose score row is not ``ok`` is in no pilot."""
    out = {}
    for name, variant, ranked in pilot_sets(cfg.resolved_methods()):
        pool, order = ranked_pool(cfg, storage, variant)
        if not ranked:
            order = {str(d): [str(pool.clip_ids[i]) for i in idx]
                     for d, idx in unranked_order(pool, cfg.selection.random_seed).items()}
        out[name] = order
    return out


def run_pilot_sets(ctx: Context) -> dict:
    """Pilot runs for every pilot set the methods need (:func:`pilot_orders`), all in one Tune
    run (:func:`run_pilots`: shared trainings such as the control pilots run once). A set
    finished earlier is kept unless forced.

    Returns:
        ``{"sets": {name: trials}}``.
    """
    st, cfg = ctx.storage, ctx.cfg
    base = st.read_json(layout.BASE_EVAL)
    kinds = {name: (variant, ranked) for name, variant, ranked in pilot_sets(cfg.resolved_methods())}
    orders = pilot_orders(cfg, st)
    for name in orders:
        variant, ranked = kinds[name]
        log.info("[pilot] set %s: %s clips, domains of %s", name, "ranked" if ranked else "unranked", variant)
    tables = run_pilots(cfg, st, orders, layout.BASE_CHECKPOINT, base[PILOT_SPLIT]["epdms"], force=ctx.force)
    return {"sets": {name: t.num_rows for name, t in tables.items()}}


#: the pilot step; only configs with a MOSAIC-style method have pilot sets
STEP = Step("pilot", run_pilot_sets,
            needs=needs_of({layout.BASE_EVAL: "base", f"{layout.DOMAINS}/_SUCCESS.json": "domains"}),
            outputs=(layout.PILOT,), record=layout.PILOT,
            config_keys=("pilot", "selection.random_seed"), upstream=("base", "score", "domains"),
            depends=lambda cfg: {"pilot sets": pilot_sets(cfg.resolved_methods())},
            enabled=lambda cfg: bool(pilot_sets(cfg.resolved_methods())),
            complete=lambda ctx, p: all(ctx.storage.exists(layout.pilot_table(n))
                                        for n, _, _ in pilot_sets(ctx.cfg.resolved_methods())),
            describe=lambda p: ", ".join(f"{n}: {k} trials" for n, k in p["sets"].items()))
