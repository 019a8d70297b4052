"""Property tests: the vectorised EPDMS scorer equals the per-step shapely reference.

Random scenes come from tests/scenes.py (``random_scene``: curved multi-lane roads, an
optional signalised intersection lane, vehicles / static objects / pedestrians near the
ego path) and are drawn from a hypothesis-chosen seed, so shrinking never produces
degenerate geometry (points exactly on lane edges) that neither implementation defines.
The reference (:mod:`mosaic_ray.scoring.reference_impl`) loops over proposals and steps
with shapely and runs NAVSIM's LQR per proposal with its ``pinv`` fits.
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, Point, Polygon

from mosaic_ray.data.clip import T0_INDEX
from mosaic_ray.scoring.epdms import TERMS, ScorerConfig, prepare_scene, score_states, score_trajectories
from mosaic_ray.scoring.geometry import (PolygonGrid, SegmentGrid, box_corners, boxes_intersect,
                                         boxes_intersect_ring, near_polyline, points_in_polygons,
                                         project_to_polyline, relative_bearing, segment_intersects_box,
                                         sweep_pairs)
from mosaic_ray.scoring.reference_impl import RefScene, ref_score_states, ref_score_trajectories, ref_track
from mosaic_ray.scoring.simulate import EgoGeometry, interpolate_poses, track

from scenes import random_poses, random_scene

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


def _same(a, b, tol=1e-9):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), atol=tol, rtol=0)


# ============================================================================ scorer vs reference
@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SEEDS)
def test_score_trajectories_equals_reference(seed):
    rng = np.random.default_rng(seed)
    clip = random_scene(rng)
    poses = random_poses(rng, 4, float(clip.ego_states[T0_INDEX, 3]))
    prev = random_poses(rng, 4, float(clip.ego_states[T0_INDEX - 5, 3])) if clip.has_prev_frame else None
    vec = score_trajectories(prepare_scene(clip), poses, prev_poses=prev)
    ref = ref_score_trajectories(clip, poses, prev_poses=prev)
    np.testing.assert_allclose(vec.states, ref["states"][..., :4], atol=1e-8)
    assert vec.reference_index == ref["reference_index"]
    for k in TERMS:
        _same(vec.terms[k], ref["terms"][k])
        assert vec.human_terms[k] == pytest.approx(ref["human_terms"][k], abs=1e-9, nan_ok=True)
    _same(vec.epdms, ref["epdms"])


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SEEDS)
def test_score_states_equals_reference_on_raw_states(seed):
    # states given directly (4 columns: acceleration from the speed), not tracked: jerky
    # random motion, lane changes, stops; the previous frame is a perturbed copy
    rng = np.random.default_rng(seed)
    clip = random_scene(rng)
    N = 4
    x0, y0, h0, v0 = clip.ego_states[T0_INDEX]
    t = np.arange(41) * 0.1
    states = np.zeros((N, 41, 4))
    for n in range(N):
        a = rng.uniform(-5, 3) + rng.normal(0, 0.5, 41).cumsum() * 0.1
        v = np.maximum(v0 + np.concatenate([[0.0], np.cumsum(a[:-1] * 0.1)]), 0.0)
        w = rng.normal(0, 0.15) + rng.normal(0, 0.05, 41).cumsum() * 0.1
        h = h0 + np.concatenate([[0.0], np.cumsum(w[:-1] * 0.1)])
        states[n, :, 0] = x0 + np.concatenate([[0.0], np.cumsum(v[:-1] * np.cos(h[:-1]) * 0.1)])
        states[n, :, 1] = y0 + np.concatenate([[0.0], np.cumsum(v[:-1] * np.sin(h[:-1]) * 0.1)])
        states[n, :, 2] = h
        states[n, :, 3] = v
    prev = states + rng.normal(0, 0.05, states.shape) * (t[None, :, None] > 0)
    prev[0] = np.nan  # a row without a previous frame
    vec = score_states(prepare_scene(clip), states, prev)
    ref = ref_score_states(RefScene.from_clip(clip), states, prev)
    for k in TERMS:
        _same(vec[k], ref[k])


# a config that moves every threshold and weight off NAVSIM's defaults
_ODD_CONFIG = ScorerConfig(
    progress_weight=3.0, ttc_weight=4.0, lane_keeping_weight=1.0, history_comfort_weight=3.0,
    two_frame_extended_comfort_weight=1.5, ego_stopped_speed_threshold=0.5, object_stopped_speed_threshold=0.8,
    agent_behind_tolerance_deg=120.0, agent_ahead_tolerance_deg=45.0, static_object_collision_score=0.3,
    driving_direction_horizon=0.6, driving_direction_compliance_threshold=1.0,
    driving_direction_violation_threshold=3.0, stopped_speed_threshold=0.2, future_collision_horizon_window=1.6,
    ttc_offset_stride=4, progress_distance_threshold=8.0, lane_keeping_deviation_limit=0.8,
    lane_keeping_horizon_window=1.2, min_lon_accel=-3.0, max_lon_accel=2.0, max_abs_lat_accel=3.0,
    max_abs_mag_jerk=6.0, max_abs_lon_jerk=3.0, max_abs_yaw_rate=0.6, max_abs_yaw_accel=1.5,
    ec_acceleration_threshold=0.4, ec_jerk_threshold=0.8, ec_yaw_rate_threshold=0.05, ec_yaw_accel_threshold=0.2)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SEEDS)
def test_score_trajectories_equals_reference_under_a_non_default_config(seed):
    # both implementations read the same ScorerConfig; a scene prepared with the default
    # config scores with another one (route grid rebuilt for the wider LK limit)
    rng = np.random.default_rng(seed)
    clip = random_scene(rng)
    poses = random_poses(rng, 4, float(clip.ego_states[T0_INDEX, 3]))
    prev = random_poses(rng, 4, float(clip.ego_states[T0_INDEX - 5, 3])) if clip.has_prev_frame else None
    vec = score_trajectories(prepare_scene(clip), poses, prev_poses=prev, config=_ODD_CONFIG)
    ref = ref_score_trajectories(clip, poses, prev_poses=prev, config=_ODD_CONFIG)
    assert vec.reference_index == ref["reference_index"]
    for k in TERMS:
        _same(vec.terms[k], ref["terms"][k])
        assert vec.human_terms[k] == pytest.approx(ref["human_terms"][k], abs=1e-9, nan_ok=True)
    _same(vec.epdms, ref["epdms"])


def test_random_scenes_exercise_every_term():
    # the property tests are only meaningful if the random scenes make every term fail
    seen = {k: set() for k in TERMS}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        clip = random_scene(rng)
        poses = random_poses(rng, 6, float(clip.ego_states[T0_INDEX, 3]))
        prev = random_poses(rng, 6, float(clip.ego_states[T0_INDEX - 5, 3]))
        res = score_trajectories(prepare_scene(clip), poses, prev_poses=prev)
        for k in TERMS:
            seen[k] |= set(np.round(res.raw_terms[k], 3).tolist())
    for k in ("NC", "DAC", "DDC", "TLC", "TTC", "LK", "HC", "EC"):
        assert 0.0 in seen[k] and 1.0 in seen[k], (k, seen[k])
    assert 0.5 in seen["DDC"]
    assert len(seen["EP"]) > 20


# ============================================================================ tracker
@settings(max_examples=25, deadline=None)
@given(SEEDS)
def test_tracker_equals_navsim_per_proposal_formulation(seed):
    rng = np.random.default_rng(seed)
    N = 6
    g = EgoGeometry.from_size(rng.uniform(3.5, 6.0), 2.0)
    start = np.column_stack([rng.uniform(-100, 100, N), rng.uniform(-100, 100, N), rng.uniform(-np.pi, np.pi, N)])
    v0 = rng.uniform(0, 20, N)
    v0[0] = rng.uniform(0, 0.3)  # the stopping controller
    poses = np.zeros((N, 8, 3))
    for i in range(N):
        v = np.clip(v0[i] + np.cumsum(rng.normal(0, 2.0, 8)) * 0.5, -0.5, 30)
        v[:] = 0.0 if i == 0 else v
        h = start[i, 2] + rng.normal(0, 0.2) * np.arange(1, 9) * 0.5
        x = start[i, 0] + np.cumsum(v * 0.5 * np.cos(h))
        y = start[i, 1] + np.cumsum(v * 0.5 * np.sin(h))
        poses[i] = np.stack([x, y, h], -1)
    ref = interpolate_poses(start, poses)
    init = np.column_stack([start, v0, rng.normal(0, 1, N), rng.normal(0, 0.05, N)])
    out = track(ref, init, g)
    for i in range(N):
        r = ref_track(ref[i], init[i], g.wheel_base)
        d = np.abs(r - out[i])
        d[:, 2] = np.abs((d[:, 2] + np.pi) % (2 * np.pi) - np.pi)
        assert d.max() < 1e-8


# ============================================================================ geometry
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
    assert boxes_intersect(a, b).tolist() == expected
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


def _random_rings(rng, n):
    rings = []
    for _ in range(n):
        k = int(rng.integers(3, 14))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = rng.uniform(1.0, 12.0, k)
        c = rng.uniform(-15, 15, 2)
        rings.append(np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1))
    return rings


@settings(max_examples=40, deadline=None)
@given(SEEDS, st.sampled_from([0.37, 1.0, 2.5]))
def test_polygon_grid_matches_shapely(seed, cell):
    rng = np.random.default_rng(seed)
    rings = _random_rings(rng, int(rng.integers(1, 70)))  # > 64 rings: several mask words
    pts = rng.uniform(-35, 35, (400, 2))
    grid = PolygonGrid(rings, cell=cell)
    masks = grid.query(pts)
    points = shapely.points(pts)  # shapely's vectorised predicates: the same GEOS calls per point
    for m, r in enumerate(rings):
        poly = Polygon(r)
        bit = ((masks[:, m // 64] >> np.uint64(m % 64)) & np.uint64(1)).astype(bool)
        expected = (shapely.contains(poly, points) if poly.is_valid
                    else points_in_polygons(pts, r[None])[:, 0].astype(bool))
        off_edge = shapely.distance(poly.exterior, points) >= 1e-7
        np.testing.assert_array_equal(bit[off_edge], expected[off_edge])


@settings(max_examples=40, deadline=None)
@given(SEEDS, st.sampled_from([0.37, 1.0, 2.5]))
def test_cropped_polygon_grid_equals_the_whole_grid_inside_its_extent(seed, cell):
    # the crop keeps only the edges that reach its box, and counts the crossings of the
    # edges left of it into its rows' parity: the same membership for every point inside
    rng = np.random.default_rng(seed)
    rings = _random_rings(rng, int(rng.integers(1, 70)))
    lo = rng.uniform(-30, 20, 2)
    ext = (lo[0], lo[1], lo[0] + rng.uniform(0.5, 30), lo[1] + rng.uniform(0.5, 30))
    pts = rng.uniform(ext[:2], ext[2:], (400, 2))
    whole = PolygonGrid(rings, cell=cell).query(pts)
    crop = PolygonGrid(rings, cell=cell, extent=ext)
    np.testing.assert_array_equal(crop.query(pts), whole)
    with pytest.raises(ValueError, match="outside"):
        crop.query(np.array([[ext[2] + 5 * cell + 1.0, ext[3]]]))


@settings(max_examples=40, deadline=None)
@given(SEEDS, st.floats(0.1, 3.0))
def test_near_polyline_equals_the_segment_grid(seed, radius):
    rng = np.random.default_rng(seed)
    line = np.cumsum(rng.normal(0, 4, (int(rng.integers(2, 30)), 2)), axis=0)
    pts = rng.uniform(line.min(0) - 5, line.max(0) + 5, (300, 2))
    grid = SegmentGrid(line[:-1], line[1:], cell=float(rng.uniform(0.3, 2.0)), radius=radius)
    np.testing.assert_array_equal(near_polyline(pts, line, radius), grid.near(pts))
    assert not near_polyline(pts, line[:1], radius).any()


@settings(max_examples=40, deadline=None)
@given(SEEDS, st.floats(0.1, 3.0))
def test_segment_grid_near_matches_shapely(seed, radius):
    rng = np.random.default_rng(seed)
    line = np.cumsum(rng.normal(0, 4, (int(rng.integers(2, 30)), 2)), axis=0)
    grid = SegmentGrid(line[:-1], line[1:], cell=float(rng.uniform(0.3, 2.0)), radius=radius)
    pts = rng.uniform(line.min(0) - 5, line.max(0) + 5, (300, 2))
    near = grid.near(pts)
    ls = LineString(line)
    for p, n in zip(pts, near):
        d = ls.distance(Point(p))
        if abs(d - radius) > 1e-9:
            assert n == (d <= radius)
    with pytest.raises(ValueError):
        grid.near(pts, radius + 1.0)


@settings(max_examples=40, deadline=None)
@given(SEEDS)
def test_sweep_pairs_finds_every_overlapping_circle(seed):
    rng = np.random.default_rng(seed)
    G, N, A = int(rng.integers(1, 5)), int(rng.integers(1, 30)), int(rng.integers(1, 12))
    ego = rng.uniform(-20, 20, (G, N, 2))
    obj = rng.uniform(-20, 20, (G, A, 2))
    r = rng.uniform(0.2, 4.0, A)
    r[rng.random(A) < 0.2] *= 3.0  # a few long vehicles (swept separately)
    ok = rng.random((G, A)) < 0.8
    ego_ok = rng.random((G, N)) < 0.9
    d = np.linalg.norm(ego[:, :, None] - obj[:, None], axis=-1)
    for mask, dense_limit in ((None, 0), (ego_ok, 0), (None, 10**9), (ego_ok, 10**9)):  # bucketed, dense
        g, n, a = sweep_pairs(ego, 2.5, obj, r, ok, mask, dense_limit=dense_limit)
        got = list(zip(g.tolist(), n.tolist(), a.tolist()))
        hit = (d <= 2.5 + r[None, None]) & ok[:, None, :]
        if mask is not None:
            hit &= mask[:, :, None]
        assert len(got) == len(set(got))
        assert set(got) == {tuple(int(v) for v in w) for w in zip(*np.nonzero(hit))}


@settings(max_examples=60, deadline=None)
@given(SEEDS)
def test_boxes_intersect_ring_matches_shapely(seed):
    rng = np.random.default_rng(seed)
    ring = _random_rings(rng, 1)[0] * 0.5
    boxes = np.column_stack([rng.uniform(-15, 15, 40), rng.uniform(-15, 15, 40), rng.uniform(-np.pi, np.pi, 40),
                             rng.uniform(1, 6, 40), rng.uniform(0.5, 3, 40)])
    got = boxes_intersect_ring(boxes, ring)
    poly = Polygon(ring)
    assume(poly.is_valid)
    for b, gv in zip(boxes, got):
        bp = _poly(b)
        if bp.exterior.distance(poly.exterior) < 1e-7:
            continue
        assert gv == bp.intersects(poly)


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
