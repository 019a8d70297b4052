"""``synthesize``: the synthetic scene pool of AutoScale, on Ray Data (issue 13 part 1).

Ray Data streams the real clip shards of one split (``SynthesizeConfig.split``, default
``train``) through an actor pool; per real clip,
:func:`mosaic_ray.autoscale.synthesize.synthesize_clip` perturbs the ego, builds a recovery or
planner pseudo-expert, scores it with the EPDMS scorer and keeps it or quarantines it (the
algorithm and its sources: that module's docstring). Outputs under the run's storage:

::

    synthesize/scenes/<shard>.parquet           kept scenes: the clip schema + provenance columns
                                                (one output shard per input shard, same name)
    synthesize/quarantine_parts/<shard>.parquet the quarantined attempts of that input shard
    synthesize/quarantine.parquet               all quarantined attempts (QUARANTINE_SCHEMA)
    synthesize/config.json                      the SynthesizeConfig the shards were made with
    synthesize/_SUCCESS.json                    the payload (the step's record)

Resumable per shard like the score stage (:class:`~mosaic_ray.stages.shards.ShardStage`): an
input shard whose scene shard exists is skipped; its quarantine part is written before the
scene shard, so a finished scene shard always has its part. Shards made with another config
(``config.json`` differs) or under ``force`` are dropped first.

Accounting (checked, a mismatch raises): every source clip appears; for each, the attempt
indices of its kept scenes and quarantine records are exactly ``0 .. attempts-1``, ``kept <=
per_clip`` and ``attempts <= attempts_per_clip``, and either the quota was met or every
attempt was used; in all, ``attempts = kept + quarantined``.

The step is in :data:`mosaic_ray.pipeline.STEPS`, enabled when the config has an ``autoscale:``
section (its settings: ``autoscale.synthesize``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa

from mosaic_ray import layout
from mosaic_ray.autoscale.synthesize import (QUARANTINE_SCHEMA, SynthesizeConfig, scenes_schema, scenes_to_table,
                                             synthesize_clip)
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.clip import clip_schema
from mosaic_ray.data.split import duplicated
from mosaic_ray.scoring.config import ScorerConfig
from mosaic_ray.stages.runtime import cluster_cpus
from mosaic_ray.stages.shards import Resources, ShardStage, preflight_shards, record_actor_pid, run_shard_stage
from mosaic_ray.stages.step import Context, Step, needs_of
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)

STAGE = "synthesize"
SCENES = f"{STAGE}/scenes"
QUARANTINE_PARTS = f"{STAGE}/quarantine_parts"
QUARANTINE = f"{STAGE}/quarantine.parquet"
CONFIG = f"{STAGE}/config.json"
_RESOURCE_FIELDS = ("num_cpus_per_actor", "num_actors")  # changing them keeps finished shards


def synthesize_config(cfg: ExperimentConfig | None) -> SynthesizeConfig:
    """``cfg.autoscale.synthesize`` where the experiment config has an autoscale section, else the
    defaults."""
    a = getattr(cfg, "autoscale", None)
    return a.synthesize if a is not None else SynthesizeConfig()


class SynthesizeStage(ShardStage):
    """One real clip shard -> its synthetic scenes (returned; written by the base class) and
    its quarantine part (written here, before the scenes)."""

    name = STAGE
    stateful = True
    key_column = "clip_id"

    def __init__(self, storage: Storage, cfg: SynthesizeConfig, scorer_cfg: ScorerConfig | None = None,
                 output_dir: str = SCENES, quarantine_dir: str = QUARANTINE_PARTS):
        self.store, self.cfg, self.scorer_cfg = storage, cfg, scorer_cfg
        self.output_dir, self.quarantine_dir = output_dir, quarantine_dir
        self.resources = Resources(cpus=cfg.num_cpus_per_actor)
        self._current: str | None = None

    def setup(self) -> None:
        record_actor_pid(STAGE)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        # remember the shard being processed: process_shard names its quarantine part after it
        recs = []
        for shard in batch.column("shard").to_pylist():
            self._current = shard
            recs.append(super().process_batch(pa.table({"shard": [shard]})))
        return pa.concat_tables(recs)

    def process_shard(self, table: pa.Table) -> pa.Table:
        from mosaic_ray.data.clip import clip_from_row

        scenes, quarantined = [], []
        for row in table.to_pylist():
            try:
                clip = clip_from_row(row)
                kept, bad = synthesize_clip(clip, self.cfg, self.scorer_cfg)
            except Exception as e:  # a source clip that cannot be decoded or validated
                cid = row.get("clip_id")
                log.warning("synthesize: source clip %s unusable: %s: %s", cid, type(e).__name__, e)
                kept, bad = [], [{"source_clip_id": cid, "clip_id": None, "synth_index": -1, "expert_kind": None,
                                  "perturb_dy": float("nan"), "perturb_dpsi": float("nan"),
                                  "perturb_dv": float("nan"), "synth_seed": int(self.cfg.seed),
                                  "reason": f"bad_source: {type(e).__name__}", "category": "bad_source",
                                  "epdms": float("nan"), "detail": str(e)[:300]}]
            scenes.extend(kept)
            quarantined.extend(bad)
        part = f"{self.quarantine_dir}/{self._current.rsplit('/', 1)[-1]}"
        self.storage().write_table(part, pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA))
        return scenes_to_table(scenes) if scenes else scenes_schema().empty_table()


def _num_actors(scfg: SynthesizeConfig, n_shards: int) -> int:
    if scfg.num_actors:
        return min(scfg.num_actors, max(1, n_shards))
    cpus = cluster_cpus()
    return max(1, min(n_shards, int(cpus), int((cpus - 0.5) // scfg.num_cpus_per_actor)))


def check_accounting(source_ids: list[str], scenes: pa.Table, quarantine: pa.Table,
                     scfg: SynthesizeConfig) -> dict:
    """Per source clip: attempts, kept, quarantined (see the module docstring's rules).

    Returns:
        ``{"attempts", "kept", "quarantined", "kept_per_clip": {id: n}}``.

    Raises:
        RuntimeError: naming the first clips that break a rule.
    """
    kept_idx: dict[str, list[int]] = defaultdict(list)
    bad_idx: dict[str, list[int]] = defaultdict(list)
    for sid, i in zip(scenes.column("source_clip_id").to_pylist(), scenes.column("synth_index").to_pylist()):
        kept_idx[sid].append(int(i))
    for sid, i, cat in zip(quarantine.column("source_clip_id").to_pylist(),
                           quarantine.column("synth_index").to_pylist(), quarantine.column("category").to_pylist()):
        if cat != "bad_source":
            bad_idx[sid].append(int(i))
    bad_sources = {s for s, c in zip(quarantine.column("source_clip_id").to_pylist(),
                                     quarantine.column("category").to_pylist()) if c == "bad_source"}
    problems = []
    known = set(source_ids)
    strays = (set(kept_idx) | set(bad_idx)) - known
    if strays:
        problems.append(f"{len(strays)} source ids not in the input, e.g. {sorted(strays)[:3]}")
    cap = scfg.attempts_per_clip
    for sid in source_ids:
        if sid in bad_sources:
            if kept_idx.get(sid) or bad_idx.get(sid):
                problems.append(f"{sid}: bad source with attempts")
            continue
        k, q = kept_idx.get(sid, []), bad_idx.get(sid, [])
        n = len(k) + len(q)
        if n == 0:
            problems.append(f"{sid}: no attempt recorded")
        elif sorted(k + q) != list(range(n)):
            problems.append(f"{sid}: attempt indices are not 0..{n - 1}")
        elif len(k) > scfg.per_clip or n > cap or (len(k) < scfg.per_clip and n < cap):
            problems.append(f"{sid}: {len(k)} kept in {n} attempts (quota {scfg.per_clip}, at most {cap})")
        if len(problems) >= 5:
            break
    if problems:
        raise RuntimeError("synthesize accounting: " + "; ".join(problems))
    return {"attempts": scenes.num_rows + quarantine.num_rows - len(bad_sources), "kept": scenes.num_rows,
            "quarantined": quarantine.num_rows - len(bad_sources), "bad_sources": len(bad_sources),
            "kept_per_clip": {s: len(kept_idx.get(s, [])) for s in source_ids}}


def run_synthesize(cfg: ExperimentConfig | None, storage: Storage, scfg: SynthesizeConfig | None = None,
                   scorer_cfg: ScorerConfig | None = None, force: bool = False) -> dict:
    """Make the synthetic scene pool of ``scfg.split`` (see the module docstring).

    Args:
        cfg: the experiment config (for ``cfg.synthesize`` when ``scfg`` is None; may be None).
        storage: the run's storage (holds ``ingest/clips/<split>``).
        scfg: None: :func:`synthesize_config` of ``cfg``.
        scorer_cfg: the EPDMS scorer's config (None: defaults).
        force: drop finished shards and start over.

    Returns:
        The payload: ``split``, ``source_clips``, ``attempts`` (= ``kept`` + ``quarantined``),
        ``kept``, ``quarantined``, ``kept_fraction``, ``kept_per_clip_mean`` / ``_min``,
        ``clips_at_quota``, ``per_clip``, ``attempts_per_clip``, ``by_kind``
        (``kind -> {attempts, kept}``), ``quarantine_reasons`` (category -> n),
        ``infeasible`` (reason -> n), ``epdms_kept_mean``, ``shards``, ``shards_resumed``,
        ``actors``, ``shard_wall_s``, ``shard_cpu_s``, ``scenes_per_actor_s``, ``wall_time_s``,
        ``config``.

    Raises:
        FileNotFoundError: the split has no clip shards.
        ValueError: unreadable input shards or duplicated source clip ids.
        RuntimeError: the outputs do not account for every attempt.
    """
    t0 = time.time()
    scfg = scfg or synthesize_config(cfg)
    split = scfg.split
    src = f"ingest/clips/{split}"
    shards = storage.list(src, ".parquet")
    if not shards:
        raise FileNotFoundError(f"no clip shards for split {split!r} under {storage.uri(src)}; run ingest first")
    preflight_shards(storage, shards, clip_schema().names)  # every column a clip decodes from
    ids = storage.read_table(src, columns=["clip_id"]).column("clip_id").to_pylist()
    dups = duplicated(ids)
    if dups:
        raise ValueError(f"duplicated clip ids in the {split} shards ({len(dups)}), e.g. {dups[:5]}")
    conf = scfg.model_dump(mode="json")
    same = {k: v for k, v in conf.items() if k not in _RESOURCE_FIELDS}
    if storage.exists(CONFIG) and not force and \
            {k: v for k, v in storage.read_json(CONFIG).items() if k not in _RESOURCE_FIELDS} != same:
        log.info("[synthesize] config changed since the stored shards were made: starting over")
        force = True
    if force:
        for rel in (SCENES, QUARANTINE_PARTS, QUARANTINE):
            storage.delete(rel)
    storage.write_json(CONFIG, conf)

    n_actors = _num_actors(scfg, len(shards))
    log.info("[synthesize] %s: %d clips in %d shards through %d actor(s), quota %d per clip (at most %d attempts)",
             split, len(ids), len(shards), n_actors, scfg.per_clip, scfg.attempts_per_clip)
    stage = SynthesizeStage(storage, scfg, scorer_cfg)
    records = run_shard_stage(stage, shards, n_actors)
    skipped = int(sum(records.column("skipped").to_pylist()))

    names = [s.rsplit("/", 1)[-1] for s in shards]
    missing = [n for n in names if not storage.exists(f"{QUARANTINE_PARTS}/{n}")]
    if missing:
        raise RuntimeError(f"synthesize: quarantine parts missing for shards {missing[:5]}")
    scenes = storage.read_table(SCENES, columns=["clip_id", "source_clip_id", "synth_index", "expert_kind",
                                                 "synth_epdms"])
    quarantine = pa.concat_tables([storage.read_table(f"{QUARANTINE_PARTS}/{n}") for n in names])
    storage.write_table(QUARANTINE, quarantine)
    acc = check_accounting(ids, scenes, quarantine, scfg)
    if duplicated(scenes.column("clip_id").to_pylist()):
        raise RuntimeError("synthesize: duplicated synthetic clip ids")

    per = np.array(list(acc["kept_per_clip"].values()), dtype=float)
    by_kind: dict[str, dict[str, int]] = {}
    for kind, n in Counter(scenes.column("expert_kind").to_pylist()).items():
        by_kind.setdefault(kind, {"attempts": 0, "kept": 0})["kept"] = n
    for kind, n in Counter(quarantine.column("expert_kind").to_pylist()).items():
        if kind is not None:
            by_kind.setdefault(kind, {"attempts": 0, "kept": 0})
            by_kind[kind]["attempts"] += n
    for kind in by_kind:
        by_kind[kind]["attempts"] += by_kind[kind]["kept"]
    reasons = quarantine.column("reason").to_pylist()
    shard_wall = float(sum(records.column("wall_s").to_pylist()))
    epd = scenes.column("synth_epdms").to_numpy(zero_copy_only=False) if scenes.num_rows else np.zeros(0)
    payload = {
        "split": split, "source_clips": len(ids), "attempts": acc["attempts"], "kept": acc["kept"],
        "quarantined": acc["quarantined"], "bad_sources": acc["bad_sources"],
        "kept_fraction": round(acc["kept"] / max(acc["attempts"], 1), 4),
        "kept_per_clip_mean": round(float(per.mean()) if per.size else 0.0, 3),
        "kept_per_clip_min": int(per.min()) if per.size else 0,
        "clips_at_quota": int((per >= scfg.per_clip).sum()),
        "per_clip": scfg.per_clip, "attempts_per_clip": scfg.attempts_per_clip,
        "by_kind": dict(sorted(by_kind.items())),
        "quarantine_reasons": dict(sorted(Counter(quarantine.column("category").to_pylist()).items())),
        "infeasible": dict(sorted(Counter(r for r in reasons if r.startswith("infeasible")).items())),
        "epdms_kept_mean": round(float(epd.mean()), 4) if epd.size else None,
        "shards": len(shards), "shards_resumed": skipped, "actors": n_actors,
        "shard_wall_s": round(shard_wall, 2),
        "shard_cpu_s": round(float(sum(records.column("cpu_s").to_pylist())), 2),
        # kept scenes per second of actor time (one actor = one core); None when shards were resumed
        "scenes_per_actor_s": round(acc["kept"] / shard_wall, 2) if shard_wall > 0 and not skipped else None,
        "wall_time_s": round(time.time() - t0, 1), "config": conf,
    }
    if payload["attempts"] != payload["kept"] + payload["quarantined"]:  # check_accounting guarantees it
        raise RuntimeError("synthesize accounting: attempts != kept + quarantined")
    log.info("[synthesize] %d attempts = %d kept + %d quarantined (%s); %.2f scenes per real clip, %d/%d at quota",
             payload["attempts"], payload["kept"], payload["quarantined"],
             ", ".join(f"{k}: {v}" for k, v in payload["quarantine_reasons"].items()),
             payload["kept_per_clip_mean"], payload["clips_at_quota"], len(ids))
    return payload


def _run_step(ctx: Context) -> dict:
    return run_synthesize(ctx.cfg, ctx.storage, force=ctx.force)


def _describe(p: dict) -> str:
    return (f"{p['kept']} scenes from {p['source_clips']} {p['split']} clips ({p['kept_per_clip_mean']} per clip), "
            f"{p['quarantined']} attempts quarantined")


#: the synthesize step: the real clips' synthetic scene pool (AutoScale configs only)
STEP = Step(STAGE, _run_step, needs=needs_of({layout.INGEST_SUMMARY: "ingest"}),
            outputs=(SCENES, QUARANTINE), record=STAGE, describe=_describe,
            enabled=lambda cfg: getattr(cfg, "autoscale", None) is not None,
            config_keys=("autoscale.synthesize",), upstream=("ingest",))
