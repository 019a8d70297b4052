"""A PDM-Closed-like reference planner, used only to normalise the EP term.

NAVSIM scores every planner proposal together with PDM-Closed's output
(``navsim/planning/simulation/planner/pdm_planner/pdm_closed_planner.py``): IDM followers along
the route centre-line at several fractions of the speed limit (and lateral offsets), tracked
with LQR, of which PDM-Closed keeps the one its own scorer ranks best. This module builds
the IDM part on the clip's ``route_center``.

Documented choices (deviations from PDM-Closed)
-----------------------------------------------
* **Target speeds.** The recordings carry no speed limits. The desired speed is
  ``v_des = clip(max(ego speed at t0, fastest agent speed at t0 inside the route corridor,
  5 m/s), 0, 40 m/s)`` and the proposals follow ``fractions * v_des`` with the fractions
  (0.2, 0.4, 0.6, 0.8, 1.0) that PDM-Closed applies to the speed limit.
* **No lateral-offset proposals.** The reference starts at the ego position and blends its
  lateral offset from the centre-line to zero over 2 s (smoothstep); heading is the
  centre-line tangent plus the blend's slope. These 41 states are the plan; as in NAVSIM
  (which re-simulates PDM-Closed's trajectory with the scorer's simulator), the scorer then
  tracks them with the LQR / bicycle model (:meth:`mosaic_ray.scoring.epdms.Scene.
  reference_states`) before scoring.
* **Choice.** Of the tracked proposals the scorer keeps the one PDM-Closed's own scorer would
  rank best (penalties times 5 EP + 5 TTC + 2 LK + 2 HC, EP normalised among the proposals).
* **Leading object.** At each 0.1 s step, the nearest valid agent whose centre projects ahead
  of the reference and within ``(ego width + agent width) / 2`` of the centre-line, or the
  entry of an on-route lane whose light is red at that step (a stopped virtual object), is
  the IDM leader. Agents keep their logged motion (non-reactive), as in NAVSIM.
* IDM parameters are PDM-Closed's defaults: min gap 1.0 m, headway 1.5 s, max acceleration
  1.5 m/s^2, max deceleration 3.0 m/s^2, exponent 4.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .geometry import points_to_segments_distance, project_to_polyline, wrap_angle

__all__ = ["reference_proposals", "REFERENCE_FRACTIONS", "desired_speed"]

REFERENCE_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
MIN_DESIRED_SPEED = 5.0  # m/s
MAX_DESIRED_SPEED = 40.0  # m/s
IDM_MIN_GAP = 1.0  # m
IDM_HEADWAY = 1.5  # s
IDM_ACCEL_MAX = 1.5  # m/s^2
IDM_DECEL_MAX = 3.0  # m/s^2
IDM_DELTA = 4.0
OFFSET_BLEND_S = 2.0  # s, lateral offset decays to 0 over this time
DT = 0.1
N_STEPS = 41


def _extended_path(route: np.ndarray, extra: float = 300.0) -> tuple[np.ndarray, np.ndarray]:
    """The route polyline without repeated vertices, extended straight at both ends."""
    route = np.asarray(route, dtype=np.float64)
    # drop vertices closer than 1 um to the last kept one (consecutive duplicates)
    step = np.hypot(*np.diff(route, axis=0).T)
    keep = np.concatenate([[True], step > 1e-6])
    path = route[keep]
    if path.shape[0] < 2:  # degenerate route: a point; head along +x of the local frame
        path = np.stack([path[0], path[0] + np.array([1.0, 0.0])])
    d0 = path[1] - path[0]
    d1 = path[-1] - path[-2]
    path = np.concatenate([[path[0] - extra * d0 / np.hypot(*d0)], path,
                           [path[-1] + extra * d1 / np.hypot(*d1)]])
    seg = np.diff(path, axis=0)
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
    return path, cum


def _path_distance_bound(points: np.ndarray, path: np.ndarray) -> np.ndarray:
    """A lower bound (m) of each point's distance to an :func:`_extended_path` polyline:
    ``(..., 2)`` -> ``(...)``. The path is its first segment, the route, and its last segment;
    the distance to the route is bounded by the distance to the route's bounding box."""
    core = path[1:-1]
    gap = np.maximum(np.maximum(core.min(axis=0) - points, points - core.max(axis=0)), 0.0)
    ends = points_to_segments_distance(points, np.stack([path[:2], path[-2:]]))
    return np.minimum(np.hypot(gap[..., 0], gap[..., 1]), ends)


def desired_speed(scene: Any) -> float:
    """Desired speed (m/s) of the reference: see the module docstring."""
    v0 = float(scene.start_local[3])
    path, _ = _extended_path(scene.route_center)
    boxes, valid = scene.agent_boxes[0], scene.agent_valid[0]
    v_obs = 0.0
    if valid.any():
        _, _, dist = project_to_polyline(boxes[valid, :2], path)
        near = dist <= 0.5 * (scene.ego_width + boxes[valid, 4])
        if near.any():
            v_obs = float(np.nanmax(scene.agent_speed[0, valid][near]))
    return _desired(v0, v_obs)


def _desired(v0: float, v_obs: float) -> float:
    """Desired speed (m/s) from the ego's speed and the fastest corridor agent's at t0."""
    return float(np.clip(max(v0, v_obs, MIN_DESIRED_SPEED), 0.0, MAX_DESIRED_SPEED))


def reference_proposals(scene: Any, fractions: Sequence[float] = REFERENCE_FRACTIONS) -> np.ndarray:
    """IDM centre-line followers for a prepared scene.

    Args:
        scene: a :class:`mosaic_ray.scoring.epdms.Scene` (local-frame route, agents, lights).
        fractions: target speeds as fractions of :func:`desired_speed`.

    Returns:
        ``(R, 41, 4)`` float64 global states ``[x, y, heading, speed]`` (m, m, rad, m/s) at
        0.1 s from t0, ``R = len(fractions)``; index 0 is the ego start state.
    """
    su = _setup(scene, fractions)
    S, V = _idm_rollout([su])[0]
    return _finish(scene, su, S, V)


def reference_proposals_many(scenes: Sequence[Any],
                             fractions: Sequence[float] = REFERENCE_FRACTIONS) -> list[np.ndarray]:
    """:func:`reference_proposals` of several scenes with ONE IDM roll-out loop over all of them
    (agents and red lights padded per scene; padding never leads, so each scene's result equals
    its :func:`reference_proposals`, checked in tests/test_batched_scoring.py).

    Returns:
        one ``(R, 41, 4)`` float64 array per scene, as :func:`reference_proposals`.
    """
    sus = [_setup(sc, fractions) for sc in scenes]
    return [_finish(sc, su, S, V) for sc, su, (S, V) in zip(scenes, sus, _idm_rollout(sus))]


def _setup(scene: Any, fractions: Sequence[float]) -> dict:
    """Per-scene inputs of the IDM roll-out: path, start, target speeds, agents on the path."""
    frac = np.asarray(fractions, dtype=np.float64)
    R = frac.shape[0]
    path, cum = _extended_path(scene.route_center)
    seg = np.diff(path, axis=0)
    seg_h = np.arctan2(seg[:, 1], seg[:, 0])
    # vertex headings: mean direction of the adjacent segments, unwrapped, for smooth tangents
    vh = np.concatenate([[seg_h[0]], seg_h])
    vh[1:-1] = seg_h[:-1] + 0.5 * wrap_angle(seg_h[1:] - seg_h[:-1])
    vh = np.unwrap(vh)

    start = scene.start_local  # (4,) local [x, y, h, v]
    s0_arr, lat0_arr, _ = project_to_polyline(start[None, :2], path)
    s0, d0 = float(s0_arr[0]), float(lat0_arr[0])
    v0 = float(start[3])
    L, W = scene.ego_length, scene.ego_width
    v_obs = 0.0  # desired_speed's: the fastest agent in the corridor at t0

    # agents along the path at each future step
    boxes = scene.agent_boxes  # (41, A, 5)
    valid = scene.agent_valid  # (41, A)
    A = boxes.shape[1]
    if A:
        a_arc = np.zeros(valid.shape)
        a_lat = np.full(valid.shape, np.inf)  # invalid agents: never in the corridor
        # only agents whose centre can be in the corridor are projected (the others keep
        # a_lat = inf; their a_arc is never read): the distance to the path is bounded from
        # below by the least of the distances to the two straight extensions and to the
        # bounding box of the route between them
        cand = valid & (_path_distance_bound(boxes[..., :2], path) <= 0.5 * (W + boxes[..., 4]) + 1e-6)
        if cand.any():
            a_arc[cand], a_lat[cand], _ = project_to_polyline(boxes[cand][:, :2], path)
        path_h = np.interp(a_arc, cum, vh)
        a_vlong = np.nan_to_num(scene.agent_speed) * np.cos(boxes[..., 2] - path_h)
        in_corr = valid & (np.abs(a_lat) <= 0.5 * (W + boxes[..., 4]))
        half = 0.5 * (L + boxes[..., 3])
        if in_corr[0].any():  # = desired_speed(scene)'s agents (the same projection and test)
            v_obs = float(np.nanmax(scene.agent_speed[0][in_corr[0]]))
    v_target = frac * _desired(v0, v_obs)
    # red-light stops: entry arc of on-route lanes whose light is red at the step
    red = scene.red_lanes  # (41, M)
    red_arc = np.full(red.shape[1], np.inf)
    if red.any():
        lanes = np.nonzero(red.any(axis=0))[0]
        entries = np.stack([scene.lane_center_local(i)[0] for i in lanes])
        e_arc, _, e_dist = project_to_polyline(entries, path)
        red_arc[lanes] = np.where(e_dist <= 0.5 * W + 2.0, e_arc, np.inf)

    su = dict(path=path, cum=cum, vh=vh, start=start, d0=d0, s0=s0, v0=v0, v_target=v_target, L=L, R=R, A=0,
              red=red, red_arc=red_arc)
    if A:
        # the roll-out keeps only the agents in the corridor at some step: the others' gap is
        # inf at every step, so they never lead; the rest keep their order, so the first
        # argmin picks the same agent
        lead = np.flatnonzero(in_corr.any(axis=0))
        su.update(A=lead.size, a_arc=a_arc[:, lead], a_vlong=a_vlong[:, lead], in_corr=in_corr[:, lead],
                  half=half[:, lead])
    return su


def _idm_rollout(sus: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Arc length S and speed V ``(R, 41)`` of every scene's proposals: the IDM loop over the
    41 steps, run once for all scenes (rows of scene b: ``R`` rows; agents padded to the largest
    count with entries never in the corridor, red lights padded with never-red lanes)."""
    B = len(sus)
    if B == 0:
        return []
    Rs = [su["R"] for su in sus]
    rows = np.repeat(np.arange(B), Rs)
    n = len(rows)
    A = max(su["A"] for su in sus)
    M = max(su["red"].shape[1] for su in sus)
    s = np.concatenate([np.full(su["R"], su["s0"]) for su in sus])
    v = np.concatenate([np.full(su["R"], su["v0"]) for su in sus])
    v_target = np.concatenate([su["v_target"] for su in sus])
    Lrow = np.array([su["L"] for su in sus])[rows]
    if A:
        in_corr = np.zeros((B, N_STEPS, A), bool)
        a_arc = np.zeros((B, N_STEPS, A))
        half = np.zeros((B, N_STEPS, A))
        a_vlong = np.zeros((B, N_STEPS, A))
        for b, su in enumerate(sus):
            k = su["A"]
            if k:
                in_corr[b, :, :k], a_arc[b, :, :k] = su["in_corr"], su["a_arc"]
                half[b, :, :k], a_vlong[b, :, :k] = su["half"], su["a_vlong"]
        in_corr, a_arc, half, a_vlong = in_corr[rows], a_arc[rows], half[rows], a_vlong[rows]  # (n, 41, A)
    if M:
        red = np.zeros((B, N_STEPS, M), bool)
        red_arc = np.full((B, M), np.inf)
        for b, su in enumerate(sus):
            m = su["red"].shape[1]
            red[b, :, :m], red_arc[b, :m] = su["red"], su["red_arc"]
        red, red_arc = red[rows], red_arc[rows]                                   # (n, 41, M), (n, M)
    S = np.empty((n, N_STEPS))
    V = np.empty((n, N_STEPS))
    S[:, 0], V[:, 0] = s, v
    a_cmf = np.sqrt(IDM_ACCEL_MAX * IDM_DECEL_MAX)
    ar = np.arange(n)
    for t in range(N_STEPS - 1):
        gap = np.full(n, np.inf)
        v_lead = np.zeros(n)
        if A:
            ahead = in_corr[:, t] & (a_arc[:, t] > s[:, None])                     # (n, A)
            g = np.where(ahead, a_arc[:, t] - s[:, None] - half[:, t], np.inf)
            k = np.argmin(g, axis=1)
            gap = g[ar, k]
            v_lead = np.where(np.isfinite(gap), a_vlong[ar, t, k], 0.0)
        if M:
            r_arc = np.where(red[:, t], red_arc, np.inf)                           # (n, M)
            rg = r_arc - s[:, None] - 0.5 * Lrow[:, None]
            rg = np.where(rg > -0.5 * Lrow[:, None], rg, np.inf)  # already past the entry: ignore
            rmin = rg.min(axis=1)
            use = rmin < gap
            gap = np.where(use, rmin, gap)
            v_lead = np.where(use, 0.0, v_lead)
        free = 1.0 - (v / np.maximum(v_target, 1e-3)) ** IDM_DELTA
        s_star = IDM_MIN_GAP + v * IDM_HEADWAY + v * (v - v_lead) / (2.0 * a_cmf)
        s_star = np.maximum(s_star, IDM_MIN_GAP)
        inter = np.where(np.isfinite(gap), (s_star / np.maximum(gap, 1e-2)) ** 2, 0.0)
        acc = np.clip(IDM_ACCEL_MAX * (free - inter), -IDM_DECEL_MAX, IDM_ACCEL_MAX)
        v_new = np.maximum(v + acc * DT, 0.0)
        s = s + 0.5 * (v + v_new) * DT
        v = v_new
        S[:, t + 1], V[:, t + 1] = s, v
    return list(zip(np.split(S, np.cumsum(Rs)[:-1]), np.split(V, np.cumsum(Rs)[:-1])))


def _finish(scene: Any, su: dict, S: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Global states ``(R, 41, 4)`` from the roll-out's arc lengths and speeds."""
    path, cum, vh, start, d0 = su["path"], su["cum"], su["vh"], su["start"], su["d0"]
    R = su["R"]
    # positions: centre-line point plus the decaying lateral offset
    tt = np.arange(N_STEPS) * DT
    u = np.clip(tt / OFFSET_BLEND_S, 0.0, 1.0)
    blend = 1.0 - u * u * (3.0 - 2.0 * u)
    dblend = -6.0 * u * (1.0 - u) / OFFSET_BLEND_S  # d blend / dt
    d = d0 * blend                                   # (41,)
    dd = d0 * dblend
    cx = np.interp(S, cum, path[:, 0])
    cy = np.interp(S, cum, path[:, 1])
    ch = np.interp(S, cum, vh)
    nx, ny = -np.sin(ch), np.cos(ch)
    slope = np.where(V > 0.5, np.arctan2(dd[None, :], np.maximum(V, 1e-6)), 0.0)
    local = np.empty((R, N_STEPS, 4))
    local[..., 0] = cx + nx * d[None, :]
    local[..., 1] = cy + ny * d[None, :]
    local[..., 2] = ch + slope
    local[..., 3] = V
    local[:, 0, :] = start
    return scene.to_global_states(local)
