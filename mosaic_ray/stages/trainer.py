"""Planner training on Ray Train (``TorchTrainer``, DDP over gloo on CPU, NCCL on GPU).

Ray Data reads the clip shards of D_train (and of the pool, filtered to a selection) and
featurises them once (``materialize``). Every worker receives the whole featurised dataset
(``DataConfig(datasets_to_split=[])``), sorts it by ``frame_id`` and keeps rows
``rank::world`` (:func:`mosaic_ray.planner.training.shard_rows`), so which rows a worker
trains on does not depend on Ray Data's block order; the workers run the shared training
loop (:func:`mosaic_ray.planner.training.train_loop`) under DDP with the run's
:class:`~mosaic_ray.planner.training.TrainRecipe`, report the loss every
``train.checkpoint_every`` epochs, and rank 0 saves the checkpoint, which Ray Train persists
under the run's storage. The final weights are copied to ``<run>/planner/<name>.pt``.
See :mod:`mosaic_ray.planner.training` for what is reproducible.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.clip import clips_from_table
from mosaic_ray.planner.features import INPUT_KEYS, featurize_clips
from mosaic_ray.planner.model import PlannerSpec
from mosaic_ray.planner.training import (DISTILL_KEY, NonFiniteTrainingError, TrainRecipe, finite_rows,
                                        recipe_from_config)
from mosaic_ray.stages.distill import DISTILL_COLUMNS, ensure_targets, targets_for
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)
FEATURE_KEYS = INPUT_KEYS + ("target",)
FINITE_KEY = "finite"  #: (B,) bool per featurised row: every feature and the target finite
#: written into a Ray Train run's folder once it finished (its result and final checkpoint folder)
FINISHED_RECORD = "_FINISHED.json"


def featurize_batch(batch: pa.Table, spec: PlannerSpec, keep: pa.Array | None = None,
                    targets: pa.Table | None = None) -> dict[str, np.ndarray]:
    """Ray Data UDF (stateless task): clip rows (those whose id is in ``keep``, if given) ->
    feature arrays at t0 for training (:data:`FEATURE_KEYS`, shapes of
    :meth:`~mosaic_ray.planner.features.FeatureSpec.shapes`, float32 / bool masks) plus
    ``clip_id`` (B,) str (a clip's frames share it), ``frame_id`` (B,) str and ``finite`` (B,) bool (False: a NaN/inf in the row's features or
    target, :func:`~mosaic_ray.planner.training.finite_rows`; :func:`training_dataset` drops
    such rows). With ``targets`` (the rule-distillation table of
    :mod:`mosaic_ray.stages.distill`) the rows also get ``distill_targets`` (B, K, 8) float32,
    joined by frame id (NaN for frames without targets). ``keep`` holds clip ids: every frame
    of a kept clip is a row."""
    if keep is not None:
        batch = batch.filter(pc.is_in(batch.column("clip_id"), value_set=keep))
    K = int(targets.column("K")[0].as_py()) if targets is not None and targets.num_rows else 0
    if batch.num_rows == 0:
        out = {k: np.zeros((0,) + shape, np.float32) for k, shape in spec.features.shapes().items()
               if k in FEATURE_KEYS}
        out["clip_id"] = np.zeros(0, dtype=str)
        out["frame_id"] = np.zeros(0, dtype=str)
        out[FINITE_KEY] = np.zeros(0, dtype=bool)
        if targets is not None:
            out[DISTILL_KEY] = np.zeros((0, K, len(DISTILL_COLUMNS)), np.float32)
        return out
    f = featurize_clips(clips_from_table(batch), spec.features, with_prev=False)
    out = {k: f[k] for k in FEATURE_KEYS}
    out["clip_id"] = np.asarray(f["clip_id"]).astype(str)
    out["frame_id"] = np.asarray(f["frame_id"]).astype(str)
    out[FINITE_KEY] = finite_rows(out, FEATURE_KEYS)
    if targets is not None:
        out[DISTILL_KEY] = targets_for(targets, f["frame_id"], K)
    return out


def _featurize_for_ray(batch: pa.Table, spec: PlannerSpec, keep: pa.Array | None = None,
                       targets: pa.Table | None = None) -> dict[str, np.ndarray] | pa.Table:
    """Ray Data UDF: :func:`featurize_batch`, whose zero-row output (a batch without a kept
    clip: most pool batches when training on a selection) becomes a zero-row table with the
    column types Ray gives the non-empty batches (multi-dimensional features as Ray's tensor
    type). Ray converts a zero-row (0, ...) array to a pickled-object column instead, with a
    "Failed to convert column" warning in every training on a selection (the empty blocks do
    not reach the trainer, so only the warning and the conversion are saved)."""
    from ray.data.extensions.tensor_extension import ArrowTensorArray

    out = featurize_batch(batch, spec, keep=keep, targets=targets)
    if len(out[FINITE_KEY]):
        return out
    return pa.table({k: ArrowTensorArray.from_numpy(v) if v.ndim > 1 else pa.array(v) for k, v in out.items()})


def _finite_only(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data UDF: the rows of a featurised batch whose ``finite`` flag is set."""
    ok = np.asarray(batch[FINITE_KEY], dtype=bool)
    return {k: np.asarray(v)[ok] for k, v in batch.items()}


def training_dataset(storage: Storage, spec: PlannerSpec, include_train: bool = True,
                     pool_ids: list[str] | None = None, targets: pa.Table | None = None):
    """A materialised Ray dataset of training features: D_train ∪ the given pool clips.

    One ``read_parquet`` over the D_train and pool shards, then one map that keeps the wanted
    rows and featurises them (:func:`featurize_batch`, through :func:`_featurize_for_ray`). Rows
    with a NaN/inf feature or target (a shard edited after ingest; ingest's clip validation
    quarantines such clips) are dropped with a logged warning naming their count and ids, so none
    enters a training batch. The row order of the result is not defined: consumers sort by
    ``frame_id`` (:func:`mosaic_ray.planner.training.shard_rows`).

    Returns:
        (dataset, number of rows kept).

    Raises:
        ValueError: the union is empty or a selected pool clip is missing from the pool.
    """
    import ray

    files, keep = [], None
    if include_train:
        files += storage.list("ingest/clips/train", ".parquet")
    if pool_ids:
        files += storage.list("ingest/clips/pool", ".parquet")
        train_ids = (storage.read_table("ingest/clips/train", columns=["clip_id"]).column("clip_id").to_pylist()
                     if include_train else [])
        keep = pa.array(sorted(set(pool_ids) | set(train_ids)), pa.string())
    if not files:
        raise ValueError("empty training set: no D_train and no selected clips")
    ds = ray.data.read_parquet([storage.path(f) for f in files], filesystem=storage.fs)
    ds = ds.map_batches(_featurize_for_ray, fn_kwargs={"spec": spec, "keep": keep, "targets": targets}, batch_size=64,
                        batch_format="pyarrow", num_cpus=0.5).materialize()
    # one streaming pass over two columns (no Ray Data aggregation: its shuffle tasks ask for a
    # CPU, which a Tune trial's placement group running this does not hold)
    ids, finite = [], []
    for b in ds.select_columns(["clip_id", FINITE_KEY]).iter_batches(batch_format="pyarrow", batch_size=4096):
        ids += b.column("clip_id").to_pylist()
        finite += b.column(FINITE_KEY).to_pylist()
    n = len(ids)
    found = len(set(ids)) if keep is not None else 0  # a clip's frames are rows
    if keep is not None and found != len(keep):
        raise ValueError(f"training set has {found} clips ({n} rows), expected {len(keep)} (D_train ∪ selection): "
                         "a selected clip is missing from the pool shards")
    bad = sorted(c for c, ok in zip(ids, finite) if not ok)
    if bad:
        log.warning("training set: %d of %d rows dropped for non-finite features or targets (e.g. %s)",
                    len(bad), n, ", ".join(bad[:5]))
        ds = ds.map_batches(_finite_only, batch_format="numpy").materialize()
        n -= len(bad)
    if n == 0:
        raise ValueError("empty training set" + (" (every row had non-finite features)" if bad else ""))
    return ds, n


def _load_rows(it, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """All rows of a Ray Data iterator as one dict of arrays (``keys`` + ``clip_id`` +
    ``frame_id``, the key :func:`~mosaic_ray.planner.training.shard_rows` sorts by)."""
    parts = list(it.iter_batches(batch_size=512, batch_format="numpy"))
    ids = ("clip_id", "frame_id")
    if not parts:
        return {k: np.zeros(0) for k in keys + ids}
    ids = tuple(k for k in ids if k in parts[0])
    return {k: np.concatenate([p[k] for p in parts]) for k in keys + ids}


def _train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: DDP training of the planner with :func:`~mosaic_ray.planner.training.train_loop`.

    Every worker gets the whole dataset, sorts it by frame id and keeps rows ``rank::world``;
    the global batch is the recipe's ``batch_size`` (``batch_size // world`` per worker), so
    the optimisation does not change with the number of workers. Every rank runs the same
    number of steps per epoch (DDP all-reduces every step) and calls ``ray.train.report`` at
    the same epochs (checkpoint from rank 0).
    """
    import ray.train
    import ray.train.torch
    import torch

    from mosaic_ray.planner.model import VocabularyPlanner, load_checkpoint, save_checkpoint
    from mosaic_ray.planner.training import require_finite_weights, seed_torch, shard_rows, train_loop
    from mosaic_ray.stages.shards import record_actor_pid

    torch.set_num_threads(config["torch_threads"])
    record_actor_pid(f"train-{config['name']}")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    recipe = TrainRecipe(**config["recipe"])
    seed_torch(config["seed"])
    st: Storage = config["storage"]
    if config["init_checkpoint"]:
        model = load_checkpoint(st.local_copy(config["init_checkpoint"]))
    else:
        spec = PlannerSpec.from_dict(config["spec"])
        model = VocabularyPlanner(spec, torch.from_numpy(np.asarray(config["anchors"], np.float32)))
    core = model
    # resume: Ray Train hands back the latest checkpoint of this run (same name and storage)
    state = None
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as d:
            state = torch.load(os.path.join(d, "train_state.pt"), map_location="cpu", weights_only=False)
        core.load_state_dict(state["model"])
    epochs, every = recipe.epochs, max(1, config["checkpoint_every"])
    start_epoch = 0 if state is None else int(state["epoch"]) + 1

    def report(epoch: int, loss: float, train_state: dict) -> None:
        metrics = {"epoch": epoch, "loss": loss, "resumed_from": start_epoch}
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(core, os.path.join(d, "planner.pt"), {"epochs": epochs})
                torch.save(train_state, os.path.join(d, "train_state.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics, checkpoint=None)

    if start_epoch >= epochs:  # the run had finished: hand its final checkpoint back
        require_finite_weights(core, f"{config['name']}: stored final checkpoint")
        report(epochs - 1, float("nan"), state)
        return

    def on_epoch(s) -> None:
        if s.epoch == epochs - 1 or (s.epoch + 1) % every == 0:
            report(s.epoch, s.loss, s.state_dict())

    keys = FEATURE_KEYS + ((DISTILL_KEY,) if config.get("distill") else ())
    rows = _load_rows(ray.train.get_dataset_shard("train"), keys)  # the whole dataset on every worker
    if len(rows["target"]) != config["n_rows"]:
        raise RuntimeError(f"{config['name']}: worker {rank} read {len(rows['target'])} rows, "
                           f"expected {config['n_rows']}")
    data = shard_rows(rows, rank, world)
    model = ray.train.torch.prepare_model(model)
    train_loop(model, data, recipe, seed=config["seed"], rank=rank, world=world, n_total=config["n_rows"],
               resume=state, on_epoch=on_epoch, name=config["name"])


def _run_settings(cfg: ExperimentConfig, spec: PlannerSpec, recipe: TrainRecipe, seed: int, n_rows: int,
                  init_checkpoint: str | None) -> dict:
    """What a training run depends on (hashed into its run name by :func:`_run_name`; the Ray
    Train path also hands it to its workers)."""
    return {"spec": spec.__dict__, "init_checkpoint": init_checkpoint, "recipe": recipe.to_dict(),
            "seed": seed, "n_rows": n_rows, "torch_threads": cfg.planner.torch_threads,
            "checkpoint_every": cfg.train.checkpoint_every, "distill": bool(cfg.planner.distill)}


def _run_name(name: str, config: dict, pool_ids: list[str] | None, anchors: np.ndarray) -> str:
    """``<name>-<hash of the training settings, the clip ids and the vocabulary>``: the same
    training gets the same name (so it resumes), any change another one."""
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()
                          + json.dumps(sorted(pool_ids or [])).encode() + anchors.tobytes()).hexdigest()[:10]
    return f"{name}-{digest}"


def training_rows(storage: Storage, spec: PlannerSpec, include_train: bool = True,
                  pool_ids: list[str] | None = None, targets: pa.Table | None = None) -> dict[str, np.ndarray]:
    """In-process twin of :func:`training_dataset`: D_train ∪ the given pool clips featurised
    (:func:`featurize_batch`; each split once per process through :mod:`~mosaic_ray.stages.split_memo`,
    without distillation targets) without Ray Data, rows with a NaN/inf feature or target dropped
    with a logged count, sorted by ``frame_id`` (:func:`~mosaic_ray.planner.training.shard_rows`),
    so a one-worker Ray Train run and :func:`train_planner_in_process` see the same rows in the
    same order.

    Returns:
        ``{key: (N, ...) array}`` for :data:`FEATURE_KEYS` (+ ``distill_targets`` with
        ``targets``), ``clip_id`` (N,) str and ``frame_id`` (N,) str: a selected clip gives
        one row per frame.

    Raises:
        ValueError: the union is empty or a selected pool clip is missing from the pool.
    """
    from mosaic_ray import layout
    from mosaic_ray.planner.training import drop_nonfinite_rows, shard_rows
    from mosaic_ray.stages import split_memo

    def split_rows(split: str, keep: list[str] | None) -> dict[str, np.ndarray]:
        # the split featurised once per process (split_memo), or only the wanted rows
        full = split_memo.training_features(storage, spec, split, featurize_batch) if targets is None else None
        if full is None:
            return featurize_batch(storage.read_table(layout.clips(split)), spec, targets=targets,
                                   keep=None if keep is None else pa.array(keep, pa.string()))
        if keep is None:
            return full
        sel = np.isin(full["clip_id"], keep)
        return {k: v[sel] for k, v in full.items()}

    parts, keep = [], None
    if pool_ids:
        keep = sorted(set(pool_ids))
        parts.append(split_rows("pool", keep))
        found = len(set(parts[-1]["clip_id"].tolist()))
        if found != len(keep):
            raise ValueError(f"{found} of {len(keep)} selected clips found in the pool shards")
    if include_train:
        parts.append(split_rows("train", None))
    if not parts or sum(len(p["clip_id"]) for p in parts) == 0:
        raise ValueError("empty training set: no D_train and no selected clips")
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    rows.pop(FINITE_KEY)
    rows, _ = drop_nonfinite_rows(rows, "training set")
    if len(rows["clip_id"]) == 0:
        raise ValueError("empty training set (every row had non-finite features)")
    return shard_rows(rows)


def train_planner_in_process(cfg: ExperimentConfig, storage: Storage, *, name: str, epochs: int, seed: int,
                             pool_ids: list[str] | None = None, init_checkpoint: str | None = None,
                             include_train: bool = True, fresh: bool = False,
                             recipe: TrainRecipe | None = None, label: str = "in_trial") -> dict:
    """:func:`train_planner` without Ray Train: the same loop, recipe, seeding, row order and
    run name in the calling process (one worker, no DDP), for small trainings such as the grid
    cells inside their Tune trials (``train.backend``). A one-worker Ray Train run of the same
    settings gives bit-identical weights (tested), without the worker group's start-up.
    ``label`` is the ``backend`` the returned payload names (``in_process`` for the base model).

    Resumption: every ``train.checkpoint_every`` epochs the model and optimizer state go to
    ``train_runs/<run name>/checkpoint/`` (``planner.pt``, ``train_state.pt``); a rerun of the
    same training continues from there (a finished one hands its weights back).

    Args and returns: as :func:`train_planner`. Raises: as :func:`train_planner`.
    """
    import torch

    from mosaic_ray.planner.model import VocabularyPlanner, load_checkpoint, save_checkpoint
    from mosaic_ray.planner.training import require_finite_weights, seed_torch, train_loop

    t0 = time.time()
    pc_ = cfg.planner
    recipe = replace(recipe or recipe_from_config(cfg, "base"), epochs=int(epochs))
    spec = PlannerSpec.from_config(pc_)
    targets = ensure_targets(cfg, storage) if pc_.distill else None
    rows = training_rows(storage, spec, include_train=include_train, pool_ids=pool_ids, targets=targets)
    n = len(rows["clip_id"])
    recipe = recipe.for_rows(n)  # planner.steps: the epochs that reach a fixed step count
    anchors = np.load(storage.local_copy("planner/vocabulary.npy"))
    config = _run_settings(cfg, spec, recipe, seed, n, init_checkpoint)
    run_name = _run_name(name, {**config, "backend": "in_trial"}, pool_ids, anchors)
    ckpt = f"train_runs/{run_name}/checkpoint"
    if fresh and storage.exists(f"train_runs/{run_name}"):
        storage.delete(f"train_runs/{run_name}")
    torch.set_num_threads(pc_.torch_threads)
    seed_torch(seed)
    if init_checkpoint:
        model = load_checkpoint(storage.local_copy(init_checkpoint))
    else:
        model = VocabularyPlanner(spec, torch.from_numpy(np.asarray(anchors, np.float32)))
    state = None
    if storage.exists(f"{ckpt}/train_state.pt"):
        state = torch.load(io.BytesIO(storage.read_bytes(f"{ckpt}/train_state.pt")), map_location="cpu",
                           weights_only=False)
        model.load_state_dict(state["model"])
    start_epoch = 0 if state is None else int(state["epoch"]) + 1
    every = max(1, cfg.train.checkpoint_every)
    losses: list[float] = []

    def save(s) -> None:
        buf = io.BytesIO()
        torch.save(s.state_dict(), buf)
        storage.write_bytes(f"{ckpt}/train_state.pt", buf.getvalue())  # atomic: a resume point
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(model, os.path.join(d, "planner.pt"), {"epochs": recipe.epochs})
            with open(os.path.join(d, "planner.pt"), "rb") as f:
                data = f.read()
        storage.write_bytes(f"{ckpt}/planner.pt", data)
        storage.write_bytes(f"planner/{name}.pt", data)

    def on_epoch(s) -> None:
        losses.append(s.loss)
        if s.epoch == recipe.epochs - 1 or (s.epoch + 1) % every == 0:
            save(s)

    if start_epoch < recipe.epochs:
        train_loop(model, rows, recipe, seed=seed, n_total=n, resume=state, on_epoch=on_epoch, name=run_name)
    else:  # the run had finished: hand its final weights back
        require_finite_weights(model, f"{run_name}: stored final checkpoint")
        storage.write_bytes(f"planner/{name}.pt", storage.read_bytes(f"{ckpt}/planner.pt"))
    out = {"checkpoint": f"planner/{name}.pt", "n_train": int(n), "loss": float(losses[-1]) if losses else float("nan"),
           "wall_time_s": round(time.time() - t0, 1), "run_name": run_name, "resumed_from_epoch": start_epoch,
           "recipe": recipe.to_dict(), "backend": label}
    if targets is not None:
        key = "frame_id" if "frame_id" in targets.column_names else "clip_id"
        ok = {c for c, s_ in zip(targets.column(key).to_pylist(), targets.column("status").to_pylist())
              if s_ == "ok"}
        out["n_distill_targets"] = sum(1 for c in rows.get("frame_id", rows["clip_id"]) if c in ok)
    return out


def train_planner(cfg: ExperimentConfig, storage: Storage, *, name: str, epochs: int, seed: int,
                  pool_ids: list[str] | None = None, init_checkpoint: str | None = None,
                  include_train: bool = True, fresh: bool = False, recipe: TrainRecipe | None = None) -> dict:
    """Train a planner with ``TorchTrainer`` and copy its weights to ``planner/<name>.pt``.

    Args:
        name: run name (unique per run; also the checkpoint file name).
        epochs: epochs (replaces the recipe's).
        seed: model-initialisation and shuffling seed.
        pool_ids: selected pool clips added to D_train.
        init_checkpoint: storage-relative checkpoint to continue from (None: from scratch
            with the vocabulary in ``planner/vocabulary.npy``).
        include_train: train on D_train too (False: the pool clips only).
        fresh: discard an earlier run of the same name and settings instead of resuming it.
        recipe: the training recipe (default: ``recipe_from_config(cfg, "base")``, i.e.
            ``planner.*``; final trainings pass ``recipe_from_config(cfg, "final")``).

    The Ray Train run is named ``<name>-<hash of the settings and the clip ids>``: rerunning
    the same training after an interruption resumes from its latest checkpoint (saved every
    ``train.checkpoint_every`` epochs with the optimizer state); a worker failure within a
    run restarts the worker group from that checkpoint (``FailureConfig(max_failures=1)``).
    A finished run leaves ``train_runs/<run name>/_FINISHED.json``; rerunning it copies its final
    weights back without starting Ray Train (``resumed_from_epoch`` = the epochs).
    Two runs of the same settings on the same machine and worker count give bit-identical
    weights (see :mod:`mosaic_ray.planner.training`).

    Returns:
        ``{"checkpoint": rel path, "n_train": rows, "loss": final loss, "wall_time_s": s,
        "run_name", "resumed_from_epoch", "recipe": dict}`` (+ ``n_distill_targets`` with
        ``planner.distill``).

    Raises:
        ValueError: empty training set or a selected clip missing from the pool.
        NonFiniteTrainingError: the loss or the weights became NaN/inf (names the run and step).
        RuntimeError: the run produced no checkpoint.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    t0 = time.time()
    pc_ = cfg.planner
    recipe = replace(recipe or recipe_from_config(cfg, "base"), epochs=int(epochs))
    spec = PlannerSpec.from_config(pc_)
    targets = ensure_targets(cfg, storage) if pc_.distill else None
    ds, n = training_dataset(storage, spec, include_train=include_train, pool_ids=pool_ids, targets=targets)
    recipe = recipe.for_rows(n)  # planner.steps: the epochs that reach a fixed step count
    tc = cfg.train
    anchors = np.load(storage.local_copy("planner/vocabulary.npy"))
    config = _run_settings(cfg, spec, recipe, seed, n, init_checkpoint)
    run_name = _run_name(name, config, pool_ids, anchors)
    config.update({"anchors": anchors.tolist(), "storage": storage, "name": run_name})
    if fresh and storage.exists(f"train_runs/{run_name}"):
        storage.delete(f"train_runs/{run_name}")
    finished = f"train_runs/{run_name}/{FINISHED_RECORD}"
    if storage.exists(finished):  # this run finished earlier: hand back its result, start no workers
        out = storage.read_json(finished)
        storage.write_bytes(f"planner/{name}.pt", storage.read_bytes(f"{out.pop('final_checkpoint_dir')}/planner.pt"))
        return {**out, "checkpoint": f"planner/{name}.pt", "resumed_from_epoch": int(recipe.epochs),
                "wall_time_s": round(time.time() - t0, 1)}
    use_gpu = tc.gpus_per_worker > 0
    resources = {"CPU": tc.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = tc.gpus_per_worker
    trainer = TorchTrainer(
        _train_loop_per_worker, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=tc.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            storage_path=storage.path("train_runs"),  # in-filesystem path (no scheme)
            storage_filesystem=None if storage.is_local else storage.fs,
            name=run_name,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=1)),
        datasets={"train": ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),  # every worker sees every row
    )
    try:
        result = trainer.fit()
    except Exception as e:
        if "NonFiniteTrainingError" in f"{type(e).__name__}: {e}":
            raise NonFiniteTrainingError(f"training run {name} ({run_name}) diverged: {e}") from e
        raise
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, "planner.pt"), "rb") as f:
            storage.write_bytes(f"planner/{name}.pt", f.read())
    loss = float(result.metrics.get("loss", float("nan")))
    out = {"checkpoint": f"planner/{name}.pt", "n_train": int(n), "loss": loss,
           "wall_time_s": round(time.time() - t0, 1), "run_name": run_name,
           "resumed_from_epoch": int(result.metrics.get("resumed_from", 0)), "recipe": recipe.to_dict(),
           "backend": "ray_train"}
    if targets is not None:  # training rows that had rule-distillation targets
        ids = set(pool_ids or [])
        if include_train:
            ids |= set(storage.read_table("ingest/clips/train", columns=["clip_id"]).column("clip_id").to_pylist())
        out["n_distill_targets"] = sum(1 for c, s_ in zip(targets.column("clip_id").to_pylist(),
                                                          targets.column("status").to_pylist())
                                       if c in ids and s_ == "ok")
    runs_dir = storage.path("train_runs").rstrip("/")
    if result.checkpoint.path.startswith(runs_dir + "/"):  # where the final weights lie, for a rerun
        final_dir = "train_runs" + result.checkpoint.path[len(runs_dir):]
        storage.write_json(finished, {**{k: v for k, v in out.items() if k not in ("checkpoint", "wall_time_s")},
                                      "final_checkpoint_dir": final_dir})
    return out

