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


def featurize_batch(batch: pa.Table, spec: PlannerSpec, keep: pa.Array | None = None) -> dict[str, np.ndarray]:
    """Ray Data UDF (stateless task): clip rows (those whose id is in ``keep``, if given) ->
    feature arrays at t0 for training."""
    from mosaic_ray.data.clip import clips_from_table

    if keep is not None:
        batch = batch.filter(pc.is_in(batch.column("clip_id"), value_set=keep))
    if batch.num_rows == 0:
        return {k: np.zeros((0,) + shape, np.float32) for k, shape in spec.features.shapes().items()
                if k in FEATURE_KEYS}
    f = featurize_clips(clips_from_table(batch), spec.features, with_prev=False)
    return {k: f[k] for k in FEATURE_KEYS}


def training_dataset(storage: Storage, spec: PlannerSpec, include_train: bool = True,
                     pool_ids: list[str] | None = None):
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
    ds = ds.map_batches(featurize_batch, fn_kwargs={"spec": spec, "keep": keep}, batch_size=64,
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
    model = ray.train.torch.prepare_model(model)
    shard = ray.train.get_dataset_shard("train")
    lr, epochs = config["lr"], config["epochs"]
    bs = max(1, config["batch_size"] // world)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config["weight_decay"])
    steps_per_epoch = max(1, math.ceil(config["n_rows"] / (world * bs)))
    total = epochs * steps_per_epoch
    rng = np.random.default_rng(config["seed"] * 7919 + rank)
    cache = None
    step = 0
    for epoch in range(epochs):
        if cache is None:
            parts = list(shard.iter_batches(batch_size=512, batch_format="numpy"))
            data = {k: np.concatenate([p[k] for p in parts]) for k in FEATURE_KEYS} if parts else None
            if config["cache_shard"]:
                cache = data
        else:
            data = cache
        n_local = 0 if data is None else len(data["target"])
        order = np.concatenate([rng.permutation(n_local) for _ in range(
            math.ceil(steps_per_epoch * bs / max(n_local, 1)))]) if n_local else np.zeros(0, int)
        losses = []
        for i in range(steps_per_epoch):  # same count on every rank
            idx = order[i * bs:(i + 1) * bs] if n_local else None
            if idx is None or len(idx) == 0:
                raise RuntimeError(f"rank {rank} got an empty dataset shard")
            cosine_lr(opt, lr, step, total)
            losses.append(train_step(model, opt, to_tensors({k: data[k][idx] for k in FEATURE_KEYS}),
                                     config["mirror"]))
            step += 1
        loss = float(np.mean(losses))
        last = epoch == epochs - 1
        if last and rank == 0:
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(core, os.path.join(d, "planner.pt"), {"epochs": epochs})
                ray.train.report({"epoch": epoch, "loss": loss}, checkpoint=ray.train.Checkpoint.from_directory(d))
        elif last or (epoch + 1) % config["report_every"] == 0:
            ray.train.report({"epoch": epoch, "loss": loss}, checkpoint=None)


def train_planner(cfg: ExperimentConfig, storage: Storage, *, name: str, epochs: int, seed: int,
                  pool_ids: list[str] | None = None, init_checkpoint: str | None = None,
                  lr: float | None = None, include_train: bool = True) -> dict:
    """Train a planner with ``TorchTrainer`` and copy its weights to ``planner/<name>.pt``.

    Args:
        name: run name (unique per run; also the checkpoint file name).
        pool_ids: selected pool clips added to D_train.
        init_checkpoint: storage-relative checkpoint to continue from (None: from scratch
            with the vocabulary in ``planner/vocabulary.npy``).

    Returns:
        ``{"checkpoint": rel path, "n_train": rows, "loss": final loss, "wall_time_s": s}``.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    t0 = time.time()
    pc_ = cfg.planner
    spec = PlannerSpec.from_config(pc_)
    ds, n = training_dataset(storage, spec, include_train=include_train, pool_ids=pool_ids)
    tc = cfg.train
    anchors = np.load(local_copy(storage, "planner/vocabulary.npy"))
    config = {
        "spec": spec.__dict__, "anchors": anchors.tolist(), "init_checkpoint": init_checkpoint,
        "storage_root": storage.root_uri, "storage_cfg": cfg.storage.model_dump(),
        "lr": lr or pc_.lr, "weight_decay": pc_.weight_decay, "batch_size": pc_.batch_size,
        "epochs": epochs, "seed": seed, "mirror": pc_.augment_mirror, "n_rows": n,
        "torch_threads": pc_.torch_threads, "cache_shard": tc.cache_shard, "report_every": 10,
    }
    use_gpu = tc.gpus_per_worker > 0
    resources = {"CPU": tc.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = tc.gpus_per_worker
    trainer = TorchTrainer(
        _train_loop_per_worker, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=tc.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            storage_path=storage.uri("train_runs") if not storage.is_local else storage.path("train_runs"),
            storage_filesystem=None if storage.is_local else storage.fs,
            name=f"{name}-{uuid.uuid4().hex[:6]}",
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
    return {"checkpoint": f"planner/{name}.pt", "n_train": int(n), "loss": loss,
            "wall_time_s": round(time.time() - t0, 1)}


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

