"""Tests of the EPDMS scorer (mosaic_ray.scoring): one per term and rule, on hand-made scenes.

Each expected value follows from /work/shared/docs/EPDMS.md (NAVSIM's definition) applied to
the scene geometry described in the test (ego box 4.5 m x 2.0 m, rear axle 1.27 m behind
its centre, lanes 3.5 m wide, see tests/scenes.py). Property tests against the shapely
reference implementation are in tests/test_epdms_property.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from mosaic_ray.data.clip import AGENT_PEDESTRIAN, POSE_STEPS, T0_INDEX
from mosaic_ray.scoring import epdms as E
from mosaic_ray.scoring.epdms import (DEFAULT_SCORER_CONFIG, TERMS, WEIGHTS, ScorerConfig, Term,
                                      aggregate_epdms, apply_human_filter,
                                      comfort_signals, normalize_progress, prepare_scene,
                                      score_human, score_states, score_trajectories, score_vocabulary)
from mosaic_ray.scoring.geometry import box_corners
from mosaic_ray.scoring.reference import reference_proposals
from mosaic_ray.scoring.simulate import EgoGeometry, initial_dynamics, simulate_poses

from scenes import (AGENT_STATIC, TL_GREEN, TL_RED, Agent, Lane, braking, build_clip, const_vel,
                    ego_frame_poses, future, kinematic_track, lateral_path, line, signal_road, track,
                    two_lane_road)


def terms_of(clip, states61_or_future, prev=None):
    s = np.asarray(states61_or_future)
    fut = future(s) if s.shape[0] == 61 else s
    return score_states(prepare_scene(clip), fut, prev)


def one_lane_road(ego_states, agents=(), **kw):
    """A single on-route lane along +x at y = 0 (edges y = +-1.75)."""
    return build_clip([Lane(line(-150, 300, 0.0))], ego_states, agents, route_center=line(-150, 300, 0.0), **kw)


# ============================================================================== ego motion
def test_straight_constant_speed_plan_is_tracked_exactly():
    start = np.array([100.0, -50.0, 0.7, 8.0])
    poses = np.zeros((2, 8, 3))
    poses[:, :, 0] = 8.0 * 0.5 * np.arange(1, 9)
    out = simulate_poses(start, poses)
    assert out.shape == (2, 41, 4)
    np.testing.assert_allclose(out[:, 0], np.broadcast_to(start, (2, 4)))
    np.testing.assert_allclose(out[..., 3], 8.0, atol=1e-9)
    np.testing.assert_allclose(out[..., 2], 0.7, atol=1e-9)
    x = 100.0 + np.cos(0.7) * 8.0 * 0.5 * np.arange(1, 9)
    np.testing.assert_allclose(out[0, POSE_STEPS, 0], x, atol=1e-9)


def test_bicycle_model_kinematics_hold():
    # NAVSIM's kinematic bicycle: heading rate = v tan(steer) / wheel base with |steer| <=
    # pi/3, so a plan that only rotates at standstill barely turns the ego, and no tracked
    # heading change exceeds what the speed allows
    g = EgoGeometry.from_size(4.5, 2.0)
    poses = np.zeros((3, 8, 3))
    poses[0, :, 2] = np.linspace(0.1, 0.8, 8)                       # turn on the spot
    poses[1, :, 0] = 5.0 * 0.5 * np.arange(1, 9)
    poses[1, :, 2] = np.linspace(0.4, 3.0, 8)                       # sharp turn at 5 m/s
    poses[2, :, 1] = np.linspace(1.0, 8.0, 8)                       # sideways
    out = simulate_poses(np.array([0.0, 0.0, 0.0, 0.0]), poses, g)
    assert np.abs(out[0, :, 2]).max() < 0.2
    dh = np.abs(np.diff(np.unwrap(out[..., 2], axis=1), axis=1))
    assert np.all(dh <= 0.1 * np.abs(out[:, :-1, 3]) * np.tan(np.pi / 3) / g.wheel_base + 1e-12)


def test_tracker_lags_an_infeasible_lateral_jump():
    # a plan that jumps 3 m sideways within 0.5 s at 10 m/s: the tracked ego gets there
    # gradually, with bounded curvature
    poses = np.zeros((1, 8, 3))
    poses[0, :, 0] = 10.0 * 0.5 * np.arange(1, 9)
    poses[0, :, 1] = 3.0
    out = simulate_poses(np.array([0.0, 0.0, 0.0, 10.0]), poses, EgoGeometry.from_size(4.5, 2.0))
    assert out[0, 5, 1] < 0.5                # at 0.5 s far from the commanded 3 m
    assert abs(out[0, -1, 1] - 3.0) < 0.5    # converges by 4 s
    yaw_rate = np.diff(np.unwrap(out[0, :, 2])) / 0.1
    assert np.abs(yaw_rate).max() < 10.0 * np.tan(np.pi / 3) / (0.5968 * 4.5)


def test_initial_dynamics_from_logged_states():
    g = EgoGeometry.from_size(4.5, 2.0)
    tr = kinematic_track(lambda t: 10.0 + 1.5 * t, lambda t: 0 * t + 0.2)
    acc, steer = initial_dynamics(tr[T0_INDEX - 2:T0_INDEX + 1], g)
    assert acc == pytest.approx(1.5, abs=1e-6)
    assert steer == pytest.approx(np.arctan(0.2 * g.wheel_base / 10.0), abs=1e-3)


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
    # the faster car drives through the ego (non-reactive): first contact is from behind
    # (its centre 3.2 m behind the rear axle: bearing 180 deg); later it is ahead of the
    # ego, but an object met without fault is ignored afterwards
    ego = const_vel(0, 0, 3.0)
    clip = two_lane_road(ego, [Agent(const_vel(-20, 0, 12.0))])
    assert terms_of(clip, ego)["NC"][0] == 1.0


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
    assert terms_of(clip, ego)["NC"][0] == 1.0


def test_nc_lateral_contact_at_fault_when_ego_spans_two_lanes():
    ego = const_vel(0, 1.75, 10.0)  # straddles the lane 0 / lane 1 boundary
    clip = two_lane_road(ego, [_side_swiper(5.5, 3.5)])
    t = terms_of(clip, ego)
    assert t["DAC"][0] == 1.0
    assert t["NC"][0] == 0.0


def test_nc_lateral_contact_at_fault_when_ego_off_road():
    ego = const_vel(0, -1.2, 10.0)  # right corners at y = -2.2: off the road (edge -1.75)
    clip = one_lane_road(ego, [_side_swiper(2.5, 0.5)])
    t = terms_of(clip, ego)
    assert t["DAC"][0] == 0.0
    assert t["NC"][0] == 0.0
    on_road = const_vel(0, 0.0, 10.0)  # same contact from the left, ego inside its lane
    assert terms_of(one_lane_road(on_road, [_side_swiper(3.7, 1.7)]), on_road)["NC"][0] == 1.0


def test_nc_object_stopped_is_judged_as_first_seen():
    # a pedestrian walks into the left side of the passing ego (lateral contact, single lane:
    # not at fault) - unless it was standing at t0: NAVSIM's ``unique_objects`` keep the
    # object as first seen, so it counts as a stopped track and the contact is at fault
    ego = const_vel(0, 0.0, 10.0)

    def ped(v_at_t0):
        def fn(t):
            y = np.where(t <= 0, 2.0 - (v_at_t0 > 0) * 1.5 * t, 2.0 - 1.5 * t)
            v = np.where(t < 0, v_at_t0, 1.5)
            v = np.where(t == 0, v_at_t0, v)
            return 5.0, y, -np.pi / 2, v
        return Agent(track(fn), size=(0.6, 0.6), type=AGENT_PEDESTRIAN)

    assert terms_of(one_lane_road(ego, [ped(1.5)]), ego)["NC"][0] == 1.0
    assert terms_of(one_lane_road(ego, [ped(0.0)]), ego)["NC"][0] == 0.0


def test_nc_contact_during_history_is_ignored():
    ego = const_vel(0, 0, 10.0)
    overlapping = two_lane_road(ego, [Agent(const_vel(3.0, 0, 0.0))])  # touches at t0
    assert prepare_scene(overlapping).agent_ignored.tolist() == [True]
    assert terms_of(overlapping, ego)["NC"][0] == 1.0
    just_ahead = two_lane_road(ego, [Agent(const_vel(6.0, 0, 0.0))])  # touches after 0.1 s
    assert prepare_scene(just_ahead).agent_ignored.tolist() == [False]
    assert terms_of(just_ahead, ego)["NC"][0] == 0.0


def test_nc_contact_earlier_in_history_but_not_at_t0_is_ignored():
    # the other car overlapped the logged ego at t = -1.0 s (it merged through it), is clear
    # at t0 and is hit again later: NAVSIM's collided_track_ids accumulate over past frames
    ego = const_vel(0, 0, 10.0)

    def fn(t):
        y = np.where(t < -0.6, 0.0, np.where(t < -0.3, 3.5 * (t + 0.6) / 0.3, 3.5))
        y = np.where(t > 1.0, 3.5 - 3.5 * np.clip((t - 1.0) / 0.5, 0, 1), y)
        return 10.0 * t + 1.0, y, 0.0, 10.0
    other = Agent(track(fn))
    scene = prepare_scene(two_lane_road(ego, [other]))
    assert scene.agent_ignored.tolist() == [True]
    assert score_states(scene, future(ego))["NC"][0] == 1.0


# ============================================================================== DAC
@pytest.mark.parametrize("y,heading,corner", [(-0.5, 0.15, 2), (-0.5, -0.15, 3), (0.5, 0.15, 0),
                                              (0.5, -0.15, 1)])
def test_dac_each_corner_counts(y, heading, corner):
    # one lane y in [-1.75, 1.75]; the box is yawed so that exactly one corner pokes out
    s = np.zeros((1, 41, 4))
    s[0, :, 0] = 10.0 * 0.1 * np.arange(41)
    s[0, :, 1] = y
    s[0, :, 2] = heading
    s[0, :, 3] = 10.0
    c = box_corners(0.0, y, heading, 4.5, 2.0)  # FL, RL, RR, FR
    out = np.abs(c[:, 1]) > 1.75
    assert out.sum() == 1 and out[corner]
    clip = one_lane_road(const_vel(0, 0, 10.0))
    assert terms_of(clip, s)["DAC"][0] == 0.0
    s[0, :, 1], s[0, :, 2] = 0.0, 0.0
    assert terms_of(clip, s)["DAC"][0] == 1.0


def test_dac_corner_off_road_fails():
    off = const_vel(0, -1.2, 10.0)  # right corners at y = -2.2, road edge at -1.75
    assert terms_of(two_lane_road(off), off)["DAC"][0] == 0.0
    on = const_vel(0, -0.7, 10.0)  # right corners at -1.7: still on the road
    assert terms_of(two_lane_road(on), on)["DAC"][0] == 1.0


# ============================================================================== DDC
@pytest.mark.parametrize("speed,expected", [(10.0, 0.0), (3.0, 0.5), (1.5, 1.0)])
def test_ddc_thresholds_in_opposite_lane(speed, expected):
    # lane 2 (y = 7) runs -x and is off-route; windows [t-10, t] hold 11 displacements:
    # 11 m (>= 6 m: 0), 3.3 m (>= 2 m: 0.5), 1.65 m (< 2 m: 1)
    ego = const_vel(0, 7.0, speed)
    t = terms_of(two_lane_road(ego), ego)
    assert t["DAC"][0] == 1.0
    assert t["DDC"][0] == expected


def test_ddc_in_own_lane_complies():
    ego = const_vel(0, 3.5, 10.0)
    assert terms_of(two_lane_road(ego), ego)["DDC"][0] == 1.0


@pytest.mark.parametrize("gap,expected", [(3.0, 0.5), (8.0, 1.0)])
def test_ddc_window_is_one_second(gap, expected):
    # two off-route pieces of 1.45 m on the ego's line; at 5 m/s (0.5 m per step, centres at
    # x = .25/.75) each holds 3 centre positions -> 1.5 m of oncoming motion each. Within one
    # window (11 steps, 5.5 m) they add up to 3 m (0.5); 8 m apart they never share one (1)
    pieces = [(-150, 10.0, True), (10.0, 11.45, False), (11.45, 10.0 + gap, True),
              (10.0 + gap, 11.45 + gap, False), (11.45 + gap, 300, True)]
    lanes = [Lane(line(a, b, 0.0, 3), on_route=r) for a, b, r in pieces]
    ego = const_vel(0.25, 0, 5.0)
    clip = build_clip(lanes, ego, route_center=line(-150, 300, 0.0))
    assert terms_of(clip, ego)["DDC"][0] == expected


def test_ddc_intersection_lanes_count_by_route_membership():
    # NAVSIM: oncoming = centre in no on-route lane or lane connector. An on-route
    # intersection lane is fine, an off-route one (a turn the route does not take) is not
    ego = const_vel(45, 0, 10.0)  # centre inside the intersection lane [50, 70] for 2 s
    for on_route, expected in ((True, 1.0), (False, 0.0)):
        lanes = [Lane(line(-150, 50, 0.0, 21)), Lane(line(50, 70, 0.0, 5), on_route=on_route, in_intersection=True),
                 Lane(line(70, 300, 0.0, 24))]
        clip = build_clip(lanes, ego, route_center=line(-150, 300, 0.0, 46))
        assert terms_of(clip, ego)["DDC"][0] == expected


# ============================================================================== TLC
def test_tlc_red_light_lane_entered_fails_green_passes():
    ego = const_vel(20, 0, 10.0)  # front bumper reaches the intersection lane (x=50) at 2.8 s
    assert terms_of(signal_road(TL_RED, ego), ego)["TLC"][0] == 0.0
    assert terms_of(signal_road(TL_GREEN, ego), ego)["TLC"][0] == 1.0


def test_tlc_stopping_before_red_passes():
    ego = braking(20, 10.0, 4.0)  # stops after 12.5 m: front at 34.75 < 50
    assert terms_of(signal_road(TL_RED, ego), ego)["TLC"][0] == 1.0


@pytest.mark.parametrize("x0,expected", [(35.55, 0.0), (34.95, 1.0)])
def test_tlc_exact_box_polygon_intersection(x0, expected):
    # a red on-route lane only 0.4 m wide at y in [0.3, 0.7]: the ego (y in [-1, 1]) stops
    # with its front edge 0.3 m past x = 50 (x0 = 35.55): no corner and no edge midpoint
    # lies in the lane, but the front edge crosses it -> the polygons intersect
    lanes = [Lane(line(-150, 50, 0.0, 21)), Lane(line(50, 70, 0.5, 5), width=0.4, in_intersection=True, tl=TL_RED),
             Lane(line(70, 300, 0.0, 24))]
    ego = braking(x0, 10.0, 4.0)  # stops 12.5 m further: front at x0 + 12.5 + 2.25
    clip = build_clip(lanes, ego, route_center=line(-150, 300, 0.0, 46))
    assert terms_of(clip, ego)["TLC"][0] == expected


def test_tlc_ignores_red_lanes_off_route():
    ego = const_vel(20, 0, 10.0)
    lanes = [Lane(line(-150, 50, 0.0, 21)), Lane(line(50, 70, 0.0, 5), in_intersection=True, tl=TL_RED, on_route=False),
             Lane(line(70, 300, 0.0, 24))]
    clip = build_clip(lanes, ego, route_center=line(-150, 300, 0.0, 46))
    assert terms_of(clip, ego)["TLC"][0] == 1.0


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


def test_ttc_ignores_object_behind_in_single_lane_but_not_in_two_lanes():
    # bearings from the ego's rear axle at t to the object at t + offset (NAVSIM); at 3 m/s
    # the projected box stays within 2.7 m, so the closing car is first met behind the
    # ego and is ignored from then on
    ego = const_vel(0, 0, 3.0)
    clip = two_lane_road(ego, [Agent(const_vel(-12, 0, 9.0))])
    assert terms_of(clip, ego)["TTC"][0] == 1.0
    # the same kind of car met while the ego spans two lanes and not behind: fails
    straddle = const_vel(0, 1.75, 10.0)
    clip2 = two_lane_road(straddle, [Agent(const_vel(-12, 3.5, 16.0))])
    assert terms_of(clip2, straddle)["TTC"][0] == 0.0


def test_ttc_skips_a_stopped_ego():
    # a wrong-way car drives into the standing ego: no TTC event while the ego stands still
    # (|speed| < 5e-3 m/s); the same ego creeping at 2 m/s fails (object ahead)
    wrong_way = Agent(const_vel(30, 0, 8.0, heading=np.pi))
    stopped = const_vel(0, 0, 0.0)
    t = terms_of(two_lane_road(stopped, [wrong_way]), stopped)
    assert t["NC"][0] == 1.0 and t["TTC"][0] == 1.0
    moving = const_vel(0, 0, 2.0)
    assert terms_of(two_lane_road(moving, [wrong_way]), moving)["TTC"][0] == 0.0


def test_ttc_intersection_rule_uses_the_rear_axle():
    # the ego (3 m/s) brakes at 6 m/s^2 and stops with its front at x = 43.0; a bus (10 m x
    # 2.5 m) crosses from the left at x = 44.75 (near side 43.5: never hit).
    # The ego box projected 0.6 s ahead at t = 0 (front 44.05) meets the bus at 0.6 s, whose
    # centre then lies 43 deg off the rear axle's heading: neither ahead (< 30) nor behind
    # (> 150). Outside an intersection (single lane, on road) that event is harmless and the
    # bus is ignored afterwards; with the rear axle in an intersection lane it fails TTC.
    ego = braking(40, 3.0, 6.0)
    bus = Agent(track(lambda t: (44.75, 7.5 - 3.0 * t, -np.pi / 2, 3.0)), size=(10.0, 2.5))
    for inter, expected in ((False, 1.0), (True, 0.0)):
        lanes = [Lane(line(-150, 30, 0.0, 19)), Lane(line(30, 70, 0.0, 9), in_intersection=inter),
                 Lane(line(70, 300, 0.0, 24))]
        clip = build_clip(lanes, ego, [bus], route_center=line(-150, 300, 0.0, 46))
        t = terms_of(clip, ego)
        assert t["NC"][0] == 1.0
        assert t["TTC"][0] == expected


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


def test_lk_streak_resets_when_back_within_half_a_metre():
    steps = np.ones(41, bool)
    steps[15] = False  # 15 off, 1 back on the line, 25 off: the longest streak is 25
    assert terms_of(two_lane_road(), _offset_states(steps))["LK"][0] == 0.0
    steps[30] = False  # 15, 14, 10 off: never 20 in a row
    assert terms_of(two_lane_road(), _offset_states(steps))["LK"][0] == 1.0
    assert terms_of(two_lane_road(), _offset_states(np.ones(41, bool), y_off=0.45))["LK"][0] == 1.0


def test_lk_streak_not_reset_nor_counted_in_intersection():
    # x = 44.5 + k: centre in the intersection lane (x in [50, 70)) for steps 6..25
    clip = signal_road(0)
    all_off = np.ones(41, bool)  # 6 steps before + 15 after the intersection are off: 21
    assert terms_of(clip, _offset_states(all_off, 0.6, x0=44.5))["LK"][0] == 0.0
    late = np.arange(41) >= 6  # only 15 counted off steps (intersection ones don't count)
    assert terms_of(clip, _offset_states(late, 0.6, x0=44.5))["LK"][0] == 1.0


def test_lk_measures_to_the_route_centre_line():
    # NAVSIM measures to the route centre-line (lane 0 here), not to the nearest lane: a
    # plan that stays centred in the neighbouring lane fails
    ego = const_vel(0, 3.5, 10.0)
    t = terms_of(two_lane_road(ego), ego)
    assert t["DDC"][0] == 1.0 and t["LK"][0] == 0.0


# ============================================================================== HC
def _violations(sig: dict) -> set:
    out = set()
    c = DEFAULT_SCORER_CONFIG
    if not ((sig["lon_accel"] > c.min_lon_accel) & (sig["lon_accel"] < c.max_lon_accel)).all():
        out.add("lon_accel")
    for k, b in (("lat_accel", c.max_abs_lat_accel), ("jerk", c.max_abs_mag_jerk), ("lon_jerk", c.max_abs_lon_jerk),
                 ("yaw_rate", c.max_abs_yaw_rate), ("yaw_accel", c.max_abs_yaw_accel)):
        if not (np.abs(sig[k]) < b).all():
            out.add(k)
    return out


HC_CASES = {  # bound -> (speed(t), yaw rate(t)) violating only that bound at scale 1
    "lon_accel": lambda f: (lambda t: 10 + 2.6 * f * (t + 2), lambda t: 0 * t),        # 2.6 > 2.40
    "lat_accel": lambda f: (lambda t: 0 * t + 10, lambda t: 0 * t + 0.5 * f),          # 5.0 > 4.89
    "yaw_rate": lambda f: (lambda t: 0 * t + 2, lambda t: 0 * t + 1.0 * f),            # 1.0 > 0.95
    "yaw_accel": lambda f: (lambda t: 0 * t + 1, lambda t: 0.5 * f * np.sin(4 * t)),  # 2.4 > 1.93
    "lon_jerk": lambda f: (lambda t: 10 + 2.0 * f * (1 - np.cos(3 * t)) / 3, lambda t: 0 * t),
    "jerk": lambda f: (lambda t: 0 * t + 10, lambda t: 0.45 * f * np.sin(2.4 * t)),
}
HC_PASS_SCALE = {"lon_accel": 0.8, "lat_accel": 0.8, "yaw_rate": 0.8, "yaw_accel": 0.7,
                 "lon_jerk": 0.45, "jerk": 0.55}


@pytest.mark.parametrize("bound", list(HC_CASES))
def test_hc_each_bound(bound):
    # a motion over history + future that breaks exactly one of the six bounds fails HC;
    # the same motion scaled down passes
    for scale, expected in ((1.0, 0.0), (HC_PASS_SCALE[bound], 1.0)):
        tr = kinematic_track(*HC_CASES[bound](scale))
        viol = _violations({k: v[0] for k, v in comfort_signals(tr[5:][None]).items()})
        assert viol == ({bound} if expected == 0.0 else set())
        assert terms_of(two_lane_road(tr), tr)["HC"][0] == expected


def test_comfort_signals_recover_known_derivatives():
    t = np.arange(56) * 0.1
    s = np.zeros((1, 56, 5))
    s[0, :, 2] = 0.3 * t ** 2  # yaw rate 0.6 t, yaw acceleration 0.6
    s[0, :, 3] = 5.0
    s[0, :, 4] = 0.5 * t       # acceleration 0.5 t, longitudinal jerk 0.5
    sig = comfort_signals(s)
    np.testing.assert_allclose(sig["yaw_rate"][0], 0.6 * t, atol=1e-7)
    np.testing.assert_allclose(sig["yaw_accel"][0], 0.6, atol=1e-7)
    # the even window (8) of the acceleration smoothing evaluates half a step late (scipy)
    np.testing.assert_allclose(sig["lon_accel"][0][4:-4], 0.5 * (t[4:-4] + 0.05), atol=1e-7)
    np.testing.assert_allclose(sig["lon_jerk"][0][12:-12], 0.5, atol=1e-7)  # edges: interp mode
    np.testing.assert_allclose(sig["lat_accel"][0][4:-4], 5.0 * 0.6 * (t[4:-4] + 0.05), atol=1e-6)


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
    assert terms_of(two_lane_road(const_vel(0, 0, 10.0)), hist)["HC"][0] == 1.0


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
    nan_prev = np.full((41, 4), np.nan)
    assert np.isnan(terms_of(clip, ego, prev=nan_prev)["EC"][0])


def test_ec_dropped_in_trajectory_score_weight_14_vs_16():
    ego = braking(0, 10.0, 8.0)  # HC = 0 makes the weights visible
    clip = two_lane_road(ego)
    poses = ego_frame_poses(ego)
    r14 = score_trajectories(clip, poses)
    assert not r14.ec_available and np.isnan(r14.terms["EC"][0])
    r16 = score_trajectories(clip, poses, prev_poses=ego_frame_poses(np.roll(ego, 5, axis=0))[0])
    assert r16.ec_available and r16.terms["EC"][0] in (0.0, 1.0)
    for r, den, names in ((r14, 14.0, ["EP", "TTC", "LK", "HC"]),
                          (r16, 16.0, ["EP", "TTC", "LK", "HC", "EC"])):
        pen = np.prod([r.terms[k][0] for k in ("NC", "DAC", "DDC", "TLC")])
        expect = pen * sum(WEIGHTS[k] * r.terms[k][0] for k in names) / den
        assert r.epdms[0] == pytest.approx(expect)
    assert r16.epdms[0] != pytest.approx(r14.epdms[0])


def test_ec_prev_poses_and_prev_states_agree():
    ego = const_vel(0, 0, 10.0)
    scene = prepare_scene(two_lane_road(ego))
    prev_poses = ego_frame_poses(braking(-5.0, 10.0, 2.0, t_start=-0.5))
    a = score_trajectories(scene, ego_frame_poses(ego), prev_poses=prev_poses)
    b = score_trajectories(scene, ego_frame_poses(ego), prev_states=scene.simulate_prev(prev_poses)[0])
    assert a.terms["EC"][0] == b.terms["EC"][0]
    with pytest.raises(ValueError):
        score_trajectories(scene, ego_frame_poses(ego), prev_states=ego[15:56], prev_poses=prev_poses)


# ============================================================================== EP
def test_normalize_progress_rules():
    # NAVSIM's pair (reference, candidate): m = max(raw*pen, raw_ref*pen_ref)
    ep = normalize_progress(np.array([10.0, 3.0, 30.0, 10.0]), np.array([1.0, 1.0, 0.0, 0.5]), 20.0, 1.0)
    np.testing.assert_allclose(ep, [0.5, 0.15, 0.0, 0.25])
    # reference penalised: each candidate normalised by its own raw * pen
    np.testing.assert_allclose(normalize_progress(np.array([10.0]), np.array([1.0]), 50.0, 0.0), [1.0])
    # normaliser <= 5 m -> EP = 1 where the penalties are non-zero, 0 where they are zero
    np.testing.assert_allclose(normalize_progress(np.array([0.0, 4.0, 4.0]), np.array([1.0, 1.0, 0.0]), 5.0, 1.0),
                               [1.0, 1.0, 0.0])
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
    assert refs.shape == (5, 41, 4)
    np.testing.assert_allclose(refs[:, 0], np.broadcast_to(clip.ego_states[T0_INDEX], (5, 4)))
    assert np.all(refs[:, :, 0] + 2.25 < 45 - 2.25)  # never reaches the stopped car
    tracked = scene.reference_states()
    assert tracked.shape == (5, 41, 5)
    assert np.all(score_states(scene, tracked)["NC"] == 1.0)


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


def test_human_ep_is_normalised_alone():
    # NAVSIM scores the human in its own call: its EP is 1 unless its penalties are 0
    ego = const_vel(0, 0, 3.0)
    terms, _ = score_human(two_lane_road(ego, [Agent(const_vel(60, 0, 20.0))]))
    assert terms["EP"] == 1.0
    crash = const_vel(0, 0, 10.0)
    terms, epdms = score_human(two_lane_road(crash, [Agent(const_vel(30, 0, 0.0))]))
    assert terms["NC"] == 0.0 and terms["EP"] == 0.0 and epdms == 0.0


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


# ============================================================================== formula / API
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
    res = score_trajectories(clip, poses, prev_poses=poses)
    assert res.states.shape == (3, 41, 4)
    for k in TERMS:
        assert res.terms[k].shape == (3,) and res.terms[k].dtype == np.float64
    pen = res.terms["NC"] * res.terms["DAC"] * res.terms["DDC"] * res.terms["TLC"]
    w = sum(WEIGHTS[k] * res.terms[k] for k in ("EP", "TTC", "LK", "HC", "EC")) / 16
    np.testing.assert_allclose(res.epdms, pen * w)
    assert res.terms_array().shape == (3, 9)


def test_score_vocabulary_is_one_call_of_all_anchors():
    ego = braking(0, 10.0, 2.0)  # the logged human stops well behind the stopped car
    clip = two_lane_road(ego, [Agent(const_vel(40, 0, 0.0))])
    anchors = np.concatenate([ego_frame_poses(const_vel(0, 0, v)) for v in (0.0, 4.0, 8.0, 12.0)])
    targets = score_vocabulary(clip, anchors)
    assert targets.shape == (4, 9) and targets.dtype == np.float64
    assert np.isnan(targets[:, Term.EC]).all()
    ref = score_trajectories(clip, anchors)
    np.testing.assert_array_equal(targets[:, :8], ref.terms_array()[:, :8])
    assert targets[0, Term.NC] == 1.0 and targets[-1, Term.NC] == 0.0


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
    with pytest.raises(ValueError):
        score_states(scene, np.full((1, 41, 4), np.nan))


# ============================================================================== ScorerConfig
def test_term_enum_is_the_one_index_of_the_terms():
    assert TERMS == tuple(t.name for t in Term) == ("NC", "DAC", "DDC", "TLC", "EP", "TTC", "LK", "HC", "EC")
    assert E.PENALTY_TERMS == ("NC", "DAC", "DDC", "TLC")
    assert E.WEIGHTED_TERMS == ("EP", "TTC", "LK", "HC", "EC")
    assert E.FILTERED_TERMS == E.DISTILL_TERMS == TERMS[:8]
    assert tuple(WEIGHTS) == E.WEIGHTED_TERMS
    ego = const_vel(0, 0, 10.0)
    res = score_trajectories(two_lane_road(ego), ego_frame_poses(ego))
    arr = res.terms_array()
    for t in Term:
        np.testing.assert_array_equal(arr[:, t], res.terms[t.name])


def test_default_config_is_navsims():
    c = DEFAULT_SCORER_CONFIG
    assert c == ScorerConfig()
    assert dict(WEIGHTS) == c.weights == {"EP": 5.0, "TTC": 5.0, "LK": 2.0, "HC": 2.0, "EC": 2.0}
    assert (c.driving_direction_horizon, c.driving_direction_compliance_threshold,
            c.driving_direction_violation_threshold) == (1.0, 2.0, 6.0)
    assert c.ddc_window_steps == 10
    assert (c.stopped_speed_threshold, c.future_collision_horizon_window) == (5e-3, 1.0)
    assert c.ttc_offsets == (0, 3, 6, 9) and c.ttc_last_step == 31
    assert (c.lane_keeping_deviation_limit, c.lk_max_steps, c.progress_distance_threshold) == (0.5, 20, 5.0)
    assert (c.ego_stopped_speed_threshold, c.object_stopped_speed_threshold) == (5e-2, 5e-2)
    assert c.behind_angle == pytest.approx(np.pi * 150 / 180) and c.ahead_angle == pytest.approx(np.pi / 6)
    assert (c.min_lon_accel, c.max_lon_accel, c.max_abs_lat_accel, c.max_abs_mag_jerk, c.max_abs_lon_jerk,
            c.max_abs_yaw_rate, c.max_abs_yaw_accel) == (-4.05, 2.40, 4.89, 8.37, 4.13, 0.95, 1.93)
    assert (c.ec_acceleration_threshold, c.ec_jerk_threshold, c.ec_yaw_rate_threshold,
            c.ec_yaw_accel_threshold) == (0.7, 0.5, 0.1, 0.1)


def test_config_is_frozen_and_validated():
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_SCORER_CONFIG.lane_keeping_deviation_limit = 1.0
    for bad in ({"ttc_weight": float("nan")}, {"ttc_offset_stride": 0}, {"progress_weight": -1.0},
                {"future_collision_horizon_window": 5.0}, {"lane_keeping_horizon_window": 0.0},
                {"max_abs_mag_jerk": "8.37"}):
        with pytest.raises(ValueError):
            ScorerConfig(**bad)


def test_config_lane_keeping_limit_and_window_change_lk():
    road = two_lane_road()
    near = _offset_states(np.ones(41, bool), y_off=0.45)   # 0.45 m off the centre-line throughout
    assert terms_of(road, near)["LK"][0] == 1.0
    tight = ScorerConfig(lane_keeping_deviation_limit=0.4)
    assert score_states(prepare_scene(road), near, config=tight)["LK"][0] == 0.0
    # a limit above the one the scene was prepared for (its route grid radius) works too
    far = _offset_states(np.ones(41, bool), y_off=0.6)
    scene = prepare_scene(road)
    assert score_states(scene, far)["LK"][0] == 0.0
    assert score_states(scene, far, config=ScorerConfig(lane_keeping_deviation_limit=0.7))["LK"][0] == 1.0
    # 15 steps off: passes the 2 s window, fails a 1 s window (10 steps)
    short = _offset_states(np.arange(41) < 15)
    assert score_states(scene, short)["LK"][0] == 1.0
    assert score_states(scene, short, config=ScorerConfig(lane_keeping_horizon_window=1.0))["LK"][0] == 0.0


def test_config_ttc_window_and_static_score_change_terms():
    # the car-ahead TTC failure is seen only by the 0.6 / 0.9 s projections: a 0.5 s window
    # (offsets 0, 3) passes it
    ego = braking(0, 10.0, 8.0, t_start=2.8)
    scene = prepare_scene(two_lane_road(ego, [Agent(const_vel(40, 0, 0.0))]))
    assert score_states(scene, future(ego))["TTC"][0] == 0.0
    cfg = ScorerConfig(future_collision_horizon_window=0.5)
    assert cfg.ttc_offsets == (0, 3) and cfg.ttc_last_step == 37
    assert score_states(scene, future(ego), config=cfg)["TTC"][0] == 1.0
    ego = const_vel(0, 0, 10.0)
    clip = two_lane_road(ego, [Agent(const_vel(30, 0, 0.0), size=(1.0, 1.0), type=AGENT_STATIC)])
    cfg = ScorerConfig(static_object_collision_score=0.25)
    assert score_states(prepare_scene(clip), future(ego), config=cfg)["NC"][0] == 0.25


def test_config_weights_change_epdms_by_the_hand_computed_amount():
    ego = const_vel(0, 0, 10.0)
    scene = prepare_scene(two_lane_road(ego, [Agent(const_vel(75, 0, 0.0))]))
    poses = np.concatenate([ego_frame_poses(const_vel(0, 0, v)) for v in (10.0, 5.0)])
    base = score_trajectories(scene, poses)
    cfg = ScorerConfig(progress_weight=3.0, ttc_weight=1.0)
    res = score_trajectories(scene, poses, config=cfg)
    for k in TERMS:   # the weights change the aggregate only
        np.testing.assert_array_equal(res.terms[k], base.terms[k])
    # candidate 1 at half speed: every term 1 but EP = its progress / the reference's
    ep = base.progress_m[1] / base.reference_progress_m
    assert 0.5 < ep < 0.9 and base.terms["EP"][1] == pytest.approx(ep)
    assert all(base.terms[k][1] == 1.0 for k in ("NC", "DAC", "DDC", "TLC", "TTC", "LK", "HC"))
    assert base.epdms[1] == pytest.approx((5 * ep + 5 + 2 + 2) / 14)
    assert res.epdms[1] == pytest.approx((3 * ep + 1 + 2 + 2) / 8)
    assert res.epdms[1] - base.epdms[1] == pytest.approx((3 * ep + 5) / 8 - (5 * ep + 9) / 14)
    np.testing.assert_array_equal(res.epdms[0], 1.0)
    t = {k: np.array([1.0]) for k in TERMS}
    t["EP"] = np.array([0.5])
    assert aggregate_epdms(t, True, cfg)[0] == pytest.approx((1.5 + 1 + 2 + 2 + 2) / 10)
    assert aggregate_epdms(t, True, ScorerConfig(two_frame_extended_comfort_weight=0.0))[0] == \
        pytest.approx((2.5 + 5 + 2 + 2) / 14)
