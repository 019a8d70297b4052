"""``mosaic-ray ingest``: CommonRoad or ScenarioNet files -> deduplicated clip shards split by segment.

``ingest.source`` picks the reader: ``commonroad`` (CommonRoad XML, :mod:`mosaic_ray.data.commonroad`)
or ``scenarionet`` (ScenarioNet ``*.pkl`` scenarios of Waymo, nuScenes, nuPlan, Argoverse 2...,
:mod:`mosaic_ray.data.scenarionet`); both give the same clip schema and quarantine records.
Ray Data reads the file list and cuts clips file by file in parallel tasks
(:class:`CutClipsStage`); the driver then deduplicates by content, splits by map segment
(or, with ``ingest.split_mode`` ``pool`` / ``validation``, puts every clip in that split) and
writes Parquet shards under ``<run>/ingest/clips/<split>/`` plus ``quarantine.parquet``
(one record per candidate that did not become a clip — unreadable XML, file without
trajectories, invalid clip, duplicate) and ``summary.json``. Candidates = clips + quarantined.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.clip import clips_from_table, clips_to_table, clip_schema
from mosaic_ray.data.commonroad import CutOptions, cut_file, list_scenario_files
from mosaic_ray.data.scenarionet import ScenarioNetOptions, cut_scenarionet_file, list_scenarionet_files
from mosaic_ray.data.split import SplitPlan, dedup_order_key, find_duplicates, plan_split
from mosaic_ray.stages.shards import ProcessingStage, Resources, map_stage
from mosaic_ray.storage import Storage, write_shards

log = logging.getLogger(__name__)
STAGE = "ingest"
QUARANTINE_SCHEMA = pa.schema([
    ("source_file", pa.string()), ("segment", pa.string()), ("site", pa.string()),
    ("ego_id", pa.int64()), ("t0", pa.int64()), ("reason", pa.string()), ("detail", pa.string()),
    ("clip_id", pa.string()),
])


CUTTERS = {"commonroad": cut_file, "scenarionet": cut_scenarionet_file}


def list_input_files(cfg: ExperimentConfig) -> list[str]:
    """Input files of the configured source (``ingest.source``) under the data folder(s)."""
    dirs = cfg.resolved_data_dirs()
    if cfg.ingest.source == "scenarionet":
        return list_scenarionet_files(dirs)
    return sorted({f for d in dirs for f in list_scenario_files(d)})


def cut_key(path: str) -> str:
    """Storage name of one input file's cut (file name + hash of the full path)."""
    import hashlib
    import os

    return f"{os.path.basename(path)}-{hashlib.sha1(path.encode()).hexdigest()[:10]}"


class CutClipsStage(ProcessingStage):
    """Cut the clips of each file in a batch of file paths (column ``path``) with the reader of
    ``source`` (``commonroad`` or ``scenarionet``).

    Each file's result is written atomically to ``ingest/cut/<key>.quarantine.json`` and then
    ``ingest/cut/<key>.parquet`` (the Parquet file marks the file as done), so a rerun after an
    interruption cuts only the files not done yet. Returns one record per file."""

    name = "cut_clips"
    batch_size = 1
    stateful = False

    def __init__(self, opts: CutOptions, cpus: float = 0.5, source: str = "commonroad",
                 storage_root: str = "", storage_cfg: dict | None = None):
        if source not in CUTTERS:
            raise ValueError(f"unknown ingest source {source!r}; known: {', '.join(CUTTERS)}")
        self.opts = opts
        self.source = source
        self.resources = Resources(cpus=cpus)
        self.storage_root, self.storage_cfg = storage_root, storage_cfg or {}

    def process_batch(self, batch: pa.Table) -> pa.Table:
        from mosaic_ray.config import StorageConfig

        st = Storage(self.storage_root, StorageConfig(**self.storage_cfg))
        cut = CUTTERS[self.source]
        paths, counts, skipped = [], [], []
        for path in batch.column("path").to_pylist():
            key = f"{STAGE}/cut/{cut_key(path)}"
            paths.append(path)
            if st.exists(f"{key}.parquet"):
                counts.append(-1)
                skipped.append(True)
                continue
            clips, bad = cut(path, self.opts)
            st.write_json(f"{key}.quarantine.json", [q.to_dict() for q in bad])
            st.write_table(f"{key}.parquet", clips_to_table(clips))
            counts.append(len(clips))
            skipped.append(False)
        return pa.table({"path": paths, "n_clips": counts, "skipped": skipped})


def cut_options(cfg: ExperimentConfig) -> CutOptions:
    """Cutting options of the configured source (:class:`ScenarioNetOptions` for scenarionet)."""
    ic = cfg.ingest
    common = dict(stride_steps=None if ic.stride_s is None else max(1, round(ic.stride_s / 0.1)),
                  min_speed_mps=ic.min_speed_mps, map_extension_m=ic.map_extension_m,
                  agent_radius_m=ic.agent_radius_m)
    if ic.source == "scenarionet":
        return ScenarioNetOptions(**common, other_egos=ic.other_egos, segment_by=ic.segment_by)
    return CutOptions(**common)


def run_ingest(cfg: ExperimentConfig, storage: Storage, force: bool = False) -> dict:
    """Run the ingest stage (skipped when already complete unless ``force``).

    Returns:
        The ingest summary (also written to ``ingest/summary.json``).

    Raises:
        FileNotFoundError: the data folder(s) hold no input file (``*.xml`` for commonroad,
            ``*.pkl`` scenarios for scenarionet).
    """
    import ray

    if storage.is_done(STAGE) and not force:
        log.info("ingest: already complete, reusing %s", storage.uri(STAGE))
        return storage.read_json(f"{STAGE}/summary.json")
    t_start = time.time()
    source = cfg.ingest.source
    data_dir = ", ".join(cfg.resolved_data_dirs())
    files = list_input_files(cfg)
    if not files:
        what = "ScenarioNet *.pkl scenario" if source == "scenarionet" else "CommonRoad *.xml"
        raise FileNotFoundError(f"no {what} files under {data_dir}")
    if force and storage.exists(f"{STAGE}/cut"):
        storage.delete(f"{STAGE}/cut")
    print(f"[ingest] cutting clips from {len(files)} {source} files in {data_dir}", flush=True)
    stage = CutClipsStage(cut_options(cfg), cpus=cfg.ingest.num_cpus_per_task, source=source,
                          storage_root=storage.root_uri, storage_cfg=cfg.storage.model_dump())
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=min(len(files), 64))
    records = list(map_stage(ds, stage).iter_rows())
    resumed = sum(bool(r["skipped"]) for r in records)
    if resumed:
        print(f"[ingest] {resumed} files were cut by an earlier, interrupted run", flush=True)

    tables, quarantine = [], []
    for path in files:  # in file order: deterministic dedup and shards
        key = f"{STAGE}/cut/{cut_key(path)}"
        t = storage.read_table(f"{key}.parquet")
        if t.num_rows:
            tables.append(t)
        quarantine.extend(storage.read_json(f"{key}.quarantine.json"))
    clips_table = pa.concat_tables(tables) if tables else clip_schema().empty_table()
    n_raw = clips_table.num_rows

    # ---- dedup by content (clip id = hash of segment, t0, start position)
    meta = clips_table.select(["clip_id", "source_file", "ego_id", "t0", "segment", "site"]).to_pylist()
    keys = [(m["clip_id"], dedup_order_key(m["source_file"], m["ego_id"], m["t0"])) for m in meta]
    keep, dup = find_duplicates(keys)
    for i, j in sorted(dup.items()):
        m = meta[i]
        quarantine.append({"source_file": m["source_file"], "segment": m["segment"], "site": m["site"],
                           "ego_id": m["ego_id"], "t0": m["t0"], "reason": "duplicate",
                           "detail": f"same content as {meta[j]['source_file']} vehicle {meta[j]['ego_id']}",
                           "clip_id": m["clip_id"]})
    clips_table = clips_table.take(pa.array(keep, pa.int64()))
    meta = [meta[i] for i in keep]

    # ---- split by map segment
    per_seg = Counter(m["segment"] for m in meta)
    site_of = {m["segment"]: m["site"] for m in meta}
    ic = cfg.ingest
    if ic.split_mode == "auto":
        plan = plan_split(dict(per_seg), site_of, validation_fraction=ic.validation_fraction,
                          train_fraction=ic.train_fraction, seed=ic.seed,
                          validation_segments=ic.validation_segments, train_segments=ic.train_segments)
    else:  # every clip to one split (a dataset too small to split three ways)
        plan = SplitPlan({s: ic.split_mode for s in per_seg}, dict(per_seg), dict(site_of),
                         [f"split_mode {ic.split_mode}: all {len(meta)} clips go to {ic.split_mode}"])
    split_col = pa.array([plan.assignment[m["segment"]] for m in meta], pa.string())
    if storage.exists(f"{STAGE}/clips"):
        storage.delete(f"{STAGE}/clips")
    shards = {}
    for split in ("validation", "train", "pool"):
        mask = pc.equal(split_col, split)
        part = clips_table.filter(mask).sort_by("clip_id")
        shards[split] = write_shards(storage, f"{STAGE}/clips/{split}", part, cfg.ingest.shard_size)
    storage.write_table(f"{STAGE}/quarantine.parquet",
                        pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA))
    reasons = Counter(q["reason"] for q in quarantine)
    summary = {
        "data_dir": data_dir, "source": source, "split_mode": ic.split_mode, "files": len(files),
        "candidates": n_raw + sum(1 for q in quarantine if q["reason"] != "duplicate"),
        "clips": len(keep), "quarantined": len(quarantine),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "raw_clips": n_raw, "duplicates": len(dup),
        "splits": plan.counts(),
        "segments": {s: plan.segments(s) for s in ("validation", "train", "pool")},
        "clips_per_segment": dict(sorted(per_seg.items())),
        "site_of_segment": dict(sorted(site_of.items())),
        "clips_per_site": {sp: dict(Counter(m["site"] for m, s in zip(meta, split_col.to_pylist()) if s == sp))
                           for sp in ("validation", "train", "pool")},
        "notes": plan.notes,
        "shards": {k: len(v) for k, v in shards.items()},
        "wall_time_s": round(time.time() - t_start, 1), "files_resumed": resumed,
    }
    assert summary["candidates"] == summary["clips"] + summary["quarantined"]
    storage.write_json(f"{STAGE}/summary.json", summary)
    storage.mark_done(STAGE, {"clips": len(keep)})
    print(f"[ingest] candidates {summary['candidates']} = clips {summary['clips']} + quarantined "
          f"{summary['quarantined']} ({', '.join(f'{k}: {v}' for k, v in summary['quarantine_reasons'].items())})",
          flush=True)
    print(f"[ingest] splits by segment: {summary['splits']}  ({summary['wall_time_s']} s)", flush=True)
    for note in plan.notes:
        print(f"[ingest] note: {note}", flush=True)
    return summary


def load_split(storage: Storage, split: str, columns: list[str] | None = None) -> pa.Table:
    """All clips of one split as an Arrow table (clip schema)."""
    return storage.read_table(f"{STAGE}/clips/{split}", columns=columns)


def load_clips(storage: Storage, split: str):
    """All clips of one split as :class:`~mosaic_ray.data.clip.Clip` objects."""
    return clips_from_table(load_split(storage, split))
