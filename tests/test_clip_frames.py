"""The paper's clip unit (issue 12 part 1): a clip is up to 10 s of one vehicle's track, its
frames are the t0s 0.5 s apart; selection works on clips, training and evaluation on frames."""

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from conftest import ngsim_file
from mosaic_ray.data.clip import clip_start, make_clip_id
from mosaic_ray.data.commonroad import CutOptions, cut_file, extract_tracks, window_starts
from mosaic_ray.evaluate.planner_eval import ClipScores
from mosaic_ray.selection.usable import clip_rows, usable

PAPER = CutOptions(stride_steps=5, clip_steps=100)  # frames 0.5 s apart, clips of 10 s


def test_clip_start_splits_a_track_into_consecutive_clips():
    assert clip_start(100, 100, 100) == 100 and clip_start(100, 199, 100) == 100
    assert clip_start(100, 200, 100) == 200 and clip_start(100, 415, 100) == 400
    assert clip_start(100, 415, None) is None
    with pytest.raises(ValueError):
        clip_start(100, 99, 100)


def test_frames_of_a_real_file_group_into_10s_clips_of_one_vehicle():
    from commonroad.common.file_reader import CommonRoadFileReader

    path = str(ngsim_file("US101/USA_US101-22_1_T-1.xml"))
    frames, bad = cut_file(path, PAPER)
    flat, _ = cut_file(path, CutOptions(stride_steps=5))  # the same frames, a clip each
    windows, _ = cut_file(path)  # the pre-issue-12 unit: one 5.6 s window per clip
    assert bad == [] and len(frames) == len(flat) > len(windows)
    assert all(f.clip_id == f.frame_id for f in flat)
    # the frames are exactly those of the 0.5 s stride, with their own (old-style) ids and arrays
    assert [f.frame_id for f in frames] == [f.frame_id for f in flat]
    for f, g in zip(frames[::7], flat[::7]):
        assert f.frame_id == make_clip_id(f.segment, f.t0, f.ego_states[20, :2])
        np.testing.assert_array_equal(f.ego_states, g.ego_states)
        np.testing.assert_array_equal(f.agent_states, g.agent_states)
    assert len({f.frame_id for f in frames}) == len(frames)
    # every clip: one vehicle, frames 0.5 s apart inside one 10 s piece of its track
    scenario, _ = CommonRoadFileReader(path).open()
    tracks = {t.obstacle_id: t for t in extract_tracks(scenario)}
    by_clip = defaultdict(list)
    for f in frames:
        by_clip[f.clip_id].append(f)
    assert len(by_clip) < len(frames)  # clips hold several frames
    n_frames = 0
    for cid, fs in by_clip.items():
        assert len({f.ego_id for f in fs}) == 1
        tr = tracks[fs[0].ego_id]
        t0s = sorted(f.t0 for f in fs)
        assert all(b - a == 5 for a, b in zip(t0s, t0s[1:]))
        assert len({clip_start(tr.first_step, t, 100) for t in t0s}) == 1
        assert t0s[-1] - t0s[0] < 100
        n_frames += len(fs)
    # every frame a track supports is in a clip: the clips cover the 0.5 s frames of every track
    expected = sum(len(window_starts(len(t.states), 5)) for t in tracks.values()
                   if t.first_step > -1 and len(t.states) > 1)
    assert n_frames == len(frames) == expected


def test_clips_of_two_files_of_one_segment_never_share_an_id():
    """The files of an NGSIM segment number vehicles and steps each from the start: the same
    vehicle id and start step in two files are two clips."""
    a, _ = cut_file(str(ngsim_file("Lankershim/USA_Lanker-2_10_T-1.xml")), PAPER)
    b, _ = cut_file(str(ngsim_file("Lankershim/USA_Lanker-2_11_T-1.xml")), PAPER)
    assert not {f.frame_id for f in a} & {f.frame_id for f in b}  # other recorded content ...
    assert {(f.ego_id, f.t0) for f in a} & {(f.ego_id, f.t0) for f in b}  # ... under the same ids and steps
    assert not {f.clip_id for f in a} & {f.clip_id for f in b}  # ... and other clips


def _frame_table(rows):
    from mosaic_ray.stages.score import scores_schema

    E = 2
    out = {c: [] for c in scores_schema(E).names}
    for cid, fid, imp, ec, status in rows:
        for m, v in (("clip_id", cid), ("frame_id", fid), ("dataset", "d"), ("site", "S"), ("segment", "g"),
                     ("scenario_id", "x")):
            out[m].append(v)
        out["importance"].append(imp)
        for t in ("nc", "dac", "ddc", "tlc", "ep", "ttc", "lk", "hc"):
            out[t].append(imp)
        out["ec"].append(ec)
        out["ec_available"].append(bool(np.isfinite(ec)))
        out["entropy"].append(1.0 if np.isfinite(imp) else float("nan"))
        out["embedding"].append(np.array([imp, 1.0], np.float32) if np.isfinite(imp) else np.full(2, np.nan, np.float32))
        out["choice"].append(3)
        out["status"].append(status)
    return pa.Table.from_pydict(out, schema=scores_schema(E))


def test_clip_rows_average_frames_and_a_bad_frame_rejects_its_clip():
    t = _frame_table([("B", "b1", 0.2, np.nan, "ok"), ("A", "a1", 0.9, 1.0, "ok"), ("A", "a2", 0.6, np.nan, "ok"),
                      ("B", "b2", np.nan, np.nan, "score_error: boom"), ("A", "a3", 0.3, 0.0, "ok"),
                      ("C", "c1", 0.5, 1.0, "ok")])
    c = clip_rows(t)
    assert c.column("clip_id").to_pylist() == ["B", "A", "C"]  # order of first frames
    assert "frame_id" not in c.column_names and c.column("n_frames").to_pylist() == [2, 3, 1]
    a = c.slice(1, 1).to_pylist()[0]
    assert a["importance"] == pytest.approx(0.6) and a["ec"] == pytest.approx(0.5)  # EC over defined frames
    assert a["embedding"] == pytest.approx([0.6, 1.0]) and a["ec_available"] and a["status"] == "ok"
    u = usable(c)
    assert u.table.column("clip_id").to_pylist() == ["A", "C"]
    assert u.excluded == {"score_error": 1} and u.excluded_ids == ("B",) and u.n_scored == 3
    one = _frame_table([("A", "A", 0.1, 1.0, "ok"), ("C", "C", 0.5, 1.0, "ok")])
    assert clip_rows(one) is one  # a frame per clip: unchanged


def test_evaluation_weights_clips_equally_and_keeps_frames_for_the_bootstrap():
    n = 4
    terms = np.tile(np.array([[1, 1, 1, 1, 1, 1, 1, 1, np.nan]], float), (n, 1))
    terms[3, 8] = 0.0
    s = ClipScores(np.array(["a", "a", "a", "b"], object), np.array([1.0, 1.0, 0.7, 0.2]), terms, np.zeros(n, bool),
                   np.zeros(n), np.zeros((n, 2), np.float32), np.zeros(n, np.int64), np.zeros((n, 8, 3), np.float32),
                   np.array(["f1", "f2", "f3", "f4"], object))
    u = s.utility()
    assert u["epdms"] == pytest.approx((0.9 + 0.2) / 2) and u["n_clips"] == 2 and u["n_frames"] == 4
    assert u["terms"]["EC"] == pytest.approx(0.0) and u["terms"]["NC"] == 1.0
    pc = s.per_clip()
    assert pc["clip_id"] == ["a", "b"] and pc["epdms"] == pytest.approx([0.9, 0.2]) and pc["n_frames"] == [3, 1]


def test_a_run_in_the_paper_unit_selects_clips_and_trains_on_their_frames(ray_local, small_data_dir, tmp_path):
    """The small end-to-end experiment with ``ingest.stride_s: 0.5, clip_s: 10``."""
    from mosaic_ray.config import validate_config
    from mosaic_ray.pipeline import run_all
    from mosaic_ray.stages.score import load_scores
    from mosaic_ray.stages.step import Context
    from mosaic_ray.storage import Storage
    from test_pipeline_e2e import SMALL

    cfg = validate_config({"name": "frames", "data_dir": str(small_data_dir), "output_dir": str(tmp_path),
                           "ingest": {"stride_s": 0.5, "clip_s": 10.0, "shard_size": 64},
                           "score": {"epdms": {"max_actors": 1}}, **SMALL})
    run_all(cfg)
    st = Storage(cfg.run_uri)
    s = st.read_json("ingest/summary.json")
    assert s["candidates"] == s["frames"] + s["quarantined"] and s["frames"] > 2 * s["clips"]
    # a clip's frames are all in one split, and every split counts its clips and frames
    where: dict[str, set] = defaultdict(set)
    for split in ("train", "pool", "calibration", "test"):
        t = st.read_table(f"ingest/clips/{split}", columns=["clip_id", "frame_id"])
        for c in t.column("clip_id").to_pylist():
            where[c].add(split)
        assert s["splits"][split] == len(set(t.column("clip_id").to_pylist()))
        assert s["frames_per_split"][split] == t.num_rows == len(set(t.column("frame_id").to_pylist()))
    assert all(len(v) == 1 for v in where.values()) and len(where) == s["clips"]
    # scores: a row per frame; the selection's view: a row per clip, frames averaged
    frames = st.read_table("score/scores")
    assert frames.num_rows == s["frames_per_split"]["pool"]
    clips = load_scores(st).table
    assert clips.num_rows + len(load_scores(st).excluded_ids) == s["splits"]["pool"]
    assert sum(clips.column("n_frames").to_pylist()) <= frames.num_rows
    imp = {}
    for cid, v in zip(frames.column("clip_id").to_pylist(), frames.column("importance").to_pylist()):
        imp.setdefault(cid, []).append(v)
    for cid, v in zip(clips.column("clip_id").to_pylist(), clips.column("importance").to_pylist()):
        assert v == pytest.approx(float(np.mean(imp[cid])))
    # budgets count clips; a cell trains on D_train's frames plus the selected clips' frames
    manifest = st.read_table("select/manifest.parquet").to_pylist()
    chosen = [r["clip_id"] for r in manifest if r["method"] == "random" and r["budget"] == 15]
    assert len(chosen) == len(set(chosen)) == 15 and set(chosen) <= set(clips.column("clip_id").to_pylist())
    per_clip = dict(zip(clips.column("clip_id").to_pylist(), clips.column("n_frames").to_pylist()))
    summary = json.loads(Path(st.path("summary.json")).read_text())
    cell = summary["results"]["random"]["15"]
    assert cell["n_train"] == s["frames_per_split"]["train"] + sum(per_clip[c] for c in chosen)
    # the test figures are over clips (each clip's frames averaged), with the frames counted
    assert summary["statistics"]["n_clips"] == s["splits"]["test"]
    base = st.read_json("planner/base_eval.json")
    ev = base.get("test", base)
    assert ev["n_clips"] == s["splits"]["test"] and ev["n_frames"] == s["frames_per_split"]["test"]
    assert Context.for_config(cfg).storage.exists("report/report.md")
    # the base model per split and site: calibration (pilots, laws) next to test (the tables)
    by = summary["base_by_site"]
    for split in ("calibration", "test"):
        assert by[split]["all"]["n_clips"] == s["splits"][split]
        assert by[split]["all"]["epdms"] == pytest.approx(base[split]["epdms"])
        assert sum(v["n_clips"] for k, v in by[split].items() if k != "all") == s["splits"][split]
    assert "Calibration − test:" in Path(st.path("report/report.md")).read_text()
    # the Ray Train path (the base model, `mosaic-ray train` at scale) takes the same frames
    from mosaic_ray.planner.model import load_checkpoint
    from mosaic_ray.stages.trainer import training_dataset

    spec = load_checkpoint(st.local_copy("planner/base.pt")).spec
    _, n = training_dataset(st, spec, pool_ids=chosen)
    assert n == cell["n_train"]
    # most pool batches hold no selected clip: the UDF's zero-row output becomes a block with the
    # feature columns' tensor type, as a full batch's (Ray turns a zero-row (0, ...) array into a
    # pickled-object column, with a "Failed to convert column" warning in every training)
    import pyarrow as pa
    from ray.data.block import BlockAccessor

    from mosaic_ray.stages.trainer import _featurize_for_ray

    shard = st.read_table(st.list("ingest/clips/pool", ".parquet")[0]).slice(0, 64)
    types = {}
    for keep in (None, pa.array(["no-such-clip"])):
        blk = BlockAccessor.batch_to_block(_featurize_for_ray(shard, spec, keep=keep))
        types[blk.num_rows > 0] = {f.name: type(f.type).__name__ for f in blk.schema}
    assert types[False] == types[True] and types[True]["ego"].startswith("ArrowTensorType"), types
    # a selected clip that is not in the pool is an error on both paths, though the other
    # clips' frames outnumber the selection (rows are frames, the check counts clips)
    from mosaic_ray.stages.trainer import training_rows

    with pytest.raises(ValueError, match="a selected clip is missing from the pool shards"):
        training_dataset(st, spec, pool_ids=chosen[:-1] + ["no-such-clip"])
    # ... and inside a Tune trial that holds no CPU, as a Ray Train grid cell's trial is
    # (Ray Data's aggregations, e.g. Dataset.unique, cannot be scheduled there)
    from ray import tune

    def trial(config):
        _, rows = training_dataset(st, spec, pool_ids=config["ids"])
        tune.report({"rows": rows})

    grid = tune.Tuner(tune.with_resources(trial, {"cpu": 0, "memory": 256 * 1024**2}),
                      param_space={"ids": chosen},
                      run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    assert not grid.errors and grid[0].metrics["rows"] == cell["n_train"]
    with pytest.raises(ValueError, match=f"{len(chosen) - 1} of {len(chosen)} selected clips found"):
        training_rows(st, spec, pool_ids=chosen[:-1] + ["no-such-clip"])


def test_training_rows_have_one_order_whatever_order_the_frames_arrive_in():
    """A clip's frames share its clip_id: the canonical row order (every worker, Ray Train or
    in-process) sorts by frame_id, so it does not depend on the order Ray Data hands rows over."""
    from mosaic_ray.planner.training import shard_rows

    rows = {"clip_id": np.array(["b", "a", "b", "a", "b"]), "frame_id": np.array(["b3", "a2", "b1", "a1", "b2"]),
            "x": np.arange(5)}
    want = shard_rows(rows)
    assert want["frame_id"].tolist() == ["a1", "a2", "b1", "b2", "b3"] and want["x"].tolist() == [3, 1, 2, 4, 0]
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = rng.permutation(5)
        got = shard_rows({k: v[p] for k, v in rows.items()})
        assert all(np.array_equal(got[k], want[k]) for k in rows)
    assert shard_rows(rows, 1, 2)["frame_id"].tolist() == ["a2", "b2"]


def test_a_copy_under_a_new_clip_id_is_a_new_frame():
    from mosaic_ray.data.clip import replace

    f, _ = cut_file(str(ngsim_file("US101/USA_US101-22_1_T-1.xml")))
    c = replace(f[0], clip_id="copy")
    assert (c.clip_id, c.frame_id) == ("copy", "copy") and f[0].frame_id == f[0].clip_id != "copy"
    g, _ = cut_file(str(ngsim_file("US101/USA_US101-22_1_T-1.xml")), PAPER)
    d = replace(g[0], clip_id="copy")  # a frame of a clip of several frames keeps its own id
    assert d.frame_id == g[0].frame_id != g[0].clip_id
