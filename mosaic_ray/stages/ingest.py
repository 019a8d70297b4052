"""``mosaic-ray ingest``: CommonRoad files -> deduplicated clip shards split by segment.

Ray Data reads the file list and cuts clips file by file in parallel tasks
(:class:`CutClipsStage`); the driver then deduplicates by content, splits by map segment and
writes Parquet shards under ``<run>/ingest/clips/<split>/`` plus ``quarantine.parquet``
(one record per candidate that did not become a clip — unreadable XML, file without
trajectories, invalid clip, duplicate) and ``summary.json``. Candidates = clips + quarantined.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.clip import clips_from_table, clips_to_table, clip_schema
from mosaic_ray.data.commonroad import CutOptions, cut_file, list_scenario_files
from mosaic_ray.data.split import dedup_order_key, find_duplicates, plan_split
from mosaic_ray.stages.base import ProcessingStage, Resources, map_stage
from mosaic_ray.storage import Storage, write_shards

log = logging.getLogger(__name__)
STAGE = "ingest"
QUARANTINE_SCHEMA = pa.schema([
    ("source_file", pa.string()), ("segment", pa.string()), ("site", pa.string()),
    ("ego_id", pa.int64()), ("t0", pa.int64()), ("reason", pa.string()), ("detail", pa.string()),
    ("clip_id", pa.string()),
])


def _table_to_bytes(t: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return sink.getvalue()


def _bytes_to_table(b: bytes) -> pa.Table:
    return ipc.open_stream(io.BytesIO(b)).read_all()


class CutClipsStage(ProcessingStage):
    """Cut the clips of each file in a batch of file paths (column ``path``)."""

    name = "cut_clips"
    batch_size = 1
    stateful = False

    def __init__(self, opts: CutOptions, cpus: float = 0.5):
        self.opts = opts
        self.resources = Resources(cpus=cpus)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        paths, payloads, quarantines, counts = [], [], [], []
        for path in batch.column("path").to_pylist():
            clips, bad = cut_file(path, self.opts)
            paths.append(path)
            payloads.append(_table_to_bytes(clips_to_table(clips)))
            quarantines.append(json.dumps([q.to_dict() for q in bad]))
            counts.append(len(clips))
        return pa.table({"path": paths, "clips": pa.array(payloads, pa.binary()),
                         "quarantine": quarantines, "n_clips": counts})


def cut_options(cfg: ExperimentConfig) -> CutOptions:
    ic = cfg.ingest
    return CutOptions(stride_steps=None if ic.stride_s is None else max(1, round(ic.stride_s / 0.1)),
                      min_speed_mps=ic.min_speed_mps, map_extension_m=ic.map_extension_m,
                      agent_radius_m=ic.agent_radius_m)


def run_ingest(cfg: ExperimentConfig, storage: Storage, force: bool = False) -> dict:
    """Run the ingest stage (skipped when already complete unless ``force``).

    Returns:
        The ingest summary (also written to ``ingest/summary.json``).

    Raises:
        FileNotFoundError: the data directory holds no ``*.xml`` file.
    """
    import ray

    if storage.is_done(STAGE) and not force:
        log.info("ingest: already complete, reusing %s", storage.uri(STAGE))
        return storage.read_json(f"{STAGE}/summary.json")
    t_start = time.time()
    data_dir = cfg.resolved_data_dir()
    files = list_scenario_files(data_dir)
    if not files:
        raise FileNotFoundError(f"no CommonRoad *.xml files under {data_dir}")
    print(f"[ingest] cutting clips from {len(files)} files in {data_dir}", flush=True)
    stage = CutClipsStage(cut_options(cfg), cpus=cfg.ingest.num_cpus_per_task)
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=min(len(files), 64))
    results = map_stage(ds, stage)

    tables, quarantine = [], []
    for row in results.iter_rows():
        t = _bytes_to_table(row["clips"])
        if t.num_rows:
            tables.append(t)
        quarantine.extend(json.loads(row["quarantine"]))
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
    plan = plan_split(dict(per_seg), site_of, validation_fraction=ic.validation_fraction,
                      train_fraction=ic.train_fraction, seed=ic.seed,
                      validation_segments=ic.validation_segments, train_segments=ic.train_segments)
    split_col = pa.array([plan.assignment[m["segment"]] for m in meta])
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
        "data_dir": data_dir, "files": len(files),
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
        "wall_time_s": round(time.time() - t_start, 1),
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
