"""ScenarioNet ingest on the real Waymo fixture: safe loading, clips, traffic lights, scoring."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from mosaic_ray.config import ConfigError, validate_config
from mosaic_ray.data.clip import (AGENT_CYCLIST, AGENT_PEDESTRIAN, AGENT_STATIC, AGENT_VEHICLE, FUT_SLICE,
                                  N_FUT, POSE_STEPS, T0_INDEX, TL_GREEN, TL_RED, clips_from_table,
                                  clips_to_table)
from mosaic_ray.data.commonroad import window_starts
from mosaic_ray.data.safe_pickle import CorruptPickleError, UnsafePickleError, safe_load
from mosaic_ray.data.scenarionet import (ScenarioNetOptions, cut_scenario, cut_scenarionet_file,
                                         list_scenarionet_files, object_int_id, tl_code)
from mosaic_ray.scoring.epdms import TERMS, prepare_scene, score_human, score_trajectories

SN_DIR = Path(os.environ.get("MOSAIC_SCENARIONET_DIR", ROOT.parent / "shared" / "data" / "scenarionet-waymo"))
FIXTURE = SN_DIR / "sd_waymo_v1.2_eb4b91b10ca94ff2.pkl"
SDC = "51"


def _fixture() -> Path:
    if not FIXTURE.exists():
        raise FileNotFoundError(f"test data {FIXTURE} missing: CI needs ../shared beside the checkout")
    return FIXTURE


@pytest.fixture(scope="module")
def scn() -> dict:
    return safe_load(_fixture())


@pytest.fixture(scope="module")
def sdc_clips():
    clips, bad = cut_scenarionet_file(str(_fixture()))
    assert bad == []
    return clips


@pytest.fixture(scope="module")
def all_clips():
    return cut_scenarionet_file(str(_fixture()), ScenarioNetOptions(other_egos=True))


# ----------------------------------------------------------------------------- safe pickle
class _RunsCommand:
    """Unpickling this object would run a shell command (the classic pickle exploit)."""

    def __init__(self, how: str, marker: Path):
        self.how, self.marker = how, str(marker)

    def __reduce__(self):
        if self.how == "os.system":
            return os.system, (f"touch {self.marker}",)
        if self.how == "subprocess":
            return subprocess.check_call, (["touch", self.marker],)
        return eval, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("how,refused", [("os.system", {"posix.system", "os.system"}),
                                         ("subprocess", {"subprocess.check_call"}),
                                         ("eval", {"builtins.eval"})])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, scn, how, refused):
    marker = tmp_path / "PWNED"
    evil = {"id": "x", "tracks": {}, "map_features": {}, "metadata": {"payload": [1, _RunsCommand(how, marker)]}}
    data = pickle.dumps(evil)
    with pytest.raises(UnsafePickleError) as e:
        safe_load(data)
    assert e.value.qualified_name in refused and e.value.qualified_name in str(e.value)
    assert not marker.exists()
    # through the ingest reader: a quarantine record naming the global, still nothing run
    f = tmp_path / "evil.pkl"
    f.write_bytes(data)
    clips, bad = cut_scenarionet_file(str(f))
    assert clips == [] and [b.reason for b in bad] == ["unsafe_pickle"]
    assert e.value.qualified_name in bad[0].detail
    assert not marker.exists()


def test_fixture_needs_only_allowed_globals(scn):
    assert isinstance(scn, dict) and scn["metadata"]["sdc_id"] == SDC
    assert scn["tracks"][SDC]["state"]["position"].dtype == np.float32  # numpy arrays rebuilt
    # other harmless-looking globals are refused too (only the allow-list resolves)
    with pytest.raises(UnsafePickleError, match="collections.Counter"):
        import collections

        safe_load(pickle.dumps(collections.Counter(a=1)))
    ok = {"a": (1, 2.0, None, {3}, frozenset(), b"x", np.arange(3), np.float64(1.5), np.int32(2))}
    for proto in (2, 4, 5):
        back = safe_load(pickle.dumps(ok, protocol=proto))["a"]
        assert back[0] == 1 and back[7] == 1.5 and back[6].tolist() == [0, 1, 2]


def test_truncated_pickle_gives_quarantine_not_crash(tmp_path):
    data = _fixture().read_bytes()
    for n in (0, 7, len(data) // 2, len(data) - 1):
        f = tmp_path / f"cut_{n}.pkl"
        f.write_bytes(data[:n])
        with pytest.raises(CorruptPickleError):
            safe_load(f)
        clips, bad = cut_scenarionet_file(str(f))
        assert clips == [] and len(bad) == 1 and bad[0].reason == "unreadable_pickle", (n, bad)
    clips, bad = cut_scenarionet_file(str(tmp_path / "missing.pkl"))
    assert [b.reason for b in bad] == ["unreadable_pickle"]


def test_list_files_skips_dataset_metadata(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    (a / "sub" / FIXTURE.name).symlink_to(_fixture())
    (a / "dataset_summary.pkl").write_bytes(pickle.dumps({FIXTURE.name: {"id": "x"}}))
    (a / "dataset_mapping.pkl").write_bytes(pickle.dumps({FIXTURE.name: "sub"}))
    (a / "sub" / "not_listed.pkl").write_bytes(b"")  # the summary decides
    (b / "0.pkl").symlink_to(_fixture())
    (b / "dataset_mapping.pkl").write_bytes(pickle.dumps({}))
    assert list_scenarionet_files(a) == [str(a / "sub" / FIXTURE.name)]
    assert list_scenarionet_files(str(b)) == [str(b / "0.pkl")]
    both = list_scenarionet_files([a, b])  # one input; the same file through two links once
    assert len(both) == 1


# ----------------------------------------------------------------------------- the fixture
def _windows_of(valid: np.ndarray) -> list[int]:
    out, k = [], 0
    while k < len(valid):
        if valid[k]:
            j = k
            while j < len(valid) and valid[j]:
                j += 1
            out += [k + o for o in window_starts(j - k, None)]
            k = j
        else:
            k += 1
    return out


def test_every_candidate_is_accounted_for(scn, sdc_clips, all_clips):
    sdc_valid = np.asarray(scn["tracks"][SDC]["state"]["valid"], bool)
    assert len(sdc_clips) == len(_windows_of(sdc_valid)) == 3
    # other egos: moving vehicles (max speed >= 1 m/s in the 61-step window)
    expected = len(_windows_of(sdc_valid))
    for oid, tr in scn["tracks"].items():
        if oid == SDC or tr["type"] != "VEHICLE":
            continue
        st = tr["state"]
        v = np.asarray(st["valid"], bool)
        speed = np.hypot(st["velocity"][:, 0], st["velocity"][:, 1])
        for t0 in _windows_of(v):
            lo, hi = max(0, t0 - T0_INDEX), t0 + N_FUT + 1
            if np.max(np.where(v[lo:hi], speed[lo:hi], 0.0)) >= 1.0:
                expected += 1
    clips, bad = all_clips
    assert len(clips) + len(bad) == expected > 3
    assert len({c.clip_id for c in clips}) == len(clips)


def test_ego_future_matches_the_sdc_track(scn, sdc_clips):
    st = scn["tracks"][SDC]["state"]
    speed = np.hypot(st["velocity"][:, 0], st["velocity"][:, 1])
    for c in sdc_clips:
        assert c.ego_id == int(SDC) and c.dataset == "scenarionet-waymo" and c.site == "waymo"
        assert c.segment == "waymo_eb4b91b10ca94ff2" and c.scenario_id == "eb4b91b10ca94ff2"
        k = slice(c.t0, c.t0 + N_FUT + 1)
        np.testing.assert_allclose(c.ego_states[FUT_SLICE, :2], st["position"][k, :2], atol=1e-4)
        np.testing.assert_allclose(c.ego_states[FUT_SLICE, 2], st["heading"][k], atol=1e-6)
        np.testing.assert_allclose(c.ego_states[FUT_SLICE, 3], speed[k], atol=1e-4)
        np.testing.assert_allclose(c.ego_size, [np.median(st["length"]), np.median(st["width"])], atol=1e-5)
        assert c.route_source == "map" and c.lane_on_route.any() and len(c.route_lane_ids)
        assert c.ego_id not in set(c.agent_ids.tolist())
    assert [c.t0 for c in sdc_clips] == [20, 76, 132] and sdc_clips[0].has_prev_frame
    again, _ = cut_scenarionet_file(str(FIXTURE))
    assert [c.clip_id for c in again] == [c.clip_id for c in sdc_clips]
    back = clips_from_table(clips_to_table(sdc_clips))
    for a, b in zip(sdc_clips, back):
        np.testing.assert_array_equal(a.lane_tl_state, b.lane_tl_state)
        np.testing.assert_array_equal(a.agent_states, b.agent_states)


def test_agent_boxes_come_from_the_tracks(scn, sdc_clips):
    c = sdc_clips[1]
    assert c.num_agents > 10 and set(c.agent_types.tolist()) == {AGENT_VEHICLE}  # the fixture: vehicles only
    lo, hi = c.t0 - T0_INDEX, c.t0 - T0_INDEX + 61
    for j, aid in enumerate(c.agent_ids):
        st = scn["tracks"][str(aid)]["state"]
        v = np.asarray(st["valid"], bool)[lo:hi]
        np.testing.assert_array_equal(c.agent_valid[j], v)
        np.testing.assert_allclose(c.agent_size[j], [np.median(st["length"][lo:hi][v]),
                                                    np.median(st["width"][lo:hi][v])], atol=1e-5)
        np.testing.assert_allclose(c.agent_states[j, v, :2], st["position"][lo:hi][v, :2], atol=1e-4)
        assert np.isnan(c.agent_states[j, ~v]).all()


def test_traffic_lights_reach_the_scorer(scn, sdc_clips):
    assert tl_code("LANE_STATE_ARROW_STOP") == TL_RED and tl_code("TRAFFIC_LIGHT_GREEN") == TL_GREEN
    c = sdc_clips[0]  # the sdc approaches a red light: lanes behind the stop line are red
    red = np.flatnonzero(c.lane_on_route & (c.lane_tl_state[:, FUT_SLICE] == TL_RED).all(1))
    assert len(red) and c.lane_in_intersection[red].all() and "traffic_light" in c.tags
    assert {184, 185} <= set(c.lane_ids[red].tolist())  # Waymo's controlled lanes (dynamic_map_states)
    assert (sdc_clips[1].lane_tl_state[:, FUT_SLICE] == TL_GREEN).any()  # it turns green later
    scene = prepare_scene(c)
    assert scene.red_lanes.any()
    human, _ = score_human(scene, with_ec=False)
    assert human["TLC"] == 1.0  # the logged driver stops
    # a trajectory that keeps driving straight through the red light: TLC = 0
    rc = c.route_center
    i = min(red, key=lambda i: np.linalg.norm(rc - c.lane_centerline(i)[0], axis=1).min())
    assert c.lane_ids[i] == 259  # the successor of the sdc's lane 179 (the light's lane)
    x0, y0, h0 = c.ego_states[T0_INDEX, :3]
    stop_ahead = float(np.dot(c.lane_centerline(i)[0] - [x0, y0], [np.cos(h0), np.sin(h0)]))
    assert 20.0 < stop_ahead < 60.0
    for dist in np.arange(stop_ahead, 3 * stop_ahead, 5.0):  # the tracker lags the poses
        poses = np.zeros((1, len(POSE_STEPS), 3))
        poses[0, :, 0] = dist * POSE_STEPS / POSE_STEPS[-1]
        sim = score_trajectories(scene, poses, human_filter=False).states[0, -1, :2]
        if np.dot(sim - [x0, y0], [np.cos(h0), np.sin(h0)]) > stop_ahead + 5.0:
            break
    res = score_trajectories(scene, poses, human_filter=False)
    assert res.terms["TLC"][0] == 0.0 and res.terms["DAC"][0] == 1.0
    assert res.human_terms["TLC"] == 1.0


def test_human_epdms_per_term(all_clips):
    clips, _ = all_clips
    rows = []
    for c in clips:
        terms, e = score_human(c)  # no human filter applies to the human itself
        rows.append([terms[t] for t in TERMS] + [e])
    m = np.nanmean(np.asarray(rows, float), axis=0)
    per_term = dict(zip(list(TERMS) + ["EPDMS"], np.round(m, 3)))
    print(f"\nlogged human on {len(clips)} Waymo clips (sdc + other vehicles): {per_term}")
    assert all(0.0 <= v <= 1.0 for v in m)
    assert per_term["NC"] == 1.0 and per_term["EPDMS"] > 0.6


# ----------------------------------------------------------------------------- synthetic variants
def _synthetic(T: int = 80, dt: float = 0.1, pos_dim: int = 2, col: bool = False, with_ts: bool = True) -> dict:
    """A small ScenarioNet dict: a straight two-lane road, the sdc at 5 m/s and one object of
    each type. ``col`` stores per-step scalars as (T, 1)."""
    t = np.arange(T) * dt

    def track(kind, x, y, vx, vy, L, W, valid=None):
        pos = np.column_stack([x, y] + ([np.zeros(T)] if pos_dim == 3 else [])).astype(np.float32)
        per = (lambda a: np.asarray(a, np.float32).reshape(T, 1)) if col else (lambda a: np.asarray(a, np.float32))
        return {"type": kind, "metadata": {"type": kind},
                "state": {"position": pos, "heading": per(np.full(T, np.arctan2(vy, vx) if (vx or vy) else 0.0)),
                          "velocity": np.column_stack([np.full(T, vx), np.full(T, vy)]).astype(np.float32),
                          "valid": per(np.ones(T) if valid is None else valid).astype(bool),
                          "length": per(np.full(T, L)), "width": per(np.full(T, W)),
                          "height": per(np.full(T, 1.5))}}

    cone_valid = (np.arange(T) % 3 == 0)  # perception sees the cone now and then
    xs = np.arange(-60.0, 260.0, 1.0)
    lane = lambda y, fid: {"type": "LANE_SURFACE_STREET", "polyline": np.column_stack([xs, np.full_like(xs, y)]),
                           "entry_lanes": [], "exit_lanes": [], "interpolating": False,
                           "left_neighbor": [{"feature_id": "2"}] if fid == "1" else [],
                           "right_neighbor": [{"feature_id": "1"}] if fid == "2" else [],
                           "width": np.full((len(xs), 2), 1.75, np.float32)}
    return {
        "id": "syn1", "version": "v1", "length": T,
        "metadata": {"dataset": "synthetic", "sdc_id": "ego", "scenario_id": "syn1", "map": "testtown",
                     **({"ts": t.astype(np.float32)} if with_ts else {"sample_rate": dt})},
        "tracks": {
            "ego": track("VEHICLE", 5.0 * t, np.zeros(T), 5.0, 0.0, 4.6, 1.9),
            "7": track("VEHICLE", 30.0 + 5.0 * t, np.full(T, 3.5), 5.0, 0.0, 4.2, 1.8),
            "ped": track("PEDESTRIAN", np.full(T, 40.0), -8.0 + 1.0 * t, 0.0, 1.0, 0.6, 0.7),
            "bike": track("CYCLIST", 10.0 + 4.0 * t, np.full(T, 6.0), 4.0, 0.0, 1.8, 0.6),
            "cone": track("TRAFFIC_CONE", np.full(T, 60.0), np.full(T, 1.9), 0.0, 0.0, 0.4, 0.4, cone_valid),
            "bin": track("OTHER", np.full(T, 50.0), np.full(T, -2.5), 0.0, 0.0, 1.0, 1.0),
        },
        "map_features": {"1": lane(0.0, "1"), "2": lane(3.5, "2"),
                         "10": {"type": "ROAD_EDGE_BOUNDARY", "polyline": np.column_stack([xs, np.full_like(xs, -1.75)])},
                         "11": {"type": "CROSSWALK", "polygon": np.array([[25, -2], [29, -2], [29, 6], [25, 6]], float)}},
        "dynamic_map_states": {},
    }


def test_shape_variants_load_and_agree():
    a, bad_a = cut_scenario(_synthetic(pos_dim=2, col=False), "a.pkl")
    b, bad_b = cut_scenario(_synthetic(pos_dim=3, col=True), "b.pkl")
    assert bad_a == bad_b == [] and len(a) == len(b) == 1
    np.testing.assert_allclose(a[0].ego_states, b[0].ego_states)
    np.testing.assert_allclose(a[0].agent_size, b[0].agent_size)
    c = a[0]
    assert (c.dataset, c.site, c.segment) == ("scenarionet-synthetic", "testtown", "synthetic_syn1")
    assert c.ego_id == object_int_id("ego") and "crosswalk" in c.tags
    np.testing.assert_allclose(c.ego_size, [4.6, 1.9], atol=1e-6)
    # one agent of each type, with its box
    by_type = {int(t): (int(i), tuple(np.round(s, 2))) for i, t, s in zip(c.agent_ids, c.agent_types, c.agent_size)}
    assert set(by_type) == {AGENT_VEHICLE, AGENT_PEDESTRIAN, AGENT_CYCLIST, AGENT_STATIC}
    assert by_type[AGENT_PEDESTRIAN][1] == (0.6, 0.7) and by_type[AGENT_CYCLIST][1] == (1.8, 0.6)
    statics = c.agent_valid[c.agent_types == AGENT_STATIC]
    assert len(statics) == 2 and statics.all()  # the cone seen every third step and the still OTHER
    k = slice(c.lane_offsets[0], c.lane_offsets[1])  # lane "1" along y = 0, width (N, 2) = 1.75
    assert c.lane_ids[0] == 1 and c.lane_is_extension.any()
    np.testing.assert_allclose(c.lane_right[k, 1], -1.75, atol=1e-6)
    np.testing.assert_allclose(c.lane_left[k, 1], 1.75, atol=1e-6)
    terms, _ = score_human(c)
    assert terms["DAC"] == 1.0 and terms["NC"] == 1.0 and terms["LK"] == 1.0


def test_resampled_20hz_matches_10hz():
    ten, _ = cut_scenario(_synthetic(T=80, dt=0.1), "10hz.pkl")
    twenty, bad = cut_scenario(_synthetic(T=159, dt=0.05, with_ts=False), "20hz.pkl")  # sample_rate only
    assert bad == [] and len(twenty) == 1
    np.testing.assert_allclose(twenty[0].ego_states, ten[0].ego_states, atol=1e-4)


def test_malformed_arrays_are_quarantined_with_the_reason():
    s = _synthetic()
    s["tracks"]["ped"]["state"]["heading"] = s["tracks"]["ped"]["state"]["heading"][:-1]
    clips, bad = cut_scenario(s, "bad_heading.pkl")
    assert clips == [] and len(bad) == 1 and bad[0].reason == "bad_track"
    assert "ped" in bad[0].detail and "heading" in bad[0].detail and "(79,)" in bad[0].detail
    s = _synthetic()
    s["tracks"]["ego"]["state"]["position"] = np.zeros((80, 4))
    assert cut_scenario(s, "x.pkl")[1][0].reason == "bad_track"
    s = _synthetic()
    s["metadata"]["sdc_id"] = "nobody"
    assert cut_scenario(s, "x.pkl")[1][0].reason == "no_sdc"
    s = _synthetic()
    s["map_features"]["1"]["polyline"] = np.zeros(5)
    assert cut_scenario(s, "x.pkl")[1][0].reason == "bad_map"
    s = _synthetic(T=50)  # too short for one clip: one record for the file
    assert [q.reason for q in cut_scenario(s, "short.pkl")[1]] == ["no_windows"]
    assert cut_scenario(copy.deepcopy([1, 2]), "list.pkl")[1][0].reason == "bad_scenario"


# ----------------------------------------------------------------------------- config and Ray
def test_config_split_mode_and_checkpoint(tmp_path):
    base = {"name": "w", "data_dir": str(SN_DIR), "output_dir": str(tmp_path), "selection": {"budgets": [2]},
            "ingest": {"source": "scenarionet", "split_mode": "pool", "other_egos": True},
            "score": {"checkpoint": "s3://bucket/run/planner/base.pt"}}
    cfg = validate_config(base)
    assert cfg.ingest.source == "scenarionet" and cfg.resolved_data_dirs() == [str(SN_DIR)]
    for bad in ({"source": "nuplan"}, {"split_mode": "train"}):
        with pytest.raises(ConfigError):
            validate_config({**base, "ingest": bad})
    with pytest.raises(ConfigError, match="ScenarioNet"):
        validate_config({**base, "ingest": {"source": "scenarionet", "data_dirs": [str(tmp_path / "nope")]}})


def test_ray_ingest_and_score_with_another_runs_checkpoint(ray_local, tmp_path):
    import torch

    from mosaic_ray import layout
    from mosaic_ray.pipeline import run_steps
    from mosaic_ray.planner.model import PlannerSpec, VocabularyPlanner, save_checkpoint
    from mosaic_ray.stages.ingest import run_ingest
    from mosaic_ray.storage import Storage

    data = tmp_path / "waymo"
    data.mkdir()
    (data / FIXTURE.name).symlink_to(_fixture())
    (data / "broken.pkl").write_bytes(FIXTURE.read_bytes()[:5000])
    (data / "dataset_mapping.pkl").write_bytes(pickle.dumps({}))  # metadata, not a scenario
    # a planner "from another run": tiny and untrained, only the plumbing matters here
    spec = PlannerSpec(vocab_size=8, embed_dim=16, hidden_dim=16, max_agents=8, max_lanes=12)
    anchors = torch.zeros(8, 8, 3)
    anchors[:, :, 0] = torch.linspace(1, 8, 8)[:, None] * torch.arange(1, 9)[None, :] * 0.5
    ck = tmp_path / "other_run" / "planner" / "base.pt"
    ck.parent.mkdir(parents=True)
    save_checkpoint(VocabularyPlanner(spec, anchors), str(ck))

    cfg = validate_config({"name": "waymo_test", "data_dir": str(data), "output_dir": str(tmp_path / "runs"),
                           "selection": {"budgets": [2]}, "score": {"checkpoint": str(ck), "num_actors": 1},
                           "ingest": {"source": "scenarionet", "split_mode": "pool", "other_egos": True}})
    st = Storage(cfg.run_uri)
    s = run_ingest(cfg, st)
    assert s["files"] == 2 and s["source"] == "scenarionet"
    assert s["candidates"] == s["clips"] + s["quarantined"]
    assert s["quarantine_reasons"] == {"unreadable_pickle": 1}
    assert s["splits"] == {"train": 0, "pool": s["clips"], "calibration": 0, "test": 0}
    expect, _ = cut_scenarionet_file(str(FIXTURE), ScenarioNetOptions(other_egos=True))
    pool = st.read_table("ingest/clips/pool", columns=["clip_id", "site"])
    assert sorted(pool.column("clip_id").to_pylist()) == sorted(c.clip_id for c in expect)
    assert set(pool.column("site").to_pylist()) == {"waymo"}

    assert not st.exists("planner/base.pt")  # no base step in this run
    payload = run_steps(cfg, ["score"])["score"]
    assert payload["rows"] == s["clips"] and payload["errors"] == 0
    assert st.exists(layout.EXTERNAL_CHECKPOINT)
    scores = st.read_table("score/scores")
    assert scores.num_rows == s["clips"]
    assert all(0.0 <= v <= 1.0 for v in scores.column("importance").to_pylist())


def test_external_checkpoint_that_runs_code_is_refused(tmp_path):
    from mosaic_ray.stages.score import import_checkpoint
    from mosaic_ray.storage import Storage

    marker = tmp_path / "PWNED"
    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"spec": {}, "state_dict": _RunsCommand("os.system", marker)}))
    cfg = validate_config({"name": "ck", "data_dir": str(SN_DIR), "output_dir": str(tmp_path / "runs"),
                           "selection": {"budgets": [2]}, "score": {"checkpoint": str(bad)}})
    with pytest.raises(ValueError, match="weights_only"):
        import_checkpoint(Storage(cfg.run_uri), str(bad))
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        import_checkpoint(Storage(cfg.run_uri), str(tmp_path / "missing.pt"))


def test_paper_clip_unit_groups_the_sdc_frames_into_10s_clips():
    """ScenarioNet input follows the CommonRoad rule (issue 12 part 1): a contiguous valid run is
    split into clips of up to 10 s from its first step, frames 0.5 s apart."""
    frames, bad = cut_scenarionet_file(str(_fixture()), ScenarioNetOptions(stride_steps=5, clip_steps=100))
    flat, _ = cut_scenarionet_file(str(_fixture()), ScenarioNetOptions(stride_steps=5))
    assert bad == [] and [f.frame_id for f in frames] == [f.frame_id for f in flat] and len(frames) > 1
    by_clip: dict[str, list[int]] = {}
    for f in frames:
        by_clip.setdefault(f.clip_id, []).append(f.t0)
    assert len(by_clip) < len(frames)  # clips hold several frames
    for t0s in by_clip.values():
        assert all(b - a == 5 for a, b in zip(t0s, t0s[1:])) and t0s[-1] - t0s[0] < 100
    # the sdc's 19.9 s track: frames at t0 = 2.0 .. 15.5 s in two clips, [0, 10) s and [10, 20) s
    assert sorted(len(v) for v in by_clip.values()) == [12, 16] and len({f.ego_id for f in frames}) == 1
