"""``mosaic-ray pilot``: pilot runs on Ray Tune, one trial per (domain, pilot size, seed).

Each trial continues the base checkpoint on D_train ∪ (top-n ranked pool clips of its domain)
for ``pilot.epochs`` epochs and reports ΔU = U(after) − U(base), U being the mean validation
EPDMS (MOSAIC Algorithm 1, step 2). Trials are independent and run concurrently with
``tune.with_resources``; scheduling is FIFO (early stopping would bias the fitted laws).
An interrupted pilot stage resumes with ``Tuner.restore``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mosaic_ray.config import ExperimentConfig
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)
STAGE = "pilot"


def _pilot_trial(config: dict, trials: dict | None = None) -> None:
    """Tune trainable: fine-tune the base planner on D_train ∪ top-n and report ΔU.

    ``config["trial"]`` is the trial key; ``trials`` (passed through the object store by
    ``tune.with_parameters``) maps it to the domain, size, seed and the clip ids."""
    import torch
    from ray import tune

    from mosaic_ray.config import StorageConfig
    from mosaic_ray.data.clip import clips_from_table
    from mosaic_ray.evaluate.planner_eval import score_planner
    from mosaic_ray.planner.features import featurize_clips
    from mosaic_ray.planner.model import load_checkpoint
    from mosaic_ray.planner.training import fit
    from mosaic_ray.stages.trainer import local_copy

    t0 = time.time()
    torch.set_num_threads(config["torch_threads"])
    trial = trials[config["trial"]]
    st = Storage(config["storage_root"], StorageConfig(**config["storage_cfg"]))
    model = load_checkpoint(local_copy(st, config["base_checkpoint"]))
    spec = model.spec.features
    train = clips_from_table(st.read_table("ingest/clips/train"))
    pool_t = st.read_table("ingest/clips/pool")
    ids = pa.array(trial["clip_ids"], pa.string())
    sel = clips_from_table(pool_t.filter(pc.is_in(pool_t.column("clip_id"), value_set=ids)))
    if len(sel) != len(trial["clip_ids"]):
        raise RuntimeError(f"pilot {trial['domain']}/{trial['n']}: {len(sel)} of {len(trial['clip_ids'])} clips found")
    feats = featurize_clips(train + sel, spec, with_prev=False)
    fit(model, feats, epochs=config["epochs"], lr=config["lr"], weight_decay=config["weight_decay"],
        batch_size=config["batch_size"], seed=trial["seed"], mirror=config["mirror"])
    val = clips_from_table(st.read_table("ingest/clips/validation"))
    util = score_planner(model, val, spec).utility()
    tune.report({"delta_u": util["epdms"] - config["base_epdms"], "epdms": util["epdms"],
                 "domain": trial["domain"], "n": trial["n"], "seed": trial["seed"],
                 "terms": util["terms"], "trial_time_s": time.time() - t0})


def _trial_dirname(trial) -> str:
    return f"pilot-{trial.config['trial']}-{trial.trial_id}"


def plan_trials(ranked: dict[str, list[str]], sizes: list[int], seeds: list[int]) -> list[dict]:
    """Trials for every domain × size × seed; sizes are capped at the domain's clip count
    (duplicates after capping are dropped)."""
    trials = []
    for dom in sorted(ranked):
        ids = ranked[dom]
        for n in sorted({min(s, len(ids)) for s in sizes if len(ids) > 0}):
            for seed in seeds:
                trials.append({"key": f"{dom}-n{n}-s{seed}", "domain": dom, "n": int(n), "seed": int(seed),
                               "clip_ids": list(ids[:n])})
    return trials


def run_pilots(cfg: ExperimentConfig, storage: Storage, ranked: dict[str, list[str]], base_checkpoint: str,
               base_epdms: float, name: str = "pilots", force: bool = False) -> pa.Table:
    """Run (or resume) the pilot trials; returns a table (domain, n, seed, delta_u, epdms, …).

    Args:
        ranked: per domain, pool clip ids in rank order (lowest base EPDMS first).

    Raises:
        RuntimeError: a trial failed after its retries.
    """
    from ray import tune

    out_rel = f"{STAGE}/{name}.parquet"
    if storage.is_done(f"{STAGE}/{name}") and not force:
        return storage.read_table(out_rel)
    t0 = time.time()
    pc_ = cfg.planner
    trials = plan_trials(ranked, cfg.pilot.sizes, cfg.pilot.seeds)
    if not trials:
        raise ValueError("no pilot trials: every domain is empty")
    common = {
        "storage_root": storage.root_uri, "storage_cfg": cfg.storage.model_dump(),
        "base_checkpoint": base_checkpoint, "base_epdms": float(base_epdms),
        "epochs": cfg.pilot.epochs, "lr": pc_.lr * 0.5, "weight_decay": pc_.weight_decay,
        "batch_size": pc_.batch_size, "mirror": pc_.augment_mirror, "torch_threads": pc_.torch_threads,
    }
    from mosaic_ray.stages.runtime import cluster_cpus, tune_progress_callback

    max_conc = cfg.pilot.max_concurrent_trials or max(1, int(cluster_cpus() // cfg.pilot.cpus_per_trial))
    storage_path = storage.path("tune")  # with storage_filesystem: the in-filesystem path
    exp_name = f"{name}"
    by_key = {t["key"]: t for t in trials}
    trainable = tune.with_resources(tune.with_parameters(_pilot_trial, trials=by_key),
                                    {"cpu": cfg.pilot.cpus_per_trial})
    exp_uri = f"{storage_path}/{exp_name}"
    print(f"[pilot] {len(trials)} trials (domains × sizes × seeds), up to {max_conc} at a time", flush=True)
    if not force and tune.Tuner.can_restore(exp_uri, storage_filesystem=None if storage.is_local else storage.fs):
        tuner = tune.Tuner.restore(exp_uri, trainable=trainable, resume_errored=True,
                                   storage_filesystem=None if storage.is_local else storage.fs)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={**common, "trial": tune.grid_search(sorted(by_key))},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_conc,
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(storage_path=storage_path, name=exp_name,
                                      storage_filesystem=None if storage.is_local else storage.fs,
                                      failure_config=tune.FailureConfig(max_failures=1),
                                      verbose=0,
                                      callbacks=[tune_progress_callback(
                                          "pilot", len(trials),
                                          lambda r: f"{r['domain']} n={r['n']} seed {r['seed']}: "
                                                    f"ΔU = {100 * r['delta_u']:+.2f} ({r['trial_time_s']:.0f} s)")]),
        )
    grid = tuner.fit()
    rows = []
    for r in grid:
        if r.error is not None or not r.metrics or "delta_u" not in r.metrics:
            raise RuntimeError(f"pilot trial failed: {r.error}")
        m = r.metrics
        rows.append({"domain": m["domain"], "n": int(m["n"]), "seed": int(m["seed"]),
                     "delta_u": float(m["delta_u"]), "epdms": float(m["epdms"]),
                     "trial_time_s": float(m.get("trial_time_s", np.nan))})
    rows.sort(key=lambda r: (r["domain"], r["n"], r["seed"]))
    table = pa.Table.from_pylist(rows)
    storage.write_table(out_rel, table)
    storage.mark_done(f"{STAGE}/{name}", {"trials": len(rows), "wall_time_s": round(time.time() - t0, 1)})
    print(f"[pilot] {len(rows)} trials done in {time.time() - t0:.0f} s", flush=True)
    return table
