"""The batched CPU path of the score step equals the clip-by-clip one (issue 14).

:func:`~mosaic_ray.scoring.epdms.score_many` tracks every clip's candidate, reference
proposals, human future and previous frames in one tracker call and rolls the reference
proposals out in one IDM loop; :func:`~mosaic_ray.planner.features.resample_lanes` resamples
all lanes of an observation at once. Each must give what the per-clip / per-lane code gives
(random scenes from tests/scenes.py, which the per-step reference tests also use).
"""

from __future__ import annotations

import numpy as np
import pytest

from mosaic_ray.data.clip import T0_INDEX
from mosaic_ray.planner.features import (FeatureSpec, build_observation, resample_lanes, resample_polyline,
                                         to_frame)
from mosaic_ray.scoring.epdms import (TERMS, prepare_scene, score_many, score_states, score_states_many,
                                      score_trajectories)
from mosaic_ray.scoring.reference import reference_proposals, reference_proposals_many

from scenes import random_poses, random_scene


def _scenes(seed: int, n: int):
    rng = np.random.default_rng(seed)
    clips = [random_scene(rng) for _ in range(n)]
    poses = np.stack([random_poses(rng, 1, float(c.ego_states[0, 3]))[0] for c in clips])
    prev = [random_poses(rng, 1, 5.0)[0] if (c.has_prev_frame and i % 3) else None for i, c in enumerate(clips)]
    return clips, poses, prev


def test_score_many_equals_score_trajectories_clip_by_clip():
    clips, poses, prev = _scenes(7, 12)
    batched = score_many([prepare_scene(c) for c in clips], poses, prev)
    assert len(batched) == len(clips)
    assert any(p is None for p in prev) and any(p is not None for p in prev)
    for c, p, pp, got in zip(clips, poses, prev, batched):
        want = score_trajectories(prepare_scene(c), p[None], prev_poses=pp)
        assert got.ec_available == want.ec_available == (pp is not None)
        np.testing.assert_allclose(got.epdms, want.epdms, rtol=0, atol=1e-12)
        for t in TERMS:
            np.testing.assert_allclose(got.terms[t], want.terms[t], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.states, want.states, rtol=0, atol=1e-9)
        assert got.reference_index == want.reference_index


def _tracked_rows(scene, rng, n):
    """(n, 41, 5) tracked random proposals and (n, 41, 5) tracked previous frames of a scene."""
    return (scene.simulate(random_poses(rng, n, float(scene.start_state[3]))),
            scene.simulate_prev(random_poses(rng, n, float(scene.prev_start[3]))))


def test_score_states_many_equals_score_states_scene_by_scene(ngsim_clips):
    """One pass over the rows of many scenes gives, bit for bit, each scene's own
    :func:`score_states`: random scenes (agents or none, red lights, intersections) and real
    NGSIM clips, 0 to 9 rows per scene, previous frames given, absent or partly NaN."""
    rng = np.random.default_rng(5)
    clips = [random_scene(rng) for _ in range(14)] + ngsim_clips("Lankershim/USA_Lanker-2_13_T-1.xml")[:6]
    scenes = [prepare_scene(c) for c in clips]
    assert any(s.num_agents == 0 for s in scenes) and any(s.num_agents > 2 for s in scenes)
    assert any(s.inter_bits.any() for s in scenes) and any(s.red_lanes.any() for s in scenes)
    states, prevs = [], []
    for i, s in enumerate(scenes):
        n = [0, 1, 3, 9][i % 4]
        st, pv = _tracked_rows(s, rng, n)
        if n:                         # row 0: the logged future, smooth across the two frames
            st[0], pv[0] = s.human_states(), s.human_prev_states()
        if i % 5 == 1 and n:
            pv[0] = np.nan            # a row without a previous frame
        states.append(st)
        prevs.append(None if i % 3 == 0 else pv)
    got = score_states_many(scenes, states, prevs)
    assert len(got) == len(scenes)
    terms_seen = {t: set() for t in TERMS}
    for s, st, pv, g in zip(scenes, states, prevs, got):
        want = score_states(s, st, pv)
        for t in TERMS:
            np.testing.assert_array_equal(g[t], want[t])
            terms_seen[t].update(np.unique(want[t][np.isfinite(want[t])]).round(6).tolist())
    for t in ("NC", "DAC", "TTC", "LK", "HC", "EC"):  # the rows exercise both outcomes
        assert {0.0, 1.0} <= terms_seen[t], (t, terms_seen[t])
    with pytest.raises(ValueError, match="2 scenes"):
        score_states_many(scenes[:2], states[:1])
    with pytest.raises(ValueError, match="non-finite"):
        score_states_many(scenes[1:3], [states[1], np.full_like(states[1], np.nan)])


def test_reference_proposals_many_equals_one_scene_at_a_time():
    clips, _, _ = _scenes(11, 10)
    scenes = [prepare_scene(c) for c in clips]
    assert len({s.agent_boxes.shape[1] for s in scenes}) > 1  # padding of agents is exercised
    for s, got in zip(scenes, reference_proposals_many(scenes)):
        np.testing.assert_array_equal(got, reference_proposals(s))
    assert reference_proposals_many([]) == []


def test_score_many_rejects_mismatched_inputs():
    import pytest

    clips, poses, prev = _scenes(3, 2)
    scenes = [prepare_scene(c) for c in clips]
    with pytest.raises(ValueError, match="poses"):
        score_many(scenes, poses[:1], prev)
    with pytest.raises(ValueError, match="prev_poses"):
        score_many(scenes, poses, prev[:1])


def test_resample_lanes_equals_lane_by_lane_resampling():
    rng = np.random.default_rng(0)
    parts = []
    for n in (2, 5, 17, 1, 9):
        p = np.cumsum(rng.normal(size=(n, 2)), axis=0)
        if n > 4:
            p[3] = p[2]  # a repeated point is dropped as resample_polyline drops it
        parts.append(p)
    parts.append(np.zeros((3, 2)))  # all points equal: repeats its first point
    pts = np.concatenate(parts)
    offs = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    order = np.array([2, 0, 5, 4, 1, 3])
    got = resample_lanes(pts, offs, order, 10)
    for j, i in enumerate(order):
        c = parts[i]
        total = np.linalg.norm(np.diff(c, axis=0), axis=1).sum()
        np.testing.assert_allclose(got[j], resample_polyline(c, np.linspace(0.0, total, 10)), atol=1e-9)


def test_observation_lanes_match_per_lane_resampling():
    rng = np.random.default_rng(5)
    spec = FeatureSpec()
    for _ in range(4):
        clip = random_scene(rng)
        obs = build_observation(clip, spec, 0)
        x0, y0, h0, _ = clip.ego_states[T0_INDEX]
        cl = to_frame(clip.lane_center, np.array([x0, y0]), h0)
        offs = clip.lane_offsets
        dmin = np.minimum.reduceat(np.linalg.norm(cl, axis=1), offs[:-1])
        order = np.argsort(dmin)[:spec.max_lanes]
        order = order[dmin[order] < 100.0]
        assert obs["lanes_mask"].sum() == len(order) > 0
        for j, i in enumerate(order):
            c = cl[offs[i]:offs[i + 1]]
            want = resample_polyline(c, np.linspace(0.0, np.linalg.norm(np.diff(c, axis=0), axis=1).sum(),
                                                    spec.lane_points)) / 20.0
            np.testing.assert_allclose(obs["lanes"][j], want, atol=1e-5)


def test_lane_masks_crop_equals_the_whole_map_grid_on_real_clips(ngsim_clips):
    """The scorer's lane membership (a grid cropped to the queried points, built at the first
    query and rebuilt for a query outside it) equals the whole map's grid on real NGSIM lanes,
    for the logged ego corners and for points spread over a 200 m square."""
    rng = np.random.default_rng(0)
    clips = ngsim_clips("Lankershim/USA_Lanker-2_13_T-1.xml")[:4] + ngsim_clips("US101/USA_US101-22_1_T-1.xml")[:2]
    for clip in clips:
        scene = prepare_scene(clip)
        near = rng.normal(0.0, 3.0, (64, 2)) + np.array([20.0, 0.0])
        far = rng.uniform(-100, 100, (400, 2))
        np.testing.assert_array_equal(scene.lane_masks(near), scene.lane_grid.query(near))
        first = scene._cache["lane_crop"]
        np.testing.assert_array_equal(scene.lane_masks(near[:10]), scene.lane_grid.query(near[:10]))
        assert scene._cache["lane_crop"] is first  # inside the crop: no rebuild
        np.testing.assert_array_equal(scene.lane_masks(far), scene.lane_grid.query(far))
        assert scene._cache["lane_crop"] is not first
        assert (scene.lane_masks(far) != 0).any()  # the square reaches lanes


def test_reference_setup_target_speeds_follow_desired_speed():
    """The reference's set-up derives the desired speed from its own corridor projection (one
    projection of the agents instead of two); it must equal :func:`desired_speed`."""
    from mosaic_ray.scoring.reference import REFERENCE_FRACTIONS, _setup, desired_speed

    rng = np.random.default_rng(11)
    for _ in range(12):
        scene = prepare_scene(random_scene(rng))
        su = _setup(scene, REFERENCE_FRACTIONS)
        np.testing.assert_array_equal(su["v_target"], np.asarray(REFERENCE_FRACTIONS) * desired_speed(scene))


def test_interpolate_poses_is_row_wise_and_hits_the_knots():
    """A row's interpolated reference does not depend on the rows interpolated with it (the
    score step tracks every clip's blocks together), and the states at 0.5 s multiples are
    the knots themselves."""
    from mosaic_ray.scoring.simulate import interpolate_poses

    rng = np.random.default_rng(2)
    start = rng.normal(0.0, 50.0, (9, 3))
    poses = start[:, None, :] + np.cumsum(rng.normal(1.0, 2.0, (9, 8, 3)), axis=1)
    together = interpolate_poses(start, poses)
    alone = np.concatenate([interpolate_poses(start[i:i + 1], poses[i:i + 1]) for i in range(9)])
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together[:, 5::5, :2], poses[..., :2])
    np.testing.assert_array_equal(together[:, 0, :2], start[:, :2])
    np.testing.assert_allclose(np.cos(together[:, 5::5, 2]), np.cos(poses[..., 2]), atol=1e-12)


def test_featurize_clips_equals_the_observation_by_observation_features(ngsim_clips):
    """The batched features (every observation of a batch at once) equal, bit for bit, the
    observation-by-observation code they replaced (tests/feature_reference.py): real NGSIM
    clips of two sites and random scenes (no agents, intersections), t0 and t0 − 0.5 s."""
    from feature_reference import build_observation as reference_observation

    from mosaic_ray.planner.features import PREV_OFFSET, featurize_clips

    rng = np.random.default_rng(9)
    clips = (ngsim_clips("Lankershim/USA_Lanker-2_13_T-1.xml")[:12] + ngsim_clips("US101/USA_US101-22_1_T-1.xml")[:8]
             + [random_scene(rng, max_agents=k % 4) for k in range(8)])
    assert any(c.num_agents == 0 for c in clips) and any(c.num_agents > 6 for c in clips)
    spec = FeatureSpec(max_agents=6, max_lanes=9)  # fewer slots than agents / lanes: the ranking matters
    got = featurize_clips(clips, spec, with_prev=True)
    assert got["agents_mask"].all(axis=1).any() and got["lanes_mask"].all(axis=1).any()
    for i, c in enumerate(clips):
        want = reference_observation(c, spec, 0)
        for k, v in want.items():
            np.testing.assert_array_equal(got[k][i], v, err_msg=f"{c.clip_id} {k}")
        if c.has_prev_frame:
            prev = reference_observation(c, spec, PREV_OFFSET)
            assert got["prev_valid"][i]
            for k in ("ego", "agents", "agents_mask", "lanes", "lanes_attr", "lanes_mask", "route"):
                np.testing.assert_array_equal(got[f"prev_{k}"][i], prev[k], err_msg=f"{c.clip_id} prev_{k}")
        else:
            assert not got["prev_valid"][i]
            np.testing.assert_array_equal(got["prev_lanes"][i], got["lanes"][i])


def test_clips_from_table_reads_the_buffers_as_clip_from_row_reads_rows(ngsim_clips):
    """The buffer-level decode equals the row-by-row one on real clips (a chunked, sliced
    table included) and refuses a null cell, so the score step falls back to isolating it."""
    import pyarrow as pa

    from mosaic_ray.data.clip import ARRAY_FIELDS, META_FIELDS, clip_from_row, clips_from_table, clips_to_table

    table = clips_to_table(ngsim_clips("US101/USA_US101-22_1_T-1.xml")[:7])
    chunked = pa.concat_tables([table.slice(0, 3), table.slice(3)]).slice(1)
    assert chunked.column("agent_states").num_chunks == 2
    got, want = clips_from_table(chunked), [clip_from_row(r) for r in chunked.to_pylist()]
    assert [c.clip_id for c in got] == [c.clip_id for c in want] and len(got) == 6
    for g, w in zip(got, want):
        for k in META_FIELDS:
            assert getattr(g, k) == getattr(w, k), k
        for k in ARRAY_FIELDS:
            a, b = getattr(g, k), getattr(w, k)
            assert a.dtype == b.dtype and a.flags.writeable
            np.testing.assert_array_equal(a, b, err_msg=k)
    cells = table.column("lane_left").to_pylist()
    cells[2] = None
    broken = table.set_column(table.schema.get_field_index("lane_left"), "lane_left", pa.array(cells, pa.binary()))
    with pytest.raises(ValueError, match="lane_left"):
        clips_from_table(broken)
