"""EPDMS — the Extended Predictive Driver Model Score, vectorised over proposals.

Follows ``/work/shared/docs/EPDMS.md`` and NAVSIM's code term by term
(``navsim/planning/simulation/planner/pdm_planner/scoring/pdm_scorer.py``,
``pdm_scorer_utils.py``, ``pdm_comfort_metrics.py``, ``scene_aggregator.py``,
``navsim/evaluate/pdm_score.py``; nuPlan ``collision_utils`` / ``idm/utils.py``):

    EPDMS = NC * DAC * DDC * TLC * (5 EP + 5 TTC + 2 LK + 2 HC + 2 EC) / 16

or ``/ 14`` without EC when there is no previous frame.

Entry points
------------
* :func:`prepare_scene` — per-clip precomputation (a :class:`Scene`).
* :func:`score_states` — raw terms for simulated 0.1 s states ``(N, 41, 4|5)``;
  :func:`score_states_many` — the same for the rows of several scenes in one pass.
* :func:`score_trajectories` — planner poses -> LQR-tracked states -> terms, together with
  the reference proposals and the logged human in one vectorised call; EP normalisation,
  human filter, aggregation.
* :func:`score_many` — one planned trajectory on each of many scenes (the score step):
  tracking, reference proposals and terms of the whole batch in one pass each.
* :func:`score_vocabulary` — the nine terms of every vocabulary anchor ``(K, 9)`` (the
  rule-distillation targets of Hydra-MDP).
* :func:`score_human` — the logged human future alone.

Configuration
-------------
Every threshold and weight is a field of :class:`~mosaic_ray.scoring.config.ScorerConfig`
(defaults: NAVSIM's ``PDMScorerConfig`` and ``pdm_comfort_metrics.py`` values, see
:mod:`mosaic_ray.scoring.config`). The entry points take it as ``config=`` (None: the
defaults) and pass it down: :func:`score_states` -> one function per term
(``_no_at_fault_collision``, ``_drivable_area_compliance``, ``_driving_direction_compliance``,
``_traffic_light_compliance``, ``_progress``, ``_time_to_collision``, ``_lane_keeping``,
``_history_comfort``, ``_extended_comfort``, NAVSIM's ``_calculate_*``), and
:func:`score_trajectories` -> the reference choice, :func:`normalize_progress` and
:func:`aggregate_epdms`. The terms are indexed by :class:`~mosaic_ray.scoring.config.Term`
(``TERMS``, ``PENALTY_TERMS``, ``WEIGHTED_TERMS``, ``FILTERED_TERMS``, ``DISTILL_TERMS`` are
derived from it); ``WEIGHTS`` is the default config's read-only weight mapping.

Speed: one call scores all proposals of a clip, and :func:`score_many` all clips of a batch
(what does not depend on one clip's map or agents runs once over the rows of every clip;
:class:`_Batch` holds the row and agent offsets). Map membership uses a grid index that is
exact (:class:`~mosaic_ray.scoring.geometry.PolygonGrid`), cropped to the area the call's
ego boxes cover (built at the first query of a scene, :meth:`Scene.lane_masks`);
lane-keeping tests the ego centres against every route segment; the agent tests take a
circle broad phase (every pair for a few proposals, a bucketed sweep for many,
:func:`~mosaic_ray.scoring.geometry.sweep_pairs`) before the separating-axis test.
The per-step shapely implementation of the same terms is
:mod:`mosaic_ray.scoring.reference_impl` (property tests check equality term by term).

Frames and footprint
--------------------
States are global ``[x, y, heading, speed]`` (m, m, rad, m/s) of the ego **box centre**
(the clip convention), optionally with a 5th column, the longitudinal acceleration (m/s^2);
NAVSIM's states refer to the rear axle. The rear axle is placed ``EgoGeometry.rear_offset``
behind the centre (Pacifica proportions, :mod:`mosaic_ray.scoring.simulate`) and used where
NAVSIM uses it: the bearing rules of NC and TTC and TTC's intersection test. The ego
footprint is the logged vehicle's own box (``clip.ego_size``), not the Pacifica.
Internally a :class:`Scene` works in a local frame (origin at the ego at t0, x along its
heading) for numerical conditioning; inputs and outputs stay global.

Where EPDMS.md's restatement and NAVSIM's code differ, the code is followed
-------------------------------------------------------------------------
* DDC: a step is oncoming when the centre lies in no on-route lane *or lane connector*;
  on-route intersection lanes count as on route, off-route ones (a turn the route does not
  take) do not (EPDMS.md excludes all intersections).
* LK: the distance is to the route centre-line (``route_center``; an earlier version of
  this scorer used the nearest on-route lane centre-line).
* TTC: the ignore list starts from the history contacts only; objects the ego box itself
  touched are not skipped (NAVSIM's ``temp_collided_track_ids``).
* EP: the normaliser pairs the candidate with the reference; the candidate's numerator is
  ``raw * penalties`` and, below 5 m, EP = 0 where the penalties are 0.
* HC: the longitudinal acceleration is the state's (smoothed, window 8) and the jerk is the
  derivative (window 15) of the smoothed acceleration; EC's yaw acceleration uses order 2.
* Human filter: the human future is tracked from its 8 poses like any proposal.

Documented deviations from NAVSIM
---------------------------------
* Tracking: see :mod:`mosaic_ray.scoring.simulate` (NAVSIM's LQR and bicycle model; the
  clip's vehicle length with Pacifica proportions; initial acceleration/steering estimated
  from the logged states).
* Map: the drivable area is the union of the clip's lane polygons (CommonRoad lanelets,
  including intersection lanes and the ingest's straight extensions); there are no separate
  roadblock, intersection, car-park or walkway polygons. "Intersection" (LK, TTC) means an
  intersection lane (``lane_in_intersection``); nuPlan uses the intersection polygon.
  Lane membership is the even-odd rule on each lane ring, evaluated exactly.
* Red lights are lanes, not objects: TLC tests the ego box (exact polygon intersection)
  against on-route lanes whose light is ``TL_RED`` at that step (NAVSIM: the polygons of
  red on-route lane connectors); NC and TTC never see red lights.
* "Already in contact" (NC, TTC): agents whose box touches the logged ego box at any step of
  the 1.5 s history (t in [-1.5, 0] s) are ignored for the whole horizon, the way nuPlan's
  closed-loop ``PDMObservation`` accumulates ``collided_track_ids`` over past frames.
* NC "object stopped" follows nuPlan's ``is_track_stopped`` applied to NAVSIM's
  ``unique_objects`` (the object as first seen in the scoring window): static objects always,
  other agents when their speed at their first valid step from t0 on is <= 0.05 m/s.
* HC/EC signals (:func:`comfort_signals`): NAVSIM reads the accelerations from the state
  (bicycle model) and smooths them; here the longitudinal acceleration is the state's 5th
  column where given (the tracker's acceleration) and the backward difference of the speed
  otherwise (identical for tracked states), and the lateral acceleration is ``v * yaw rate``
  (NAVSIM's rear-axle state has lateral acceleration 0); the acceleration magnitude (jerk,
  EC) is ``hypot(lon, lat)``. HC prepends the 15 logged history states t0-1.5 .. t0-0.1 s
  (NAVSIM's history sampling drops t0-0.1 s, leaving a 0.2 s gap; not reproduced).
* Human filter: the human future is tracked and scored like a proposal. Its EP is normalised
  on its own (0 only when its penalties are 0, as in NAVSIM's separate human call); its HC
  includes the history (NAVSIM passes no history for the human, so its HC is always 1 there
  and the HC filter never acts; EPDMS.md's rule is kept instead, which forgives a logged
  history that is itself uncomfortable).
* EP normaliser: NAVSIM's two-proposal ``_aggregate_scores`` per candidate: with
  ``m = max(raw * pen, raw_ref * pen_ref)``, ``EP = raw * pen / m`` if ``m > 5 m`` else
  ``1`` (``0`` where ``pen == 0``), so a candidate's score does not depend on the other
  candidates of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from ..data.clip import (AGENT_STATIC, FUT_SLICE, N_PRE, POSE_STEPS, T0_INDEX, TL_RED, Clip)
from .geometry import (PolygonGrid, box_corners, boxes_intersect, boxes_intersect_ring,
                       lane_bits, masks_test, near_polyline, project_to_polyline, relative_bearing,
                       segment_intersects_box, sweep_pairs, wrap_angle)
from .config import (DEFAULT_SCORER_CONFIG, DISTILL_TERMS, DT, FILTERED_TERMS, N_STEPS, PENALTY_TERMS, TERMS,
                     WEIGHTED_TERMS, ScorerConfig, Term)
from .reference import REFERENCE_FRACTIONS, reference_proposals, reference_proposals_many
from .simulate import (EgoGeometry, _centre_to_rear, _tracked_to_centre, initial_dynamics, interpolate_poses,
                       poses_to_global, simulate_poses, track, track_states)

__all__ = [
    "Term", "TERMS", "WEIGHTS", "PENALTY_TERMS", "WEIGHTED_TERMS", "FILTERED_TERMS", "DISTILL_TERMS",
    "ScorerConfig", "DEFAULT_SCORER_CONFIG", "Scene", "EPDMSResult",
    "prepare_scene", "score_states", "score_states_many", "score_trajectories", "score_many", "score_vocabulary",
    "score_human", "warm_up",
    "comfort_signals", "normalize_progress", "apply_human_filter", "aggregate_epdms",
]


#: ``term -> weight`` of the default config (read-only; a non-default weighting is a
#: :class:`ScorerConfig` passed as ``config=``)
WEIGHTS: Mapping[str, float] = MappingProxyType(DEFAULT_SCORER_CONFIG.weights)

# structure, not thresholds (the thresholds and weights are ScorerConfig's)
N_HISTORY = 15  # logged states prepended for HC (t0-1.5 .. t0-0.1 s)
EC_SHIFT = 5  # steps between frames (0.5 s): EC compares current[:-5] with previous[5:]
GRID_CELL = 1.0  # m, cell of the lane grid
LANE_CROP_MARGIN = 2.0  # m, a cropped lane grid's margin around the points it was built for
FAR = 1e7  # m, where invalid agents are parked


# ====================================================================================== scene
def _to_local_xy(xy: np.ndarray, x0, y0, h0) -> np.ndarray:
    """Global points ``(..., 2)`` (m) -> the frame at ``(x0, y0)`` with heading ``h0`` (rad):
    x along the heading, y to its left. ``x0``, ``y0``, ``h0`` are scalars or arrays that
    broadcast against ``xy[..., 0]`` (one frame per row of a batch)."""
    c, s = np.cos(h0), np.sin(h0)
    dx, dy = xy[..., 0] - x0, xy[..., 1] - y0
    return np.stack([c * dx + s * dy, -s * dx + c * dy], axis=-1)


@dataclass
class Scene:
    """Per-clip precomputation for :func:`score_states` (local frame, see module docstring).

    Attributes (``M`` lanes, ``A`` agents, ``W`` = ceil(M / 64) mask words; local-frame
    float64 unless stated):

    * ``clip``: the source :class:`~mosaic_ray.data.clip.Clip`.
    * ``origin`` (3,): global ``[x, y, heading]`` of the local frame (ego at t0).
    * ``geometry``: :class:`~mosaic_ray.scoring.simulate.EgoGeometry`; ``ego_length``,
      ``ego_width`` (m).
    * ``start_state`` (4,) global and ``start_local`` (4,) local ego state at t0;
      ``init_accel`` (m/s^2), ``init_steer`` (rad): tracker initial dynamics.
    * ``prev_start`` (4,) global ego state at t0-0.5 s and ``prev_accel``, ``prev_steer``.
    * ``history`` (15, 5) global logged states t0-1.5 .. t0-0.1 s with acceleration.
    * ``human_poses`` (8, 3) and ``human_prev_poses`` (8, 3): the logged future as planner
      poses (ego frame at t0, resp. at t0-0.5 s).
    * ``lane_rings``: M local rings; ``lane_on_route``, ``lane_in_intersection`` (M,) bool;
      ``route_bits``, ``inter_bits`` (W,) uint64; ``lane_bbox`` (M, 4); lane membership of
      points through :meth:`lane_masks` (a :class:`~mosaic_ray.scoring.geometry.PolygonGrid`
      cropped to the queried points, built at the first query) or :attr:`lane_grid` (the
      whole map's grid).
    * ``red_lanes`` (41, M) bool: on-route lane whose light is red at future step t.
    * ``route_center`` (P, 2): the route centre-line (EP, LK, reference).
    * ``agent_boxes`` (41, A, 5) ``[x, y, heading, length, width]`` (invalid: parked far
      away); ``agent_valid`` (41, A) bool; ``agent_speed`` (41, A) m/s (0 where invalid);
      ``agent_static`` (A,) bool; ``agent_first_speed`` (A,) m/s: speed at the first valid
      step from t0 on; ``agent_stopped`` (A,) bool (NC rule, see module docstring, with the
      ``object_stopped_speed_threshold`` of the config given to :func:`prepare_scene`; NC
      re-derives it from ``agent_first_speed`` with the config it is scored with);
      ``agent_ignored`` (A,) bool: touched the logged ego box during the history;
      ``agent_radius`` (A,) half diagonals (m).
    """

    clip: Clip
    origin: np.ndarray
    geometry: EgoGeometry
    ego_length: float
    ego_width: float
    start_state: np.ndarray
    start_local: np.ndarray
    init_accel: float
    init_steer: float
    prev_start: np.ndarray
    prev_accel: float
    prev_steer: float
    history: np.ndarray
    human_poses: np.ndarray
    human_prev_poses: np.ndarray
    lane_on_route: np.ndarray
    lane_in_intersection: np.ndarray
    route_bits: np.ndarray
    inter_bits: np.ndarray
    lane_bbox: np.ndarray
    red_lanes: np.ndarray
    route_center: np.ndarray
    agent_boxes: np.ndarray
    agent_valid: np.ndarray
    agent_speed: np.ndarray
    agent_static: np.ndarray
    agent_stopped: np.ndarray
    agent_ignored: np.ndarray
    agent_radius: np.ndarray
    agent_first_speed: np.ndarray = None
    _lane_center_local: np.ndarray = field(repr=False, default=None)
    _lane_offsets: np.ndarray = field(repr=False, default=None)
    _lane_left: np.ndarray = field(repr=False, default=None)
    _lane_right: np.ndarray = field(repr=False, default=None)
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
        return _to_local_xy(xy, *self.origin)

    def to_local_states(self, states: np.ndarray) -> np.ndarray:
        """Global (..., 4|5) ``[x, y, heading, speed(, accel)]`` -> local (same columns)."""
        out = np.array(states, dtype=np.float64, copy=True)
        out[..., :2] = self.to_local_xy(states[..., :2])
        out[..., 2] = wrap_angle(states[..., 2] - self.origin[2])
        return out

    def to_global_states(self, states: np.ndarray) -> np.ndarray:
        """Local (..., 4|5) -> global."""
        x0, y0, h0 = self.origin
        c, s = np.cos(h0), np.sin(h0)
        out = np.array(states, dtype=np.float64, copy=True)
        out[..., 0] = x0 + c * states[..., 0] - s * states[..., 1]
        out[..., 1] = y0 + s * states[..., 0] + c * states[..., 1]
        out[..., 2] = wrap_angle(states[..., 2] + h0)
        return out

    @property
    def lane_rings(self) -> list:
        """M local lane rings ``(2 n_m, 2)``: left boundary, then the right one reversed (built
        on first use: only TLC's exact box test reads them)."""
        if "lane_rings" not in self._cache:
            off, left, right = self._lane_offsets, self._lane_left, self._lane_right
            self._cache["lane_rings"] = [np.concatenate([left[off[i]:off[i + 1]], right[off[i]:off[i + 1]][::-1]])
                                         for i in range(self.num_lanes)]
        return self._cache["lane_rings"]

    @property
    def lane_grid(self) -> PolygonGrid:
        """The lane rings' :class:`~mosaic_ray.scoring.geometry.PolygonGrid` over the whole map
        (built once, on first use; scoring uses :meth:`lane_masks`)."""
        if "lane_grid" not in self._cache:
            self._cache["lane_grid"] = PolygonGrid.from_lanes(self._lane_left, self._lane_right,
                                                              self._lane_offsets, cell=GRID_CELL)
        return self._cache["lane_grid"]

    def lane_masks(self, points: np.ndarray) -> np.ndarray:
        """Lane membership of local points: ``(..., 2)`` float (m) -> ``(..., W)`` uint64 (bit m
        set where the point lies in lane ring m; :meth:`PolygonGrid.query`).

        The grid is cropped to the points' bounding box grown by ``LANE_CROP_MARGIN`` and kept
        for later queries inside it (another query outside it builds a new crop): a scene is
        queried once per :func:`score_states` call, over a few tens of metres, while NGSIM
        maps span hundreds, so building the whole map's grid cost more than the query.
        Same answers as :attr:`lane_grid` (exact in general position).
        """
        pts = np.asarray(points, dtype=np.float64)
        flat = pts.reshape(-1, 2)
        if flat.shape[0] == 0:
            return np.zeros(pts.shape[:-1] + self.route_bits.shape, dtype=np.uint64)  # (W,) words
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        g = self._cache.get("lane_crop")
        if g is None or lo[0] < g.extent[0] or lo[1] < g.extent[1] or hi[0] > g.extent[2] or hi[1] > g.extent[3]:
            ext = (lo[0] - LANE_CROP_MARGIN, lo[1] - LANE_CROP_MARGIN, hi[0] + LANE_CROP_MARGIN, hi[1] + LANE_CROP_MARGIN)
            g = PolygonGrid.from_lanes(self._lane_left, self._lane_right, self._lane_offsets, cell=GRID_CELL,
                                       extent=ext, lane_bbox=self.lane_bbox)
            self._cache["lane_crop"] = g
        return g.query(pts)

    def lane_center_local(self, i: int) -> np.ndarray:
        """(n, 2) local centre-line of lane ``i``."""
        a, b = int(self._lane_offsets[i]), int(self._lane_offsets[i + 1])
        return self._lane_center_local[a:b]

    # ---- ego motion
    def simulate(self, poses: np.ndarray) -> np.ndarray:
        """Planner poses ``(N, 8, 3)`` (ego frame at t0) -> tracked global states
        ``(N, 41, 5)`` ``[x, y, heading, speed, accel]``."""
        return simulate_poses(self.start_state, poses, self.geometry, self.init_accel,
                              self.init_steer, with_accel=True)

    def simulate_prev(self, poses: np.ndarray) -> np.ndarray:
        """Planner poses of the previous frame ``(N, 8, 3)`` (ego frame at t0-0.5 s) ->
        tracked global states ``(N, 41, 5)`` from t0-0.5 s."""
        return simulate_poses(self.prev_start, poses, self.geometry, self.prev_accel,
                              self.prev_steer, with_accel=True)

    def reference_states(self) -> np.ndarray:
        """(R, 41, 5) global tracked reference proposals (:func:`~mosaic_ray.scoring.
        reference.reference_proposals` with the default fractions), computed once."""
        if "reference" not in self._cache:
            plans = reference_proposals(self, REFERENCE_FRACTIONS)
            refs = track_states(self.start_state, plans, self.geometry, self.init_accel, self.init_steer)
            refs.setflags(write=False)
            self._cache["reference"] = refs
        return self._cache["reference"]

    def human_states(self) -> np.ndarray:
        """(41, 5) the logged future's poses tracked like a proposal (NAVSIM human filter)."""
        if "human" not in self._cache:
            hs = self.simulate(self.human_poses[None])[0]
            hs.setflags(write=False)
            self._cache["human"] = hs
        return self._cache["human"]

    def human_prev_states(self) -> np.ndarray:
        """(41, 5) the logged poses from t0-0.5 s tracked from the previous frame (human EC)."""
        if "human_prev" not in self._cache:
            hs = self.simulate_prev(self.human_prev_poses[None])[0]
            hs.setflags(write=False)
            self._cache["human_prev"] = hs
        return self._cache["human_prev"]


def _poses_in_frame(states: np.ndarray, origin_state: np.ndarray) -> np.ndarray:
    """Global states (k, >=3) -> poses (k, 3) in the frame of ``origin_state``."""
    x0, y0, h0 = origin_state[:3]
    c, s = np.cos(h0), np.sin(h0)
    dx, dy = states[:, 0] - x0, states[:, 1] - y0
    return np.stack([c * dx + s * dy, -s * dx + c * dy, wrap_angle(states[:, 2] - h0)], axis=-1)


def _with_backward_accel(states: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """(N, T, 4) -> (N, T, 5): accel = backward difference of the speed (first step: the next
    value, or ``first``)."""
    out = np.empty(states.shape[:-1] + (5,))
    out[..., :4] = states[..., :4]
    d = np.diff(states[..., 3], axis=-1) / DT
    out[..., 1:, 4] = d
    out[..., 0, 4] = d[..., 0] if first is None else first
    return out


def prepare_scene(clip: Clip, config: ScorerConfig | None = None) -> Scene:
    """Precompute everything :func:`score_states` needs for one clip.

    Args:
        clip: a :class:`~mosaic_ray.data.clip.Clip` (global frame, 61 steps, t0 at index 20).
        config: the :class:`ScorerConfig` ``agent_stopped`` is prepared for (None: the
            defaults). A scene prepared with one config scores correctly with any other (NC
            re-derives the stopped agents from ``agent_first_speed``).

    Returns:
        A :class:`Scene` in the clip's local frame.

    Raises:
        ClipValidationError (a ValueError): inconsistent clip arrays (``clip.validate()``).
    """
    cfg = DEFAULT_SCORER_CONFIG if config is None else config
    clip.validate()
    es = np.asarray(clip.ego_states, dtype=np.float64)
    start = es[T0_INDEX].copy()
    origin = start[:3].copy()
    L, W = float(clip.ego_size[0]), float(clip.ego_size[1])
    geom = EgoGeometry.from_size(L, W)
    acc0, steer0 = initial_dynamics(es[T0_INDEX - 2:T0_INDEX + 1], geom)
    pi = T0_INDEX - 5
    prev_start = es[pi].copy()
    pacc, psteer = initial_dynamics(es[pi - 2:pi + 1], geom)
    hist = _with_backward_accel(es[N_PRE:T0_INDEX + 1][None])[0][:N_HISTORY]
    human_poses = _poses_in_frame(es[T0_INDEX + POSE_STEPS], start)
    human_prev = _poses_in_frame(es[pi + POSE_STEPS], prev_start)

    def _loc(xy: np.ndarray) -> np.ndarray:
        return _to_local_xy(xy, *origin)

    # ---- lanes
    M = clip.num_lanes
    off = np.asarray(clip.lane_offsets, dtype=np.int64)
    left = _loc(np.asarray(clip.lane_left, dtype=np.float64).reshape(-1, 2))
    right = _loc(np.asarray(clip.lane_right, dtype=np.float64).reshape(-1, 2))
    center = _loc(np.asarray(clip.lane_center, dtype=np.float64).reshape(-1, 2))
    if M:
        st_ = off[:-1]
        bbox = np.stack([np.minimum(np.minimum.reduceat(left[:, 0], st_), np.minimum.reduceat(right[:, 0], st_)),
                         np.minimum(np.minimum.reduceat(left[:, 1], st_), np.minimum.reduceat(right[:, 1], st_)),
                         np.maximum(np.maximum.reduceat(left[:, 0], st_), np.maximum.reduceat(right[:, 0], st_)),
                         np.maximum(np.maximum.reduceat(left[:, 1], st_), np.maximum.reduceat(right[:, 1], st_))],
                        axis=-1)
    else:
        bbox = np.zeros((0, 4))
    on_route = np.asarray(clip.lane_on_route, dtype=bool).copy()
    in_inter = np.asarray(clip.lane_in_intersection, dtype=bool).copy()
    tl = np.asarray(clip.lane_tl_state)[:, FUT_SLICE]  # (M, 41)
    red = ((tl == TL_RED) & on_route[:, None]).T.copy()  # (41, M)
    route_center = _loc(np.asarray(clip.route_center, dtype=np.float64))

    # ---- agents
    A = clip.num_agents
    ast = np.asarray(clip.agent_states, dtype=np.float64)              # (A, 61, 4)
    aval_all = np.asarray(clip.agent_valid, dtype=bool) & np.isfinite(ast).all(-1)
    size = np.asarray(clip.agent_size, dtype=np.float64).reshape(A, 2)

    def _boxes(sl: slice) -> tuple[np.ndarray, np.ndarray]:
        st, va = ast[:, sl], aval_all[:, sl]
        T = st.shape[1]
        b = np.zeros((T, A, 5))
        if A:
            xy = _loc(np.where(va[..., None], st[..., :2], 0.0))
            far = FAR + 10.0 * np.arange(A)[:, None]
            b[..., 0] = np.where(va, xy[..., 0], far).T
            b[..., 1] = np.where(va, xy[..., 1], far).T
            b[..., 2] = np.where(va, wrap_angle(st[..., 2] - origin[2]), 0.0).T
            b[..., 3] = size[:, 0][None, :]
            b[..., 4] = size[:, 1][None, :]
        return b, va.T.copy()

    # the history (t0-1.5 s .. t0) and future (t0 .. 4 s) boxes in one pass, then split
    hsl = slice(N_PRE, T0_INDEX + 1)
    all_boxes, all_val = _boxes(slice(N_PRE, FUT_SLICE.stop))
    boxes, aval = all_boxes[T0_INDEX - N_PRE:].copy(), all_val[T0_INDEX - N_PRE:].copy()  # kept by the Scene
    hboxes, hval = all_boxes[:T0_INDEX - N_PRE + 1], all_val[:T0_INDEX - N_PRE + 1]
    speed = np.where(aval.T, np.nan_to_num(ast[:, FUT_SLICE, 3]), 0.0).T.copy()
    static = np.asarray(clip.agent_types) == AGENT_STATIC
    first = np.argmax(aval, axis=0) if A else np.zeros(0, dtype=np.int64)
    first_speed = speed[first, np.arange(A)] if A else np.zeros(0)
    stopped = static | (np.abs(first_speed) <= cfg.object_stopped_speed_threshold)
    # history contact: agent box touches the logged ego box at any step t0-1.5 .. t0
    if A:
        ego_h = es[hsl]
        exy = _loc(ego_h[:, :2])
        ego_boxes = np.stack([exy[:, 0], exy[:, 1], wrap_angle(ego_h[:, 2] - origin[2]),
                              np.full(len(ego_h), L), np.full(len(ego_h), W)], axis=-1)
        ignored = (boxes_intersect(ego_boxes[:, None, :], hboxes) & hval).any(axis=0)
    else:
        ignored = np.zeros(0, dtype=bool)

    start_local = np.array([0.0, 0.0, 0.0, start[3]])
    return Scene(
        clip=clip, origin=origin, geometry=geom, ego_length=L, ego_width=W,
        start_state=start, start_local=start_local, init_accel=float(acc0), init_steer=float(steer0),
        prev_start=prev_start, prev_accel=float(pacc), prev_steer=float(psteer),
        history=hist, human_poses=human_poses, human_prev_poses=human_prev,
        lane_on_route=on_route, lane_in_intersection=in_inter,
        route_bits=lane_bits(on_route), inter_bits=lane_bits(in_inter),
        lane_bbox=bbox, red_lanes=red,
        route_center=route_center,
        agent_boxes=boxes, agent_valid=aval, agent_speed=speed, agent_static=static,
        agent_stopped=stopped, agent_ignored=ignored,
        agent_radius=0.5 * np.hypot(size[:, 0], size[:, 1]), agent_first_speed=first_speed,
        _lane_center_local=center, _lane_offsets=off, _lane_left=left, _lane_right=right,
    )


# ==================================================================================== comfort
@lru_cache(maxsize=64)
def _savgol_matrix(T: int, window: int, order: int, deriv: int) -> np.ndarray:
    """(T, T) linear operator equal to ``savgol_filter(..., delta=0.1, mode="interp")`` on rows."""
    from scipy.signal import savgol_filter  # 0.7 s of import, once per process and only where comfort is scored

    w = min(window, T)
    m = savgol_filter(np.eye(T), window_length=w, polyorder=order, deriv=deriv,
                      delta=DT, axis=0, mode="interp")
    m.setflags(write=False)
    return m


def _savgol(y: np.ndarray, window: int, order: int, deriv: int) -> np.ndarray:
    return y @ _savgol_matrix(int(y.shape[-1]), window, order, deriv).T


def _phase_unwrap(h: np.ndarray) -> np.ndarray:
    """NAVSIM ``_phase_unwrap``: successive differences brought into [-pi, pi]."""
    adj = np.zeros_like(h)
    adj[..., 1:] = np.cumsum(np.round(np.diff(h, axis=-1) / (2 * np.pi)), axis=-1)
    return h - 2 * np.pi * adj


def comfort_signals(states: np.ndarray, yaw_accel_order: int = 3) -> dict[str, np.ndarray]:
    """Kinematic signals of 0.1 s state sequences (NAVSIM ``pdm_comfort_metrics``).

    All outputs are rounded to 8 decimals as NAVSIM does. With ``a`` the longitudinal
    acceleration (5th column, or the backward difference of the speed) and the heading
    unwrapped by NAVSIM's ``_phase_unwrap``:

    * ``yaw_rate`` = Savitzky–Golay d/dt of the heading, window 5, order 2;
    * ``yaw_accel`` = d^2/dt^2 of the heading, window 5, order ``yaw_accel_order`` (3 for HC,
      NAVSIM's ``extract_features`` uses 2 for EC);
    * ``lon_accel`` = smoothed ``a`` (window 8, order 2); ``lat_accel`` = smoothed
      ``v * yaw_rate``; ``accel`` = smoothed ``hypot(a, v * yaw_rate)``;
    * ``lon_jerk`` = d/dt of ``lon_accel`` and ``jerk`` = d/dt of ``accel`` (window 15,
      order 2). Savitzky–Golay filters use ``mode="interp"`` with ``delta = 0.1 s``.

    Args:
        states: ``(N, T, 4|5)`` float ``[x, y, heading, speed(, accel)]``, ``T >= 15``.

    Returns:
        dict of ``(N, T)`` float64 arrays (m/s^2, m/s^3, rad/s, rad/s^2).
    """
    s = states if states.shape[-1] == 5 else _with_backward_accel(states)
    v, a = s[..., 3], s[..., 4]
    yaw = _phase_unwrap(s[..., 2])
    yaw_rate_raw = _savgol(yaw, 5, 2, 1)
    lat_raw = v * yaw_rate_raw
    lon = np.round(_savgol(a, 8, 2, 0), 8)
    acc = np.round(_savgol(np.hypot(a, lat_raw), 8, 2, 0), 8)
    return {
        "lon_accel": lon, "lat_accel": np.round(_savgol(lat_raw, 8, 2, 0), 8), "accel": acc,
        "lon_jerk": np.round(_savgol(lon, 15, 2, 1), 8), "jerk": np.round(_savgol(acc, 15, 2, 1), 8),
        "yaw_rate": np.round(yaw_rate_raw, 8),
        "yaw_accel": np.round(_savgol(yaw, 5, yaw_accel_order, 2), 8),
    }


def warm_up() -> None:
    """Pay the scorer's one-time costs now: import ``scipy.signal`` (about 0.7 s here) and build
    the Savitzky–Golay operators of HC (56 states) and EC (36 states). The score stages call
    it in ``setup()``, with the model load, so that the first shard does not pay them."""
    comfort_signals(np.zeros((1, N_HISTORY + N_STEPS, 5)))
    comfort_signals(np.zeros((1, N_STEPS - EC_SHIFT, 5)), yaw_accel_order=2)


def _history_comfort(batch: "_Batch", states: np.ndarray, cfg: ScorerConfig) -> np.ndarray:
    """HC (NAVSIM ``_calculate_history_comfort``): each row's scene's 15 logged history states
    + the states ``(N, 41, 5)``; every bound of ``cfg`` (``min/max_lon_accel``,
    ``max_abs_lat_accel``, ``max_abs_mag_jerk``, ``max_abs_lon_jerk``, ``max_abs_yaw_rate``,
    ``max_abs_yaw_accel``; strict) must hold at every step -> ``(N,)`` float64 in {0, 1}."""
    seq = np.concatenate([batch.history, states], axis=1)
    sig = comfort_signals(seq)
    ok = ((sig["lon_accel"] > cfg.min_lon_accel) & (sig["lon_accel"] < cfg.max_lon_accel)).all(-1)
    ok &= (np.abs(sig["lat_accel"]) < cfg.max_abs_lat_accel).all(-1)
    ok &= (np.abs(sig["jerk"]) < cfg.max_abs_mag_jerk).all(-1)
    ok &= (np.abs(sig["lon_jerk"]) < cfg.max_abs_lon_jerk).all(-1)
    ok &= (np.abs(sig["yaw_rate"]) < cfg.max_abs_yaw_rate).all(-1)
    ok &= (np.abs(sig["yaw_accel"]) < cfg.max_abs_yaw_accel).all(-1)
    return ok.astype(np.float64)


def _extended_comfort(states: np.ndarray, prev: np.ndarray | None, cfg: ScorerConfig) -> np.ndarray:
    """EC (NAVSIM two-frame extended comfort): states ``(N, 41, 5)`` vs the previous frame's
    ``(N, 41, 5)`` (or None: all NaN; NaN rows: NaN) over ``current[:-5]`` / ``previous[5:]``;
    RMS of the differences of acceleration magnitude, jerk, yaw rate and yaw acceleration
    (order 2) each ``<=`` its ``cfg.ec_*_threshold`` -> 1 else 0; ``(N,)`` float64."""
    N = states.shape[0]
    out = np.full(N, np.nan)
    if prev is None:
        return out
    rows = np.isfinite(prev).all(axis=(1, 2))
    if not rows.any():
        return out
    cur = comfort_signals(states[rows, :-EC_SHIFT], yaw_accel_order=2)
    prv = comfort_signals(prev[rows, EC_SHIFT:], yaw_accel_order=2)

    def rms(k: str) -> np.ndarray:
        return np.sqrt(np.mean((cur[k] - prv[k]) ** 2, axis=-1))

    ok = (rms("accel") <= cfg.ec_acceleration_threshold) & (rms("jerk") <= cfg.ec_jerk_threshold)
    ok &= (rms("yaw_rate") <= cfg.ec_yaw_rate_threshold) & (rms("yaw_accel") <= cfg.ec_yaw_accel_threshold)
    out[rows] = ok.astype(np.float64)
    return out


# ==================================================================================== scoring
def _check_states(states: np.ndarray, name: str = "states") -> np.ndarray:
    s = np.asarray(states, dtype=np.float64)
    if s.ndim != 3 or s.shape[1] != N_STEPS or s.shape[2] not in (4, 5):
        raise ValueError(f"{name}: expected (N, {N_STEPS}, 4|5), got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: non-finite value")
    return s if s.shape[2] == 5 else _with_backward_accel(s)


def _prev_array(prev_states: np.ndarray, N: int) -> np.ndarray:
    p = np.asarray(prev_states, dtype=np.float64)
    if p.ndim == 2:
        p = np.broadcast_to(p, (N,) + p.shape)
    if p.ndim != 3 or p.shape[0] != N or p.shape[1] != N_STEPS or p.shape[2] not in (4, 5):
        raise ValueError(f"prev_states: expected ({N_STEPS}, 4|5) or ({N}, {N_STEPS}, 4|5), got {p.shape}")
    if p.shape[2] == 4:
        rows = np.isfinite(p).all(axis=(1, 2))
        q = np.full(p.shape[:2] + (5,), np.nan)
        q[rows] = _with_backward_accel(p[rows])
        return q
    return p


@dataclass
class _Batch:
    """The rows of several scenes scored together (:func:`score_states_many`): scene ``i``
    owns rows ``rows[i]:rows[i + 1]`` and agents ``agents[i]:agents[i + 1]`` of the
    concatenated arrays. Per row (``N`` rows): ``sid`` (N,) its scene; ``length``, ``width``,
    ``rear_offset`` (N, 1) m; ``origin`` (N, 3); ``history`` (N, 15, 5); ``route_bits``,
    ``inter_bits`` (N, 1, W) uint64 (W: the most words of any scene, zero-padded). Per agent
    (``A`` agents over all scenes): ``agent_boxes`` (41, A, 5), ``agent_valid`` (41, A),
    ``agent_ok`` (41, A) valid and not ignored, ``agent_static``, ``agent_first_speed``
    (A,)."""

    scenes: Sequence[Scene]
    rows: np.ndarray
    agents: np.ndarray
    sid: np.ndarray
    length: np.ndarray
    width: np.ndarray
    rear_offset: np.ndarray
    origin: np.ndarray
    history: np.ndarray
    route_bits: np.ndarray
    inter_bits: np.ndarray
    agent_boxes: np.ndarray
    agent_valid: np.ndarray
    agent_ok: np.ndarray
    agent_static: np.ndarray
    agent_first_speed: np.ndarray

    @classmethod
    def of(cls, scenes: Sequence[Scene], counts: Sequence[int]) -> "_Batch":
        rows = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        agents = np.concatenate([[0], np.cumsum([s.num_agents for s in scenes])]).astype(np.int64)
        sid = np.repeat(np.arange(len(scenes)), counts)
        W = max(s.route_bits.shape[0] for s in scenes)

        def bits(name: str) -> np.ndarray:
            b = np.zeros((len(scenes), 1, W), dtype=np.uint64)
            for i, s in enumerate(scenes):
                v = getattr(s, name)
                b[i, 0, :v.shape[0]] = v
            return b[sid]

        def per_row(values) -> np.ndarray:
            return np.asarray(values, dtype=np.float64)[sid][:, None]

        return cls(
            scenes=scenes, rows=rows, agents=agents, sid=sid,
            length=per_row([s.ego_length for s in scenes]), width=per_row([s.ego_width for s in scenes]),
            rear_offset=per_row([s.geometry.rear_offset for s in scenes]),
            origin=np.stack([s.origin for s in scenes])[sid], history=np.stack([s.history for s in scenes])[sid],
            route_bits=bits("route_bits"), inter_bits=bits("inter_bits"),
            agent_boxes=np.concatenate([s.agent_boxes for s in scenes], axis=1),
            agent_valid=np.concatenate([s.agent_valid for s in scenes], axis=1),
            agent_ok=np.concatenate([s.agent_valid & ~s.agent_ignored[None, :] for s in scenes], axis=1),
            agent_static=np.concatenate([s.agent_static for s in scenes]),
            agent_first_speed=np.concatenate([s.agent_first_speed for s in scenes]))

    def parts(self):
        """``(scene, row slice, agent slice)`` of every scene with rows."""
        for i, s in enumerate(self.scenes):
            r = slice(int(self.rows[i]), int(self.rows[i + 1]))
            if r.stop > r.start:
                yield s, r, slice(int(self.agents[i]), int(self.agents[i + 1]))


@dataclass
class EgoAreas:
    """Per (proposal, step) map facts (NAVSIM ``_calculate_ego_area``), all ``(N, T)`` bool
    except the masks: ``corner_masks`` ``(N, T, 4, W)`` uint64 (W: the most mask words of the
    scenes scored together; a scene's lanes are its first words, the rest are 0)."""

    offroad: np.ndarray
    multi: np.ndarray
    on_route: np.ndarray
    centre_in_inter: np.ndarray
    rear_in_inter: np.ndarray
    corner_masks: np.ndarray


def ego_areas(batch: _Batch, corners: np.ndarray, centre: np.ndarray, rear: np.ndarray) -> EgoAreas:
    """Map facts of ego boxes (local frames): corners ``(N, T, 4, 2)``, centre and rear axle
    ``(N, T, 2)``, each row in its scene's frame (:class:`_Batch`). One lane-mask query per
    scene (:meth:`Scene.lane_masks`); a scene's rear axles are only queried when its map has
    intersection lanes."""
    N, T = centre.shape[:2]
    masks = np.zeros((N, T, 6, batch.route_bits.shape[-1]), dtype=np.uint64)
    for scene, r, _ in batch.parts():
        has_inter = bool(scene.inter_bits.any())
        pts = [corners[r], centre[r, :, None]] + ([rear[r, :, None]] if has_inter else [])
        m = scene.lane_masks(np.concatenate(pts, axis=2))       # (n, T, 5|6, W_scene)
        masks[r, :, :m.shape[2], :m.shape[3]] = m
    cm = masks[:, :, :4]
    any_c = (cm != 0).any(-1)
    offroad = ~any_c.all(-1)
    union = np.bitwise_or.reduce(cm, axis=2)
    inter = np.bitwise_and.reduce(cm, axis=2)
    multi = (np.bitwise_count(union).sum(-1) > 1) & ~(inter != 0).any(-1)
    return EgoAreas(offroad=offroad, multi=multi,
                    on_route=masks_test(masks[:, :, 4], batch.route_bits),
                    centre_in_inter=masks_test(masks[:, :, 4], batch.inter_bits),
                    rear_in_inter=masks_test(masks[:, :, 5], batch.inter_bits),
                    corner_masks=cm)


@dataclass
class EgoTrack:
    """The ego boxes of N proposals over the 41 steps, each in its scene's local frame
    (NAVSIM's ``_reset`` + ``_calculate_ego_area``), shared by the term functions.

    Attributes: ``x``, ``y``, ``h``, ``v`` ``(N, T)`` centre position (m), heading (rad),
    speed (m/s); ``ch``, ``sh`` ``(N, T)`` cos / sin of the heading; ``corners``
    ``(N, T, 4, 2)`` (front-left, rear-left, rear-right, front-right; m); ``centre``,
    ``rear`` ``(N, T, 2)`` box centre and rear axle (m); ``areas``: :class:`EgoAreas`;
    ``contacts``: ``(t, n, a)`` int64 index arrays of ego box / agent box contacts
    (:func:`_contacts`; ``a`` indexes the batch's agents), shared by NC and TTC (offset 0).
    """

    x: np.ndarray
    y: np.ndarray
    h: np.ndarray
    v: np.ndarray
    ch: np.ndarray
    sh: np.ndarray
    corners: np.ndarray
    centre: np.ndarray
    rear: np.ndarray
    areas: EgoAreas
    contacts: tuple[np.ndarray, np.ndarray, np.ndarray]

    @property
    def num_proposals(self) -> int:
        return int(self.x.shape[0])


def _ego_track(batch: _Batch, states: np.ndarray) -> EgoTrack:
    """Global states ``(N, 41, 5)`` -> :class:`EgoTrack` (each row in its scene's local frame,
    as :meth:`Scene.to_local_states`)."""
    o = batch.origin
    centre = _to_local_xy(states[..., :2], o[:, 0:1], o[:, 1:2], o[:, 2:3])
    x, y = centre[..., 0], centre[..., 1]
    h, v = wrap_angle(states[..., 2] - o[:, 2:3]), states[..., 3]
    ch, sh = np.cos(h), np.sin(h)
    corners = box_corners(x, y, h, batch.length, batch.width)   # (N, T, 4, 2)
    ro = batch.rear_offset
    rear = np.stack([x - ro * ch, y - ro * sh], axis=-1)
    return EgoTrack(x=x, y=y, h=h, v=v, ch=ch, sh=sh, corners=corners, centre=centre, rear=rear,
                    areas=ego_areas(batch, corners, centre, rear), contacts=_contacts(batch, x, y, ch, sh))


def _sat(ax, ay, ca, sa, hla, hwa, bx, by, cb, sb, hlb, hwb) -> np.ndarray:
    """Separating-axis test of box pairs with precomputed cos / sin of the headings; the same
    arithmetic as :func:`~mosaic_ray.scoring.geometry.boxes_intersect` (closed boxes)."""
    dx, dy = bx - ax, by - ay
    c = np.abs(ca * cb + sa * sb)
    s = np.abs(ca * sb - sa * cb)
    sep = np.abs(dx * ca + dy * sa) > hla + hlb * c + hwb * s
    sep |= np.abs(-dx * sa + dy * ca) > hwa + hlb * s + hwb * c
    sep |= np.abs(dx * cb + dy * sb) > hlb + hla * c + hwa * s
    sep |= np.abs(-dx * sb + dy * cb) > hwb + hla * s + hwa * c
    return ~sep


def _box_hits(batch: _Batch, ex, ey, ech, esh, n, t, a) -> np.ndarray:
    """Narrow phase: the ego boxes at ``(ex, ey)`` (heading cos / sin ``ech``, ``esh``) of rows
    ``n`` vs the agent boxes ``a`` at step ``t`` -> bool (:func:`_sat`)."""
    ob = batch.agent_boxes[t, a]
    return _sat(ex, ey, ech, esh, 0.5 * batch.length[n, 0], 0.5 * batch.width[n, 0],
                ob[:, 0], ob[:, 1], np.cos(ob[:, 2]), np.sin(ob[:, 2]), 0.5 * ob[:, 3], 0.5 * ob[:, 4])


def _sweep(batch: _Batch, ego_xy, ok_steps, ego_ok=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~mosaic_ray.scoring.geometry.sweep_pairs` scene by scene: ``ego_xy`` ``(G, N,
    2)``, the agents at steps ``ok_steps`` (G,), optional ``ego_ok`` ``(G, N)`` -> ``(g, n,
    a)`` with batch rows and agents."""
    out = []
    for scene, r, ag in batch.parts():
        if ag.stop == ag.start:
            continue
        g, n, a = sweep_pairs(ego_xy[:, r], 0.5 * np.hypot(scene.ego_length, scene.ego_width),
                              scene.agent_boxes[ok_steps, :, :2], scene.agent_radius,
                              batch.agent_ok[ok_steps, ag], None if ego_ok is None else ego_ok[:, r])
        out.append((g, n + r.start, a + ag.start))
    if not out:
        return (np.zeros(0, np.int64),) * 3
    return tuple(np.concatenate([o[i] for o in out]) for i in range(3))


def _contacts(batch: _Batch, x, y, ch, sh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ``(t, n, a)`` where the ego box of row n touches batch agent a of its scene at step
    t (agents touched during the history excluded)."""
    exy = np.stack([x.T, y.T], axis=-1)                              # (T, N, 2)
    t, n, a = _sweep(batch, exy, np.arange(x.shape[1]))
    if not t.size:
        return t, n, a
    hit = _box_hits(batch, x[n, t], y[n, t], ch[n, t], sh[n, t], n, t, a)
    return t[hit], n[hit], a[hit]


def _no_at_fault_collision(batch: _Batch, ego: EgoTrack, cfg: ScorerConfig) -> np.ndarray:
    """NC (NAVSIM ``_calculate_no_at_fault_collision``, nuPlan ``get_collision_type``) ->
    ``(N,)`` float64 in {0, ``cfg.static_object_collision_score``, 1}. Thresholds:
    ``ego_stopped_speed_threshold`` (m/s), ``object_stopped_speed_threshold`` (m/s),
    ``agent_behind_tolerance_deg``."""
    v, h, corners, rear, areas = ego.v, ego.h, ego.corners, ego.rear, ego.areas
    N = v.shape[0]
    A = batch.agent_static.shape[0]
    nc = np.ones(N)
    t, n, a = ego.contacts
    if not t.size:
        return nc
    ab = batch.agent_boxes
    # each object is judged at its first contact (an object met without fault is ignored
    # afterwards; one met with fault keeps its score)
    key = n * A + a
    order = np.lexsort((t, key))
    key_s = key[order]
    first = order[np.concatenate([[True], key_s[1:] != key_s[:-1]])]
    t, n, a = t[first], n[first], a[first]
    ob = ab[t, a]
    ego_stopped = np.abs(v[n, t]) <= cfg.ego_stopped_speed_threshold
    obj_stopped = batch.agent_static[a] | (np.abs(batch.agent_first_speed[a]) <= cfg.object_stopped_speed_threshold)
    behind = relative_bearing(rear[n, t], h[n, t], ob[:, :2]) > cfg.behind_angle
    front = segment_intersects_box(corners[n, t, 0], corners[n, t, 3], ob)
    lateral_fault = areas.multi[n, t] | areas.offroad[n, t]
    at_fault = ~ego_stopped & (obj_stopped | (~behind & (front | lateral_fault)))
    val = np.where(batch.agent_static[a], cfg.static_object_collision_score, 0.0)
    np.minimum.at(nc, n[at_fault], val[at_fault])
    return nc


def _time_to_collision(batch: _Batch, ego: EgoTrack, cfg: ScorerConfig) -> np.ndarray:
    """TTC (NAVSIM ``_calculate_ttc``) -> ``(N,)`` float64 in {0, 1}. Config:
    ``ttc_offsets`` / ``ttc_last_step`` (from ``future_collision_horizon_window``, s, and
    ``ttc_offset_stride``), ``stopped_speed_threshold`` (m/s), ``agent_ahead_tolerance_deg``,
    ``agent_behind_tolerance_deg``."""
    x, y, h, ch, sh, v, rear, areas = ego.x, ego.y, ego.h, ego.ch, ego.sh, ego.v, ego.rear, ego.areas
    N, T = x.shape
    A = batch.agent_static.shape[0]
    ttc = np.ones(N)
    if not A:
        return ttc
    T1 = cfg.ttc_last_step + 1
    offs = np.asarray(cfg.ttc_offsets)
    K = offs.size
    sp = np.abs(v[:, :T1])
    moving = sp >= cfg.stopped_speed_threshold                        # (N, T1): other steps skipped
    # offset 0: the ego box itself, i.e. the contacts up to the last step
    t0, n0, a0 = ego.contacts
    keep0 = (t0 < T1)
    keep0[keep0] &= moving[n0[keep0], t0[keep0]]
    g0, n0, a0 = t0[keep0] * K, n0[keep0], a0[keep0]
    # offsets 0.3, 0.6, 0.9 s: the box moved along its heading at |speed|
    po = offs[1:]
    Kp = po.size
    dx, dy = ch[:, :T1] * sp, sh[:, :T1] * sp
    px = x[:, :T1, None] + dx[:, :, None] * (po * DT)[None, None, :]       # (N, T1, Kp)
    py = y[:, :T1, None] + dy[:, :, None] * (po * DT)[None, None, :]
    ego_xy = np.stack([px, py], axis=-1).transpose(1, 2, 0, 3).reshape(T1 * Kp, N, 2)
    tt = (np.arange(T1)[:, None] + po[None, :]).reshape(-1)          # (G',)
    gp, n, a = _sweep(batch, ego_xy, tt, np.repeat(moving.T, Kp, axis=0))
    if gp.size:
        t, kq = gp // Kp, gp % Kp
        hit = _box_hits(batch, px[n, t, kq], py[n, t, kq], ch[n, t], sh[n, t], n, tt[gp], a)
        g = np.concatenate([g0, t[hit] * K + kq[hit] + 1])
        n = np.concatenate([n0, n[hit]])
        a = np.concatenate([a0, a[hit]])
    else:
        g, n, a = g0, n0, a0
    if not g.size:
        return ttc
    t = g // K
    obj_xy = batch.agent_boxes[t + offs[g % K], a, :2]
    bear = relative_bearing(rear[n, t], h[n, t], obj_xy)
    risky = areas.multi[n, t] | areas.offroad[n, t] | areas.rear_in_inter[n, t]
    fail = (bear < cfg.ahead_angle) | (risky & (bear <= cfg.behind_angle))
    # events per (proposal, object) in (t, offset) order: the first non-failing one puts the
    # object on the ignore list; failing events before it set TTC = 0
    big = T1 * K + 1
    key = n * A + a
    uk, inv = np.unique(key, return_inverse=True)
    first_ok = np.full(uk.size, big)
    np.minimum.at(first_ok, inv[~fail], g[~fail])
    counted = fail & (g < first_ok[inv])
    ttc[np.unique(n[counted])] = 0.0
    return ttc


def _traffic_light_compliance(batch: _Batch, ego: EgoTrack) -> np.ndarray:
    """TLC (NAVSIM ``_calculate_traffic_light_compliance``): 0 where the ego box intersects
    an on-route lane that is red at that step, else 1 -> ``(N,)`` float64 (no threshold)."""
    fail = np.zeros(ego.x.shape[0], dtype=bool)
    for scene, r, _ in batch.parts():
        fail[r] = _red_light_touched(scene, ego.x[r], ego.y[r], ego.h[r], ego.areas.corner_masks[r])
    return np.where(fail, 0.0, 1.0)


def _red_light_touched(scene: Scene, x, y, h, corner_masks: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: the ego box touches a red on-route lane at some step (``corner_masks``
    ``(N, T, 4, W)`` of the corners, :class:`EgoAreas`)."""
    N = x.shape[0]
    fail = np.zeros(N, dtype=bool)
    red = scene.red_lanes
    lanes = np.nonzero(red.any(axis=0))[0]
    if not lanes.size:
        return fail
    L, W = scene.ego_length, scene.ego_width
    ego_r = 0.5 * np.hypot(L, W)
    for m in lanes:
        steps = np.nonzero(red[:, m])[0]
        bb = scene.lane_bbox[m]
        cx, cy = x[:, steps], y[:, steps]
        near = (cx >= bb[0] - ego_r) & (cx <= bb[2] + ego_r) & (cy >= bb[1] - ego_r) & (cy <= bb[3] + ego_r)
        near &= ~fail[:, None]
        n_i, s_i = np.nonzero(near)
        if not n_i.size:
            continue
        t_i = steps[s_i]
        word, bit = m // 64, np.uint64(1) << np.uint64(m % 64)
        cin = ((corner_masks[n_i, t_i, :, word] & bit) != 0).any(axis=1)
        boxes = np.stack([x[n_i, t_i], y[n_i, t_i], h[n_i, t_i], np.full(n_i.size, L), np.full(n_i.size, W)], axis=-1)
        hit = boxes_intersect_ring(boxes, scene.lane_rings[m], corner_inside=cin)
        fail[n_i[hit]] = True
    return fail


def score_states(scene: Scene, states: np.ndarray, prev_states: np.ndarray | None = None, *,
                 config: ScorerConfig | None = None) -> dict[str, np.ndarray]:
    """Raw EPDMS terms of simulated ego states (no EP normalisation, no human filter).

    The numbers below are the defaults of :class:`ScorerConfig` (NAVSIM's); ``config``
    replaces them.

    Follows EPDMS.md and NAVSIM ``pdm_scorer.py`` (``_calculate_ego_area``,
    ``_calculate_no_at_fault_collision``, ``_calculate_drivable_area_compliance``,
    ``_calculate_driving_direction_compliance``, ``_calculate_traffic_light_compliance``,
    ``_calculate_progress``, ``_calculate_ttc``, ``_calculate_lane_keeping``,
    ``_calculate_history_comfort``) with nuPlan's ``get_collision_type`` and
    ``pdm_comfort_metrics.py`` (deviations: module docstring).

    * **NC** — ego box vs every valid agent box at each step t = 0..40 (agents that touched
      the logged ego box during the history ignored). Each object is judged at its first
      contact, in nuPlan's order: ego |speed| <= 0.05 m/s -> not at fault; object stopped ->
      at fault; object centre behind the rear axle (bearing > 150 deg) -> not at fault; front
      bumper (front-left -> front-right edge) touches -> at fault; else lateral: at fault only
      if the ego is in several lanes or off the drivable area at that step. At fault: 0
      (vehicle, pedestrian, cyclist) or 0.5 (``AGENT_STATIC``); NC = min (1 if none).
    * **DAC** — 0 if any of the 4 ego corners lies in no lane at any step.
    * **DDC** — oncoming step: centre in no on-route lane (intersection lanes included, as
      NAVSIM's on-route lanes and lane connectors); centre displacement of oncoming steps
      summed over windows [t-10, t] (NAVSIM's slice: 11 displacements); max < 2 m -> 1,
      < 6 m -> 0.5, else 0.
    * **TLC** — 0 if the ego box intersects an on-route lane that is red at that step.
    * **EP** — *raw* progress (m): arc length along ``route_center`` from the projection of
      the centre at t0 to that at 4 s, floored at 0.
    * **TTC** — for t = 0..31 and offsets 0, 3, 6, 9 steps, the ego box moved along its
      heading at |speed| vs agent boxes at t + offset; steps with |speed| < 5e-3 m/s skipped,
      history-contact agents ignored. Fails (0) if the object is ahead of the rear axle
      (bearing < 30 deg) or the ego is in several lanes / off-road / with its rear axle in an
      intersection lane and the object is not behind (bearing <= 150 deg). An object met
      once without failing is ignored afterwards (NAVSIM's ``temp_collided_track_ids``;
      events ordered by t, then offset).
    * **LK** — 0 if the centre is > 0.5 m from the route centre-line for 20 consecutive
      steps; steps with the centre in an intersection lane neither count nor reset.
    * **HC** — the 15 logged history states + the 41 states; every bound of
      :func:`comfort_signals` must hold at every step (EPDMS.md table).
    * **EC** — with ``prev_states``: current[:-5] vs previous[5:], RMS of differences of
      acceleration magnitude <= 0.7 m/s^2, jerk <= 0.5 m/s^3, yaw rate <= 0.1 rad/s, yaw
      acceleration <= 0.1 rad/s^2 -> 1 else 0 (signals of each 36-step overlap computed
      separately; yaw acceleration with order 2 as NAVSIM's ``extract_features``).
      ``prev_states is None`` (or a NaN row) -> NaN.

    Several scenes at once: :func:`score_states_many` (the same arithmetic; this function is
    its one-scene case).

    Args:
        scene: from :func:`prepare_scene`.
        states: ``(N, 41, 4|5)`` float global ``[x, y, heading, speed(, accel)]`` (m, m, rad,
            m/s, m/s^2) at 0.1 s from t0.
        prev_states: None, ``(41, 4|5)`` or ``(N, 41, 4|5)`` global states of the previous
            frame (0.5 s earlier); rows containing NaN get EC = NaN.
        config: thresholds (None: :data:`DEFAULT_SCORER_CONFIG`).

    Returns:
        dict ``term -> (N,) float64`` for all nine :data:`TERMS` (EP in metres).

    Raises:
        ValueError: on bad shapes or non-finite states.
    """
    return score_states_many([scene], [states], [prev_states], config=config)[0]


def score_states_many(scenes: Sequence[Scene], states: Sequence[np.ndarray],
                      prev_states: Sequence[np.ndarray | None] | None = None, *,
                      config: ScorerConfig | None = None) -> list[dict[str, np.ndarray]]:
    """:func:`score_states` of several scenes in one pass: the rows of every scene are
    concatenated and every step that does not depend on the map or the agents of one scene
    (local frames, ego boxes, the lane facts derived from the masks, NC, DAC, DDC, TTC's and
    LK's event logic, HC, EC) runs once over all rows. Per scene remain the lane-mask query,
    the broad phase of the box contacts (:func:`~mosaic_ray.scoring.geometry.sweep_pairs`),
    the route projections of EP and LK and TLC's lane tests. Each row's terms depend only on
    its own scene: the results equal one :func:`score_states` call per scene.

    Args:
        scenes: B scenes from :func:`prepare_scene`.
        states: B arrays ``(N_i, 41, 4|5)`` of global states (as :func:`score_states`).
        prev_states: None, or B entries each None / ``(41, 4|5)`` / ``(N_i, 41, 4|5)``.
        config: thresholds (None: :data:`DEFAULT_SCORER_CONFIG`).

    Returns:
        B dicts ``term -> (N_i,) float64`` (views into arrays shared by the batch).

    Raises:
        ValueError: ``states`` / ``prev_states`` not of length B, bad shapes or non-finite
            states (the message names the first bad scene's array as :func:`score_states`
            does).
    """
    cfg = DEFAULT_SCORER_CONFIG if config is None else config
    B = len(scenes)
    if len(states) != B or (prev_states is not None and len(prev_states) != B):
        raise ValueError(f"score_states_many: {B} scenes, {len(states)} states, "
                         f"{'no' if prev_states is None else len(prev_states)} prev_states")
    S_list = [_check_states(s) for s in states]
    counts = [s.shape[0] for s in S_list]
    keep = [i for i in range(B) if counts[i]]
    out = [{k: np.zeros(0) for k in TERMS} for _ in range(B)]
    if not keep:
        return out
    prevs = [None] * B
    if prev_states is not None:
        for i in keep:
            prevs[i] = None if prev_states[i] is None else _prev_array(prev_states[i], counts[i])
    batch = _Batch.of([scenes[i] for i in keep], [counts[i] for i in keep])
    S = np.concatenate([S_list[i] for i in keep], axis=0)
    prev = None
    if any(prevs[i] is not None for i in keep):
        prev = np.concatenate([np.full((counts[i], N_STEPS, 5), np.nan) if prevs[i] is None else prevs[i]
                               for i in keep], axis=0)
    ego = _ego_track(batch, S)  # boxes, map areas, contacts (NAVSIM _reset, _calculate_ego_area)
    terms = {
        # 1. multiplicative metrics
        Term.NC: _no_at_fault_collision(batch, ego, cfg),
        Term.DAC: _drivable_area_compliance(ego),
        Term.DDC: _driving_direction_compliance(ego, cfg),
        Term.TLC: _traffic_light_compliance(batch, ego),
        # 2. weighted metrics
        Term.EP: _progress(batch, ego),
        Term.TTC: _time_to_collision(batch, ego, cfg),
        Term.LK: _lane_keeping(batch, ego, cfg),
        Term.HC: _history_comfort(batch, S, cfg),
        Term.EC: _extended_comfort(S, prev, cfg),
    }
    for j, i in enumerate(keep):
        r = slice(int(batch.rows[j]), int(batch.rows[j + 1]))
        out[i] = {t.name: terms[t][r] for t in Term}
    return out


def _drivable_area_compliance(ego: EgoTrack) -> np.ndarray:
    """DAC (NAVSIM ``_calculate_drivable_area_compliance``): 0 if a corner lies in no lane at
    some step, else 1 -> ``(N,)`` float64 (no threshold)."""
    return np.where(ego.areas.offroad.any(axis=1), 0.0, 1.0)


def _driving_direction_compliance(ego: EgoTrack, cfg: ScorerConfig) -> np.ndarray:
    """DDC (NAVSIM ``_calculate_driving_direction_compliance``): centre displacement (m) of
    oncoming steps summed over windows ``[t - cfg.ddc_window_steps, t]``; worst window
    ``< driving_direction_compliance_threshold`` -> 1, ``< ..._violation_threshold`` -> 0.5,
    else 0 -> ``(N,)`` float64."""
    x, y = ego.x, ego.y
    N, T = x.shape
    disp = np.zeros((N, T))
    disp[:, 1:] = np.hypot(np.diff(x, axis=1), np.diff(y, axis=1))
    disp[ego.areas.on_route] = 0.0
    cs = np.concatenate([np.zeros((N, 1)), np.cumsum(disp, axis=1)], axis=1)  # cs[t+1] = sum_0..t
    t_idx = np.arange(T)
    lo = np.maximum(0, t_idx - cfg.ddc_window_steps)
    worst = (cs[:, t_idx + 1] - cs[:, lo]).max(axis=1)
    return np.where(worst < cfg.driving_direction_compliance_threshold, 1.0,
                    np.where(worst < cfg.driving_direction_violation_threshold, 0.5, 0.0))


def _progress(batch: _Batch, ego: EgoTrack) -> np.ndarray:
    """Raw EP (NAVSIM ``_calculate_progress``): arc length (m) along the scene's
    ``route_center`` from the centre's projection at t0 to that at 4 s, floored at 0 ->
    ``(N,)`` float64 (normalised later, :func:`normalize_progress`). One projection per
    scene."""
    out = np.zeros(ego.x.shape[0])
    for scene, r, _ in batch.parts():
        centre = ego.centre[r]
        N = centre.shape[0]
        same_start = bool(np.all(centre[:, 0] == centre[0, 0]))
        pts = np.concatenate([centre[:1, 0] if same_start else centre[:, 0], centre[:, -1]])
        arc, _, _ = project_to_polyline(pts, scene.route_center)
        a0 = arc[0] if same_start else arc[:N]
        out[r] = np.maximum(arc[-N:] - a0, 0.0)
    return out


def _lane_keeping(batch: _Batch, ego: EgoTrack, cfg: ScorerConfig) -> np.ndarray:
    """LK (NAVSIM ``_calculate_lane_keeping``): 0 if the centre is farther than
    ``cfg.lane_keeping_deviation_limit`` (m) from its scene's route centre-line for
    ``cfg.lk_max_steps`` consecutive steps (intersection steps neither count nor reset),
    else 1 -> ``(N,)`` float64."""
    limit = cfg.lane_keeping_deviation_limit
    far = np.zeros(ego.x.shape, dtype=bool)
    for scene, r, _ in batch.parts():
        far[r] = ~near_polyline(ego.centre[r], scene.route_center, limit)
    skip = ego.areas.centre_in_inter
    off = far & ~skip
    reset = ~far & ~skip
    c = np.cumsum(off, axis=1)
    last = np.maximum.accumulate(np.where(reset, c, 0), axis=1)
    return np.where((c - last).max(axis=1) >= cfg.lk_max_steps, 0.0, 1.0)


# ================================================================================ aggregation
def normalize_progress(raw: np.ndarray, penalty: np.ndarray, raw_ref: float,
                       penalty_ref: float, config: ScorerConfig | None = None) -> np.ndarray:
    """EP from raw progress, NAVSIM ``_aggregate_scores`` on the pair (reference, candidate).

    ``m = max(raw * pen, raw_ref * pen_ref)``; ``EP = raw * pen / m`` if ``m > 5 m``
    (``config.progress_distance_threshold``), else ``EP = 1`` where ``pen > 0`` and ``0``
    where ``pen == 0``.

    Args:
        raw, penalty: ``(N,)`` raw progress (m) and NC·DAC·DDC·TLC of the candidates.
        raw_ref, penalty_ref: the same for the chosen reference proposal.
        config: None: :data:`DEFAULT_SCORER_CONFIG`.

    Returns:
        ``(N,)`` float64 EP in [0, 1].
    """
    raw = np.asarray(raw, dtype=np.float64)
    pen = np.asarray(penalty, dtype=np.float64)
    num = raw * pen
    norm = np.maximum(num, float(raw_ref) * float(penalty_ref))
    big = norm > (DEFAULT_SCORER_CONFIG if config is None else config).progress_distance_threshold
    return np.where(big, np.clip(num / np.where(big, norm, 1.0), 0.0, 1.0), np.where(pen == 0.0, 0.0, 1.0))


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


def aggregate_epdms(terms: Mapping[str, np.ndarray], ec_available: bool,
                    config: ScorerConfig | None = None) -> np.ndarray:
    """``NC·DAC·DDC·TLC·(5EP + 5TTC + 2LK + 2HC + 2EC)/16``, or ``/14`` without EC.

    The weights are ``config.weights`` (NAVSIM ``PDMScorerConfig.weighted_metrics_array``;
    the defaults above): ``prod(penalties) * sum(w_k * term_k) / sum(w_k)`` over the weighted
    terms, EC left out when not available; a term of weight 0 is left out as well.

    Args:
        terms: ``term -> (N,)`` (or scalars) for the nine :data:`TERMS`.
        ec_available: whether EC (and its weight) enters.
        config: None: :data:`DEFAULT_SCORER_CONFIG`.

    Returns:
        ``(N,)`` float64 (or a 0-d array for scalar input).

    Raises:
        ValueError: the weights of the terms that enter sum to 0.
    """
    weights = (DEFAULT_SCORER_CONFIG if config is None else config).weights
    pen = np.ones_like(np.asarray(terms["NC"], dtype=np.float64))
    for k in PENALTY_TERMS:
        pen = pen * np.asarray(terms[k], dtype=np.float64)
    names = [k for k in WEIGHTED_TERMS if (ec_available or k != Term.EC.name) and weights[k] != 0]
    den = float(sum(weights[k] for k in names))
    if den <= 0.0:
        raise ValueError("aggregate_epdms: the weights of the terms that enter sum to 0")
    num = sum(weights[k] * np.asarray(terms[k], dtype=np.float64) for k in names)
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
        human_terms: ``term -> float`` of the logged human future (EP normalised alone).
        human_epdms: float.
        ec_available: whether EC entered (a previous frame was given).
        states: ``(N, 41, 4) float64`` simulated global states.
        progress_m: ``(N,)`` raw progress (m).
        ep_normalizer: ``(N,)`` EP normaliser ``max(raw * pen, raw_ref * pen_ref)`` (m).
        reference_states: ``(R, 41, 4)`` the tracked reference proposals; ``reference_index``:
            the one chosen; ``reference_progress_m`` and ``reference_penalty`` of it.
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

    def terms_array(self) -> np.ndarray:
        """``(N, 9)`` float64 terms in :data:`TERMS` order."""
        return np.stack([self.terms[k] for k in TERMS], axis=-1)


def _penalty(t: Mapping[str, np.ndarray]) -> np.ndarray:
    return t["NC"] * t["DAC"] * t["DDC"] * t["TLC"]


def _select_reference(raw: Mapping[str, np.ndarray], sl: slice, cfg: ScorerConfig) -> int:
    """PDM-Closed's choice: the proposal its own scorer ranks best (EP normalised among the
    proposals with ``cfg.progress_distance_threshold``; weights ``cfg`` of EP, TTC, LK, HC:
    5, 5, 2, 2 by default). Returns the index within ``sl``."""
    w = cfg.weights
    pen, prog = _penalty(raw)[sl], raw["EP"][sl]
    if pen.size == 0:
        return 0
    m = (prog * pen).max()
    ep = prog * pen / m if m > cfg.progress_distance_threshold else np.where(pen == 0.0, 0.0, 1.0)
    den = w["EP"] + w["TTC"] + w["LK"] + w["HC"]
    score = pen * (w["EP"] * ep + w["TTC"] * raw["TTC"][sl] + w["LK"] * raw["LK"][sl] + w["HC"] * raw["HC"][sl]) / den
    return int(np.argmax(score))


def score_trajectories(clip_or_scene: Clip | Scene, poses: np.ndarray,
                       prev_states: np.ndarray | None = None, human_filter: bool = True,
                       prev_poses: np.ndarray | None = None, *,
                       config: ScorerConfig | None = None) -> EPDMSResult:
    """Score planner poses on a clip: simulate, score with reference and human, aggregate.

    The N candidates (poses tracked by :meth:`Scene.simulate`), the R tracked reference
    proposals (:meth:`Scene.reference_states`) and the tracked logged human future
    (:meth:`Scene.human_states`) go through ONE :func:`score_states` call. The reference kept
    is the one PDM-Closed would pick (:func:`_select_reference`). EP per candidate follows
    :func:`normalize_progress`; the human's EP is normalised alone. The human filter
    (:func:`apply_human_filter`) and :func:`aggregate_epdms` give the final score.

    Args:
        clip_or_scene: a Clip or a Scene from :func:`prepare_scene`.
        poses: ``(N, 8, 3)`` ego-frame poses (m, m, rad) at 0.5..4.0 s (N may be 0).
        prev_states: None or ``(41, 4|5)`` / ``(N, 41, 4|5)`` global states simulated from the
            previous frame (0.5 s earlier).
        human_filter: apply NAVSIM's human filter.
        prev_poses: alternatively, ``(8, 3)`` / ``(N, 8, 3)`` planner poses of the previous
            frame (ego frame at t0-0.5 s), tracked here with :meth:`Scene.simulate_prev`.
            Without ``prev_states`` and ``prev_poses`` EC is dropped (NaN, weight 14).
        config: thresholds and weights (None: :data:`DEFAULT_SCORER_CONFIG`), used by every
            term, the reference choice, the EP normalisation and the aggregation.

    Returns:
        :class:`EPDMSResult`.

    Raises:
        ValueError: on bad shapes, or both ``prev_states`` and ``prev_poses`` given.
    """
    cfg = DEFAULT_SCORER_CONFIG if config is None else config
    scene = clip_or_scene if isinstance(clip_or_scene, Scene) else prepare_scene(clip_or_scene, cfg)
    poses, pp = _check_poses(poses, prev_states, prev_poses)
    ec_available = prev_states is not None or prev_poses is not None

    # 1. simulate: candidates, reference proposals, human future, previous frames
    cand, prev_tracked = _track_proposals(scene, poses, pp, ec_available)
    return _score_tracked(scene, cand, prev_tracked if prev_tracked is not None else prev_states,
                          ec_available, human_filter, cfg)


def _score_tracked(scene: Scene, cand: np.ndarray, prev_states: np.ndarray | None, ec_available: bool,
                   human_filter: bool, cfg: ScorerConfig) -> EPDMSResult:
    """Steps 2-4 of :func:`score_trajectories` once the candidates are tracked (``cand``
    ``(N, 41, 5)`` global states; ``prev_states`` their previous frames or None)."""
    return _score_tracked_many([scene], [cand], [prev_states], [ec_available], human_filter, cfg)[0]


def _score_tracked_many(scenes: Sequence[Scene], cands: Sequence[np.ndarray],
                        prev_states: Sequence[np.ndarray | None], ec_available: Sequence[bool],
                        human_filter: bool, cfg: ScorerConfig) -> list[EPDMSResult]:
    """:func:`_score_tracked` of several scenes with ONE :func:`score_states_many` call for
    the rows of all of them (each scene's candidates, reference proposals and human)."""
    rows, prevs = [], []
    for scene, cand, prev, ec in zip(scenes, cands, prev_states, ec_available):
        N, refs = cand.shape[0], scene.reference_states()
        R = refs.shape[0]  # rows: candidates [0, N), references [N, N + R), human N + R
        rows.append(np.concatenate([cand, refs, scene.human_states()[None]], axis=0))
        prevs.append(None if not ec else np.concatenate(
            [_prev_array(prev, N), np.full((R, N_STEPS, 5), np.nan), scene.human_prev_states()[None]], axis=0))
    # 2. raw terms of all of them in one call
    raws = score_states_many(scenes, rows, prevs, config=cfg)
    return [_result(scene, cand, raw, ec, human_filter, cfg)
            for scene, cand, raw, ec in zip(scenes, cands, raws, ec_available)]


def _result(scene: Scene, cand: np.ndarray, raw: Mapping[str, np.ndarray], ec_available: bool,
            human_filter: bool, cfg: ScorerConfig) -> EPDMSResult:
    """Steps 3-4 of :func:`score_trajectories` on the raw terms of one scene's rows."""
    N = cand.shape[0]
    refs = scene.reference_states()
    R, hi = refs.shape[0], N + refs.shape[0]
    pen = _penalty(raw)
    prog = raw["EP"]

    # 3. the reference PDM-Closed keeps, and EP normalised per candidate against it
    best = _select_reference(raw, slice(N, hi), cfg)
    ref_prog = float(prog[N + best]) if R else 0.0
    ref_pen = float(pen[N + best]) if R else 0.0
    cand_terms = {k: raw[k][:N].copy() for k in TERMS}
    cand_terms["EP"] = normalize_progress(prog[:N], pen[:N], ref_prog, ref_pen, cfg)
    norm = np.maximum(prog[:N] * pen[:N], ref_prog * ref_pen)
    human = {k: float(raw[k][hi]) for k in TERMS}
    human["EP"] = float(normalize_progress(prog[hi:hi + 1], pen[hi:hi + 1], 0.0, 0.0, cfg)[0])
    if not ec_available:
        cand_terms["EC"] = np.full(N, np.nan)
        human["EC"] = float("nan")

    # 4. human filter and aggregation
    terms = apply_human_filter(cand_terms, human) if human_filter else {k: v.copy() for k, v in cand_terms.items()}
    epdms = aggregate_epdms(terms, ec_available, cfg)
    human_epdms = float(aggregate_epdms({k: np.array([v]) for k, v in human.items()}, ec_available, cfg)[0])
    return EPDMSResult(
        terms=terms, raw_terms=cand_terms, epdms=np.asarray(epdms, dtype=np.float64),
        human_terms=human, human_epdms=human_epdms, ec_available=ec_available,
        states=cand[..., :4].copy(), progress_m=prog[:N].copy(), ep_normalizer=norm,
        reference_states=np.array(refs[..., :4]), reference_index=best,
        reference_progress_m=ref_prog, reference_penalty=ref_pen,
    )


def _check_poses(poses: np.ndarray, prev_states: np.ndarray | None,
                 prev_poses: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate :func:`score_trajectories`' inputs -> ``poses`` ``(N, 8, 3)`` float64 and the
    previous-frame poses ``(N, 8, 3)`` (broadcast from ``(8, 3)``) or None."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (8, 3):
        raise ValueError(f"poses: expected (N, 8, 3), got {poses.shape}")
    if prev_states is not None and prev_poses is not None:
        raise ValueError("give prev_states or prev_poses, not both")
    N = poses.shape[0]
    pp = None
    if prev_poses is not None:
        pp = np.asarray(prev_poses, dtype=np.float64)
        if pp.shape == (8, 3):
            pp = np.broadcast_to(pp, (N, 8, 3))
        if pp.shape != (N, 8, 3):
            raise ValueError(f"prev_poses: expected (8, 3) or ({N}, 8, 3), got {pp.shape}")
    return poses, pp


def _store_tracked(scene: Scene, tracked: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """Cache the scene-level tracks of ``tracked`` on ``scene``; returns (cand, prev or None)."""
    for key in ("reference", "human", "human_prev"):
        if key in tracked:
            arr = tracked[key] if key == "reference" else tracked[key][0]
            arr = np.array(arr)
            arr.setflags(write=False)
            scene._cache[key] = arr
    return tracked["cand"], tracked.get("prev")


def _track_proposals(scene: Scene, poses: np.ndarray, prev_poses: np.ndarray | None,
                     ec_available: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """ONE tracker call for everything not simulated yet (:func:`_track_jobs_many` of one
    scene): the candidates ``poses`` ``(N, 8, 3)``, the reference proposals, the human future
    and, with EC, the previous frames (``prev_poses`` ``(N, 8, 3)`` or None, and the
    human's). The scene-level ones are cached on ``scene``. Returns the candidates' global
    states ``(N, 41, 5)`` and those of ``prev_poses`` ``(N, 41, 5)`` (None without
    ``prev_poses``)."""
    return _store_tracked(scene, _track_jobs_many([scene], [poses], [prev_poses], [ec_available])[0])


def _track_jobs_many(scenes: Sequence[Scene], poses: Sequence[np.ndarray], prev_poses: Sequence[np.ndarray | None],
                     ec_available: Sequence[bool], plans: Mapping[int, np.ndarray] | None = None) -> list[dict]:
    """ONE tracker call for everything of several scenes not simulated yet: each scene's
    candidates ``poses[i]`` ``(n_i, 8, 3)``, its reference proposals (``plans[i]`` when
    given, else :func:`~mosaic_ray.scoring.reference.reference_proposals`), its human future
    and, with EC, its previous frames (``prev_poses[i]`` ``(n_i, 8, 3)`` or None) and the
    human's. The tracker inputs of all pose blocks (the poses in the global frame, moved to
    the rear axle and interpolated, :func:`~mosaic_ray.scoring.simulate.simulate_poses`'s
    arithmetic row by row) and of all reference blocks (box centre moved to the rear axle,
    :func:`~mosaic_ray.scoring.simulate.track_states`') are built in one pass each, in the
    row order scene by scene (cand, reference, human, prev, human_prev), and tracked by one
    :func:`~mosaic_ray.scoring.simulate.track` call with each row's wheel base.

    Returns:
        per scene, ``key -> (n, 41, 5)`` tracked box-centre states of the blocks it needed.
    """
    plans = {} if plans is None else plans
    # blocks: (scene, key, is_pose, start, x, accel, steer); x: poses (n, 8, 3) or states (R, 41, 4)
    blocks = []
    for i, (scene, p, pp, ec) in enumerate(zip(scenes, poses, prev_poses, ec_available)):
        now = (scene.start_state, scene.init_accel, scene.init_steer)
        before = (scene.prev_start, scene.prev_accel, scene.prev_steer)
        blocks.append((i, "cand", True, now, p))
        if "reference" not in scene._cache:
            blocks.append((i, "reference", False, now,
                           plans[i] if i in plans else reference_proposals(scene, REFERENCE_FRACTIONS)))
        if "human" not in scene._cache:
            blocks.append((i, "human", True, now, scene.human_poses[None]))
        if pp is not None:
            blocks.append((i, "prev", True, before, pp))
        if ec and "human_prev" not in scene._cache:
            blocks.append((i, "human_prev", True, before, scene.human_prev_poses[None]))
    sizes = np.array([b[4].shape[0] for b in blocks], dtype=np.int64)
    row0 = np.concatenate([[0], np.cumsum(sizes)])
    geo = [scenes[b[0]].geometry for b in blocks]
    ro = np.repeat([g.rear_offset for g in geo], sizes)
    start = np.repeat(np.stack([np.asarray(b[3][0], np.float64) for b in blocks]), sizes, axis=0)
    # initial states (_init_state's arithmetic with each row's rear offset)
    init = np.empty((start.shape[0], 6))
    init[:, :3] = _centre_to_rear(start[:, :3], ro)
    init[:, 3] = start[:, 3]
    init[:, 4] = np.repeat([float(b[3][1]) for b in blocks], sizes)
    init[:, 5] = np.repeat([float(b[3][2]) for b in blocks], sizes)
    ref = np.empty((start.shape[0], N_STEPS, 3))
    pose_rows = np.concatenate([np.arange(row0[k], row0[k + 1]) for k, b in enumerate(blocks) if b[2]]
                               + [np.zeros(0, np.int64)])
    if pose_rows.size:  # poses_to_global, then the rear axle's interpolated reference
        st, r = start[pose_rows], ro[pose_rows]
        glob = poses_to_global(st, np.concatenate([np.asarray(b[4], np.float64) for b in blocks if b[2]]))
        ref[pose_rows] = interpolate_poses(_centre_to_rear(st[:, :3], r), _centre_to_rear(glob, r[:, None]))
    for k, b in enumerate(blocks):  # reference states: box centre -> rear axle
        if not b[2]:
            ref[row0[k]:row0[k + 1]] = _centre_to_rear(np.asarray(b[4], np.float64)[..., :3], geo[k].rear_offset)
    wb = np.repeat([g.wheel_base for g in geo], sizes)
    out = _tracked_to_centre(track(ref, init, geo[0], wheel_base=wb), ro[:, None])
    res: list[dict] = [{} for _ in scenes]
    for k, b in enumerate(blocks):
        res[b[0]][b[1]] = out[row0[k]:row0[k + 1]]
    return res


def score_many(scenes: Sequence[Scene], poses: np.ndarray, prev_poses: Sequence[np.ndarray | None],
               human_filter: bool = True, *, config: ScorerConfig | None = None) -> list[EPDMSResult]:
    """:func:`score_trajectories` of one trajectory on each of several scenes, with the
    work of all scenes batched: every scene's candidate, reference proposals, human future
    and previous frames go through ONE tracker call (:func:`_track_jobs_many`), the reference
    proposals of all scenes come from one IDM roll-out (:func:`~mosaic_ray.scoring.reference.
    reference_proposals_many`), and the rows of all scenes are scored in one
    :func:`score_states_many` pass; then each scene's result is put together as
    :func:`score_trajectories` does. Same results as one :func:`score_trajectories` call per
    scene (every step is row-wise; checked in tests/test_batched_scoring.py).

    Args:
        scenes: B scenes from :func:`prepare_scene`.
        poses: ``(B, 8, 3)`` ego-frame poses (m, m, rad) at 0.5..4.0 s, one per scene.
        prev_poses: B entries, each ``(8, 3)`` poses of the previous frame (ego frame at
            t0-0.5 s) or None (EC dropped for that scene).
        human_filter: apply NAVSIM's human filter.
        config: thresholds and weights (None: :data:`DEFAULT_SCORER_CONFIG`).

    Returns:
        B :class:`EPDMSResult`, one per scene (each with N = 1).

    Raises:
        ValueError: ``poses`` not ``(B, 8, 3)``, ``prev_poses`` not of length B, non-finite poses.
    """
    cfg = DEFAULT_SCORER_CONFIG if config is None else config
    poses = np.asarray(poses, dtype=np.float64)
    B = len(scenes)
    if poses.shape != (B, 8, 3):
        raise ValueError(f"poses: expected ({B}, 8, 3), got {poses.shape}")
    if len(prev_poses) != B:
        raise ValueError(f"prev_poses: expected {B} entries, got {len(prev_poses)}")
    need = [i for i, sc in enumerate(scenes) if "reference" not in sc._cache]
    plans = dict(zip(need, reference_proposals_many([scenes[i] for i in need], REFERENCE_FRACTIONS)))
    for p, pp in zip(poses, prev_poses):
        _check_poses(p[None], None, None if pp is None else pp)
    tracked = _track_jobs_many(scenes, [p[None] for p in poses],
                               [None if pp is None else np.asarray(pp, np.float64).reshape(1, 8, 3) for pp in prev_poses],
                               [pp is not None for pp in prev_poses], plans)
    cands, prevs = [], []
    for scene, tr in zip(scenes, tracked):
        cand, prev = _store_tracked(scene, tr)
        cands.append(cand)
        prevs.append(prev)
    return _score_tracked_many(scenes, cands, prevs, [pp is not None for pp in prev_poses], human_filter, cfg)


def score_vocabulary(clip_or_scene: Clip | Scene, anchors: np.ndarray,
                     human_filter: bool = True, *, config: ScorerConfig | None = None) -> np.ndarray:
    """Rule-distillation targets: the nine terms of every vocabulary anchor on one clip.

    Hydra-MDP learns to predict, for every vocabulary trajectory, the sub-scores the rule
    scorer gives it. All K anchors are scored in one :func:`score_trajectories` call (with the
    reference and the human). EC depends on the planner's own output at the previous frame,
    which is not a property of the anchor: the EC column is NaN.

    Args:
        clip_or_scene: a Clip or Scene.
        anchors: ``(K, 8, 3)`` ego-frame poses (m, m, rad).
        human_filter: apply the human filter (default, as the evaluation does).
        config: thresholds and weights (None: :data:`DEFAULT_SCORER_CONFIG`).

    Returns:
        ``(K, 9)`` float64, columns in :data:`TERMS` order (EP normalised; EC NaN).
    """
    res = score_trajectories(clip_or_scene, np.asarray(anchors, dtype=np.float64), human_filter=human_filter,
                             config=config)
    return res.terms_array()


def score_human(clip_or_scene: Clip | Scene, with_ec: bool | None = None, *,
                config: ScorerConfig | None = None) -> tuple[dict[str, float], float]:
    """EPDMS terms and score of the logged human future (tracked; no filter applies to it).

    Args:
        clip_or_scene: a Clip or Scene.
        with_ec: include EC (the human's tracked future vs its tracked future from the frame
            0.5 s earlier). None: ``clip.has_prev_frame``.
        config: thresholds and weights (None: :data:`DEFAULT_SCORER_CONFIG`).

    Returns:
        ``(terms, epdms)``: ``term -> float`` (EC NaN without EC) and the human EPDMS.
    """
    scene = clip_or_scene if isinstance(clip_or_scene, Scene) else prepare_scene(clip_or_scene, config)
    if with_ec is None:
        with_ec = bool(scene.clip.has_prev_frame)
    res = score_trajectories(scene, np.zeros((0, 8, 3)),
                             prev_states=scene.human_prev_states() if with_ec else None, config=config)
    return res.human_terms, res.human_epdms
