"""Tests of the EPDMS scorer (mosaic_ray.scoring): one per term and rule, on hand-made scenes.

Each expected value follows from /work/shared/docs/EPDMS.md applied to the scene geometry
described in the test (ego box 4.5 m x 2.0 m, lanes 3.5 m wide, see tests/scenes.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, Point, Polygon

from mosaic_ray.data.clip import POSE_STEPS, T0_INDEX
from mosaic_ray.scoring.epdms import (TERMS, WEIGHTS, aggregate_epdms, apply_human_filter,
                                      normalize_progress, prepare_scene, score_human,
                                      score_states, score_trajectories)
from mosaic_ray.scoring.geometry import (box_corners, boxes_intersect, points_in_polygons,
                                         project_to_polyline, relative_bearing,
                                         segment_intersects_box)
from mosaic_ray.scoring.reference import reference_proposals
from mosaic_ray.scoring.simulate import simulate_poses

from scenes import (AGENT_STATIC, TL_GREEN, TL_RED, Agent, Lane, braking, build_clip, const_vel,
                    future, lateral_path, line, signal_road, track, two_lane_road)


def terms_of(clip, states61_or_future, prev=None):
    s = np.asarray(states61_or_future)
    fut = future(s) if s.shape[0] == 61 else s
    return score_states(prepare_scene(clip), fut, prev)


def ego_frame_poses(states61: np.ndarray) -> np.ndarray:
    """(1, 8, 3) poses of a 61-step track in the ego frame at t0."""
    x0, y0, h0 = states61[T0_INDEX, :3]
    fut = states61[T0_INDEX + POSE_STEPS]
    c, s = np.cos(h0), np.sin(h0)
    dx, dy = fut[:, 0] - x0, fut[:, 1] - y0
    return np.stack([c * dx + s * dy, -s * dx + c * dy, fut[:, 2] - h0], axis=-1)[None]


# ============================================================================== NC
def test_nc_rear_end_into_stopped_car_is_at_fault():
    ego = const_vel(0, 0, 10.0)
    clip = two_lane_road(ego, [Agent(const_vel(30, 0, 0.0))])
    assert terms_of(clip, ego)["NC"][0] == 0.0


def test_nc_rear_end_into_slower_moving_car_front_bumper_at_fault():
    ego = const_vel(0, 0, 10.0)
    clip = two_lane_road(ego, [Agent(const_vel(20, 0, 4.0))])
    assert terms_of(clip, ego)["NC"][0] == 0.0


def test_nc_hit_from_behind_not_at_fault_and_object_counted_once():
    # the faster car drives through the ego (non-reactive): first contact is from behind;
    # later it is ahead of the ego, but the object was already judged once
    ego = const_vel(0, 0, 3.0)
    clip = two_lane_road(ego, [Agent(const_vel(-20, 0, 12.0))])
    t = terms_of(clip, ego)
    assert t["NC"][0] == 1.0


def test_nc_static_object_scores_half():
    ego = const_vel(0, 0, 10.0)
    clip = two_lane_road(ego, [Agent(const_vel(30, 0, 0.0), size=(1.0, 1.0), type=AGENT_STATIC)])
    assert terms_of(clip, ego)["NC"][0] == 0.5


def test_nc_ego_stopped_is_not_at_fault_but_moving_ego_is():
    wrong_way = Agent(const_vel(30, 0, 8.0, heading=np.pi))  # comes at the ego head-on
    stopped = const_vel(0, 0, 0.0)
    assert terms_of(two_lane_road(stopped, [wrong_way]), stopped)["NC"][0] == 1.0
    moving = const_vel(0, 0, 2.0)
    assert terms_of(two_lane_road(moving, [wrong_way]), moving)["NC"][0] == 0.0


def _side_swiper(y_start: float, y_end: float) -> Agent:
    """Keeps pace 0.5 m behind the ego centre (10 m/s) and slides sideways."""
    def fn(t):
        u = np.clip(t / 1.5, 0, 1)
        y = y_start + (y_end - y_start) * u * u * (3 - 2 * u)
        return 10.0 * t - 0.5, y, 0.0, 10.0
    return Agent(track(fn))


def test_nc_lateral_contact_not_at_fault_in_single_lane():
    ego = const_vel(0, 0.0, 10.0)  # fully inside lane 0
    clip = two_lane_road(ego, [_side_swiper(3.5, 1.5)])
    t = terms_of(clip, ego)
    assert t["NC"][0] == 1.0


def test_nc_lateral_contact_at_fault_when_ego_spans_two_lanes():
    ego = const_vel(0, 1.75, 10.0)  # straddles the lane 0 / lane 1 boundary
    clip = two_lane_road(ego, [_side_swiper(5.5, 3.5)])
    t = terms_of(clip, ego)
    assert t["DAC"][0] == 1.0
    assert t["NC"][0] == 0.0


def test_nc_contact_already_at_t0_is_ignored():
    ego = const_vel(0, 0, 10.0)
    overlapping = two_lane_road(ego, [Agent(const_vel(3.0, 0, 0.0))])  # touches at t0
    assert prepare_scene(overlapping).contact_t0.tolist() == [True]
    assert terms_of(overlapping, ego)["NC"][0] == 1.0
    just_ahead = two_lane_road(ego, [Agent(const_vel(6.0, 0, 0.0))])  # touches after 0.1 s
    assert terms_of(just_ahead, ego)["NC"][0] == 0.0


# ============================================================================== DAC
def test_dac_corner_off_road_fails():
    off = const_vel(0, -1.2, 10.0)  # right corners at y = -2.2, road edge at -1.75
    assert terms_of(two_lane_road(off), off)["DAC"][0] == 0.0
    on = const_vel(0, -0.7, 10.0)  # right corners at -1.7: still on the road
    assert terms_of(two_lane_road(on), on)["DAC"][0] == 1.0


# ============================================================================== DDC
@pytest.mark.parametrize("speed,expected", [(10.0, 0.0), (3.0, 0.5), (1.5, 1.0)])
def test_ddc_driving_in_opposite_lane(speed, expected):
    # lane 2 (y = 7) runs -x and is off-route; windows [t-10, t] hold 1.1 s of displacement
    ego = const_vel(0, 7.0, speed)
    t = terms_of(two_lane_road(ego), ego)
    assert t["DAC"][0] == 1.0
    assert t["DDC"][0] == expected


def test_ddc_in_own_lane_complies():
    ego = const_vel(0, 3.5, 10.0)
    assert terms_of(two_lane_road(ego), ego)["DDC"][0] == 1.0


def test_ddc_intersection_lane_off_route_is_not_oncoming():
    # the intersection lane [50, 70] is not marked on-route: steps inside it are excluded
    lanes = [Lane(line(-150, 50, 0.0, 21)), Lane(line(50, 70, 0.0, 5), on_route=False, in_intersection=True),
             Lane(line(70, 300, 0.0, 24))]
    ego = const_vel(45, 0, 10.0)  # centre inside the intersection lane for 2 s (20 m)
    clip = build_clip(lanes, ego, route_center=line(-150, 300, 0.0, 46))
    assert terms_of(clip, ego)["DDC"][0] == 1.0
    lanes[1].in_intersection = False  # the same lane as an ordinary off-route lane: oncoming
    clip = build_clip(lanes, ego, route_center=line(-150, 300, 0.0, 46))
    assert terms_of(clip, ego)["DDC"][0] == 0.0


# ============================================================================== TLC
def test_tlc_red_light_lane_entered_fails_green_passes():
    ego = const_vel(20, 0, 10.0)  # front bumper reaches the intersection lane (x=50) at 2.8 s
    assert terms_of(signal_road(TL_RED, ego), ego)["TLC"][0] == 0.0
    assert terms_of(signal_road(TL_GREEN, ego), ego)["TLC"][0] == 1.0


def test_tlc_stopping_before_red_passes():
    ego = braking(20, 10.0, 4.0)  # stops after 12.5 m: front at 34.75 < 50
    assert terms_of(signal_road(TL_RED, ego), ego)["TLC"][0] == 1.0


@pytest.mark.parametrize("x0,expected", [(36.25, 0.0), (34.75, 1.0)])
def test_tlc_touch_sampled_at_front_edge_midpoint(x0, expected):
    # a red intersection lane only 1.2 m wide: the ego (2 m wide) stops with its front edge
    # 1 m past x=50 (x0=36.25), so only the front-edge midpoint is inside the lane
    lanes = [Lane(line(-150, 50, 0.0, 21)),
             Lane(line(50, 70, 0.0, 5), width=1.2, in_intersection=True, tl=TL_RED),
             Lane(line(70, 300, 0.0, 24))]
    ego = braking(x0, 10.0, 4.0)  # stops 12.5 m further
    clip = build_clip(lanes, ego, route_center=line(-150, 300, 0.0, 46))
    assert terms_of(clip, ego)["TLC"][0] == expected


def test_tlc_uses_the_light_state_at_each_step():
    ego = const_vel(20, 0, 10.0)  # inside the intersection lane (x in [50, 70]) from 2.8 s
    tl = np.full(61, TL_GREEN, dtype=np.int8)
    tl[T0_INDEX + 35:] = TL_RED  # turns red at 3.5 s while the ego box is still in the lane
    assert terms_of(signal_road(tl, ego), ego)["TLC"][0] == 0.0
    tl[:] = TL_GREEN
    tl[:T0_INDEX + 2] = TL_RED  # red only until 0.1 s, when the ego is 25 m before the lane
    assert terms_of(signal_road(tl, ego), ego)["TLC"][0] == 1.0


# ============================================================================== TTC
def test_ttc_fails_for_car_ahead_on_collision_course_without_collision():
    # constant 10 m/s until 2.8 s, then 8 m/s^2 to a stop 1.25 m behind a stopped car
    ego = braking(0, 10.0, 8.0, t_start=2.8)
    clip = two_lane_road(ego, [Agent(const_vel(40, 0, 0.0))])
    t = terms_of(clip, ego)
    assert t["NC"][0] == 1.0
    assert t["TTC"][0] == 0.0


def test_ttc_passes_when_braking_early():
    ego = braking(0, 10.0, 3.0)
    clip = two_lane_road(ego, [Agent(const_vel(40, 0, 0.0))])
    assert terms_of(clip, ego)["TTC"][0] == 1.0


def test_ttc_ignores_object_behind_in_single_lane():
    # bearings are taken from the ego at t to the object at t + offset (NAVSIM); at 3 m/s the
    # projected box stays within 2.7 m, so the closing car is first met still behind the ego
    # and is ignored from then on
    ego = const_vel(0, 0, 3.0)
    clip = two_lane_road(ego, [Agent(const_vel(-12, 0, 9.0))])
    assert terms_of(clip, ego)["TTC"][0] == 1.0
    # the same car met while in two lanes and not behind: fails (object alongside/ahead)
    straddle = const_vel(0, 1.75, 10.0)
    clip2 = two_lane_road(straddle, [Agent(const_vel(-12, 3.5, 16.0))])
    assert terms_of(clip2, straddle)["TTC"][0] == 0.0


# ============================================================================== LK
def _offset_states(offset_steps: np.ndarray, y_off: float = 0.8, x0: float = 0.0, v: float = 10.0):
    s = np.zeros((1, 41, 4))
    s[0, :, 0] = x0 + v * 0.1 * np.arange(41)
    s[0, :, 1] = np.where(offset_steps, y_off, 0.0)
    s[0, :, 3] = v
    return s


@pytest.mark.parametrize("n_off,expected", [(41, 0.0), (20, 0.0), (19, 1.0), (15, 1.0)])
def test_lk_offset_duration(n_off, expected):
    steps = np.arange(41) < n_off
    assert terms_of(two_lane_road(), _offset_states(steps))["LK"][0] == expected


def test_lk_streak_not_reset_nor_counted_in_intersection():
    # x = 44.5 + k: centre in the intersection lane (x in [50, 70)) for steps 6..25
    clip = signal_road(0)
    all_off = np.ones(41, bool)  # 6 steps before + 15 after the intersection are off: 21
    assert terms_of(clip, _offset_states(all_off, 0.6, x0=44.5))["LK"][0] == 0.0
    late = np.arange(41) >= 6  # only 15 counted off steps (intersection ones don't count)
    assert terms_of(clip, _offset_states(late, 0.6, x0=44.5))["LK"][0] == 1.0


# ============================================================================== HC
def test_hc_violent_braking_fails_smooth_passes():
    violent = braking(0, 10.0, 8.0)
    assert terms_of(two_lane_road(violent), violent)["HC"][0] == 0.0
    smooth = const_vel(0, 0, 10.0)
    assert terms_of(two_lane_road(smooth), smooth)["HC"][0] == 1.0


def test_hc_includes_logged_history():
    # the future is smooth, but the logged history brakes hard (-6 m/s^2) until t0
    hist = track(lambda t: (np.where(t < 0, 10 * t - 3.0 * t ** 2, 10 * t), 0.0, 0.0,
                            np.where(t < 0, 10 - 6.0 * t, 10.0)))
    clip = two_lane_road(hist)
    assert terms_of(clip, hist)["HC"][0] == 0.0


def _ramped_turn(rate_per_s: float, max_rate: float, v: float = 2.0) -> np.ndarray:
    """Straight until t0, then the yaw rate ramps at ``rate_per_s`` rad/s^2 up to ``max_rate``."""
    t = np.arange(61) * 0.1 - 2.0
    w = np.clip(rate_per_s * np.clip(t, 0, None), 0, max_rate)
    h = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * 0.1)])
    x = np.concatenate([[0.0], np.cumsum(v * 0.1 * np.cos(0.5 * (h[1:] + h[:-1])))])
    y = np.concatenate([[0.0], np.cumsum(v * 0.1 * np.sin(0.5 * (h[1:] + h[:-1])))])
    s = np.stack([x, y, h, np.full(61, v)], axis=1)
    s[:, :2] -= s[T0_INDEX, :2]
    return s


@pytest.mark.parametrize("max_rate,expected", [(1.2, 0.0), (0.8, 1.0)])
def test_hc_yaw_rate_bound(max_rate, expected):
    # 2 m/s: lateral acceleration <= 2.4 m/s^2 and yaw acceleration 0.6 rad/s^2 stay within
    # bounds, so only the yaw rate (bound 0.95 rad/s) decides
    turn = _ramped_turn(0.6, max_rate)
    assert terms_of(two_lane_road(turn), turn)["HC"][0] == expected


def test_hc_lateral_swerve_fails():
    swerve = lateral_path(0, 10.0, lambda t: np.where(t > 0, 1.5 * np.sin(2 * np.pi * t / 1.5), 0.0))
    assert terms_of(two_lane_road(swerve), swerve)["HC"][0] == 0.0


# ============================================================================== EC
def test_ec_nan_without_previous_frame_and_computed_with_one():
    ego = const_vel(0, 0, 10.0)
    clip = two_lane_road(ego)
    assert np.isnan(terms_of(clip, ego)["EC"][0])
    same = ego[T0_INDEX - 5:T0_INDEX + 36]  # the previous frame planned the same motion
    assert terms_of(clip, ego, prev=same)["EC"][0] == 1.0
    braking_prev = braking(-5.0, 10.0, 3.0)[T0_INDEX:]  # previous frame planned to brake
    assert terms_of(clip, ego, prev=braking_prev)["EC"][0] == 0.0


def test_ec_dropped_in_trajectory_score_weight_14_vs_16():
    ego = braking(0, 10.0, 8.0)  # HC = 0 makes the weights visible
    clip = two_lane_road(ego)
    poses = ego_frame_poses(ego)
    r14 = score_trajectories(clip, poses)
    assert not r14.ec_available and np.isnan(r14.terms["EC"][0])
    r16 = score_trajectories(clip, poses, prev_states=ego[T0_INDEX - 5:T0_INDEX + 36])
    assert r16.ec_available and r16.terms["EC"][0] in (0.0, 1.0)
    for r, den, names in ((r14, 14.0, ["EP", "TTC", "LK", "HC"]),
                          (r16, 16.0, ["EP", "TTC", "LK", "HC", "EC"])):
        pen = np.prod([r.terms[k][0] for k in ("NC", "DAC", "DDC", "TLC")])
        expect = pen * sum(WEIGHTS[k] * r.terms[k][0] for k in names) / den
        assert r.epdms[0] == pytest.approx(expect)
    assert r16.epdms[0] != pytest.approx(r14.epdms[0])


# ============================================================================== EP
def test_normalize_progress_rules():
    ep = normalize_progress(np.array([10.0, 3.0, 30.0]), np.array([1.0, 1.0, 0.0]), 20.0, 1.0)
    np.testing.assert_allclose(ep, [0.5, 0.15, 1.0])
    # reference penalised: each candidate normalised by its own raw * pen
    np.testing.assert_allclose(normalize_progress(np.array([10.0]), np.array([1.0]), 50.0, 0.0), [1.0])
    # normaliser <= 5 m -> EP = 1 even with no progress
    np.testing.assert_allclose(normalize_progress(np.array([0.0, 4.0]), np.array([1.0, 1.0]), 5.0, 1.0),
                               [1.0, 1.0])
    np.testing.assert_allclose(normalize_progress(np.array([0.0]), np.array([1.0]), 5.5, 1.0), [0.0])


def test_ep_normaliser_small_when_blocked_gives_one():
    # ego at rest 2 m behind a stopped car: neither the plan nor the reference can progress
    ego = const_vel(0, 0, 0.0)
    clip = two_lane_road(ego, [Agent(const_vel(6.5, 0, 0.0))])
    res = score_trajectories(clip, np.zeros((1, 8, 3)))
    assert res.reference_progress_m < 5.0
    assert res.progress_m[0] == pytest.approx(0.0, abs=1e-9)
    assert res.raw_terms["EP"][0] == 1.0


def test_ep_is_ratio_to_reference_and_batch_independent():
    ego = const_vel(0, 0, 10.0)
    clip = two_lane_road(ego)
    slow = ego_frame_poses(const_vel(0, 0, 5.0))
    fast = ego_frame_poses(ego)
    alone = score_trajectories(clip, slow)
    both = score_trajectories(clip, np.concatenate([slow, fast]))
    assert alone.reference_progress_m > 35.0
    ep = alone.raw_terms["EP"][0]
    assert ep == pytest.approx(alone.progress_m[0] / alone.ep_normalizer[0])
    assert 0.3 < ep < 0.9
    assert both.raw_terms["EP"][0] == pytest.approx(ep)
    assert both.epdms[0] == pytest.approx(alone.epdms[0])


def test_reference_stops_behind_stopped_car():
    ego = const_vel(0, 0, 10.0)
    clip = two_lane_road(ego, [Agent(const_vel(45, 0, 0.0))])
    scene = prepare_scene(clip)
    refs = reference_proposals(scene)
    t = score_states(scene, refs)
    assert refs.shape == (5, 41, 4)
    assert np.all(t["NC"] == 1.0)
    np.testing.assert_allclose(refs[:, 0], np.broadcast_to(clip.ego_states[T0_INDEX], (5, 4)))
    assert np.all(refs[:, :, 0] + 2.25 < 45 - 2.25)  # never reaches the stopped car


# ============================================================================== human filter
def test_human_filter_forces_one_where_human_fails():
    ego = const_vel(0, 0, 10.0)  # the logged human rear-ends a stopped car
    clip = two_lane_road(ego, [Agent(const_vel(30, 0, 0.0))])
    res = score_trajectories(clip, ego_frame_poses(ego))
    assert res.human_terms["NC"] == 0.0
    assert res.raw_terms["NC"][0] == 0.0
    assert res.terms["NC"][0] == 1.0
    unfiltered = score_trajectories(clip, ego_frame_poses(ego), human_filter=False)
    assert unfiltered.terms["NC"][0] == 0.0
    assert res.epdms[0] > unfiltered.epdms[0]


def test_human_filter_does_not_touch_ec():
    cand = {k: np.array([0.0, 1.0]) for k in TERMS}
    human = {k: 0.0 for k in TERMS}
    out = apply_human_filter(cand, human)
    for k in TERMS:
        expected = [0.0, 1.0] if k == "EC" else [1.0, 1.0]
        np.testing.assert_array_equal(out[k], expected)
    human_ok = {k: 1.0 for k in TERMS}
    np.testing.assert_array_equal(apply_human_filter(cand, human_ok)["NC"], [0.0, 1.0])


def test_score_human_clean_drive():
    ego = const_vel(0, 0, 10.0)
    terms, epdms = score_human(two_lane_road(ego))
    assert all(terms[k] == 1.0 for k in TERMS)
    assert epdms == pytest.approx(1.0)
    terms14, _ = score_human(two_lane_road(ego, has_prev_frame=False))
    assert np.isnan(terms14["EC"])


# ============================================================================== formula
def test_aggregate_formula():
    t = {k: np.array([1.0]) for k in TERMS}
    t["EP"] = np.array([0.5])
    assert aggregate_epdms(t, True)[0] == pytest.approx((2.5 + 5 + 2 + 2 + 2) / 16)
    assert aggregate_epdms(t, False)[0] == pytest.approx((2.5 + 5 + 2 + 2) / 14)
    t["DDC"] = np.array([0.5])
    t["NC"] = np.array([0.5])
    assert aggregate_epdms(t, False)[0] == pytest.approx(0.25 * 11.5 / 14)


def test_trajectory_result_shapes_and_formula():
    ego = const_vel(0, 0, 10.0)
    clip = two_lane_road(ego, [Agent(const_vel(60, 0, 0.0))])
    poses = np.concatenate([ego_frame_poses(ego), ego_frame_poses(braking(0, 10, 2.0)),
                            ego_frame_poses(const_vel(0, 0, 4.0))])
    res = score_trajectories(clip, poses, prev_states=ego[T0_INDEX - 5:T0_INDEX + 36])
    assert res.states.shape == (3, 41, 4)
    for k in TERMS:
        assert res.terms[k].shape == (3,) and res.terms[k].dtype == np.float64
    pen = res.terms["NC"] * res.terms["DAC"] * res.terms["DDC"] * res.terms["TLC"]
    w = sum(WEIGHTS[k] * res.terms[k] for k in ("EP", "TTC", "LK", "HC", "EC")) / 16
    np.testing.assert_allclose(res.epdms, pen * w)


def test_bad_shapes_raise():
    clip = two_lane_road()
    scene = prepare_scene(clip)
    with pytest.raises(ValueError):
        score_states(scene, np.zeros((2, 40, 4)))
    with pytest.raises(ValueError):
        score_trajectories(scene, np.zeros((2, 7, 3)))
    with pytest.raises(ValueError):
        score_states(scene, np.zeros((2, 41, 4)), prev_states=np.zeros((3, 41, 4)))
    with pytest.raises(ValueError):
        simulate_poses(np.zeros(3), np.zeros((1, 8, 3)))


# ============================================================================== simulate
def test_simulate_constant_speed_passes_through_poses():
    start = np.array([100.0, -50.0, 0.7, 8.0])
    poses = np.zeros((2, 8, 3))
    poses[:, :, 0] = 8.0 * 0.5 * np.arange(1, 9)
    poses[1, :, 1] = 0.0
    out = simulate_poses(start, poses)
    assert out.shape == (2, 41, 4)
    np.testing.assert_allclose(out[:, 0], np.broadcast_to(start, (2, 4)))
    np.testing.assert_allclose(out[..., 3], 8.0, atol=1e-9)
    np.testing.assert_allclose(out[..., 2], 0.7, atol=1e-9)
    x = 100.0 + np.cos(0.7) * 8.0 * 0.5 * np.arange(1, 9)
    np.testing.assert_allclose(out[0, POSE_STEPS, 0], x)


def test_simulate_heading_follows_turn_and_blends_when_stopped():
    start = np.array([0.0, 0.0, 0.0, 0.0])
    poses = np.zeros((1, 8, 3))
    poses[0, :, 2] = np.linspace(0.1, 0.8, 8)  # turning on the spot: no motion
    out = simulate_poses(start, poses)
    np.testing.assert_allclose(out[0, POSE_STEPS, 2], np.linspace(0.1, 0.8, 8), atol=1e-9)
    np.testing.assert_allclose(out[0, :, :2], 0.0, atol=1e-9)


# ============================================================================== geometry
box_st = st.tuples(st.floats(-5, 5), st.floats(-5, 5), st.floats(-np.pi, np.pi),
                   st.floats(0.5, 6), st.floats(0.3, 3))


def _poly(b):
    return Polygon(box_corners(*b))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(st.tuples(box_st, box_st), min_size=1, max_size=8))
def test_boxes_intersect_matches_shapely(pairs):
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    expected = []
    for pa_, pb_ in pairs:
        A, B = _poly(pa_), _poly(pb_)
        assume(not (A.distance(B) < 1e-7 and A.intersection(B).area < 1e-7))
        expected.append(A.intersects(B))
    got = boxes_intersect(a, b)
    assert got.tolist() == expected
    # broadcasting: every a against every b
    full = boxes_intersect(a[:, None], b[None, :])
    assert full.shape == (len(pairs), len(pairs))
    assert np.diagonal(full).tolist() == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(box_st, st.tuples(st.floats(-7, 7), st.floats(-7, 7), st.floats(-7, 7), st.floats(-7, 7)))
def test_segment_intersects_box_matches_shapely(b, seg):
    p0, p1 = np.array(seg[:2]), np.array(seg[2:])
    assume(np.hypot(*(p1 - p0)) > 1e-3)
    line, poly = LineString([p0, p1]), _poly(b)
    assume(not (line.distance(poly) < 1e-7 and line.intersection(poly).length < 1e-7))
    assert bool(segment_intersects_box(p0, p1, np.array(b))) == line.intersects(poly)


@st.composite
def star_polygon(draw):
    n = draw(st.integers(3, 12))
    ang = np.sort(np.array(draw(st.lists(st.floats(0, 2 * np.pi - 1e-3), min_size=n, max_size=n,
                                          unique=True))))
    assume(np.min(np.diff(np.concatenate([ang, [ang[0] + 2 * np.pi]]))) > 1e-2)
    rad = np.array(draw(st.lists(st.floats(0.5, 5), min_size=n, max_size=n)))
    cx, cy = draw(st.floats(-3, 3)), draw(st.floats(-3, 3))
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(star_polygon(), min_size=1, max_size=4),
       st.lists(st.tuples(st.floats(-9, 9), st.floats(-9, 9)), min_size=1, max_size=40))
def test_points_in_polygons_matches_shapely(polys, pts):
    V = max(p.shape[0] for p in polys)
    padded = np.full((len(polys), V, 2), 123.0)  # padding must be ignored
    for i, p in enumerate(polys):
        padded[i, : p.shape[0]] = p
    nv = np.array([p.shape[0] for p in polys])
    P = np.array(pts)
    shp = [Polygon(p) for p in polys]
    keep = [all(s.exterior.distance(Point(q)) > 1e-7 for s in shp) for q in P]
    P = P[np.array(keep)]
    assume(P.shape[0] > 0)
    got = points_in_polygons(P, padded, nv)
    expected = np.array([[s.contains(Point(q)) for s in shp] for q in P])
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-20, 20), st.floats(-20, 20)), min_size=2, max_size=8),
       st.lists(st.tuples(st.floats(-25, 25), st.floats(-25, 25)), min_size=1, max_size=10))
def test_project_to_polyline_matches_shapely(line_pts, pts):
    line = np.array(line_pts)
    assume(np.all(np.hypot(*np.diff(line, axis=0).T) > 1e-3))
    ls = LineString(line)
    P = np.array(pts)
    arc, lat, dist = project_to_polyline(P, line)
    for q, a, d in zip(P, arc, dist):
        assert d == pytest.approx(ls.distance(Point(q)), abs=1e-7)
        assert ls.interpolate(a).distance(Point(q)) == pytest.approx(d, abs=1e-6)
    np.testing.assert_allclose(np.abs(lat), dist)


def test_relative_bearing_and_lateral_sign():
    assert relative_bearing(np.zeros(2), 0.0, np.array([5.0, 0.0])) == pytest.approx(0.0)
    assert relative_bearing(np.zeros(2), 0.0, np.array([-5.0, 0.1])) > np.deg2rad(150)
    assert relative_bearing(np.zeros(2), np.pi / 2, np.array([0.0, 3.0])) == pytest.approx(0.0)
    _, lat, _ = project_to_polyline(np.array([[5.0, 2.0], [5.0, -2.0]]), np.array([[0.0, 0.0], [10.0, 0.0]]))
    np.testing.assert_allclose(lat, [2.0, -2.0])
