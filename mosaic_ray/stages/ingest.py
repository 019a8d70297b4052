"""``mosaic-ray ingest``: CommonRoad or ScenarioNet files -> deduplicated clip shards in four splits.

``ingest.source`` picks the reader: ``commonroad`` (CommonRoad XML, :mod:`mosaic_ray.data.commonroad`)
or ``scenarionet`` (ScenarioNet ``*.pkl`` scenarios of Waymo, nuScenes, nuPlan, Argoverse 2...,
:mod:`mosaic_ray.data.scenarionet`); both give the same clip schema and quarantine records.
Ray Data reads the file list and cuts clips file by file in parallel tasks
(:class:`CutClipsStage`); the driver then deduplicates by content, splits by recording unit
into train / pool / calibration / test (:mod:`mosaic_ray.data.split`; or, with
``ingest.split_mode`` ``pool`` / ``calibration`` / ``test``, puts every clip in that split) and
writes Parquet shards under ``<run>/ingest/clips/<split>/`` plus ``quarantine.parquet``
(one record per candidate that did not become a clip — unreadable XML, invalid clip,
duplicate — and one per file without a usable track — map only, every track shorter than a
clip window, every window below ``min_speed_mps``, see
:data:`~mosaic_ray.data.commonroad.NO_USABLE_TRACK_REASONS`) and ``summary.json``.
Candidates = clips + quarantined, and files = files_with_clips + files_quarantined +
files_without_usable_track (a file with no clip left after dedup is quarantined under its most
frequent fault reason, e.g. ``duplicate``; one with only no-usable-track records under that
reason).
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from mosaic_ray import layout
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.clip import clips_from_table, clips_to_table, clip_schema
from mosaic_ray.data.commonroad import NO_USABLE_TRACK_REASONS, CutOptions, cut_file, list_scenario_files
from mosaic_ray.data.scenarionet import ScenarioNetOptions, cut_scenarionet_file, list_scenarionet_files
from mosaic_ray.data.split import (CALIBRATION, SPLITS, TEST, TRAIN, SplitPlan, content_keys, dedup_clips,
                                   dedup_order_key, plan_split, recording_groups, shared_track_links)
from mosaic_ray.stages.shards import ProcessingStage, Resources, map_stage
from mosaic_ray.stages.fingerprint import file_listing
from mosaic_ray.stages.step import Context, Step
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

    def __init__(self, opts: CutOptions, storage: Storage, cpus: float = 0.5, source: str = "commonroad"):
        if source not in CUTTERS:
            raise ValueError(f"unknown ingest source {source!r}; known: {', '.join(CUTTERS)}")
        self.opts = opts
        self.source = source
        self.resources = Resources(cpus=cpus)
        self.storage = storage

    def process_batch(self, batch: pa.Table) -> pa.Table:
        st = self.storage
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
                  clip_steps=None if ic.clip_s is None else max(1, round(ic.clip_s / 0.1)),
                  min_speed_mps=ic.min_speed_mps, map_extension_m=ic.map_extension_m,
                  agent_radius_m=ic.agent_radius_m)
    if ic.source == "scenarionet":
        return ScenarioNetOptions(**common, other_egos=ic.other_egos, segment_by=ic.segment_by)
    return CutOptions(**common)


def run_ingest(cfg: ExperimentConfig, storage: Storage, force: bool = False) -> dict:
    """Cut, deduplicate and split the clips (the ingest step's work; the step runner decides
    whether it runs). Files cut by an interrupted earlier run are reused unless ``force``.

    Returns:
        The ingest summary (also written to ``ingest/summary.json``): counts of ``files``
        (= ``files_with_clips`` + ``files_quarantined`` + ``files_without_usable_track``, with
        ``files_quarantined_reasons`` / ``files_without_usable_track_reasons`` per reason),
        ``candidates`` (= ``frames`` + ``quarantined``: a candidate is one frame, a t0 of one
        vehicle), ``clips`` (the frames' distinct clips, ``ingest.clip_s``), ``quarantine_reasons``
        (records per reason), ``raw_clips`` (frames cut, before deduplication), ``duplicates``,
        the splits (``splits``: clips, ``frames_per_split``: frames) and their segments;
        ``clips_per_site`` / ``frames_per_site`` per split.

    Raises:
        FileNotFoundError: the data folder(s) hold no input file (``*.xml`` for commonroad,
            ``*.pkl`` scenarios for scenarionet).
        RuntimeError: the accounting does not add up (a bug, never bad data).
    """
    import os

    import ray

    t_start = time.time()
    source = cfg.ingest.source
    data_dir = ", ".join(cfg.resolved_data_dirs())
    files = list_input_files(cfg)
    if not files:
        what = "ScenarioNet *.pkl scenario" if source == "scenarionet" else "CommonRoad *.xml"
        raise FileNotFoundError(f"no {what} files under {data_dir}")
    if force and storage.exists(f"{STAGE}/cut"):
        storage.delete(f"{STAGE}/cut")
    log.info(f"[ingest] cutting clips from {len(files)} {source} files in {data_dir}")
    stage = CutClipsStage(cut_options(cfg), storage, cpus=cfg.ingest.num_cpus_per_task, source=source)
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=min(len(files), 64))
    records = list(map_stage(ds, stage).iter_rows())
    resumed = sum(bool(r["skipped"]) for r in records)
    if resumed:
        log.info(f"[ingest] {resumed} files were cut by an earlier, interrupted run")

    tables, quarantine = [], []
    row_file: list[int] = []  # input-file index of every raw clip row
    rec_file: list[int] = []  # input-file index of every quarantine record
    for fi, path in enumerate(files):  # in file order: deterministic dedup and shards
        key = f"{STAGE}/cut/{cut_key(path)}"
        t = storage.read_table(f"{key}.parquet")
        recs = storage.read_json(f"{key}.quarantine.json")
        if not t.num_rows and not recs:  # a reader that gave nothing: still account for the file
            name = os.path.basename(path)
            recs = [{"source_file": name, "segment": "", "site": "", "ego_id": -1, "t0": -1,
                     "reason": "no_candidates", "detail": "the reader returned neither clips nor records",
                     "clip_id": ""}]
        if t.num_rows:
            tables.append(t)
            row_file.extend([fi] * t.num_rows)
        quarantine.extend(recs)
        rec_file.extend([fi] * len(recs))
    clips_table = pa.concat_tables(tables) if tables else clip_schema().empty_table()
    n_raw = clips_table.num_rows

    # ---- dedup by recorded content (t0 + ego track), never by file, segment or obstacle id
    meta = clips_table.select(["clip_id", "frame_id", "source_file", "ego_id", "t0", "segment", "site"]).to_pylist()
    keep, dup = dedup_clips(content_keys(clips_table), [m["frame_id"] for m in meta],
                            [dedup_order_key(m["source_file"], m["ego_id"], m["t0"]) for m in meta])
    for i, (j, why) in sorted(dup.items()):
        m, o = meta[i], meta[j]
        what = "same recorded ego track and t0 as" if why == "content" else "same frame id (other content) as"
        quarantine.append({"source_file": m["source_file"], "segment": m["segment"], "site": m["site"],
                           "ego_id": m["ego_id"], "t0": m["t0"], "reason": "duplicate",
                           "detail": f"{what} {o['source_file']} vehicle {o['ego_id']} (frame {o['frame_id']} "
                                     f"of clip {o['clip_id']})",
                           "clip_id": m["clip_id"]})
        rec_file.append(row_file[i])
    # files that replay one recorded vehicle (content duplicates) are one recording unit
    dup_file_pairs = sorted({(meta[i]["source_file"], meta[j]["source_file"]) for i, (j, why) in dup.items()
                             if why == "content"})
    clips_table = clips_table.take(pa.array(keep, pa.int64()))
    meta = [meta[i] for i in keep]

    # ---- every input file: clips, quarantined, or no usable track
    kept_per_file = Counter(row_file[i] for i in keep)
    reasons_per_file: dict[int, Counter] = {}
    for fi, q in zip(rec_file, quarantine):
        reasons_per_file.setdefault(fi, Counter())[q["reason"]] += 1
    file_outcomes: Counter = Counter()
    no_track_files: Counter = Counter()
    quarantined_files: Counter = Counter()
    for fi in range(len(files)):
        if kept_per_file[fi]:
            file_outcomes["clips"] += 1
            continue
        rs = reasons_per_file.get(fi) or Counter({"no_candidates": 1})
        faults = Counter({r: n for r, n in rs.items() if r not in NO_USABLE_TRACK_REASONS})
        if faults:  # the file's main fault: its most frequent reason (ties: by name)
            quarantined_files[min(faults, key=lambda r: (-faults[r], r))] += 1
        else:
            no_track_files[min(rs, key=lambda r: (-rs[r], r))] += 1
    file_outcomes.update({f"quarantined:{r}": n for r, n in quarantined_files.items()})
    file_outcomes.update({f"no_usable_track:{r}": n for r, n in no_track_files.items()})

    # ---- split by recording unit (issue 12 part 2): no unit's clips in two splits
    ic = cfg.ingest
    if ic.split_unit == "recording":
        links = shared_track_links(clips_table.select(["source_file", "segment", "ego_states", "ego_states__shape"]))
        links += [(min(a, b), max(a, b)) for a, b in dup_file_pairs if a != b]
        unit_of_file = recording_groups(sorted({(m["source_file"], m["segment"]) for m in meta}), links)
        unit_of = [unit_of_file[m["source_file"]] for m in meta]
    else:
        unit_of = [m["segment"] for m in meta]
    per_unit = Counter(u for u, _ in {(u, m["clip_id"]) for u, m in zip(unit_of, meta)})  # clips per unit
    site_of = {u: m["site"] for u, m in zip(unit_of, meta)}
    seg_of = {u: m["segment"] for u, m in zip(unit_of, meta)}
    if ic.split_mode == "auto":
        def named(given):  # segments or units named in the config -> units
            if not given:
                return []
            unknown = sorted(set(given) - set(per_unit) - set(seg_of.values()))
            if unknown:
                raise ValueError(f"ingest: unknown or clip-less segments / units {unknown}")
            return sorted(u for u in per_unit if u in given or seg_of[u] in given)
        fixed = {TRAIN: named(ic.train_segments), CALIBRATION: named(ic.calibration_segments),
                 TEST: named(ic.test_segments)}
        plan = plan_split(dict(per_unit), site_of, train_fraction=ic.train_fraction,
                          calibration_fraction=ic.calibration_fraction, test_fraction=ic.test_fraction,
                          seed=ic.seed, site_mix=ic.site_mix, fixed=fixed, segment_of_unit=seg_of,
                          fill=ic.split_fill)
    else:  # every clip to one split (a dataset too small to split four ways)
        plan = SplitPlan({u: ic.split_mode for u in per_unit}, dict(per_unit), dict(site_of),
                         [f"split_mode {ic.split_mode}: all {len(meta)} clips go to {ic.split_mode}"],
                         segment_of_unit=seg_of)
    split_col = pa.array([plan.assignment[u] for u in unit_of], pa.string())
    if storage.exists(f"{STAGE}/clips"):
        storage.delete(f"{STAGE}/clips")
    shards = {}
    for split in SPLITS:
        mask = pc.equal(split_col, split)
        part = clips_table.filter(mask).sort_by([("clip_id", "ascending"), ("t0", "ascending")])  # a clip's frames together
        shards[split] = write_shards(storage, f"{STAGE}/clips/{split}", part, cfg.ingest.shard_size)
    storage.write_table(f"{STAGE}/quarantine.parquet",
                        pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA))
    reasons = Counter(q["reason"] for q in quarantine)
    split_of_row = split_col.to_pylist()
    n_frames = Counter(split_of_row)
    summary = {
        "data_dir": data_dir, "source": source, "split_mode": ic.split_mode, "files": len(files),
        "files_with_clips": file_outcomes["clips"],
        "files_quarantined": sum(quarantined_files.values()),
        "files_without_usable_track": sum(no_track_files.values()),
        "files_quarantined_reasons": dict(sorted(quarantined_files.items())),
        "files_without_usable_track_reasons": dict(sorted(no_track_files.items())),
        "candidates": n_raw + sum(1 for q in quarantine if q["reason"] != "duplicate"),
        # a candidate is a frame; clips group frames (ingest.clip_s; without it, a clip per frame)
        "frames": len(keep), "clips": len({m["clip_id"] for m in meta}), "quarantined": len(quarantine),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "raw_clips": n_raw, "duplicates": len(dup),
        "splits": plan.counts(),  # clips (the split plan counts clips per unit)
        "frames_per_split": {sp: n_frames.get(sp, 0) for sp in SPLITS},
        "segments": {s: plan.segments(s) for s in SPLITS},
        "split_unit": ic.split_unit,
        "split_fill": ic.split_fill if ic.split_mode == "auto" else None,
        "units": {s: plan.units(s) for s in SPLITS},
        "clips_per_segment": dict(sorted(Counter(m["segment"] for m in meta).items())),
        "clips_per_unit": dict(sorted(per_unit.items())),
        "site_of_segment": dict(sorted({m["segment"]: m["site"] for m in meta}.items())),
        "clips_per_site": {sp: dict(Counter(site for (cid, site) in {(m["clip_id"], m["site"]) for m, s in
                                                                      zip(meta, split_of_row) if s == sp}))
                           for sp in SPLITS},
        "frames_per_site": {sp: dict(Counter(m["site"] for m, s in zip(meta, split_of_row) if s == sp))
                            for sp in SPLITS},
        "site_mix": plan.mix, "mix_deviation": plan.mix_deviation(),
        "notes": plan.notes,
        "shards": {k: len(v) for k, v in shards.items()},
        "wall_time_s": round(time.time() - t_start, 1), "files_resumed": resumed,
    }
    if summary["candidates"] != summary["frames"] + summary["quarantined"]:
        raise RuntimeError(f"ingest accounting: candidates {summary['candidates']} != frames {summary['frames']} "
                           f"+ quarantined {summary['quarantined']}")
    if summary["files"] != (summary["files_with_clips"] + summary["files_quarantined"]
                            + summary["files_without_usable_track"]):
        raise RuntimeError(f"ingest accounting: {summary['files']} files != {summary['files_with_clips']} with clips "
                           f"+ {summary['files_quarantined']} quarantined + {summary['files_without_usable_track']} "
                           "without a usable track")
    storage.write_json(f"{STAGE}/summary.json", summary)
    log.info(f"[ingest] candidate frames {summary['candidates']} = frames {summary['frames']} (in {summary['clips']} "
             f"clips) + quarantined "
          f"{summary['quarantined']} ({', '.join(f'{k}: {v}' for k, v in summary['quarantine_reasons'].items())})")
    log.info(f"[ingest] files {summary['files']} = with clips {summary['files_with_clips']} + quarantined "
             f"{summary['files_quarantined']} {summary['files_quarantined_reasons']} + without a usable track "
             f"{summary['files_without_usable_track']} {summary['files_without_usable_track_reasons']}")
    log.info(f"[ingest] splits by {ic.split_unit}: {summary['splits']}  ({summary['wall_time_s']} s)")
    for note in plan.notes:
        log.info(f"[ingest] note: {note}")
    return summary


def load_split(storage: Storage, split: str, columns: list[str] | None = None) -> pa.Table:
    """All clips of one split as an Arrow table (clip schema)."""
    return storage.read_table(f"{STAGE}/clips/{split}", columns=columns)


def load_clips(storage: Storage, split: str):
    """All clips of one split as :class:`~mosaic_ray.data.clip.Clip` objects."""
    return clips_from_table(load_split(storage, split))


def _run_step(ctx: Context) -> dict:
    s = run_ingest(ctx.cfg, ctx.storage, force=ctx.force)
    return {"clips": s["clips"], "frames": s.get("frames", s["clips"]), "quarantined": s["quarantined"],
            "splits": s["splits"]}


#: the ingest step: CommonRoad / ScenarioNet files -> clip shards per split, quarantine
STEP = Step("ingest", _run_step, outputs=(layout.INGEST_SUMMARY, *map(layout.clips, layout.SPLITS), layout.QUARANTINE),
            record=layout.INGEST, config_keys=("ingest",),
            depends=lambda cfg: {"input files": file_listing(cfg.resolved_data_dirs())},
            describe=lambda p: f"{p['clips']} clips ({p.get('frames', p['clips'])} frames), {p['quarantined']} "
                               f"quarantined, splits {p['splits']}")
