"""Ingest of real CommonRoad NGSIM scenarios: every candidate accounted for."""

from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import ngsim_file
from mosaic_ray.config import validate_config
from mosaic_ray.data.clip import FUT_SLICE, N_FUT, N_HIST, T0_INDEX, clips_from_table, clips_to_table, content_key
from mosaic_ray.data.commonroad import cut_file, extract_tracks, segment_of, site_of, window_starts
from mosaic_ray.data.split import SPLITS, plan_split
from mosaic_ray.stages.ingest import run_ingest
from mosaic_ray.storage import Storage


def test_names():
    assert segment_of("USA_US101-22_1_T-1.xml") == "USA_US101-22"
    assert site_of("USA_Lanker-2_3_T-1.xml") == "Lankershim"
    assert site_of("USA_Peach-3_1_T-1.xml") == "Peachtree"
    assert (site_of("DEU_Flensburg-1_1_T-1.xml"), segment_of("DEU_Flensburg-1_1_T-1.xml")) == \
        ("DEU_Flensburg", "DEU_Flensburg-1")
    assert site_of("ZAM_Over-1_1") == "ZAM_Over"  # a scenario id, not a file name
    with pytest.raises(ValueError):
        segment_of("random.xml")
    with pytest.raises(ValueError, match="benchmark id"):
        site_of("USA_US101.xml")


def _relabelled(tmp_path, file_name: str, benchmark_id: str):
    """A real NGSIM file saved under another name with its benchmarkID attribute rewritten."""
    src = ngsim_file("US101/USA_US101-22_1_T-1.xml").read_text()
    assert 'benchmarkID="USA_US101-22_1_T-1"' in src
    out = tmp_path / file_name
    out.write_text(src.replace('benchmarkID="USA_US101-22_1_T-1"', f'benchmarkID="{benchmark_id}"'))
    return out


def test_a_commonroad_file_of_any_location_is_read_with_its_country_and_map_as_site(tmp_path):
    named = _relabelled(tmp_path, "DEU_Flensburg-1_1_T-1.xml", "DEU_Flensburg-1_1_T-1")
    clips, bad = cut_file(str(named))
    assert bad == [] and len(clips) > 0
    assert {(c.site, c.segment) for c in clips} == {("DEU_Flensburg", "DEU_Flensburg-1")}
    # a file not named after its id: the id inside the XML decides
    unnamed = _relabelled(tmp_path, "recording.xml", "ESP_Ceuta-2_1_T-1")
    clips2, bad2 = cut_file(str(unnamed))
    assert bad2 == [] and {(c.site, c.segment) for c in clips2} == {("ESP_Ceuta", "ESP_Ceuta-2")}
    assert len(clips2) == len(clips)
    # neither the name nor the id is a benchmark id: one quarantine record saying so
    bogus = _relabelled(tmp_path, "recording2.xml", "not-an-id")
    clips3, bad3 = cut_file(str(bogus))
    assert clips3 == [] and [r.reason for r in bad3] == ["unknown_scenario_id"]


def test_windows_non_overlapping():
    assert window_starts(55, None) == []
    assert window_starts(56, None) == [N_HIST]
    s = window_starts(167, None)
    assert s[0] == N_HIST + 5 and all(b - a == 56 for a, b in zip(s, s[1:]))
    assert all(t + N_FUT < 167 for t in s)


def test_cut_real_file_matches_source_tracks():
    from commonroad.common.file_reader import CommonRoadFileReader

    path = ngsim_file("US101/USA_US101-22_1_T-1.xml")
    clips, bad = cut_file(str(path))
    assert bad == []
    scenario, _ = CommonRoadFileReader(str(path)).open()
    tracks = {t.obstacle_id: t for t in extract_tracks(scenario)}
    expected = sum(len(window_starts(len(t.states), None)) for t in tracks.values())
    assert len(clips) == expected > 0
    for c in clips[:10]:
        tr = tracks[c.ego_id]
        k0 = c.t0 - tr.first_step
        np.testing.assert_allclose(c.ego_states[FUT_SLICE], tr.states[k0:k0 + N_FUT + 1])
        np.testing.assert_allclose(c.ego_states[T0_INDEX - N_HIST:T0_INDEX + 1], tr.states[k0 - N_HIST:k0 + 1])
        assert c.site == "US101" and c.segment == "USA_US101-22"
        assert c.route_center.shape[0] >= 2 and c.lane_on_route.any()
        assert c.ego_id not in set(c.agent_ids.tolist())
    # deterministic ids, and the Parquet codec round-trips
    again, _ = cut_file(str(path))
    assert [c.clip_id for c in clips] == [c.clip_id for c in again]
    back = clips_from_table(clips_to_table(clips[:3]))
    for a, b in zip(clips[:3], back):
        np.testing.assert_array_equal(a.agent_states, b.agent_states)
        np.testing.assert_array_equal(a.lane_tl_state, b.lane_tl_state)
        assert a.tags == b.tags and a.clip_id == b.clip_id


def test_traffic_lights_reach_clips():
    clips, _ = cut_file(str(ngsim_file("Lankershim/USA_Lanker-2_13_T-1.xml")))
    assert any((c.lane_tl_state > 0).any() for c in clips)
    assert all(c.site == "Lankershim" and "intersection" in c.tags for c in clips)


def test_split_never_shares_segments():
    counts = {"A-1": 30, "A-2": 200, "A-3": 40, "A-4": 25, "B-1": 10, "B-2": 90, "B-3": 15, "C-1": 50}
    sites = {s: s[0] for s in counts}
    plan = plan_split(counts, sites, train_fraction=0.1, calibration_fraction=0.1, test_fraction=0.15, seed=0)
    assert {sites[s] for s in plan.segments("test")} <= {"A", "B"}  # C has one unit only: noted, in the pool
    assert any("site C has one unit" in n for n in plan.notes)
    for site in "ABC":  # every site keeps a pool unit
        assert any(sites[s] == site for s in plan.segments("pool"))
    assert sum(plan.counts().values()) == sum(counts.values()) and all(plan.counts().values())


def test_ingest_on_ray_accounts_for_every_candidate(ray_local, small_data_dir, tmp_path):
    cfg = validate_config({"name": "ingest_test", "data_dir": str(small_data_dir), "output_dir": str(tmp_path),
                           "selection": {"budgets": [10]}, "ingest": {"shard_size": 16}})
    st = Storage(cfg.run_uri)
    s = run_ingest(cfg, st)
    assert s["candidates"] == s["clips"] + s["quarantined"]
    assert s["quarantine_reasons"]["unreadable_xml"] == 1
    assert s["quarantine_reasons"]["no_trajectories"] == 1
    # every file: clips, quarantined or without a usable track (the map-only S-1 file)
    assert s["files"] == 11 == s["files_with_clips"] + s["files_quarantined"] + s["files_without_usable_track"]
    assert s["files_without_usable_track_reasons"] == {"no_trajectories": 1}
    assert s["files_quarantined_reasons"].get("unreadable_xml") == 1
    # independent count: cut each file, group by content (on these files clip ids and content
    # keys group the clips alike)
    raw, by_content = Counter(), Counter()
    for p in sorted(small_data_dir.rglob("*.xml")):
        clips, _ = cut_file(str(p))
        raw.update(c.clip_id for c in clips)
        by_content.update(content_key(c.ego_states, c.t0) for c in clips)
    assert sorted(raw.values()) == sorted(by_content.values())
    assert s["clips"] == len(raw)
    assert s["duplicates"] == sum(raw.values()) - len(raw) > 0  # US101-22 _1/_3/_4 replay the same vehicles
    # shards: every clip once; four non-empty splits disjoint by recording unit (no file's clips in
    # two splits; the three US101-22 files replay one recording and stay together); every site in the pool
    ids, files = [], {}
    for split in SPLITS:
        t = st.read_table(f"ingest/clips/{split}", columns=["clip_id", "source_file", "site"])
        assert t.num_rows > 0, split
        ids += t.column("clip_id").to_pylist()
        files[split] = set(t.column("source_file").to_pylist())
        if split == "pool":
            assert set(t.column("site").to_pylist()) == {"US101", "Lankershim", "Peachtree"}
    assert len(ids) == len(set(ids)) == s["clips"]
    for a in SPLITS:
        for b in SPLITS:
            assert a == b or not (files[a] & files[b])
    unit_of = {u: sp for sp, us in s["units"].items() for u in us}
    assert len(unit_of) == sum(len(us) for us in s["units"].values())  # no unit in two splits
    us101_22 = [u for u in unit_of if u.startswith("USA_US101-22")]
    assert us101_22 == ["USA_US101-22"]  # one recording unit for its three files
    q = pq.read_table(st.path("ingest/quarantine.parquet"))
    assert q.num_rows == s["quarantined"]
    # a rerun (run_ingest itself; skipping a complete step is the step runner's job) reuses
    # every file's cut and gives the same summary
    again = run_ingest(cfg, st)
    assert again["files_resumed"] == s["files"] - s["files_resumed"] > 0
    timing = ("wall_time_s", "files_resumed")
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in s.items() if k not in timing}


def test_interrupted_ingest_resumes_per_file_and_matches(ray_local, small_data_dir, tmp_path):
    cfg = validate_config({"name": "resume", "data_dir": str(small_data_dir), "output_dir": str(tmp_path),
                           "selection": {"budgets": [10]}, "ingest": {"shard_size": 16}})
    st = Storage(cfg.run_uri)
    first = run_ingest(cfg, st)
    shards = {sp: st.read_table(f"ingest/clips/{sp}").sort_by("clip_id") for sp in SPLITS}
    # an interruption after some files were cut: no completion marker, part of the cuts lost
    st.delete("ingest/_SUCCESS.json")
    cuts = st.list("ingest/cut", ".parquet")
    for rel in cuts[: len(cuts) // 2]:
        st.delete(rel)
    again = run_ingest(cfg, st)
    assert again["files_resumed"] == len(cuts) - len(cuts) // 2 > 0
    for k in ("candidates", "clips", "quarantined", "splits", "segments"):
        assert again[k] == first[k]
    for sp, t in shards.items():
        assert st.read_table(f"ingest/clips/{sp}").sort_by("clip_id").equals(t)


def test_shared_map_builder_extends_lanes_leaving_the_crop():
    from mosaic_ray.data.maps import (EXTENSION_ID_OFFSET, LaneLists, add_straight_extensions, assemble_map,
                                      lanes_containing, offset_bounds)

    lanes = LaneLists()
    x = np.linspace(0.0, 20.0, 5)
    for lid, y in ((1, 0.0), (2, 3.5)):  # two parallel same-direction lanes along +x, 3.5 m wide
        c = np.column_stack([x, np.full(5, y)])
        left, right = offset_bounds(c, np.full(5, 1.75), np.full(5, 1.75))
        lanes.add(lid, left, right, c, False, [], [], [3 - lid])
    add_straight_extensions(lanes, 30.0)
    m = assemble_map(lanes, [])
    fwd, back = 1 + EXTENSION_ID_OFFSET, 1 + 2 * EXTENSION_ID_OFFSET
    assert m.lane_ids.tolist() == [1, 2, fwd, back, 2 + EXTENSION_ID_OFFSET, 2 + 2 * EXTENSION_ID_OFFSET]
    assert m.is_extension.tolist() == [False, False, True, True, True, True]
    assert m.successors[1] == [fwd] and m.predecessors[fwd] == [1] and m.predecessors[1] == [back]
    assert m.same_dir_neighbours[fwd] == [2 + EXTENSION_ID_OFFSET]
    assert m.offsets.tolist() == [0, 5, 10, 14, 18, 22, 26] and m.stop_lines.shape == (0, 2, 2)
    ext = m.center[m.offsets[2]:m.offsets[3]]  # beyond the end, in the driving direction
    np.testing.assert_allclose(ext, [[20, 0], [30, 0], [40, 0], [50, 0]])
    np.testing.assert_allclose(m.center[m.offsets[3]:m.offsets[4]], [[-30, 0], [-20, 0], [-10, 0], [0, 0]])
    assert m.polygons[0].area == pytest.approx(20 * 3.5)
    hits = lanes_containing(m, np.array([[10.0, 0.5], [45.0, 3.0], [10.0, 0.5]]), np.array([0.0, 0.0, np.pi]))
    assert hits == [[0], [4], []]  # the opposite heading is on no lane
