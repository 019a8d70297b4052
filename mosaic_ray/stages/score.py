"""``mosaic-ray score``: the planner and the EPDMS scorer over every pool clip, on Ray Data.

Two pipelines (``score.pipeline``):

* ``two_stage`` (default): the pool's clip shards stream through two actor pools, each sized
  on its own (``score.plan``, ``score.epdms``; autoscaling between ``min_actors`` and
  ``max_actors``): :class:`PlanStage` (planner inference: decode, featurise, forward at t0
  and at the previous frame, embedding, logits, chosen trajectory; on a GPU when
  ``score.plan.num_gpus_per_actor`` > 0) hands each shard, clip columns and plan columns, to
  :class:`EPDMSStage` (CPU: scene preparation, batched tracking, EPDMS) through Ray's object
  store, with no storage round trip; the EPDMS stage writes the shard's output.
* ``single``: one pool of :class:`ScoreStage` actors does both (the pre-issue-14 layout).

Output (``<run>/score/scores/*.parquet``), one row per pool frame (a row of the clip shards;
:func:`load_scores` averages a clip's frames into one row per clip) and one output shard per
input shard (a shard whose output exists is not redone: per-shard resume): metadata for domain
assignment, ``importance`` (EPDMS of the base model on the clip, MOSAIC §3.2.1), the nine
terms, ``ec_available``, ``entropy`` and ``embedding``, and ``status`` ("ok" or the reason the
clip could not be scored — such a clip keeps its row with NaN scores so that no clip is
silently dropped). Both pipelines give the same rows (tests/test_score_pipeline.py).
"""

from __future__ import annotations

import io
import os
import logging
import posixpath
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mosaic_ray import layout
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.clip import clip_schema
from mosaic_ray.data.split import duplicated
from mosaic_ray.scoring.epdms import TERMS
from mosaic_ray.stages.runtime import default_num_actors, score_pool_sizes
from mosaic_ray.stages.shards import (SHARD_RECORDS, ProcessingStage, Resources, ShardInputError, ShardStage,
                                      map_stage, preflight_shards, record_actor_pid, run_shard_stage)
from mosaic_ray.stages.step import Context, Step, needs_of
from mosaic_ray.storage import Storage, StorageError

log = logging.getLogger(__name__)
STAGE = "score"
META_COLUMNS = ("clip_id", "frame_id", "dataset", "site", "segment", "scenario_id")


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
        from mosaic_ray.scoring.epdms import warm_up

        warm_up()

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
                    bad[(r.get("clip_id"), r.get("frame_id") or r.get("clip_id"))] = f"decode_error: {type(e).__name__}: {e}"[:300]
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
        for (cid, fid), err in bad.items():
            out["clip_id"].append(cid)
            out["frame_id"].append(fid)
            for m in META_COLUMNS[2:]:
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


def _decode(batch: pa.Table) -> tuple[list, list[int], dict[int, str]]:
    """Clips of an Arrow table (clip schema): (clips, their row indices, {row: decode error})."""
    from mosaic_ray.data.clip import clip_from_row, clips_from_table

    try:
        clips = clips_from_table(batch)
        return clips, list(range(len(clips))), {}
    except Exception:  # decode row by row to isolate the broken rows
        clips, rows, bad = [], [], {}
        for i, r in enumerate(batch.to_pylist()):
            try:
                clips.append(clip_from_row(r))
                rows.append(i)
            except Exception as e:
                bad[i] = f"decode_error: {type(e).__name__}: {e}"[:300]
        return clips, rows, bad


def _error(kind: str, e: Exception) -> str:
    return f"{kind}: {type(e).__name__}: {e}"[:300]


#: columns :class:`PlanStage` adds to a shard's clip columns (``_traj``/``_prev_traj``: (8, 3)
#: float32 ego-frame poses flattened, ``_prev_traj`` null without a previous frame; ``_status``
#: null where the clip goes on to EPDMS, else its error)
PLAN_COLUMNS = ("_shard", "_shard_rows", "_status", "_traj", "_prev_traj", "_entropy", "_embedding",
                "_choice", "_plan_wall_s", "_plan_cpu_s")


class PlanStage(ProcessingStage):
    """Planner inference for whole clip shards (stage (a) of the two-stage score step).

    Input: a batch of ``shard`` names (one per call). Output per shard: its clip columns
    (passed on to :class:`EPDMSStage`) plus :data:`PLAN_COLUMNS`, one row per clip, in shard
    order. A clip that cannot be decoded or featurised gets its error in ``_status`` and no plan.

    Resources: ``cpus``/``gpus`` per actor; with ``gpus`` > 0 and CUDA present the forward runs
    there, ``batch_size`` clips at a time.

    Column shapes: ``_traj`` (24,) float32 = the chosen (8, 3) poses (x, y m; heading rad; ego
    frame at t0, +0.5 .. +4.0 s); ``_prev_traj`` the same at t0 − 0.5 s or null;
    ``_embedding`` (E,) float32; ``_entropy`` float64 nats; ``_choice`` int64 (−1: no plan).
    Source: the planner is Hydra-MDP-style (MOSAIC §7.1); its EPDMS is the clip's importance
    (MOSAIC §3.2.1), computed by :class:`EPDMSStage`.
    """

    name = "score_plan"
    stateful = True
    batch_size = 1

    def __init__(self, storage: Storage, checkpoint: str, batch_size: int, cpus: float, gpus: float,
                 torch_threads: int = 1):
        self.store, self.checkpoint, self.plan_batch = storage, checkpoint, batch_size
        self.resources = Resources(cpus=cpus, gpus=gpus)
        self.torch_threads = torch_threads

    def setup(self) -> None:
        import torch  # here, not at module level: the EPDMS actors of this module never load it

        from mosaic_ray.planner.model import load_checkpoint

        torch.set_num_threads(self.torch_threads)
        record_actor_pid(self.name)
        self.device = "cuda" if (self.resources.gpus > 0 and torch.cuda.is_available()) else "cpu"
        self.model = load_checkpoint(self.store.local_copy(self.checkpoint), map_location=self.device).to(self.device)
        self.model.eval()

    def process_batch(self, batch: pa.Table) -> pa.Table:
        parts = [self.plan_shard(s, self.store.read_table(s)) for s in batch.column("shard").to_pylist()]
        return pa.concat_tables(parts)

    def plan_shard(self, shard: str, table: pa.Table) -> pa.Table:
        """Plan every clip of ``table`` (clip schema); returns ``table`` with :data:`PLAN_COLUMNS`."""
        from mosaic_ray.planner.features import featurize_clips
        from mosaic_ray.planner.training import plan_batches

        t0, c0 = time.perf_counter(), time.process_time()
        n, E = table.num_rows, self.model.spec.embed_dim
        spec = self.model.spec.features
        clips, rows, status = _decode(table)  # status: {row: error} of the rows not to score
        try:
            feats = featurize_clips(clips, spec, with_prev=True) if clips else None
            ok = list(range(len(clips)))
        except Exception:  # isolate the clips that cannot be featurised
            ok = []
            for j, c in enumerate(clips):
                try:
                    featurize_clips([c], spec, with_prev=True)
                    ok.append(j)
                except Exception as e:
                    status[rows[j]] = _error("score_error", e)
            feats = featurize_clips([clips[j] for j in ok], spec, with_prev=True) if ok else None
        traj = np.full((n, 24), np.nan, np.float32)
        prev_traj: list = [None] * n
        entropy = np.full(n, np.nan)
        emb = np.full((n, E), np.nan, np.float32)
        choice = np.full(n, -1, np.int64)
        if ok:
            cur = plan_batches(self.model, feats, self.plan_batch)
            prev = plan_batches(self.model, feats, self.plan_batch, prefix="prev_")
            idx = np.array([rows[j] for j in ok])
            traj[idx] = cur["trajectory"].reshape(len(ok), 24)
            entropy[idx] = cur["entropy"].astype(np.float64)
            emb[idx] = cur["embedding"]
            choice[idx] = cur["choice"].astype(np.int64)
            for k, i in enumerate(idx):
                if feats["prev_valid"][k]:
                    prev_traj[i] = prev["trajectory"][k].reshape(24).astype(np.float32)
        vec = lambda d: pa.list_(pa.float32(), d)  # noqa: E731
        cols = {
            "_shard": pa.array([shard] * n, pa.string()), "_shard_rows": pa.array([n] * n, pa.int64()),
            "_status": pa.array([status.get(i) for i in range(n)], pa.string()),
            "_traj": pa.FixedSizeListArray.from_arrays(pa.array(traj.ravel()), 24),
            "_prev_traj": pa.array(prev_traj, vec(24)),
            "_entropy": pa.array(entropy, pa.float64()),
            "_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), E),
            "_choice": pa.array(choice, pa.int64()),
            "_plan_wall_s": pa.array([time.perf_counter() - t0] * n, pa.float64()),
            "_plan_cpu_s": pa.array([time.process_time() - c0] * n, pa.float64()),
        }
        for k, v in cols.items():
            table = table.append_column(k, v)
        return table


#: one completion record per shard of the two-stage step (:data:`SHARD_RECORDS` plus the
#: planner stage's wall and CPU seconds on the shard)
SCORE_RECORDS = pa.schema(list(SHARD_RECORDS) + [("plan_wall_s", pa.float64()), ("plan_cpu_s", pa.float64())])


class EPDMSStage(ProcessingStage):
    """EPDMS of the planned trajectories, written one output shard per input shard (stage (b)
    of the two-stage score step; CPU).

    Input: whole blocks of :class:`PlanStage` output (``batch_size`` None: one block per call,
    one shard per block). Per shard: the clips' scenes are prepared and scored
    ``clip_batch_size`` at a time (:func:`~mosaic_ray.scoring.epdms.score_many`), the rows
    assembled in shard order (:func:`scores_schema`) and written atomically to
    ``output_dir/<shard file name>``. Returns one :data:`SCORE_RECORDS` record per shard.

    Raises:
        RuntimeError: a block holds part of a shard (the rows of one shard must arrive together;
            the step sets Ray Data's block size so that they do).

    Source: EPDMS as NAVSIM's PDM scorer defines it (docs/EPDMS.md), the previous frame's plan
    for EC tracked from t0 − 0.5 s, exactly as :func:`~mosaic_ray.evaluate.planner_eval.score_planner`.
    """

    name = "score_epdms"
    stateful = True
    batch_size = None

    def __init__(self, storage: Storage, output_dir: str, cpus: float, clip_batch_size: int = 64):
        self.store, self.output_dir, self.clip_batch_size = storage, output_dir, clip_batch_size
        self.resources = Resources(cpus=cpus, gpus=0.0)

    def setup(self) -> None:
        from mosaic_ray.scoring.epdms import warm_up

        record_actor_pid(self.name)
        warm_up()

    def process_batch(self, batch: pa.Table) -> pa.Table:
        shards = batch.column("_shard").to_pylist()
        recs = []
        for shard in dict.fromkeys(shards):
            part = batch.filter(pc.equal(batch.column("_shard"), shard))
            want = part.column("_shard_rows")[0].as_py()
            if part.num_rows != want:
                raise RuntimeError(f"{shard}: {part.num_rows} of its {want} rows reached one EPDMS call "
                                   "(a shard's rows must stay in one block)")
            t0, c0 = time.perf_counter(), time.process_time()
            out = self.score_shard(part)
            self.store.write_table(f"{self.output_dir}/{shard.rsplit('/', 1)[-1]}", out)
            recs.append({"shard": shard, "rows": out.num_rows, "skipped": False,
                         "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                         "plan_wall_s": part.column("_plan_wall_s")[0].as_py(),
                         "plan_cpu_s": part.column("_plan_cpu_s")[0].as_py()})
        return pa.Table.from_pylist(recs, schema=SCORE_RECORDS)

    def score_shard(self, part: pa.Table) -> pa.Table:
        """Score one shard's :class:`PlanStage` rows; one :func:`scores_schema` row per row."""
        from mosaic_ray.scoring.epdms import prepare_scene, score_many

        n = part.num_rows
        E = part.schema.field("_embedding").type.list_size
        status = part.column("_status").to_pylist()
        clips, rows, bad = _decode(part.select([c for c in part.column_names if not c.startswith("_")]))
        for i, err in bad.items():
            status[i] = status[i] or err
        by_row = dict(zip(rows, clips))
        traj = part.column("_traj").combine_chunks().flatten().to_numpy().reshape(n, 8, 3).astype(np.float64)
        prev = part.column("_prev_traj").to_pylist()
        res: dict[int, object] = {}
        todo = [i for i in range(n) if status[i] is None]
        for k in range(0, len(todo), self.clip_batch_size):
            chunk = todo[k:k + self.clip_batch_size]
            pp = [None if prev[i] is None else np.asarray(prev[i], np.float64).reshape(8, 3) for i in chunk]
            try:
                out = score_many([prepare_scene(by_row[i]) for i in chunk], traj[chunk], pp)
                res.update(zip(chunk, out))
            except Exception:  # isolate the clip that fails
                for i, p in zip(chunk, pp):
                    try:
                        res[i] = score_many([prepare_scene(by_row[i])], traj[[i]], [p])[0]
                    except Exception as e:
                        status[i] = _error("score_error", e)
        schema = scores_schema(E)
        out = {c: [] for c in schema.names}
        ids = part.column("clip_id").to_pylist()
        fids = part.column("frame_id").to_pylist()
        emb = part.column("_embedding").combine_chunks().flatten().to_numpy().reshape(n, E)
        entropy, choice = part.column("_entropy").to_numpy(), part.column("_choice").to_numpy()
        for i in range(n):
            c = by_row.get(i)
            if c is not None:
                for m in META_COLUMNS:
                    out[m].append(getattr(c, m))
            else:  # undecodable row: its id, no metadata
                out["clip_id"].append(ids[i])
                out["frame_id"].append(fids[i] or ids[i])
                for m in META_COLUMNS[2:]:
                    out[m].append(None)
            r = res.get(i)
            if r is None:
                ScoreStage._nan_row(out, E, status[i] or "score_error: not scored")
                continue
            out["importance"].append(float(r.epdms[0]))
            for t in TERMS:
                out[t.lower()].append(float(r.terms[t][0]))
            out["ec_available"].append(bool(r.ec_available))
            out["entropy"].append(float(entropy[i]))
            out["embedding"].append(emb[i].astype(np.float32))
            out["choice"].append(int(choice[i]))
            out["status"].append("ok")
        return pa.Table.from_pydict(out, schema=schema)


def run_two_stage(storage: Storage, checkpoint: str, shards: list[str], output_dir: str, cfg: ExperimentConfig,
                  pools: dict[str, tuple[int, int]]) -> pa.Table:
    """Stream ``shards`` through :class:`PlanStage` into :class:`EPDMSStage` (Ray Data, two
    autoscaling actor pools of ``pools["plan"]`` / ``pools["epdms"]`` (min, max) actors);
    returns one :data:`SCORE_RECORDS` record per shard. The blocks are allowed to grow to a
    whole shard (Ray Data's ``target_max_block_size`` raised to at least 1 GiB while it runs)."""
    import ray

    sc = cfg.score
    plan = PlanStage(storage, checkpoint, sc.plan.batch_size, sc.plan.num_cpus_per_actor,
                     sc.plan.num_gpus_per_actor, cfg.planner.torch_threads)
    epdms = EPDMSStage(storage, output_dir, sc.epdms.num_cpus_per_actor, sc.epdms.batch_size)
    if not shards:
        return SCORE_RECORDS.empty_table()
    ctx = ray.data.DataContext.get_current()
    old = ctx.target_max_block_size
    ctx.target_max_block_size = max(old or 0, 1 << 30)
    try:
        ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
        ds = map_stage(ds, plan, pool=pools["plan"])
        ds = map_stage(ds, epdms, pool=pools["epdms"])
        return pa.Table.from_pylist(list(ds.iter_rows()), schema=SCORE_RECORDS)
    finally:
        ctx.target_max_block_size = old


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
    ids = storage.read_table(f"ingest/clips/{split}", columns=["frame_id"]).column("frame_id").to_pylist()

    dups = duplicated(ids)
    if dups:
        raise ShardInputError(f"duplicated frame ids in the {split} shards ({len(dups)}), e.g. {dups[:5]}: "
                              "every frame must appear once; re-run ingest or remove the duplicates")
    if force and storage.exists(f"{out}/scores"):
        storage.delete(f"{out}/scores")
    if cfg.score.pipeline == "single":
        n_actors = min(default_num_actors(cfg), len(shards))
        stage = ScoreStage(storage, checkpoint, cfg.score.batch_size,
                           cfg.score.num_cpus_per_actor, cfg.score.num_gpus_per_actor, cfg.planner.torch_threads,
                           output_dir=f"{out}/scores")
        log.info(f"[score] {split}: {len(shards)} shards through {n_actors} actor(s) "
                 f"({cfg.score.num_cpus_per_actor} CPU, {cfg.score.num_gpus_per_actor} GPU each)")
        records = run_shard_stage(stage, shards, n_actors)
        actors: object = n_actors
        max_actors, reserved = n_actors, n_actors * cfg.score.num_cpus_per_actor
    else:
        pools = score_pool_sizes(cfg, len(shards))
        done = {p.rsplit("/", 1)[-1] for p in storage.list(f"{out}/scores", ".parquet")} \
            if storage.exists(f"{out}/scores") else set()
        todo = [s for s in shards if s.rsplit("/", 1)[-1] not in done]
        p, e = cfg.score.plan, cfg.score.epdms
        log.info(f"[score] {split}: {len(todo)} of {len(shards)} shards through {pools['plan'][0]}-{pools['plan'][1]} "
                 f"planner actor(s) ({p.num_cpus_per_actor} CPU, {p.num_gpus_per_actor} GPU each) and "
                 f"{pools['epdms'][0]}-{pools['epdms'][1]} EPDMS actor(s) ({e.num_cpus_per_actor} CPU each)")
        records = run_two_stage(storage, checkpoint, todo, f"{out}/scores", cfg, pools)
        skipped_recs = [{"shard": s, "rows": 0, "skipped": True, "wall_s": 0.0, "cpu_s": 0.0,
                         "plan_wall_s": 0.0, "plan_cpu_s": 0.0} for s in shards if s not in set(todo)]
        records = pa.concat_tables([records, pa.Table.from_pylist(skipped_recs, schema=SCORE_RECORDS)])
        actors = {k: list(v) for k, v in pools.items()}
        max_actors = pools["plan"][1] + pools["epdms"][1]
        reserved = pools["plan"][1] * p.num_cpus_per_actor + pools["epdms"][1] * e.num_cpus_per_actor
    skipped = int(sum(records.column("skipped").to_pylist()))
    # exactly one row per input clip
    want = ids
    got_t = storage.read_table(f"{out}/scores", columns=["frame_id", "status"])
    got = got_t.column("frame_id").to_pylist()
    if sorted(got) != sorted(want):
        missing, extra = set(want) - set(got), len(got) - len(set(got))
        raise RuntimeError(f"score output mismatch: {len(missing)} frames missing, {extra} duplicated rows")
    status = got_t.column("status").to_pylist()
    n_ok = sum(s == "ok" for s in status)
    payload = {"rows": len(got), "ok": n_ok, "errors": len(got) - n_ok, "actors": actors,
               "pipeline": cfg.score.pipeline, "max_actors": max_actors,
               # CPUs the actors reserve at most (resource-seconds = wall_time_s x reserved_cpus)
               "reserved_cpus": reserved,
               "shards": len(shards), "shards_resumed": skipped,
               # time inside the actors' shard calls (read + score + write), summed over shards
               "shard_wall_s": round(float(sum(records.column("wall_s").to_pylist())), 2),
               "shard_cpu_s": round(float(sum(records.column("cpu_s").to_pylist())), 2),
               **({"plan_wall_s": round(float(sum(records.column("plan_wall_s").to_pylist())), 2),
                   "plan_cpu_s": round(float(sum(records.column("plan_cpu_s").to_pylist())), 2)}
                  if "plan_cpu_s" in records.column_names else {}),
               "checkpoint": checkpoint, "wall_time_s": round(time.time() - t0, 1)}
    log.info(f"[score] {payload['rows']} frames scored ({payload['errors']} errors, {skipped} shards already done) "
          f"in {payload['wall_time_s']} s")
    return payload


def load_scores(storage: Storage, out: str = STAGE):
    """The score table of ``out`` (``score``: the pool, ``score_train``: D_train), one row per
    clip (:func:`~mosaic_ray.selection.usable.clip_rows`: frames averaged), through the
    one filter of rejected clips (:func:`mosaic_ray.selection.usable.usable`): only rows with
    ``status == "ok"`` and finite scores reach domains, ranking, pilots and selection.

    Returns:
        :class:`~mosaic_ray.selection.usable.UsableScores`: ``.table`` the usable rows,
        ``.excluded`` {reason: count} of the rest (``{"score_error": 2}``), ``.excluded_ids``.

    Raises:
        StorageError: no score table (run the score step).
    """
    from mosaic_ray.selection.usable import clip_rows, usable

    return usable(clip_rows(storage.read_table(f"{out}/scores")))


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
    import torch

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
    a = p["actors"]
    how = (f"through {a} actor(s)" if not isinstance(a, dict) else
           f"through {a['plan'][1]} planner and {a['epdms'][1]} EPDMS actor(s) at most")
    return f"{p['rows']} frames scored ({p['errors']} errors, {p['shards_resumed']} shards already done) {how}"


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
