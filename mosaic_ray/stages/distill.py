"""``distill``: rule-distillation targets (Hydra-MDP) for every clip, on Ray Data.

Hydra-MDP learns to predict, for every trajectory of its vocabulary, the sub-scores the rule
scorer gives it. This stage computes them: for each clip of the chosen splits (D_train and
the pool by default) the K anchors of ``planner/vocabulary.npy`` are scored in ONE
vectorised EPDMS call (:func:`mosaic_ray.scoring.epdms.score_vocabulary`: LQR tracking,
all terms, EP normalised by the reference proposals, NAVSIM's human filter).

Ray Data maps the clip shards through an actor pool (``ShardStage``: each actor loads the
vocabulary once, each input shard becomes one output shard written atomically, so a rerun
or a retried task never duplicates or loses rows). Output, one row per clip, under
``<run>/distill/targets/<split>/<shard>.parquet``:

* ``clip_id`` (string), ``split`` (string);
* ``targets`` (fixed-size list of ``K * 9`` float32): the (K, 9) terms in
  :data:`~mosaic_ray.scoring.epdms.TERMS` order, row-major (EC is NaN: it depends on the
  planner's own previous output, not on the anchor);
* ``K`` (int32), ``status`` ("ok" or the reason the clip could not be scored; such a clip
  keeps its row with NaN targets, so no clip is silently dropped).

:func:`load_targets` reads them back as a lookup and :func:`targets_for` aligns them with a
feature batch as the (B, K, 8) ``distill_targets`` the training loop uses.
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mosaic_ray.config import ExperimentConfig
from mosaic_ray.scoring.epdms import DISTILL_TERMS, TERMS
from mosaic_ray.stages.runtime import default_num_actors
from mosaic_ray.stages.shards import Resources, ShardStage, preflight_shards, record_actor_pid, run_shard_stage
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)
STAGE = "distill"
TARGETS_DIR = f"{STAGE}/targets"
DISTILL_COLUMNS = [TERMS.index(t) for t in DISTILL_TERMS]  #: the 8 predicted columns of the (K, 9) targets


def targets_schema(K: int) -> pa.Schema:
    return pa.schema([pa.field("clip_id", pa.string()), pa.field("frame_id", pa.string()), pa.field("split", pa.string()),
                      pa.field("targets", pa.list_(pa.float32(), K * len(TERMS))),
                      pa.field("K", pa.int32()), pa.field("status", pa.string())],
                     metadata={b"terms": ",".join(TERMS).encode()})


class DistillStage(ShardStage):
    """EPDMS terms of every vocabulary anchor on every clip of a shard (stateful: the
    vocabulary loads once per actor)."""

    name = "distill"
    stateful = True

    def __init__(self, storage: Storage, vocabulary: str, split: str, output_dir: str, cpus: float = 1.0):
        self.store = storage
        self.vocabulary, self.split, self.output_dir = vocabulary, split, output_dir
        self.resources = Resources(cpus=cpus)

    def setup(self) -> None:
        import os

        for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(v, "1")
        record_actor_pid("distill")
        self.anchors = np.load(self.storage().local_copy(self.vocabulary)).astype(np.float64)
        if self.anchors.ndim != 3 or self.anchors.shape[1:] != (8, 3):
            raise ValueError(f"{self.vocabulary}: expected (K, 8, 3) anchors, got {self.anchors.shape}")
        self.schema = targets_schema(self.anchors.shape[0])

    def process_shard(self, table: pa.Table) -> pa.Table:
        if not hasattr(self, "anchors"):
            self.setup()
        from mosaic_ray.data.clip import clip_from_row
        from mosaic_ray.scoring.epdms import score_vocabulary

        K = self.anchors.shape[0]
        out = {c: [] for c in self.schema.names}
        for row in table.to_pylist():
            out["clip_id"].append(row.get("clip_id"))
            out["frame_id"].append(row.get("frame_id") or row.get("clip_id"))
            out["split"].append(self.split)
            out["K"].append(K)
            try:
                terms = score_vocabulary(clip_from_row(row), self.anchors)
                out["targets"].append(terms.astype(np.float32).ravel())
                out["status"].append("ok")
            except Exception as e:  # keep the row; the reason goes to ``status``
                out["targets"].append(np.full(K * len(TERMS), np.nan, np.float32))
                out["status"].append(f"error: {type(e).__name__}: {e}"[:300])
        return pa.Table.from_pydict(out, schema=self.schema)


def run_distill(cfg: ExperimentConfig, storage: Storage, splits: tuple[str, ...] = ("train", "pool"),
                vocabulary: str = "planner/vocabulary.npy", num_actors: int | None = None,
                force: bool = False) -> dict:
    """Write the distillation targets of every clip of ``splits`` under ``distill/targets``.

    Args:
        cfg: experiment config (storage options, actor sizing from ``cfg.score``).
        storage: the run's storage (needs ``ingest/clips/<split>`` and ``vocabulary``).
        splits: the clip splits to cover.
        vocabulary: storage-relative ``(K, 8, 3)`` anchors.
        num_actors: actor-pool size (default: as the score stage).
        force: recompute even if the stage finished before.

    Returns:
        ``{"rows": n, "ok": n_ok, "errors": n_err, "K": K, "vocabulary", "vocabulary_sha1",
        "per_split": {split: {"rows", "ok", "shards"}}, "wall_time_s": s}``.

    Raises:
        FileNotFoundError: no clip shards or no vocabulary.
        RuntimeError: the output does not hold exactly one row per input clip.
    """
    if storage.is_done(STAGE) and not force:
        return storage.done_payload(STAGE)
    if not storage.exists(vocabulary):
        raise FileNotFoundError(f"no vocabulary at {storage.uri(vocabulary)}; run the base stage first")
    t0 = time.time()
    if force and storage.exists(TARGETS_DIR):
        storage.delete(TARGETS_DIR)
    per_split, total_rows, total_ok, K = {}, 0, 0, None
    for split in splits:
        shards = storage.list(f"ingest/clips/{split}", ".parquet")
        if not shards:
            raise FileNotFoundError(f"no clip shards for split {split!r}; run ingest first")
        preflight_shards(storage, shards, ["clip_id", "frame_id", "ego_states", "lane_offsets"])
        n_actors = min(num_actors or default_num_actors(cfg), len(shards))
        stage = DistillStage(storage, vocabulary, split, f"{TARGETS_DIR}/{split}", cpus=cfg.score.num_cpus_per_actor)
        log.info("[distill] %s: %d shards through %d actor(s)", split, len(shards), n_actors)
        run_shard_stage(stage, shards, n_actors)
        want = storage.read_table(f"ingest/clips/{split}", columns=["frame_id"]).column("frame_id").to_pylist()
        got_t = storage.read_table(f"{TARGETS_DIR}/{split}", columns=["frame_id", "status", "K"])
        got = got_t.column("frame_id").to_pylist()
        if sorted(got) != sorted(want):
            missing, extra = set(want) - set(got), len(got) - len(set(got))
            raise RuntimeError(f"distill output mismatch for {split}: {len(missing)} frames missing, "
                               f"{extra} duplicated rows")
        n_ok = sum(s == "ok" for s in got_t.column("status").to_pylist())
        K = int(got_t.column("K")[0].as_py()) if got_t.num_rows else K
        per_split[split] = {"rows": len(got), "ok": n_ok, "shards": len(shards)}
        total_rows += len(got)
        total_ok += n_ok
    payload = {"rows": total_rows, "ok": total_ok, "errors": total_rows - total_ok, "K": K,
               "vocabulary": vocabulary, "vocabulary_sha1": vocabulary_sha1(storage, vocabulary),
               "per_split": per_split, "wall_time_s": round(time.time() - t0, 1)}
    storage.mark_done(STAGE, payload)
    log.info("[distill] %d clips (%d errors) in %s s", total_rows, payload["errors"], payload["wall_time_s"])
    return payload


def vocabulary_sha1(storage: Storage, vocabulary: str = "planner/vocabulary.npy") -> str:
    """SHA-1 (hex) of the stored vocabulary file: the targets belong to exactly that file."""
    return hashlib.sha1(storage.read_bytes(vocabulary)).hexdigest()


def ensure_targets(cfg: ExperimentConfig, storage: Storage, vocabulary: str = "planner/vocabulary.npy") -> pa.Table:
    """The rule-distillation targets of D_train and the pool (for ``planner.distill``), computed
    by :func:`run_distill` when missing or when they belong to another vocabulary than the one
    at ``vocabulary`` (SHA-1 recorded in the stage's done record).

    Returns:
        table with ``clip_id`` (string), ``targets`` (list of K*9 float32), ``K`` (int32) and
        ``status`` (string), one row per clip: the input of :func:`targets_for`.

    Raises:
        FileNotFoundError: no clip shards or no vocabulary (from :func:`run_distill`).
    """
    digest = vocabulary_sha1(storage, vocabulary)
    done = storage.is_done(STAGE) and storage.done_payload(STAGE).get("vocabulary_sha1") == digest
    if not done:
        run_distill(cfg, storage, vocabulary=vocabulary, force=storage.is_done(STAGE))
    t = load_targets(storage)
    return t.select([c for c in ("clip_id", "frame_id", "targets", "K", "status") if c in t.column_names])


def load_targets(storage: Storage, splits: tuple[str, ...] | None = None) -> pa.Table:
    """The targets table (``clip_id``, ``split``, ``targets``, ``K``, ``status``) of the given
    splits (default: all under ``distill/targets``).

    Raises:
        StorageError: no targets written.
    """
    if splits is None:
        return storage.read_table(TARGETS_DIR)
    return pa.concat_tables([storage.read_table(f"{TARGETS_DIR}/{s}") for s in splits])


def targets_for(table: pa.Table | None, clip_ids, K: int) -> np.ndarray:
    """Distillation targets aligned with ``clip_ids`` (frame ids; a table from before frames is
    matched on its ``clip_id``): ``(B, K, 8)`` float32 (NaN for frames without an ``ok`` row),
    columns in :data:`~mosaic_ray.scoring.epdms.DISTILL_TERMS` order.

    Raises:
        ValueError: the table's vocabulary size differs from ``K``.
    """
    ids = [str(c) for c in clip_ids]
    out = np.full((len(ids), K, len(DISTILL_COLUMNS)), np.nan, np.float32)
    if table is None or table.num_rows == 0 or not ids:
        return out
    key = "frame_id" if "frame_id" in table.column_names else "clip_id"
    sub = table.filter(pc.is_in(table.column(key), value_set=pa.array(ids, pa.string())))
    if sub.num_rows == 0:
        return out
    ks = set(sub.column("K").to_pylist())
    if ks != {K}:
        raise ValueError(f"distillation targets were computed for K={sorted(ks)}, the planner has K={K}")
    index = {c: i for i, c in enumerate(ids)}
    flat = sub.column("targets").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vals = flat.reshape(sub.num_rows, K, len(TERMS))[:, :, DISTILL_COLUMNS]
    for r, (cid, status) in enumerate(zip(sub.column(key).to_pylist(), sub.column("status").to_pylist())):
        if status == "ok":
            out[index[cid]] = vals[r]
    return out
