"""Ingest accounting and content dedup (issue 15, part 5) on a handful of real NGSIM files.

Every input file ends as clips, a quarantine record or a "no usable track" record, and the
summary adds up to the file count; the same recording under another segment name is a
duplicate, never a clip of a second split; duplicated clip ids are reported by name.
"""

import numpy as np
import pytest

from conftest import ngsim_file
from mosaic_ray.config import validate_config
from mosaic_ray.data.clip import N_PRE, T0_INDEX, T_ALL, content_key, make_clip_id
from mosaic_ray.data.commonroad import NO_USABLE_TRACK_REASONS, CutOptions, cut_file
from mosaic_ray.data.split import SPLITS, content_keys, dedup_clips, duplicated
from mosaic_ray.storage import Storage

FILES = {  # name in the test folder -> real file
    "USA_US101-22_1_T-1.xml": "US101/USA_US101-22_1_T-1.xml",  # clips
    "USA_US101-77_1_T-1.xml": "US101/USA_US101-22_1_T-1.xml",  # the same recording, another segment
    "USA_US101-5_1_T-1.xml": "US101/USA_US101-5_1_T-1.xml",  # clips (test)
    "USA_US101-12_1_T-1.xml": "US101/USA_US101-12_1_T-1.xml",  # clips (calibration)
    "USA_US101-9_1_T-1.xml": "US101/USA_US101-9_1_T-1.xml",  # clips (train)
    "USA_US101-2_2_S-1.xml": "US101/USA_US101-2_2_S-1.xml",  # map only
    "USA_US101-3_5_T-1.xml": "US101/USA_US101-3_5_T-1.xml",  # every track shorter than 5.6 s
}
BROKEN = "USA_US101-99_1_T-1.xml"


@pytest.fixture(scope="module")
def accounted(ray_local, tmp_path_factory):
    """The files above (symlinks) plus one broken XML, ingested once through Ray."""
    from mosaic_ray.stages.ingest import run_ingest

    d = tmp_path_factory.mktemp("acct_data")
    for name, rel in FILES.items():
        (d / name).symlink_to(ngsim_file(rel))
    (d / BROKEN).write_text("<commonRoad><lanelet id='1'><leftBound>")
    out = tmp_path_factory.mktemp("acct_run")
    cfg = validate_config({"name": "acct", "data_dir": str(d), "output_dir": str(out),
                           "selection": {"budgets": [5]},
                           "ingest": {"shard_size": 64, "test_segments": ["USA_US101-5"],
                                      "calibration_segments": ["USA_US101-12"],
                                      "train_segments": ["USA_US101-9"]}})
    st = Storage(cfg.run_uri)
    return run_ingest(cfg, st), st, d


def test_every_file_is_accounted_for(accounted):
    s, st, d = accounted
    assert s["files"] == len(FILES) + 1
    assert s["files"] == s["files_with_clips"] + s["files_quarantined"] + s["files_without_usable_track"]
    assert s["files_with_clips"] == 4  # 22, 5, 12, 9; the copy (77) gives no clip of its own
    assert s["files_without_usable_track_reasons"] == {"no_trajectories": 1, "no_windows": 1}
    assert s["files_quarantined_reasons"] == {"duplicate": 1, "unreadable_xml": 1}
    assert s["candidates"] == s["clips"] + s["quarantined"]
    q = st.read_table("ingest/quarantine.parquet").to_pylist()
    assert len(q) == s["quarantined"]
    file_level = {r["source_file"]: r for r in q if r["ego_id"] == -1}
    assert file_level["USA_US101-2_2_S-1.xml"]["reason"] == "no_trajectories"
    short = file_level["USA_US101-3_5_T-1.xml"]
    assert short["reason"] == "no_windows" and "56 steps" in short["detail"]
    assert file_level[BROKEN]["reason"] == "unreadable_xml"
    # every file appears as a clip source or in the quarantine
    shards = [st.read_table(f"ingest/clips/{sp}", columns=["source_file"]) for sp in SPLITS]
    sources = {f for t in shards for f in t.column("source_file").to_pylist()} | {r["source_file"] for r in q}
    assert sources == set(FILES) | {BROKEN}


def test_same_recording_under_another_segment_is_a_duplicate(accounted):
    s, st, d = accounted
    tables = {sp: st.read_table(f"ingest/clips/{sp}") for sp in SPLITS}
    assert {sp: sorted(set(t.column("segment").to_pylist())) for sp, t in tables.items()} == {
        "test": ["USA_US101-5"], "calibration": ["USA_US101-12"], "train": ["USA_US101-9"], "pool": ["USA_US101-22"]}
    keys = [k for t in tables.values() for k in content_keys(t)]
    assert len(keys) == len(set(keys)) == s["clips"]  # no recording twice, in one split or two
    ids = [i for t in tables.values() for i in t.column("clip_id").to_pylist()]
    assert len(ids) == len(set(ids))
    q = st.read_table("ingest/quarantine.parquet").to_pylist()
    dups = [r for r in q if r["source_file"] == "USA_US101-77_1_T-1.xml"]
    n_original = int((tables["pool"].column("source_file").to_numpy(zero_copy_only=False)
                      == "USA_US101-22_1_T-1.xml").sum())
    assert len(dups) == n_original > 0  # every clip of the copy, none of the original
    assert all(r["reason"] == "duplicate" and "USA_US101-22_1_T-1.xml" in r["detail"] for r in dups)
    assert s["duplicates"] == s["quarantine_reasons"]["duplicate"] >= n_original
    # the copy's clips keep their own (segment-based) ids: only the content key matched
    assert {r["clip_id"] for r in dups}.isdisjoint(ids)


def test_run_score_names_duplicated_frame_ids(accounted, tmp_path):
    from mosaic_ray.stages.score import run_score

    _, src, _ = accounted
    t = src.read_table("ingest/clips/train")
    cfg = validate_config({"name": "dupids", "data_dir": str(tmp_path), "output_dir": str(tmp_path),
                           "selection": {"budgets": [5]}})
    st = Storage(cfg.run_uri)
    st.write_table("ingest/clips/pool/part-00000.parquet", t)
    st.write_table("ingest/clips/pool/part-00001.parquet", t.slice(0, 2))  # two ids again
    want = sorted(t.column("frame_id").to_pylist()[:2])
    with pytest.raises(ValueError, match=r"duplicated frame ids in the pool shards \(2\)") as e:
        run_score(cfg, st, "planner/none.pt")
    assert all(i in str(e.value) for i in want)


def test_duplicated_is_exact():
    ids = [f"c{i % 1000}" for i in range(3000)] + ["x", "y", "y"]
    assert duplicated(ids) == sorted({f"c{i}" for i in range(1000)} | {"y"})
    assert duplicated(["a", "b"]) == [] and duplicated([]) == []


def test_content_key_ignores_names_and_rounds_to_decimetres():
    rng = np.random.default_rng(0)
    ego = np.cumsum(rng.normal(size=(T_ALL, 4)), axis=0)
    k = content_key(ego, 120)
    assert k == content_key(ego.copy(), 120) and len(k) == 16
    pre = ego.copy()
    pre[:N_PRE] = 0.0  # pre-history may be missing in another file of the same recording
    assert content_key(pre, 120) == k
    assert content_key(ego, 121) != k  # another time
    moved = ego.copy()
    moved[T0_INDEX + 5, 0] += 0.2
    assert content_key(moved, 120) != k
    # clip ids depend on the segment, content keys do not
    assert make_clip_id("USA_US101-22", 120, ego[T0_INDEX, :2]) != make_clip_id("USA_US101-77", 120, ego[T0_INDEX, :2])
    with pytest.raises(ValueError, match="ego_states: shape"):
        content_key(ego[:10], 120)


def test_dedup_clips_content_then_ids():
    content = ["a", "b", "a", "c"]
    ids = ["i1", "i2", "i3", "i2"]  # clip 3: other content, but the id of clip 1
    order = [("f2", 0, 0), ("f1", 0, 0), ("f1", 1, 0), ("f3", 0, 0)]
    keep, dup = dedup_clips(content, ids, order)
    assert keep == [1, 2]  # "a": f1 (index 2) sorts before f2 (index 0)
    assert dup == {0: (2, "content"), 3: (1, "clip_id")}
    with pytest.raises(ValueError):
        dedup_clips(["a"], [], [])


def test_cut_file_records_files_without_a_usable_track():
    clips, bad = cut_file(str(ngsim_file("US101/USA_US101-3_5_T-1.xml")))
    assert clips == [] and [b.reason for b in bad] == ["no_windows"]
    clips, bad = cut_file(str(ngsim_file("US101/USA_US101-2_2_S-1.xml")))
    assert clips == [] and [b.reason for b in bad] == ["no_trajectories"]
    clips, bad = cut_file(str(ngsim_file("Peachtree/USA_Peach-2_1_T-1.xml")), CutOptions(min_speed_mps=500.0))
    assert clips == [] and [b.reason for b in bad] == ["below_min_speed"]
    assert {"no_windows", "no_trajectories", "below_min_speed"} <= NO_USABLE_TRACK_REASONS
