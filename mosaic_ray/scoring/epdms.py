"""EPDMS — the Extended Predictive Driver Model Score, vectorised over proposals.

Follows ``/work/shared/docs/EPDMS.md`` (the project's restatement of NAVSIM's
``pdm_scorer.py``, ``pdm_comfort_metrics.py`` and ``docs/metrics.md``) term by term:

    EPDMS = NC * DAC * DDC * TLC * (5 EP + 5 TTC + 2 LK + 2 HC + 2 EC) / 16

or ``/ 14`` without EC when there is no previous frame.

Entry points
------------
* :func:`prepare_scene` — per-clip precomputation (a :class:`Scene`).
* :func:`score_states` — raw terms for simulated 0.1 s states ``(N, 41, 4)``.
* :func:`score_trajectories` — planner poses -> states -> terms with the reference
  proposals and the logged human in one vectorised call, EP normalisation, human filter.
* :func:`score_human` — the logged human future alone.

Frames and footprint
--------------------
States are global ``[x, y, heading, speed]`` (m, m, rad, m/s) of the ego **box centre**
(the clip's convention), not of the rear axle as in NAVSIM. The ego footprint is the logged
vehicle's own box (``clip.ego_size``) centred on the state, not NAVSIM's Chrysler Pacifica
around the rear axle; "ego pose" in the bearing rules below means the box centre and heading.
Internally a :class:`Scene` works in a local frame (origin at the ego at t0, x along its
heading) for numerical conditioning; inputs and outputs stay global.

Documented deviations from NAVSIM
---------------------------------
* Tracking: see :mod:`mosaic_ray.scoring.simulate` (spline, no LQR/bicycle model).
* Map: the drivable area is the union of the clip's lane polygons (CommonRoad lanelets,
  including intersection lanes and the ingest's straight extensions); there are no separate
  intersection, car-park or walkway polygons. A lane polygon is tested as the union of short
  pieces of at most 4 boundary segments (exact for non-self-overlapping lanes, and fast).
  "Intersection" means an intersection lane (``lane_in_intersection``).
* Red lights are lanes, not objects: TLC tests the ego box against on-route lanes whose light
  is ``TL_RED`` at that step; no red-light object enters NC/TTC (EPDMS.md's "skip red-light
  areas" is therefore moot).
* "Touches" (TLC) is sampled: the 4 corners, the 4 edge midpoints and the centre of the ego
  box are tested for containment; a lane poking between sample points (< 1 m gap on the
  front and rear edges, < half the box length on the sides) is missed.
* LK measures the distance to the nearest **on-route lane centre-line** (any lane with
  ``lane_on_route``) rather than to the single route centre-line, because the logged route
  can change lanes and NAVSIM's centre-line follows the lane the ego is in.
* HC: NAVSIM reads acceleration from the tracker's state; the clip states carry only speed,
  so derivatives come from Savitzky–Golay filters on speed and heading, see
  :func:`comfort_signals`.
* "Already in contact" (NC, TTC; EPDMS.md "t <= 0") is tested on the t0 frame: agent boxes
  touching the logged ego box at t0 are ignored for the whole horizon.
* EP normaliser: per candidate, ``max(raw_k * pen_k, raw_ref * pen_ref)`` with the chosen
  reference (EPDMS.md; NAVSIM's two-proposal ``pdm_score``), so a candidate's score does not
  depend on the other candidates of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

import numpy as np
from scipy.signal import savgol_filter

from ..data.clip import (AGENT_STATIC, FUT_SLICE, N_PRE, T0_INDEX, TL_RED, Clip)
from .geometry import (box_corners, boxes_intersect, points_in_polygons_pairs,
                       points_to_segments_distance, project_to_polyline, relative_bearing,
                       segment_intersects_box, wrap_angle)
from .reference import REFERENCE_FRACTIONS, reference_proposals
from .simulate import simulate_poses

__all__ = [
    "TERMS", "WEIGHTS", "PENALTY_TERMS", "FILTERED_TERMS", "Scene", "EPDMSResult",
    "prepare_scene", "score_states", "score_trajectories", "score_human",
    "comfort_signals", "normalize_progress", "apply_human_filter", "aggregate_epdms",
]

TERMS = ("NC", "DAC", "DDC", "TLC", "EP", "TTC", "LK", "HC", "EC")
WEIGHTS = {"EP": 5, "TTC": 5, "LK": 2, "HC": 2, "EC": 2}
PENALTY_TERMS = ("NC", "DAC", "DDC", "TLC")
FILTERED_TERMS = ("NC", "DAC", "DDC", "TLC", "EP", "TTC", "LK", "HC")

N_STEPS = 41
DT = 0.1
# NC (nuPlan get_collision_type / is_track_stopped)
EGO_STOPPED_SPEED = 5e-2  # m/s
OBJECT_STOPPED_SPEED = 5e-2  # m/s
BEHIND_ANGLE = np.deg2rad(150.0)
AHEAD_ANGLE = np.deg2rad(30.0)
STATIC_OBJECT_SCORE = 0.5
# DDC
DDC_WINDOW_STEPS = 10  # 1.0 s: window [t - 10, t] as NAVSIM
DDC_COMPLY = 2.0  # m
DDC_VIOLATE = 6.0  # m
# TTC
TTC_LAST_STEP = 31
TTC_OFFSETS = (0, 3, 6, 9)  # steps (0, 0.3, 0.6, 0.9 s)
TTC_STOPPED_SPEED = 5e-3  # m/s
# LK
LK_MAX_DEVIATION = 0.5  # m
LK_MAX_STEPS = 20  # 2.0 s
# EP
PROGRESS_THRESHOLD = 5.0  # m
# HC bounds (nuPlan / NAVSIM pdm_comfort_metrics)
MIN_LON_ACCEL, MAX_LON_ACCEL = -4.05, 2.40  # m/s^2
MAX_ABS_LAT_ACCEL = 4.89  # m/s^2
MAX_ABS_JERK = 8.37  # m/s^3
MAX_ABS_LON_JERK = 4.13  # m/s^3
MAX_ABS_YAW_RATE = 0.95  # rad/s
MAX_ABS_YAW_ACCEL = 1.93  # rad/s^2
# EC thresholds (RMS of differences)
EC_ACCEL = 0.7  # m/s^2
EC_JERK = 0.5  # m/s^3
EC_YAW_RATE = 0.1  # rad/s
EC_YAW_ACCEL = 0.1  # rad/s^2
EC_SHIFT = 5  # steps between frames (0.5 s)

LANE_PIECE_SEGMENTS = 4  # boundary segments per lane piece (point-in-lane speed-up)


# ====================================================================================== scene
@dataclass
class Scene:
    """Per-clip precomputation for :func:`score_states` (local frame, see module docstring).

    Attributes (``M`` lanes, ``A`` agents, ``C`` lane pieces, all local-frame float64 unless
    stated):

    * ``clip``: the source :class:`~mosaic_ray.data.clip.Clip`.
    * ``origin`` (3,): global ``[x, y, heading]`` of the local frame (ego at t0).
    * ``ego_length``, ``ego_width``: m.
    * ``start_state`` (4,) global and ``start_local`` (4,) local ego state at t0.
    * ``history`` (15, 4) global logged states t0-1.5 s .. t0-0.1 s (``ego_states[5:20]``).
    * ``human_states`` (41, 4) global logged future (``ego_states[20:61]``).
    * ``human_prev`` (41, 4) global logged states from t0-0.5 s (``ego_states[15:56]``), the
      human's "previous frame" for EC.
    * ``lane_polygons`` (M, Vmax, 2) padded lane rings, ``lane_n_vertices`` (M,) int.
    * ``piece_polygons`` (C, 10, 2), ``piece_n_vertices`` (C,), ``piece_lane`` (C,) int: lanes
      cut into pieces of at most 4 boundary segments.
    * ``lane_on_route`` (M,) bool, ``lane_in_intersection`` (M,) bool.
    * ``red_lanes`` (41, M) bool: on-route lane whose light is red at future step t.
    * ``route_lane_segments`` (S, 2, 2): centre-line segments of on-route lanes (LK).
    * ``route_center`` (P, 2): the route centre-line (EP, reference); ``route_arc`` (P,)
      its cumulative arc length (m).
    * ``agent_boxes`` (41, A, 5) ``[x, y, heading, length, width]``; ``agent_valid`` (41, A)
      bool; ``agent_speed`` (41, A) m/s (0 where invalid); ``agent_static`` (A,) bool
      (``AGENT_STATIC``); ``contact_t0`` (A,) bool: agent box touches the ego box at t0.
    """

    clip: Clip
    origin: np.ndarray
    ego_length: float
    ego_width: float
    start_state: np.ndarray
    start_local: np.ndarray
    history: np.ndarray
    human_states: np.ndarray
    human_prev: np.ndarray
    lane_polygons: np.ndarray
    lane_n_vertices: np.ndarray
    piece_polygons: np.ndarray
    piece_n_vertices: np.ndarray
    piece_lane: np.ndarray
    lane_on_route: np.ndarray
    lane_in_intersection: np.ndarray
    red_lanes: np.ndarray
    route_lane_segments: np.ndarray
    route_center: np.ndarray
    route_arc: np.ndarray
    agent_boxes: np.ndarray
    agent_valid: np.ndarray
    agent_speed: np.ndarray
    agent_static: np.ndarray
    contact_t0: np.ndarray
    _lane_center_local: np.ndarray = field(repr=False, default=None)
    _lane_offsets: np.ndarray = field(repr=False, default=None)
    _cache: dict = field(repr=False, default_factory=dict)

    @property
    def num_lanes(self) -> int:
        return int(self.lane_on_route.shape[0])

    @property
    def num_agents(self) -> int:
        return int(self.agent_boxes.shape[1])

    # ---- frames
    def to_local_xy(self, xy: np.ndarray) -> np.ndarray:
        """Global (..., 2) -> local (..., 2)."""
        x0, y0, h0 = self.origin
        c, s = np.cos(h0), np.sin(h0)
        dx = xy[..., 0] - x0
        dy = xy[..., 1] - y0
        return np.stack([c * dx + s * dy, -s * dx + c * dy], axis=-1)

    def to_local_states(self, states: np.ndarray) -> np.ndarray:
        """Global (..., 4) ``[x, y, heading, speed]`` -> local."""
        out = np.empty(states.shape, dtype=np.float64)
        out[..., :2] = self.to_local_xy(states[..., :2])
        out[..., 2] = wrap_angle(states[..., 2] - self.origin[2])
        out[..., 3] = states[..., 3]
        return out

    def to_global_states(self, states: np.ndarray) -> np.ndarray:
        """Local (..., 4) -> global."""
        x0, y0, h0 = self.origin
        c, s = np.cos(h0), np.sin(h0)
        out = np.empty(states.shape, dtype=np.float64)
        out[..., 0] = x0 + c * states[..., 0] - s * states[..., 1]
        out[..., 1] = y0 + s * states[..., 0] + c * states[..., 1]
        out[..., 2] = wrap_angle(states[..., 2] + h0)
        out[..., 3] = states[..., 3]
        return out

    def reference_states(self) -> np.ndarray:
        """(R, 41, 4) global reference proposals (:func:`~mosaic_ray.scoring.reference.
        reference_proposals` with the default fractions), computed once per scene."""
        if "reference" not in self._cache:
            refs = reference_proposals(self, REFERENCE_FRACTIONS)
            refs.setflags(write=False)
            self._cache["reference"] = refs
        return self._cache["reference"]

    def lane_center_local(self, i: int) -> np.ndarray:
        """(n, 2) local centre-line of lane ``i``."""
        a, b = int(self._lane_offsets[i]), int(self._lane_offsets[i + 1])
        return self._lane_center_local[a:b]

    # ---- map queries
    def lanes_containing(self, points: np.ndarray) -> np.ndarray:
        """Local points (..., 2) -> (..., M) bool: point inside lane polygon m."""
        pts = np.asarray(points, dtype=np.float64)
        lead = pts.shape[:-1]
        flat = pts.reshape(-1, 2)
        out = np.zeros((flat.shape[0], self.num_lanes), dtype=bool)
        if self.piece_polygons.shape[0]:
            pi, ci = points_in_polygons_pairs(flat, self.piece_polygons, self.piece_n_vertices)
            out[pi, self.piece_lane[ci]] = True
        return out.reshape(lead + (self.num_lanes,))

    def lanes_containing_sparse(self, points: np.ndarray,
                                lane_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`lanes_containing` but only for the lanes (optionally restricted to
        ``lane_mask`` (M,) bool) that contain at least one of the points: returns
        ``(lane_idx (K,) int64, inside (..., K) bool)``."""
        pts = np.asarray(points, dtype=np.float64)
        lead = pts.shape[:-1]
        flat = pts.reshape(-1, 2)
        sel = np.arange(self.piece_polygons.shape[0])
        if lane_mask is not None:
            sel = sel[np.asarray(lane_mask, dtype=bool)[self.piece_lane]]
        if sel.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(lead + (0,), dtype=bool)
        pi, ci = points_in_polygons_pairs(flat, self.piece_polygons[sel], self.piece_n_vertices[sel])
        lanes = self.piece_lane[sel[ci]]
        lane_idx, col = np.unique(lanes, return_inverse=True)
        out = np.zeros((flat.shape[0], lane_idx.size), dtype=bool)
        out[pi, col] = True
        return lane_idx, out.reshape(lead + (lane_idx.size,))


def prepare_scene(clip: Clip) -> Scene:
    """Precompute everything :func:`score_states` needs for one clip.

    Args:
        clip: a :class:`~mosaic_ray.data.clip.Clip` (global frame, 61 steps, t0 at index 20).

    Returns:
        A :class:`Scene` in the clip's local frame.

    Raises:
        ValueError: if the clip's arrays have inconsistent shapes (via ``clip.validate()``).
    """
    clip.validate()
    es = np.asarray(clip.ego_states, dtype=np.float64)
    start = es[T0_INDEX].copy()
    origin = start[:3].copy()
    L, W = float(clip.ego_size[0]), float(clip.ego_size[1])

    # a scratch scene for the frame helpers
    def _loc(xy: np.ndarray) -> np.ndarray:
        c, s = np.cos(origin[2]), np.sin(origin[2])
        dx, dy = xy[..., 0] - origin[0], xy[..., 1] - origin[1]
        return np.stack([c * dx + s * dy, -s * dx + c * dy], axis=-1)

    # ---- lanes
    M = clip.num_lanes
    off = np.asarray(clip.lane_offsets, dtype=np.int64)
    left = _loc(np.asarray(clip.lane_left, dtype=np.float64).reshape(-1, 2))
    right = _loc(np.asarray(clip.lane_right, dtype=np.float64).reshape(-1, 2))
    center = _loc(np.asarray(clip.lane_center, dtype=np.float64).reshape(-1, 2))
    counts = np.diff(off) if M else np.zeros(0, dtype=np.int64)
    vmax = int(2 * counts.max()) if M else 0
    lane_polys = np.zeros((M, vmax, 2))
    lane_nv = (2 * counts).astype(np.int64)
    pieces, piece_nv, piece_lane = [], [], []
    segs = []
    K = LANE_PIECE_SEGMENTS
    for i in range(M):
        a, b = int(off[i]), int(off[i + 1])
        lane_polys[i, : 2 * (b - a)] = np.concatenate([left[a:b], right[a:b][::-1]])
        n = b - a
        for s0 in range(0, n - 1, K):
            e0 = min(s0 + K, n - 1)
            ring = np.concatenate([left[a + s0:a + e0 + 1], right[a + s0:a + e0 + 1][::-1]])
            buf = np.zeros((2 * (K + 1), 2))
            buf[: ring.shape[0]] = ring
            pieces.append(buf)
            piece_nv.append(ring.shape[0])
            piece_lane.append(i)
        if clip.lane_on_route[i]:
            segs.append(np.stack([center[a:b - 1], center[a + 1:b]], axis=1))
    piece_polys = np.stack(pieces) if pieces else np.zeros((0, 2 * (K + 1), 2))
    route_center = _loc(np.asarray(clip.route_center, dtype=np.float64))
    if segs:
        route_lane_segments = np.concatenate(segs, axis=0)
    else:  # no on-route lane: fall back to the route centre-line
        route_lane_segments = np.stack([route_center[:-1], route_center[1:]], axis=1)

    on_route = np.asarray(clip.lane_on_route, dtype=bool).copy()
    in_inter = np.asarray(clip.lane_in_intersection, dtype=bool).copy()
    tl = np.asarray(clip.lane_tl_state)[:, FUT_SLICE]  # (M, 41)
    red = ((tl == TL_RED) & on_route[:, None]).T.copy()  # (41, M)

    # ---- agents
    A = clip.num_agents
    ast = np.asarray(clip.agent_states, dtype=np.float64)[:, FUT_SLICE]  # (A, 41, 4)
    aval = np.asarray(clip.agent_valid, dtype=bool)[:, FUT_SLICE] & np.isfinite(ast).all(-1)
    boxes = np.zeros((N_STEPS, A, 5))
    if A:
        xy = _loc(np.where(aval[..., None], ast[..., :2], 0.0))
        far = 1e7 + 10.0 * np.arange(A)[:, None]  # invalid agents: parked far away
        boxes[..., 0] = np.where(aval, xy[..., 0], far).T
        boxes[..., 1] = np.where(aval, xy[..., 1], far).T
        boxes[..., 2] = np.where(aval, wrap_angle(ast[..., 2] - origin[2]), 0.0).T
        boxes[..., 3] = np.asarray(clip.agent_size, dtype=np.float64)[:, 0][None, :]
        boxes[..., 4] = np.asarray(clip.agent_size, dtype=np.float64)[:, 1][None, :]
    speed = np.where(aval, np.nan_to_num(ast[..., 3]), 0.0).T.copy()
    static = np.asarray(clip.agent_types) == AGENT_STATIC
    ego0 = np.array([0.0, 0.0, 0.0, L, W])
    contact0 = boxes_intersect(ego0[None, :], boxes[0]) & aval[:, 0] if A else np.zeros(0, bool)

    start_local = np.array([0.0, 0.0, 0.0, start[3]])
    return Scene(
        clip=clip, origin=origin, ego_length=L, ego_width=W,
        start_state=start, start_local=start_local,
        history=es[N_PRE:T0_INDEX].copy(), human_states=es[FUT_SLICE].copy(),
        human_prev=es[T0_INDEX - 5:T0_INDEX - 5 + N_STEPS].copy(),
        lane_polygons=lane_polys, lane_n_vertices=lane_nv,
        piece_polygons=piece_polys, piece_n_vertices=np.asarray(piece_nv, dtype=np.int64),
        piece_lane=np.asarray(piece_lane, dtype=np.int64),
        lane_on_route=on_route, lane_in_intersection=in_inter, red_lanes=red,
        route_lane_segments=route_lane_segments, route_center=route_center,
        route_arc=np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(route_center, axis=0).T))]),
        agent_boxes=boxes, agent_valid=aval.T.copy(), agent_speed=speed,
        agent_static=static, contact_t0=np.asarray(contact0, dtype=bool),
        _lane_center_local=center, _lane_offsets=off,
    )


# ==================================================================================== comfort
@lru_cache(maxsize=64)
def _savgol_matrix(T: int, window: int, order: int, deriv: int) -> np.ndarray:
    """(T, T) linear operator equal to ``savgol_filter(..., mode="interp")`` on length-T rows."""
    w = min(window, T)
    m = savgol_filter(np.eye(T), window_length=w, polyorder=min(order, w - 1), deriv=deriv,
                      delta=DT, axis=0, mode="interp")
    m.setflags(write=False)
    return m


def _savgol(y: np.ndarray, window: int, order: int, deriv: int) -> np.ndarray:
    return y @ _savgol_matrix(int(y.shape[-1]), window, order, deriv).T


def comfort_signals(states: np.ndarray) -> dict[str, np.ndarray]:
    """Kinematic signals of 0.1 s state sequences (the scheme HC and EC share).

    Savitzky–Golay derivatives (``scipy.signal.savgol_filter``, ``mode="interp"``) with
    EPDMS.md's windows:

    * ``lon_accel`` = d speed / dt, order 2, window 8 (an even window: values refer to half a
      step later, 0.05 s — negligible against the bounds);
    * ``yaw_rate`` = d heading / dt on the unwrapped heading, order 2, window 5;
    * ``yaw_accel`` = d^2 heading / dt^2, order 3, window 5;
    * ``lat_accel`` = speed * yaw_rate;
    * ``accel`` = hypot(lon_accel, lat_accel) (magnitude);
    * ``lon_jerk`` = d lon_accel / dt and ``jerk`` = d accel / dt (derivative of the
      magnitude, as NAVSIM), order 2, window 15.

    Args:
        states: ``(N, T, 4)`` float ``[x, y, heading, speed]``, ``T >= 5``.

    Returns:
        dict of ``(N, T)`` float64 arrays (m/s^2, m/s^3, rad/s, rad/s^2).
    """
    v = states[..., 3]
    yaw = np.unwrap(states[..., 2], axis=-1)
    lon_a = _savgol(v, 8, 2, 1)
    yaw_rate = _savgol(yaw, 5, 2, 1)
    yaw_acc = _savgol(yaw, 5, 3, 2)
    lat_a = v * yaw_rate
    acc = np.hypot(lon_a, lat_a)
    return {
        "lon_accel": lon_a, "lat_accel": lat_a, "accel": acc,
        "lon_jerk": _savgol(lon_a, 15, 2, 1), "jerk": _savgol(acc, 15, 2, 1),
        "yaw_rate": yaw_rate, "yaw_accel": yaw_acc,
    }


def _history_comfort(scene: Scene, states: np.ndarray) -> np.ndarray:
    N = states.shape[0]
    seq = np.concatenate([np.broadcast_to(scene.history, (N,) + scene.history.shape), states], axis=1)
    sig = comfort_signals(seq)
    ok = ((sig["lon_accel"] > MIN_LON_ACCEL) & (sig["lon_accel"] < MAX_LON_ACCEL)).all(-1)
    ok &= (np.abs(sig["lat_accel"]) < MAX_ABS_LAT_ACCEL).all(-1)
    ok &= (np.abs(sig["jerk"]) < MAX_ABS_JERK).all(-1)
    ok &= (np.abs(sig["lon_jerk"]) < MAX_ABS_LON_JERK).all(-1)
    ok &= (np.abs(sig["yaw_rate"]) < MAX_ABS_YAW_RATE).all(-1)
    ok &= (np.abs(sig["yaw_accel"]) < MAX_ABS_YAW_ACCEL).all(-1)
    return ok.astype(np.float64)


def _extended_comfort(states: np.ndarray, prev: np.ndarray) -> np.ndarray:
    N = states.shape[0]
    out = np.full(N, np.nan)
    rows = np.isfinite(prev).all(axis=(1, 2))
    if not rows.any():
        return out
    cur = comfort_signals(states[rows, :-EC_SHIFT])
    prv = comfort_signals(prev[rows, EC_SHIFT:])

    def rms(k: str) -> np.ndarray:
        return np.sqrt(np.mean((cur[k] - prv[k]) ** 2, axis=-1))

    ok = (rms("accel") <= EC_ACCEL) & (rms("jerk") <= EC_JERK)
    ok &= (rms("yaw_rate") <= EC_YAW_RATE) & (rms("yaw_accel") <= EC_YAW_ACCEL)
    out[rows] = ok.astype(np.float64)
    return out


# ==================================================================================== scoring
def _check_states(states: np.ndarray, name: str = "states") -> np.ndarray:
    s = np.asarray(states, dtype=np.float64)
    if s.ndim != 3 or s.shape[1:] != (N_STEPS, 4):
        raise ValueError(f"{name}: expected (N, {N_STEPS}, 4), got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: non-finite value")
    return s


def _pairwise_boxes(ego: np.ndarray, agents: np.ndarray, mask: np.ndarray,
                    ego_r: float, agent_r: np.ndarray) -> np.ndarray:
    """ego (..., 5) broadcast against agents (..., A, 5): intersect (..., A) where mask."""
    dx = ego[..., None, 0] - agents[..., 0]
    dy = ego[..., None, 1] - agents[..., 1]
    rr = ego_r + agent_r
    cand = mask & (dx * dx + dy * dy <= rr * rr)
    out = np.zeros(cand.shape, dtype=bool)
    idx = np.nonzero(cand)
    if idx[0].size:
        e = np.broadcast_to(ego[..., None, :], cand.shape + (5,))[idx]
        a = np.broadcast_to(agents, cand.shape + (5,))[idx]
        out[idx] = boxes_intersect(e, a)
    return out


def score_states(scene: Scene, states: np.ndarray,
                 prev_states: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Raw EPDMS terms of simulated ego states (no EP normalisation, no human filter).

    Follows EPDMS.md ("Multiplicative penalties", "Weighted terms") and NAVSIM
    ``pdm_scorer.py`` (``_calculate_ego_area``, ``_calculate_no_at_fault_collision``,
    ``_calculate_drivable_area_compliance``, ``_calculate_driving_direction_compliance``,
    ``_calculate_progress``, ``_calculate_ttc``) with nuPlan's ``get_collision_type``
    (``no_ego_at_fault_collisions``) and ``pdm_comfort_metrics.py``.

    * **NC** — ego box vs every valid agent box at each step (objects touching the ego at t0
      ignored). Each object is judged once, at its first contact, in nuPlan's order: ego
      speed <= 0.05 m/s -> not at fault; object speed <= 0.05 m/s -> at fault; object centre
      behind (bearing > 150 deg) -> not at fault; front bumper (front-left -> front-right
      edge) touches -> at fault; else lateral: at fault only if the ego is in several lanes
      or off the drivable area at that step. At fault: 0 (vehicle, pedestrian, cyclist) or
      0.5 (``AGENT_STATIC``); NC = min (1 if none).
    * **DAC** — 0 if any ego corner is outside every lane polygon at any step.
    * **DDC** — oncoming step: centre in no on-route lane and in no intersection lane; the
      centre displacement of oncoming steps summed over windows [t-10, t] (NAVSIM's
      ``driving_direction_horizon`` = 1.0 s, which its slice makes 11 displacements, i.e.
      1.1 s of motion); max < 2 m -> 1, < 6 m -> 0.5, else 0.
    * **TLC** — 0 if any of the 9 ego sample points lies in an on-route lane that is red at
      that step.
    * **EP** — *raw* progress (m): arc length along ``route_center`` from the projection of
      the centre at t0 to that at 4 s, floored at 0.
    * **TTC** — for t = 0..31 and offsets 0, 3, 6, 9 steps, the ego box moved along its heading
      at constant speed vs agent boxes at t + offset; skipped when ego speed < 5e-3 m/s, for
      objects touching the ego at t0 and for objects the ego's own box has touched at a step
      <= t. An intersection fails (0) if the object is ahead (bearing < 30 deg) or the ego is
      in several lanes / off-road / with its centre in an intersection lane and the object
      is not behind (bearing <= 150 deg). As in NAVSIM, an object met once without failing
      is ignored afterwards (its "temp collided" list; events ordered by t, then offset).
    * **LK** — 0 if the centre is > 0.5 m from every on-route lane centre-line for 20
      consecutive steps; steps with the centre in an intersection lane neither count nor
      reset the streak.
    * **HC** — the 15 logged history states (``ego_states[5:20]``) + the 41 states; every
      bound of :func:`comfort_signals` must hold at every step (EPDMS.md table).
    * **EC** — with ``prev_states``: current[:-5] vs previous[5:], RMS of differences of
      accel magnitude <= 0.7 m/s^2, jerk magnitude <= 0.5 m/s^3, yaw rate <= 0.1 rad/s, yaw
      acceleration <= 0.1 rad/s^2 -> 1 else 0 (signals computed on each 36-step overlap
      separately). ``prev_states is None`` (or a NaN row) -> NaN.

    Args:
        scene: from :func:`prepare_scene`.
        states: ``(N, 41, 4)`` float global ``[x, y, heading, speed]`` (m, m, rad, m/s) at
            0.1 s from t0.
        prev_states: None, ``(41, 4)`` or ``(N, 41, 4)`` global states of the previous frame
            (0.5 s earlier); rows containing NaN get EC = NaN.

    Returns:
        dict ``term -> (N,) float64`` for all nine :data:`TERMS` (EP in metres).

    Raises:
        ValueError: on bad shapes or non-finite states.
    """
    S = _check_states(states)
    N = S.shape[0]
    if N == 0:
        return {k: np.zeros(0) for k in TERMS}
    loc = scene.to_local_states(S)
    x, y, h, v = loc[..., 0], loc[..., 1], loc[..., 2], loc[..., 3]
    L, W = scene.ego_length, scene.ego_width

    # ---- ego areas (NAVSIM _calculate_ego_area)
    corners = box_corners(x, y, h, L, W)                          # (N, T, 4, 2)
    centre = loc[..., :2]
    pts = np.concatenate([corners, centre[:, :, None]], axis=2)  # (N, T, 5, 2)
    lane_idx, inside = scene.lanes_containing_sparse(pts)         # (N, T, 5, K) lanes hit
    corner_in = inside[:, :, :4]
    lanes_touched = corner_in.any(axis=2)                         # (N, T, M)
    multi = (lanes_touched.sum(-1) > 1) & ~corner_in.all(axis=2).any(-1)
    offroad = ~corner_in.any(-1).all(-1)                          # (N, T)
    centre_in = inside[:, :, 4]
    in_inter = centre_in[..., scene.lane_in_intersection[lane_idx]].any(-1)
    on_route = centre_in[..., scene.lane_on_route[lane_idx]].any(-1)
    oncoming = ~on_route & ~in_inter

    out: dict[str, np.ndarray] = {}

    # ---- NC
    ego_boxes = np.stack([x, y, h, np.full_like(x, L), np.full_like(x, W)], axis=-1)  # (N,T,5)
    A = scene.num_agents
    ego_r = 0.5 * np.hypot(L, W)
    # broad phase over agents: keep those that come within reach of any ego (or TTC) box
    a_boxes, a_valid, a_speed = scene.agent_boxes, scene.agent_valid, scene.agent_speed
    a_static, a_c0 = scene.agent_static, scene.contact_t0
    if A:
        reach = ego_r + 0.5 * np.hypot(a_boxes[0, :, 3], a_boxes[0, :, 4]) \
            + float(v.max()) * DT * max(TTC_OFFSETS) + 1.0                # (A,)
        bx0, bx1 = x.min() - reach, x.max() + reach
        by0, by1 = y.min() - reach, y.max() + reach
        near = (a_valid & (a_boxes[..., 0] >= bx0) & (a_boxes[..., 0] <= bx1)
                & (a_boxes[..., 1] >= by0) & (a_boxes[..., 1] <= by1)).any(axis=0)
        keep = np.nonzero(near)[0]
        a_boxes, a_valid, a_speed = a_boxes[:, keep], a_valid[:, keep], a_speed[:, keep]
        a_static, a_c0 = a_static[keep], a_c0[keep]
        A = keep.size
    agent_r = 0.5 * np.hypot(a_boxes[..., 3], a_boxes[..., 4])  # (T, A)
    nc = np.ones(N)
    if A:
        mask = (a_valid & ~a_c0[None, :])[None]     # (1, T, A)
        contact = _pairwise_boxes(ego_boxes, a_boxes[None], mask, ego_r, agent_r[None])
        has = contact.any(axis=1)                                       # (N, A)
        first = contact.argmax(axis=1)
        n_i, a_i = np.nonzero(has)
        if n_i.size:
            t_i = first[n_i, a_i]
            ob = a_boxes[t_i, a_i]                                        # (K, 5)
            ego_stopped = v[n_i, t_i] <= EGO_STOPPED_SPEED
            obj_stopped = a_speed[t_i, a_i] <= OBJECT_STOPPED_SPEED
            behind = relative_bearing(centre[n_i, t_i], h[n_i, t_i], ob[:, :2]) > BEHIND_ANGLE
            front = segment_intersects_box(corners[n_i, t_i, 0], corners[n_i, t_i, 3], ob)
            lateral_fault = multi[n_i, t_i] | offroad[n_i, t_i]
            at_fault = ~ego_stopped & (obj_stopped | (~behind & (front | lateral_fault)))
            val = np.where(a_static[a_i], STATIC_OBJECT_SCORE, 0.0)
            np.minimum.at(nc, n_i[at_fault], val[at_fault])
        collided = np.logical_or.accumulate(contact, axis=1)            # (N, T, A)
    out["NC"] = nc

    # ---- DAC
    out["DAC"] = np.where(offroad.any(axis=1), 0.0, 1.0)

    # ---- DDC
    disp = np.zeros((N, N_STEPS))
    disp[:, 1:] = np.hypot(np.diff(x, axis=1), np.diff(y, axis=1))
    disp[~oncoming] = 0.0
    cs = np.concatenate([np.zeros((N, 1)), np.cumsum(disp, axis=1)], axis=1)  # cs[t+1] = sum_0..t
    t_idx = np.arange(N_STEPS)
    lo = np.maximum(0, t_idx - DDC_WINDOW_STEPS)
    window = cs[:, t_idx + 1] - cs[:, lo]
    worst = window.max(axis=1)
    out["DDC"] = np.where(worst < DDC_COMPLY, 1.0, np.where(worst < DDC_VIOLATE, 0.5, 0.0))

    # ---- TLC
    red_any = scene.red_lanes.any(axis=0)                               # (M,)
    tl_fail = np.zeros(N, dtype=bool)
    if red_any.any():
        # 9 sample points: corners, centre (already tested) and edge midpoints (red lanes only)
        tl_fail |= (inside.any(axis=2) & scene.red_lanes[:, lane_idx][None]).any(axis=(1, 2))
        mids = 0.5 * (corners + np.roll(corners, -1, axis=2))           # left, rear, right, front
        r_idx, r_in = scene.lanes_containing_sparse(mids, red_any)        # (N, T, 4, Kr)
        tl_fail |= (r_in.any(axis=2) & scene.red_lanes[:, r_idx][None]).any(axis=(1, 2))
    out["TLC"] = np.where(tl_fail, 0.0, 1.0)

    # ---- EP (raw)
    arc, _, _ = project_to_polyline(centre[:, [0, -1]], scene.route_center)
    out["EP"] = np.maximum(arc[:, 1] - arc[:, 0], 0.0)

    # ---- TTC
    ttc = np.ones(N)
    if A:
        T1 = TTC_LAST_STEP + 1
        offs = np.asarray(TTC_OFFSETS)
        K = offs.size
        tt = np.arange(T1)[:, None] + offs[None, :]                     # (T1, K)
        dtk = (offs * DT)[None, None, :]
        proj = np.empty((N, T1, K, 5))
        proj[..., 0] = x[:, :T1, None] + v[:, :T1, None] * np.cos(h[:, :T1, None]) * dtk
        proj[..., 1] = y[:, :T1, None] + v[:, :T1, None] * np.sin(h[:, :T1, None]) * dtk
        proj[..., 2] = h[:, :T1, None]
        proj[..., 3] = L
        proj[..., 4] = W
        ag = a_boxes[tt]                                                # (T1, K, A, 5)
        mask = (a_valid[tt] & ~a_c0)[None]                              # (1, T1, K, A)
        mask = mask & ~collided[:, :T1, None, :] & (v[:, :T1] >= TTC_STOPPED_SPEED)[:, :, None, None]
        hit = _pairwise_boxes(proj, ag[None], mask, ego_r, agent_r[tt][None])  # (N, T1, K, A)
        n_i, t_i, k_i, a_i = np.nonzero(hit)
        if n_i.size:
            obj_xy = a_boxes[t_i + offs[k_i], a_i, :2]
            bear = relative_bearing(centre[n_i, t_i], h[n_i, t_i], obj_xy)
            risky = multi[n_i, t_i] | offroad[n_i, t_i] | in_inter[n_i, t_i]
            fail = (bear < AHEAD_ANGLE) | (risky & (bear <= BEHIND_ANGLE))
            order = t_i * K + k_i
            big = T1 * K + 1
            first_ok = np.full((N, A), big)
            np.minimum.at(first_ok, (n_i[~fail], a_i[~fail]), order[~fail])
            counted = fail & (order < first_ok[n_i, a_i])
            ttc[np.unique(n_i[counted])] = 0.0
    out["TTC"] = ttc

    # ---- LK
    dist = points_to_segments_distance(centre, scene.route_lane_segments)   # (N, T)
    off = (dist > LK_MAX_DEVIATION) & ~in_inter
    reset = (dist <= LK_MAX_DEVIATION) & ~in_inter
    c = np.cumsum(off, axis=1)
    last = np.maximum.accumulate(np.where(reset, c, 0), axis=1)
    streak = c - last
    out["LK"] = np.where(streak.max(axis=1) >= LK_MAX_STEPS, 0.0, 1.0)

    # ---- HC
    out["HC"] = _history_comfort(scene, S)

    # ---- EC
    if prev_states is None:
        out["EC"] = np.full(N, np.nan)
    else:
        p = np.asarray(prev_states, dtype=np.float64)
        if p.shape == (N_STEPS, 4):
            p = np.broadcast_to(p, (N, N_STEPS, 4))
        elif p.shape != (N, N_STEPS, 4):
            raise ValueError(f"prev_states: expected ({N_STEPS}, 4) or ({N}, {N_STEPS}, 4), got {p.shape}")
        out["EC"] = _extended_comfort(S, p)
    return {k: out[k] for k in TERMS}


# ================================================================================ aggregation
def normalize_progress(raw: np.ndarray, penalty: np.ndarray, raw_ref: float,
                       penalty_ref: float) -> np.ndarray:
    """EP from raw progress (EPDMS.md "EP"): per candidate ``norm = max(raw * pen,
    raw_ref * pen_ref)``; ``EP = clip(raw / norm, 0, 1)`` if ``norm > 5 m`` else 1.

    Args:
        raw, penalty: ``(N,)`` raw progress (m) and NC·DAC·DDC·TLC of the candidates.
        raw_ref, penalty_ref: the same for the chosen reference proposal.

    Returns:
        ``(N,)`` float64 EP in [0, 1].
    """
    raw = np.asarray(raw, dtype=np.float64)
    norm = np.maximum(raw * np.asarray(penalty, dtype=np.float64), float(raw_ref) * float(penalty_ref))
    big = norm > PROGRESS_THRESHOLD
    ratio = raw / np.where(big, norm, 1.0)
    return np.where(big, np.clip(ratio, 0.0, 1.0), 1.0)


def apply_human_filter(terms: Mapping[str, np.ndarray],
                       human_terms: Mapping[str, float]) -> dict[str, np.ndarray]:
    """NAVSIM's human filter: for NC, DAC, DDC, TLC, EP, TTC, LK, HC, where the human scores
    exactly 0 the candidates get 1. EC is never filtered.

    Args:
        terms: ``term -> (N,)`` candidate terms; human_terms: ``term -> float``.

    Returns:
        a new dict with the same keys and ``(N,)`` float64 arrays.
    """
    out = {}
    for k, arr in terms.items():
        a = np.asarray(arr, dtype=np.float64)
        if k in FILTERED_TERMS and float(human_terms[k]) == 0.0:
            a = np.ones_like(a)
        out[k] = a.copy()
    return out


def aggregate_epdms(terms: Mapping[str, np.ndarray], ec_available: bool) -> np.ndarray:
    """``NC·DAC·DDC·TLC·(5EP + 5TTC + 2LK + 2HC + 2EC)/16``, or ``/14`` without EC.

    Args:
        terms: ``term -> (N,)`` (or scalars) for the nine :data:`TERMS`.
        ec_available: whether EC (and its weight) enters.

    Returns:
        ``(N,)`` float64 (or a 0-d array for scalar input).
    """
    pen = np.ones_like(np.asarray(terms["NC"], dtype=np.float64))
    for k in PENALTY_TERMS:
        pen = pen * np.asarray(terms[k], dtype=np.float64)
    names = ["EP", "TTC", "LK", "HC"] + (["EC"] if ec_available else [])
    num = sum(WEIGHTS[k] * np.asarray(terms[k], dtype=np.float64) for k in names)
    den = float(sum(WEIGHTS[k] for k in names))
    return pen * num / den


@dataclass
class EPDMSResult:
    """Scores of N candidate trajectories on one clip.

    Attributes:
        terms: ``term -> (N,) float64``, the nine terms after EP normalisation and the human
            filter (EC NaN when not available).
        raw_terms: ``term -> (N,) float64`` before the human filter (EP normalised; raw
            progress in metres is ``progress_m``).
        epdms: ``(N,) float64`` EPDMS per candidate.
        human_terms: ``term -> float`` of the logged human future (EP normalised).
        human_epdms: float.
        ec_available: whether EC entered (a previous frame was given).
        states: ``(N, 41, 4) float64`` simulated global states.
        progress_m: ``(N,)`` raw progress (m).
        ep_normalizer: ``(N,)`` EP normaliser (m).
        reference_states: ``(R, 41, 4)`` the reference proposals; ``reference_index``: the one
            chosen; ``reference_progress_m`` and ``reference_penalty`` of the chosen one.
    """

    terms: dict[str, np.ndarray]
    raw_terms: dict[str, np.ndarray]
    epdms: np.ndarray
    human_terms: dict[str, float]
    human_epdms: float
    ec_available: bool
    states: np.ndarray
    progress_m: np.ndarray
    ep_normalizer: np.ndarray
    reference_states: np.ndarray
    reference_index: int
    reference_progress_m: float
    reference_penalty: float


def _penalty(t: Mapping[str, np.ndarray]) -> np.ndarray:
    return t["NC"] * t["DAC"] * t["DDC"] * t["TLC"]


def score_trajectories(clip_or_scene: Clip | Scene, poses: np.ndarray,
                       prev_states: np.ndarray | None = None,
                       human_filter: bool = True) -> EPDMSResult:
    """Score planner poses on a clip: simulate, score with reference and human, aggregate.

    The N candidates, the R reference proposals (:func:`~mosaic_ray.scoring.reference.
    reference_proposals`) and the logged human future (``clip.ego_states[20:61]``, scored as
    states, no tracking) go through ONE :func:`score_states` call. The reference kept is
    the proposal with the best ``pen * (5 EP + 5 TTC + 2 LK + 2 HC) / 14`` (EP normalised
    among the proposals), as PDM-Closed selects with its own scorer. EP per candidate then
    follows :func:`normalize_progress`; the human filter (:func:`apply_human_filter`) and
    :func:`aggregate_epdms` give the final score. The human's EC compares its logged future
    with its logged states 0.5 s earlier (``ego_states[15:56]``).

    Args:
        clip_or_scene: a Clip or a Scene from :func:`prepare_scene`.
        poses: ``(N, 8, 3)`` ego-frame poses (m, m, rad) at 0.5..4.0 s (N may be 0).
        prev_states: None or ``(41, 4)`` / ``(N, 41, 4)`` global states simulated from the
            previous frame (0.5 s earlier). None drops EC (NaN, weight 14).
        human_filter: apply NAVSIM's human filter.

    Returns:
        :class:`EPDMSResult`.

    Raises:
        ValueError: on bad shapes.
    """
    scene = clip_or_scene if isinstance(clip_or_scene, Scene) else prepare_scene(clip_or_scene)
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (8, 3):
        raise ValueError(f"poses: expected (N, 8, 3), got {poses.shape}")
    N = poses.shape[0]
    cand = simulate_poses(scene.start_state, poses)
    refs = scene.reference_states()
    R = refs.shape[0]
    allst = np.concatenate([cand, refs, scene.human_states[None]], axis=0)

    ec_available = prev_states is not None
    prev_all = None
    if ec_available:
        p = np.asarray(prev_states, dtype=np.float64)
        if p.shape == (N_STEPS, 4):
            p = np.broadcast_to(p, (N, N_STEPS, 4))
        elif p.shape != (N, N_STEPS, 4):
            raise ValueError(f"prev_states: expected ({N_STEPS}, 4) or ({N}, {N_STEPS}, 4), got {p.shape}")
        prev_all = np.concatenate([p, np.full((R, N_STEPS, 4), np.nan), scene.human_prev[None]], axis=0)

    raw = score_states(scene, allst, prev_all)
    pen = _penalty(raw)
    prog = raw["EP"]

    # reference choice (PDM-Closed: best by its own score, EP normalised among proposals)
    r_sl = slice(N, N + R)
    r_pen, r_prog = pen[r_sl], prog[r_sl]
    r_norm = (r_prog * r_pen).max() if R else 0.0
    r_ep = np.clip(r_prog / r_norm, 0.0, 1.0) if r_norm > PROGRESS_THRESHOLD else np.ones(R)
    r_score = r_pen * (5 * r_ep + 5 * raw["TTC"][r_sl] + 2 * raw["LK"][r_sl] + 2 * raw["HC"][r_sl]) / 14.0
    best = int(np.argmax(r_score)) if R else 0
    ref_prog = float(r_prog[best]) if R else 0.0
    ref_pen = float(r_pen[best]) if R else 0.0

    ep = normalize_progress(prog, pen, ref_prog, ref_pen)
    norm = np.maximum(prog * pen, ref_prog * ref_pen)

    def pick(sl: slice) -> dict[str, np.ndarray]:
        d = {k: raw[k][sl].copy() for k in TERMS}
        d["EP"] = ep[sl].copy()
        if not ec_available:
            d["EC"] = np.full(d["EC"].shape, np.nan)
        return d

    cand_terms = pick(slice(0, N))
    human = {k: float(v[0]) for k, v in pick(slice(N + R, N + R + 1)).items()}
    if human_filter:
        terms = apply_human_filter(cand_terms, human)
    else:
        terms = {k: v.copy() for k, v in cand_terms.items()}
    epdms = aggregate_epdms(terms, ec_available)
    human_epdms = float(aggregate_epdms({k: np.array([v]) for k, v in human.items()}, ec_available)[0])
    return EPDMSResult(
        terms=terms, raw_terms=cand_terms, epdms=np.asarray(epdms, dtype=np.float64),
        human_terms=human, human_epdms=human_epdms, ec_available=ec_available,
        states=cand, progress_m=prog[:N].copy(), ep_normalizer=norm[:N].copy(),
        reference_states=np.array(refs), reference_index=best, reference_progress_m=ref_prog,
        reference_penalty=ref_pen,
    )


def score_human(clip_or_scene: Clip | Scene, with_ec: bool | None = None) -> tuple[dict[str, float], float]:
    """EPDMS terms and score of the logged human future (no filter applies to the human).

    Args:
        clip_or_scene: a Clip or Scene.
        with_ec: include EC (human's logged future vs its logged states 0.5 s earlier, which
            agree by construction, so EC = 1). None: ``clip.has_prev_frame``.

    Returns:
        ``(terms, epdms)``: ``term -> float`` (EC NaN without EC) and the human EPDMS.
    """
    scene = clip_or_scene if isinstance(clip_or_scene, Scene) else prepare_scene(clip_or_scene)
    if with_ec is None:
        with_ec = bool(scene.clip.has_prev_frame)
    res = score_trajectories(scene, np.zeros((0, 8, 3)),
                             prev_states=scene.human_prev if with_ec else None)
    return res.human_terms, res.human_epdms
