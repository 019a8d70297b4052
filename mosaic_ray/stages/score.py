"""``mosaic-ray score``: the planner and the EPDMS scorer over every pool clip, on Ray Data.

Ray Data streams the pool's clip shards through an actor pool
(``map_batches(ScoreStage, compute=ActorPoolStrategy(size=n))``); each actor loads the
planner checkpoint once and, per batch, runs the planner (t0 and the previous frame) and
scores its chosen trajectory. Output (``<run>/score/scores/*.parquet``), one row per pool
clip: metadata for domain assignment, ``importance`` (EPDMS of the base model on the clip,
MOSAIC §3.2.1), the nine terms, ``ec_available``, ``entropy`` and ``embedding``, and
``status`` ("ok" or the reason the clip could not be scored — such a clip keeps its row
with NaN scores so that no clip is silently dropped).
"""

from __future__ import annotations

import io
import os
import logging
import posixpath
import time

import numpy as np
import pyarrow as pa
import torch

from mosaic_ray import layout
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.clip import clip_schema
from mosaic_ray.data.split import duplicated
from mosaic_ray.scoring.epdms import TERMS
from mosaic_ray.stages.runtime import default_num_actors
from mosaic_ray.stages.shards import (Resources, ShardInputError, ShardStage, preflight_shards, record_actor_pid,
                                      run_shard_stage)
from mosaic_ray.stages.step import Context, Step, needs_of
from mosaic_ray.storage import Storage, StorageError

log = logging.getLogger(__name__)
STAGE = "score"
META_COLUMNS = ("clip_id", "dataset", "site", "segment", "scenario_id")


def scores_schema(embed_dim: int) -> pa.Schema:
    fields = [pa.field(c, pa.string()) for c in META_COLUMNS]
    fields += [pa.field("importance", pa.float64())]
    fields += [pa.field(t.lower(), pa.float64()) for t in TERMS]
    fields += [pa.field("ec_available", pa.bool_()), pa.field("entropy", pa.float64()),
               pa.field("embedding", pa.list_(pa.float32(), embed_dim)), pa.field("choice", pa.int64()),
               pa.field("status", pa.string())]
    return pa.schema(fields)


class ScoreStage(ShardStage):
    """Planner + EPDMS per clip, one pool shard per call (stateful: the checkpoint loads once
    per actor); clips go through the planner in chunks of ``clip_batch_size``."""

    name = "score"
    stateful = True

    def __init__(self, storage: Storage, checkpoint: str, batch_size: int,
                 cpus: float, gpus: float, torch_threads: int = 1, output_dir: str = "score/scores"):
        self.store, self.checkpoint = storage, checkpoint
        self.clip_batch_size = batch_size
        self.output_dir = output_dir
        self.resources = Resources(cpus=cpus, gpus=gpus)
        self.torch_threads = torch_threads

    def setup(self) -> None:
        import torch

        from mosaic_ray.planner.model import load_checkpoint

        torch.set_num_threads(self.torch_threads)
        record_actor_pid("score")
        self.device = "cuda" if (self.resources.gpus > 0 and torch.cuda.is_available()) else "cpu"
        self.model = load_checkpoint(self.storage().local_copy(self.checkpoint),
                                     map_location=self.device).to(self.device)
        self.model.eval()
        self.schema = scores_schema(self.model.spec.embed_dim)

    def process_shard(self, table: pa.Table) -> pa.Table:
        parts = [self.score_table(table.slice(i, self.clip_batch_size))
                 for i in range(0, table.num_rows, self.clip_batch_size)]
        return pa.concat_tables(parts) if parts else self.schema.empty_table()

    def score_table(self, batch: pa.Table) -> pa.Table:
        """Score the clips of an Arrow table (clip schema); one output row per input row."""
        from mosaic_ray.data.clip import clip_from_row, clips_from_table
        from mosaic_ray.evaluate.planner_eval import score_planner

        E = self.model.spec.embed_dim
        try:
            clips = clips_from_table(batch)
            good, bad = clips, {}
        except Exception:  # decode clip by clip to isolate the broken rows
            rows = batch.to_pylist()
            good, bad = [], {}
            for r in rows:
                try:
                    good.append(clip_from_row(r))
                except Exception as e:
                    bad[r.get("clip_id")] = f"decode_error: {type(e).__name__}: {e}"[:300]
        out = {c: [] for c in self.schema.names}
        results: list[tuple] = []  # (ClipScores or None, row index, error or None) per good clip
        if good:
            try:
                res = score_planner(self.model, good, self.model.spec.features)
                results = [(res, i, None) for i in range(len(good))]
            except Exception:  # isolate the clip that fails
                for c in good:
                    try:
                        results.append((score_planner(self.model, [c], self.model.spec.features), 0, None))
                    except Exception as e:
                        results.append((None, 0, f"score_error: {type(e).__name__}: {e}"[:300]))
        for c, (one, i, err) in zip(good, results):
            for m in META_COLUMNS:
                out[m].append(getattr(c, m))
            if err is not None:
                self._nan_row(out, E, err)
                continue
            out["importance"].append(float(one.epdms[i]))
            for j, t in enumerate(TERMS):
                out[t.lower()].append(float(one.terms[i, j]))
            out["ec_available"].append(bool(one.ec_available[i]))
            out["entropy"].append(float(one.entropy[i]))
            out["embedding"].append(one.embedding[i].astype(np.float32))
            out["choice"].append(int(one.choice[i]))
            out["status"].append("ok")
        for cid, err in bad.items():
            out["clip_id"].append(cid)
            for m in META_COLUMNS[1:]:
                out[m].append(None)
            self._nan_row(out, E, err)
        return pa.Table.from_pydict(out, schema=self.schema)

    @staticmethod
    def _nan_row(out: dict, E: int, err: str) -> None:
        out["importance"].append(float("nan"))
        for t in TERMS:
            out[t.lower()].append(float("nan"))
        out["ec_available"].append(False)
        out["entropy"].append(float("nan"))
        out["embedding"].append(np.full(E, np.nan, np.float32))
        out["choice"].append(-1)
        out["status"].append(err)


def run_score(cfg: ExperimentConfig, storage: Storage, checkpoint: str, split: str = "pool",
              out: str = STAGE, force: bool = False) -> dict:
    """Score every clip of ``split`` with the planner at ``checkpoint`` (storage-relative);
    shards scored by an interrupted earlier run are kept unless ``force``.

    Returns:
        ``{"rows": n, "ok": n_ok, "errors": n_err, "wall_time_s": s, "actors": k}``.

    Raises:
        ShardInputError: before any work, an unreadable shard, one without a column of the clip
            schema (the message names the shard and the columns), or duplicated clip ids.
        RuntimeError: the output does not hold exactly one row per input clip.
    """
    t0 = time.time()
    shards = storage.list(f"ingest/clips/{split}", ".parquet")
    if not shards:
        raise FileNotFoundError(f"no clip shards for split {split!r}; run ingest first")
    # every column the scorer decodes (the whole clip schema: a shard without, e.g., agent_states
    # would otherwise score to decode_error rows with no metadata)
    preflight_shards(storage, shards, clip_schema().names)
    ids = storage.read_table(f"ingest/clips/{split}", columns=["clip_id"]).column("clip_id").to_pylist()

    dups = duplicated(ids)
    if dups:
        raise ShardInputError(f"duplicated clip ids in the {split} shards ({len(dups)}), e.g. {dups[:5]}: "
                              "every clip must appear once; re-run ingest or remove the duplicates")
    if force and storage.exists(f"{out}/scores"):
        storage.delete(f"{out}/scores")
    n_actors = min(default_num_actors(cfg), len(shards))
    stage = ScoreStage(storage, checkpoint, cfg.score.batch_size,
                       cfg.score.num_cpus_per_actor, cfg.score.num_gpus_per_actor, cfg.planner.torch_threads,
                       output_dir=f"{out}/scores")
    log.info(f"[score] {split}: {len(shards)} shards through {n_actors} actor(s) "
          f"({cfg.score.num_cpus_per_actor} CPU, {cfg.score.num_gpus_per_actor} GPU each)")
    records = run_shard_stage(stage, shards, n_actors)
    skipped = int(sum(records.column("skipped").to_pylist()))
    # exactly one row per input clip
    want = ids
    got_t = storage.read_table(f"{out}/scores", columns=["clip_id", "status"])
    got = got_t.column("clip_id").to_pylist()
    if sorted(got) != sorted(want):
        missing, extra = set(want) - set(got), len(got) - len(set(got))
        raise RuntimeError(f"score output mismatch: {len(missing)} clips missing, {extra} duplicated rows")
    status = got_t.column("status").to_pylist()
    n_ok = sum(s == "ok" for s in status)
    payload = {"rows": len(got), "ok": n_ok, "errors": len(got) - n_ok, "actors": n_actors,
               "shards": len(shards), "shards_resumed": skipped,
               # time inside the actors' shard calls (read + score + write), summed over shards
               "shard_wall_s": round(float(sum(records.column("wall_s").to_pylist())), 2),
               "shard_cpu_s": round(float(sum(records.column("cpu_s").to_pylist())), 2),
               "checkpoint": checkpoint, "wall_time_s": round(time.time() - t0, 1)}
    log.info(f"[score] {payload['rows']} clips scored ({payload['errors']} errors, {skipped} shards already done) "
          f"in {payload['wall_time_s']} s")
    return payload


def load_scores(storage: Storage, out: str = STAGE):
    """The score table of ``out`` (``score``: the pool, ``score_train``: D_train) through the
    one filter of rejected clips (:func:`mosaic_ray.selection.usable.usable`): only rows with
    ``status == "ok"`` and finite scores reach domains, ranking, pilots and selection.

    Returns:
        :class:`~mosaic_ray.selection.usable.UsableScores`: ``.table`` the usable rows,
        ``.excluded`` {reason: count} of the rest (``{"score_error": 2}``), ``.excluded_ids``.

    Raises:
        StorageError: no score table (run the score step).
    """
    from mosaic_ray.selection.usable import usable

    return usable(storage.read_table(f"{out}/scores"))


def import_checkpoint(storage: Storage, uri: str) -> str:
    """Copy a planner checkpoint from another run (local path or ``s3://`` URI) into this run's
    ``planner/external.pt``; returns that storage-relative path.

    The file is first opened with ``torch.load(weights_only=True)`` (tensors and plain
    containers only), so a checkpoint that would run code when unpickled is refused before it
    reaches :func:`~mosaic_ray.planner.model.load_checkpoint`.

    Raises:
        FileNotFoundError: nothing at ``uri``.
        ValueError: not a planner checkpoint (or not loadable with ``weights_only=True``).
    """
    parent, name = posixpath.split(uri.rstrip("/"))
    try:
        data = Storage(parent or ".", storage.config).read_bytes(name)
    except (StorageError, OSError) as e:
        raise FileNotFoundError(f"score.checkpoint {uri!r}: cannot read it ({e})") from e
    try:
        ck = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(ck, dict) or "spec" not in ck or "anchors" not in ck.get("state_dict", {}):
            raise KeyError("spec / state_dict.anchors")
    except Exception as e:
        raise ValueError(f"score.checkpoint {uri!r} is not a planner checkpoint loadable with "
                         f"weights_only=True: {type(e).__name__}: {str(e)[:200]}") from e
    storage.write_bytes(layout.EXTERNAL_CHECKPOINT, data)
    log.info("[score] planner checkpoint %s -> %s", uri, storage.uri(layout.EXTERNAL_CHECKPOINT))
    return layout.EXTERNAL_CHECKPOINT


def _score_pool(ctx: Context) -> dict:
    ckpt = layout.BASE_CHECKPOINT
    if ctx.cfg.score.checkpoint:
        ckpt = import_checkpoint(ctx.storage, ctx.cfg.score.checkpoint)
    return run_score(ctx.cfg, ctx.storage, ckpt, force=ctx.force)


def _score_needs(cfg: ExperimentConfig) -> dict[str, str]:
    needs = {layout.INGEST_SUMMARY: "ingest"}
    if not cfg.score.checkpoint:  # another run's planner replaces the base step
        needs[layout.BASE_CHECKPOINT] = "base (or set score.checkpoint)"
    return needs


def _score_train(ctx: Context) -> dict:
    ckpt = ctx.storage.done_payload(layout.SCORE).get("checkpoint", layout.BASE_CHECKPOINT)
    return run_score(ctx.cfg, ctx.storage, ckpt, split="train", out=layout.SCORE_TRAIN, force=ctx.force)


def _describe(p: dict) -> str:
    return (f"{p['rows']} clips scored ({p['errors']} errors, {p['shards_resumed']} shards already done) "
            f"through {p['actors']} actor(s)")


#: the score step: the base planner (or ``score.checkpoint``) and EPDMS over every pool clip
def _checkpoint_part(cfg: ExperimentConfig) -> dict:
    """Fingerprint part: the size of an external ``score.checkpoint`` (a replaced file changes it)."""
    p = cfg.score.checkpoint
    return {"checkpoint size": os.path.getsize(p) if p and os.path.isfile(p) else None}


STEP = Step("score", _score_pool, needs=_score_needs, outputs=(layout.scores(),), record=layout.SCORE,
            config_keys=("score",), depends=_checkpoint_part, upstream=("base",), describe=_describe)
#: D_train's embeddings, for the coreset baseline only
TRAIN_STEP = Step("score_train", _score_train, needs=needs_of({f"{layout.SCORE}/_SUCCESS.json": "score"}),
                  outputs=(layout.scores(layout.SCORE_TRAIN),), record=layout.SCORE_TRAIN,
                  enabled=lambda cfg: any(m.spec.needs_train_embeddings for m in cfg.resolved_methods()),
                  config_keys=("score",), depends=_checkpoint_part, upstream=("base",),
                  describe=_describe)
