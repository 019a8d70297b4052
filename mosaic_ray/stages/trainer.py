"""Planner training on Ray Train (``TorchTrainer``, DDP over gloo on CPU, NCCL on GPU).

Ray Data reads the clip shards of D_train (and of the pool, filtered to a selection),
featurises them once (``materialize``) and feeds each worker its shard; the workers run the
shared training loop (:mod:`mosaic_ray.planner.training`) under DDP, report the loss per
epoch and rank 0 saves the checkpoint, which Ray Train persists under the run's storage.
The final weights are copied to ``<run>/planner/<name>.pt``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mosaic_ray.config import ExperimentConfig
from mosaic_ray.planner.features import INPUT_KEYS, featurize_clips
from mosaic_ray.planner.model import PlannerSpec
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)
FEATURE_KEYS = INPUT_KEYS + ("target",)
DISTILL_KEY = "distill_targets"  #: (B, K, 8) rule-distillation targets (with ``planner.distill``)


def featurize_batch(batch: pa.Table, spec: PlannerSpec, keep: pa.Array | None = None,
                    targets: pa.Table | None = None) -> dict[str, np.ndarray]:
    """Ray Data UDF (stateless task): clip rows (those whose id is in ``keep``, if given) ->
    feature arrays at t0 for training. With ``targets`` (the rule-distillation table of
    :mod:`mosaic_ray.stages.distill`) the rows also get ``distill_targets`` (B, K, 8), joined
    by clip id (NaN for clips without targets)."""
    from mosaic_ray.data.clip import clips_from_table
    from mosaic_ray.stages.distill import DISTILL_COLUMNS, targets_for

    if keep is not None:
        batch = batch.filter(pc.is_in(batch.column("clip_id"), value_set=keep))
    K = int(targets.column("K")[0].as_py()) if targets is not None and targets.num_rows else 0
    if batch.num_rows == 0:
        out = {k: np.zeros((0,) + shape, np.float32) for k, shape in spec.features.shapes().items()
               if k in FEATURE_KEYS}
        if targets is not None:
            out[DISTILL_KEY] = np.zeros((0, K, len(DISTILL_COLUMNS)), np.float32)
        return out
    f = featurize_clips(clips_from_table(batch), spec.features, with_prev=False)
    out = {k: f[k] for k in FEATURE_KEYS}
    if targets is not None:
        out[DISTILL_KEY] = targets_for(targets, f["clip_id"], K)
    return out


def training_dataset(storage: Storage, spec: PlannerSpec, include_train: bool = True,
                     pool_ids: list[str] | None = None, targets: pa.Table | None = None):
    """A materialised Ray dataset of training features: D_train ∪ the given pool clips.

    One ``read_parquet`` over the D_train and pool shards, then one map that keeps the wanted
    rows and featurises them.

    Returns:
        (dataset, number of rows).

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
    ds = ds.map_batches(featurize_batch, fn_kwargs={"spec": spec, "keep": keep, "targets": targets}, batch_size=64,
                        batch_format="pyarrow", num_cpus=0.5).materialize()
    n = ds.count()
    if keep is not None and n != len(keep):
        raise ValueError(f"training set has {n} rows, expected {len(keep)} (D_train ∪ selection): "
                         "a selected clip is missing from the pool shards")
    if n == 0:
        raise ValueError("empty training set")
    return ds, n


def _train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: DDP training of the planner on this worker's dataset shard.

    The global batch is ``batch_size`` (``batch_size // world`` per worker), so the
    optimisation does not change with the number of workers. With ``cache_shard`` the shard
    is pulled once and kept in memory for the following epochs (a clip pool's features are a
    few MB per thousand clips); otherwise every epoch streams it again. Every rank runs the
    same number of steps per epoch (DDP all-reduces every step).
    """
    import math

    import ray.train
    import ray.train.torch
    import torch

    from mosaic_ray.planner.model import VocabularyPlanner, load_checkpoint, save_checkpoint
    from mosaic_ray.planner.training import cosine_lr, to_tensors, train_step

    torch.set_num_threads(config["torch_threads"])
    from mosaic_ray.stages.shards import record_actor_pid

    record_actor_pid("train")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"])
    if config["init_checkpoint"]:
        from mosaic_ray.config import StorageConfig

        st = Storage(config["storage_root"], StorageConfig(**config["storage_cfg"]))
        model = load_checkpoint(local_copy(st, config["init_checkpoint"]))
    else:
        spec = PlannerSpec(**config["spec"])
        model = VocabularyPlanner(spec, torch.from_numpy(np.asarray(config["anchors"], np.float32)))
    core = model
    # resume: Ray Train hands back the latest checkpoint of this run (same name and storage)
    state = None
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as d:
            state = torch.load(os.path.join(d, "train_state.pt"), map_location="cpu", weights_only=False)
        core.load_state_dict(state["model"])
    model = ray.train.torch.prepare_model(model)
    shard = ray.train.get_dataset_shard("train")
    lr, epochs = config["lr"], config["epochs"]
    bs = max(1, config["batch_size"] // world)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config["weight_decay"])
    start_epoch, step = 0, 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        start_epoch, step = state["epoch"] + 1, state["step"]
    steps_per_epoch = max(1, math.ceil(config["n_rows"] / (world * bs)))
    total = epochs * steps_per_epoch
    every = max(1, config["checkpoint_every"])

    def save(epoch: int, loss: float) -> None:
        metrics = {"epoch": epoch, "loss": loss, "resumed_from": start_epoch}
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(core, os.path.join(d, "planner.pt"), {"epochs": epochs})
                torch.save({"model": core.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                            "step": step}, os.path.join(d, "train_state.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics, checkpoint=None)

    if start_epoch >= epochs:  # the run had finished: hand its final checkpoint back
        save(epochs - 1, float("nan"))
        return
    cache = None
    keys = FEATURE_KEYS + ((DISTILL_KEY,) if config.get("distill") else ())
    for epoch in range(start_epoch, epochs):
        if cache is None:
            parts = list(shard.iter_batches(batch_size=512, batch_format="numpy"))
            data = {k: np.concatenate([p[k] for p in parts]) for k in keys} if parts else None
            if config["cache_shard"]:
                cache = data
        else:
            data = cache
        n_local = 0 if data is None else len(data["target"])
        rng = np.random.default_rng([config["seed"], rank, epoch])  # same order whether resumed or not
        order = np.concatenate([rng.permutation(n_local) for _ in range(
            math.ceil(steps_per_epoch * bs / max(n_local, 1)))]) if n_local else np.zeros(0, int)
        losses = []
        for i in range(steps_per_epoch):  # same count on every rank
            idx = order[i * bs:(i + 1) * bs] if n_local else None
            if idx is None or len(idx) == 0:
                raise RuntimeError(f"rank {rank} got an empty dataset shard")
            cosine_lr(opt, lr, step, total)
            losses.append(train_step(model, opt, to_tensors({k: data[k][idx] for k in keys}, keys),
                                     config["mirror"], config.get("distill_weight", 1.0)))
            step += 1
        loss = float(np.mean(losses))
        if epoch == epochs - 1 or (epoch + 1) % every == 0:
            save(epoch, loss)


def train_planner(cfg: ExperimentConfig, storage: Storage, *, name: str, epochs: int, seed: int,
                  pool_ids: list[str] | None = None, init_checkpoint: str | None = None,
                  lr: float | None = None, include_train: bool = True, fresh: bool = False) -> dict:
    """Train a planner with ``TorchTrainer`` and copy its weights to ``planner/<name>.pt``.

    Args:
        name: run name (unique per run; also the checkpoint file name).
        pool_ids: selected pool clips added to D_train.
        init_checkpoint: storage-relative checkpoint to continue from (None: from scratch
            with the vocabulary in ``planner/vocabulary.npy``).
        fresh: discard an earlier run of the same name and settings instead of resuming it.

    The Ray Train run is named ``<name>-<hash of the settings and the clip ids>``: rerunning
    the same training after an interruption resumes from its latest checkpoint (saved every
    ``train.checkpoint_every`` epochs with the optimizer state); a worker failure within a
    run restarts the worker group from that checkpoint (``FailureConfig(max_failures=1)``).

    Returns:
        ``{"checkpoint": rel path, "n_train": rows, "loss": final loss, "wall_time_s": s}``.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    t0 = time.time()
    pc_ = cfg.planner
    spec = PlannerSpec.from_config(pc_)
    targets = distill_targets_table(cfg, storage) if pc_.distill else None
    ds, n = training_dataset(storage, spec, include_train=include_train, pool_ids=pool_ids, targets=targets)
    tc = cfg.train
    anchors = np.load(local_copy(storage, "planner/vocabulary.npy"))
    config = {
        "spec": spec.__dict__, "anchors": anchors.tolist(), "init_checkpoint": init_checkpoint,
        "storage_root": storage.root_uri, "storage_cfg": cfg.storage.model_dump(),
        "lr": lr or pc_.lr, "weight_decay": pc_.weight_decay, "batch_size": pc_.batch_size,
        "epochs": epochs, "seed": seed, "mirror": pc_.augment_mirror, "n_rows": n,
        "torch_threads": pc_.torch_threads, "cache_shard": tc.cache_shard,
        "checkpoint_every": tc.checkpoint_every,
    }
    if pc_.distill:  # only then, so that the run names (hashes) of other runs do not change
        config.update({"distill": True, "distill_weight": pc_.distill_loss_weight})
    import hashlib
    import json as _json

    digest = hashlib.sha1(_json.dumps({k: v for k, v in config.items() if k not in ("anchors", "storage_cfg")},
                                      sort_keys=True, default=str).encode()
                          + _json.dumps(sorted(pool_ids or [])).encode() + anchors.tobytes()).hexdigest()[:10]
    run_name = f"{name}-{digest}"
    if fresh and storage.exists(f"train_runs/{run_name}"):
        storage.delete(f"train_runs/{run_name}")
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
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, "planner.pt"), "rb") as f:
            storage.write_bytes(f"planner/{name}.pt", f.read())
    loss = float(result.metrics.get("loss", float("nan")))
    out = {"checkpoint": f"planner/{name}.pt", "n_train": int(n), "loss": loss,
           "wall_time_s": round(time.time() - t0, 1), "run_name": run_name,
           "resumed_from_epoch": int(result.metrics.get("resumed_from", 0))}
    if targets is not None:  # training rows that had rule-distillation targets
        ids = set(pool_ids or [])
        if include_train:
            ids |= set(storage.read_table("ingest/clips/train", columns=["clip_id"]).column("clip_id").to_pylist())
        out["n_distill_targets"] = sum(1 for c, s_ in zip(targets.column("clip_id").to_pylist(),
                                                          targets.column("status").to_pylist())
                                       if c in ids and s_ == "ok")
    return out


def distill_targets_table(cfg: ExperimentConfig, storage: Storage) -> pa.Table:
    """The rule-distillation targets of D_train and the pool (``planner.distill``), computed
    by :func:`mosaic_ray.stages.distill.run_distill` when missing or when they belong to
    another vocabulary than ``planner/vocabulary.npy``."""
    import hashlib

    from mosaic_ray.stages.distill import STAGE, load_targets, run_distill

    digest = hashlib.sha1(storage.read_bytes("planner/vocabulary.npy")).hexdigest()
    done = storage.is_done(STAGE) and storage.done_payload(STAGE).get("vocabulary_sha1") == digest
    if not done:
        run_distill(cfg, storage, force=storage.is_done(STAGE))
    return load_targets(storage).select(["clip_id", "targets", "K", "status"])


_LOCAL_CACHE = os.path.join(tempfile.gettempdir(), "mosaic_ray_cache")


def local_copy(storage: Storage, rel: str) -> str:
    """A local file path for ``rel`` (the file itself when local, else a cached download)."""
    if storage.is_local:
        return storage.path(rel)
    os.makedirs(_LOCAL_CACHE, exist_ok=True)
    dest = os.path.join(_LOCAL_CACHE, f"{uuid.uuid5(uuid.NAMESPACE_URL, storage.uri(rel)).hex}-{os.path.basename(rel)}")
    data = storage.read_bytes(rel)
    tmp = dest + f".{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)
    return dest

