"""A straightforward per-step reference implementation of the EPDMS terms (shapely loops).

This module recomputes everything :mod:`mosaic_ray.scoring.epdms` computes, the way NAVSIM's
``pdm_scorer.py`` does it: plain Python loops over proposals and time steps, shapely
``Polygon`` / ``Point`` / ``LineString`` predicates in the clip's global frame, NAVSIM's LQR
tracker written per proposal with its ``pinv`` least-squares fits
(``batch_lqr_utils.py``) and the 3 x 3 horizon products of ``batch_lqr.py``, and
``scipy.signal.savgol_filter`` for the comfort signals. It shares with the vectorised scorer
only the thresholds (:class:`~mosaic_ray.scoring.config.ScorerConfig`, read here field by
field as NAVSIM's ``PDMScorer`` reads its config), :class:`~mosaic_ray.scoring.simulate.EgoGeometry` /
:class:`~mosaic_ray.scoring.simulate.TrackerParams`, and the IDM reference-proposal
generator (:func:`mosaic_ray.scoring.reference.reference_proposals`, an input generator, not
a term).

Uses: the oracle of the property tests (the vectorised scorer must agree term by term on
random scenes) and the speed baseline of ``benchmarks/bench_scorer.py``. It makes no attempt
at speed: nothing is vectorised, batched or spatially indexed.

Conventions are those of :mod:`mosaic_ray.scoring.epdms` (box-centre states, rear axle at
``EgoGeometry.rear_offset`` behind the centre, lanes as closed polygons ``left + reversed
right``; a point on a lane boundary counts as inside, ``covers``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import savgol_filter
from shapely import affinity
from shapely.geometry import LineString, Point, Polygon

from ..data.clip import AGENT_STATIC, FUT_SLICE, N_PRE, POSE_STEPS, T0_INDEX, TL_RED, Clip
from . import epdms as E
from .config import DEFAULT_SCORER_CONFIG, FILTERED_TERMS, TERMS, ScorerConfig
from .simulate import DEFAULT_PARAMS, EgoGeometry, TrackerParams

__all__ = ["RefScene", "ref_simulate", "ref_track", "ref_score_states", "ref_score_trajectories"]

DT = 0.1


def _wrap(a: float) -> float:
    return (a + math.pi) % (2.0 * math.pi) - math.pi


# =================================================================================== tracker
def _profiles(poses: np.ndarray, p: TrackerParams) -> tuple[np.ndarray, np.ndarray]:
    """NAVSIM get_velocity_curvature_profiles_with_derivatives_from_poses for one proposal."""
    d = np.diff(poses, axis=0)
    M = d.shape[0]
    dh = np.array([_wrap(v) for v in d[:, 2]])
    y = d[:, :2].reshape(-1)
    col = np.zeros(2 * M)
    col[0::2] = np.cos(poses[:-1, 2])
    col[1::2] = np.sin(poses[:-1, 2])
    A = np.repeat(col[:, None] * DT ** 2, M, axis=1)
    A[:, 0] = col * DT
    A[np.repeat(np.triu(np.ones((M, M), bool), k=1), 2, axis=0)] = 0.0
    band = np.zeros((M - 2, M - 1))
    band[:, 1:] += np.eye(M - 2)
    band[:, :-1] -= np.eye(M - 2)
    R = np.concatenate([np.zeros((M - 2, 1)), band], axis=1)
    x = np.linalg.pinv(A.T @ A + p.jerk_penalty * R.T @ R) @ A.T @ y
    v = x[0] + np.concatenate([[0.0], np.cumsum(x[1:] * DT)])
    A2 = np.tri(M)
    A2[:, 0] = v * DT
    A2[1:, 1:] *= (v[1:] * DT * DT)[:, None]
    Q = p.curvature_rate_penalty * np.eye(M)
    Q[0, 0] = p.initial_curvature_penalty
    x2 = np.linalg.pinv(A2.T @ A2 + Q) @ A2.T @ dh
    k = x2[0] + np.concatenate([[0.0], np.cumsum(x2[1:] * DT)])
    return v, k


def ref_track(ref: np.ndarray, init: np.ndarray, wheel_base: float,
              p: TrackerParams = DEFAULT_PARAMS) -> np.ndarray:
    """NAVSIM LQR + kinematic bicycle for ONE proposal.

    Args:
        ref: ``(41, 3)`` rear-axle reference poses. init: ``(6,)`` ``[x, y, h, v, a, steer]``.

    Returns:
        ``(41, 6)`` rear-axle states ``[x, y, h, v, a, steer]``.
    """
    P = ref.shape[0]
    v_prof, k_prof = _profiles(ref, p)
    M, H = len(v_prof), p.tracking_horizon
    x, y, h, v, a, st = (float(u) for u in init)
    out = [[x, y, h, v, a, st]]
    for t in range(P - 1):
        hr = ref[t, 2]
        ex, ey = x - ref[t, 0], y - ref[t, 1]
        lat = -ex * math.sin(hr) + ey * math.cos(hr)
        he = _wrap(h - hr)
        ridx = min(t + H, M - 1)
        vref = v_prof[ridx]
        kp = np.zeros(H)
        n = ridx - t
        kp[:n] = k_prof[t:ridx]
        if n < H:
            kp[n:] = k_prof[ridx]
        if vref <= p.stopping_velocity and v <= p.stopping_velocity:
            acc, rate = -p.stopping_proportional_gain * (v - vref), 0.0
        else:
            B = H * DT
            acc = -1.0 / (B * p.q_longitudinal * B + p.r_longitudinal) * B * p.q_longitudinal * (v - vref)
            vp = v + np.concatenate([[0.0], np.cumsum(np.full(H, acc) * DT)])[:H]
            Am, Bm, g = np.eye(3), np.zeros(3), np.zeros(3)
            inm = np.array([0.0, 0.0, DT])
            for kk in range(H):
                Mk = np.eye(3)
                Mk[0, 1] = vp[kk] * DT
                Mk[1, 2] = vp[kk] * DT / wheel_base
                aff = np.array([0.0, -vp[kk] * kp[kk] * DT, 0.0])
                Am, Bm, g = Mk @ Am, Mk @ Bm + inm, Mk @ g + aff
            xe = Am @ np.array([lat, he, st]) + g
            xe[1:] = np.arctan2(np.sin(xe[1:]), np.cos(xe[1:]))
            Q = np.diag(p.q_lateral)
            rate = float(-(Bm @ Q @ xe) / (Bm @ Q @ Bm + p.r_lateral))
        a_new = DT / (DT + p.accel_time_constant) * (acc - a) + a
        ideal = DT * rate + st
        st_upd = DT / (DT + p.steering_angle_time_constant) * (ideal - st) + st
        srate = (st_upd - st) / DT
        x, y, h, v = (x + DT * v * math.cos(h), y + DT * v * math.sin(h),
                      _wrap(h + DT * v * math.tan(st) / wheel_base), v + DT * a_new)
        st = min(max(st + DT * srate, -p.max_steering_angle), p.max_steering_angle)
        a = a_new
        out.append([x, y, h, v, a, st])
    return np.array(out)


def ref_simulate(start: np.ndarray, poses: np.ndarray, geom: EgoGeometry, accel0: float = 0.0,
                 steer0: float = 0.0) -> np.ndarray:
    """One proposal: ego-frame box-centre poses ``(8, 3)`` -> ``(41, 5)`` global box-centre
    ``[x, y, h, v, a]`` (linear interpolation of the rear-axle poses, then :func:`ref_track`)."""
    x0, y0, h0, v0 = (float(u) for u in start)
    ro = geom.rear_offset
    knots = [(x0 - ro * math.cos(h0), y0 - ro * math.sin(h0), h0)]
    for px, py, ph in poses:
        gx = x0 + math.cos(h0) * px - math.sin(h0) * py
        gy = y0 + math.sin(h0) * px + math.cos(h0) * py
        gh = _wrap(h0 + ph)
        knots.append((gx - ro * math.cos(gh), gy - ro * math.sin(gh), gh))
    knots = np.array(knots)
    tk = np.arange(9) * 0.5
    ts = np.arange(41) * DT
    hu = np.unwrap(knots[:, 2])
    ref = np.stack([np.interp(ts, tk, knots[:, 0]), np.interp(ts, tk, knots[:, 1]),
                    [_wrap(u) for u in np.interp(ts, tk, hu)]], axis=-1)
    sim = ref_track(ref, np.array([*knots[0], v0, accel0, steer0]), geom.wheel_base)
    return _to_centre(sim, ro)


def _to_centre(sim: np.ndarray, ro: float) -> np.ndarray:
    out = np.empty((sim.shape[0], 5))
    for i, (x, y, h, v, a, _) in enumerate(sim):
        out[i] = [x + ro * math.cos(h), y + ro * math.sin(h), h, v, a]
    return out


def _dynamics(states: np.ndarray, geom: EgoGeometry) -> tuple[float, float]:
    """Initial accel / steering from the last three logged states (0.2 s differences)."""
    v1, v0 = states[-1, 3], states[-3, 3]
    acc = (v1 - v0) / 0.2
    om = _wrap(states[-1, 2] - states[-3, 2]) / 0.2
    steer = math.atan(om * geom.wheel_base / v1) if abs(v1) >= 0.5 else 0.0
    return acc, min(max(steer, -DEFAULT_PARAMS.max_steering_angle), DEFAULT_PARAMS.max_steering_angle)


# ===================================================================================== scene
def _box_polygon(x, y, h, length, width) -> Polygon:
    c, s = math.cos(h), math.sin(h)
    pts = []
    for fx, fy in ((0.5 * length, 0.5 * width), (-0.5 * length, 0.5 * width),
                   (-0.5 * length, -0.5 * width), (0.5 * length, -0.5 * width)):
        pts.append((x + c * fx - s * fy, y + s * fx + c * fy))
    return Polygon(pts)


def _bearing(ex, ey, eh, ox, oy) -> float:
    return abs(_wrap(math.atan2(oy - ey, ox - ex) - eh))


@dataclass
class RefScene:
    """Shapely objects of one clip (global frame)."""

    clip: Clip
    geom: EgoGeometry
    lanes: list
    on_route: np.ndarray
    in_inter: np.ndarray
    red: np.ndarray            # (41, M)
    route: LineString
    agents: list               # per future step: list of (a, polygon, cx, cy)
    ignored: set
    stopped: np.ndarray
    static: np.ndarray
    history: np.ndarray        # (15, 5)
    start: np.ndarray
    accel0: float
    steer0: float
    prev_start: np.ndarray
    prev_accel: float
    prev_steer: float
    human_poses: np.ndarray
    human_prev_poses: np.ndarray

    @classmethod
    def from_clip(cls, clip: Clip, config: ScorerConfig | None = None) -> "RefScene":
        """``config`` (None: the defaults) gives the object-stopped speed threshold (m/s)."""
        cfg = DEFAULT_SCORER_CONFIG if config is None else config
        es = clip.ego_states
        L, W = float(clip.ego_size[0]), float(clip.ego_size[1])
        geom = EgoGeometry.from_size(L, W)
        lanes = [Polygon(clip.lane_polygon(i)) for i in range(clip.num_lanes)]
        on_route = np.asarray(clip.lane_on_route, bool)
        red = ((np.asarray(clip.lane_tl_state)[:, FUT_SLICE] == TL_RED) & on_route[:, None]).T
        agents = []
        for k in range(T0_INDEX, T0_INDEX + 41):
            row = []
            for a in range(clip.num_agents):
                s = clip.agent_states[a, k]
                if clip.agent_valid[a, k] and np.isfinite(s).all():
                    row.append((a, _box_polygon(s[0], s[1], s[2], *clip.agent_size[a]), s[0], s[1]))
            agents.append(row)
        ignored = set()
        for k in range(N_PRE, T0_INDEX + 1):
            ego = _box_polygon(es[k, 0], es[k, 1], es[k, 2], L, W)
            for a in range(clip.num_agents):
                s = clip.agent_states[a, k]
                if clip.agent_valid[a, k] and np.isfinite(s).all():
                    if ego.intersects(_box_polygon(s[0], s[1], s[2], *clip.agent_size[a])):
                        ignored.add(a)
        static = np.asarray(clip.agent_types) == AGENT_STATIC
        stopped = static.copy()
        for a in range(clip.num_agents):
            for k in range(T0_INDEX, T0_INDEX + 41):
                if clip.agent_valid[a, k] and np.isfinite(clip.agent_states[a, k]).all():
                    stopped[a] |= abs(clip.agent_states[a, k, 3]) <= cfg.object_stopped_speed_threshold
                    break
        hist = np.zeros((15, 5))
        for i, k in enumerate(range(N_PRE, T0_INDEX)):
            hist[i, :4] = es[k]
            hist[i, 4] = (es[k + 1, 3] - es[k, 3]) / DT if i == 0 else (es[k, 3] - es[k - 1, 3]) / DT
        pi = T0_INDEX - 5
        acc0, st0 = _dynamics(es[T0_INDEX - 2:T0_INDEX + 1], geom)
        pacc, pst = _dynamics(es[pi - 2:pi + 1], geom)

        def poses_from(k0):
            x0, y0, h0 = es[k0, :3]
            out = []
            for k in k0 + POSE_STEPS:
                dx, dy = es[k, 0] - x0, es[k, 1] - y0
                out.append([math.cos(h0) * dx + math.sin(h0) * dy, -math.sin(h0) * dx + math.cos(h0) * dy,
                            _wrap(es[k, 2] - h0)])
            return np.array(out)

        return cls(clip=clip, geom=geom, lanes=lanes, on_route=on_route,
                   in_inter=np.asarray(clip.lane_in_intersection, bool), red=red,
                   route=LineString(clip.route_center), agents=agents, ignored=ignored,
                   stopped=stopped, static=static, history=hist, start=es[T0_INDEX].copy(),
                   accel0=acc0, steer0=st0, prev_start=es[pi].copy(), prev_accel=pacc, prev_steer=pst,
                   human_poses=poses_from(T0_INDEX), human_prev_poses=poses_from(pi))


# =================================================================================== comfort
def _unwrap(h: np.ndarray) -> np.ndarray:
    adj = np.zeros_like(h)
    adj[1:] = np.cumsum(np.round(np.diff(h) / (2 * np.pi)))
    return h - 2 * np.pi * adj


def _signals(seq: np.ndarray, yaw_order: int) -> dict:
    T = seq.shape[0]
    v, a = seq[:, 3], seq[:, 4]
    yaw = _unwrap(seq[:, 2])

    def sg(y, w, o, d):
        return savgol_filter(y, window_length=min(w, T), polyorder=o, deriv=d, delta=DT)

    yr = sg(yaw, 5, 2, 1)
    lat = v * yr
    lon = np.round(sg(a, 8, 2, 0), 8)
    acc = np.round(sg(np.hypot(a, lat), 8, 2, 0), 8)
    return {"lon_accel": lon, "lat_accel": np.round(sg(lat, 8, 2, 0), 8), "accel": acc,
            "lon_jerk": np.round(sg(lon, 15, 2, 1), 8), "jerk": np.round(sg(acc, 15, 2, 1), 8),
            "yaw_rate": np.round(yr, 8), "yaw_accel": np.round(sg(yaw, 5, yaw_order, 2), 8)}


def _hc(seq: np.ndarray, cfg: ScorerConfig) -> float:
    s = _signals(seq, 3)
    ok = np.all((s["lon_accel"] > cfg.min_lon_accel) & (s["lon_accel"] < cfg.max_lon_accel))
    ok &= np.all(np.abs(s["lat_accel"]) < cfg.max_abs_lat_accel)
    ok &= np.all(np.abs(s["jerk"]) < cfg.max_abs_mag_jerk)
    ok &= np.all(np.abs(s["lon_jerk"]) < cfg.max_abs_lon_jerk)
    ok &= np.all(np.abs(s["yaw_rate"]) < cfg.max_abs_yaw_rate)
    ok &= np.all(np.abs(s["yaw_accel"]) < cfg.max_abs_yaw_accel)
    return float(ok)


def _ec(cur: np.ndarray, prev: np.ndarray, cfg: ScorerConfig) -> float:
    c, p = _signals(cur[:-5], 2), _signals(prev[5:], 2)

    def rms(k):
        return math.sqrt(float(np.mean((c[k] - p[k]) ** 2)))

    return float(rms("accel") <= cfg.ec_acceleration_threshold and rms("jerk") <= cfg.ec_jerk_threshold
                 and rms("yaw_rate") <= cfg.ec_yaw_rate_threshold and rms("yaw_accel") <= cfg.ec_yaw_accel_threshold)


# ==================================================================================== terms
def _with_accel(states: np.ndarray) -> np.ndarray:
    if states.shape[-1] == 5:
        return states
    out = np.zeros(states.shape[:-1] + (5,))
    out[..., :4] = states
    for n in range(states.shape[0]):
        for t in range(1, states.shape[1]):
            out[n, t, 4] = (states[n, t, 3] - states[n, t - 1, 3]) / DT
        out[n, 0, 4] = out[n, 1, 4]
    return out


def ref_score_states(rs: RefScene, states: np.ndarray, prev_states: np.ndarray | None = None,
                     config: ScorerConfig | None = None) -> dict:
    """Raw terms (EP in metres) of global box-centre states ``(N, 41, 4|5)``, per step with
    shapely; ``prev_states`` ``(N, 41, 4|5)`` (NaN rows: EC NaN) or None; ``config``: the
    thresholds (None: the defaults; the object-stopped threshold is the RefScene's)."""
    cfg = DEFAULT_SCORER_CONFIG if config is None else config
    behind = math.radians(cfg.agent_behind_tolerance_deg)
    ahead = math.radians(cfg.agent_ahead_tolerance_deg)
    ddc_window, ttc_offsets, lk_steps = cfg.ddc_window_steps, cfg.ttc_offsets, cfg.lk_max_steps
    S = _with_accel(np.asarray(states, dtype=np.float64))
    N = S.shape[0]
    L, W, ro = rs.geom.length, rs.geom.width, rs.geom.rear_offset
    out = {k: np.ones(N) for k in TERMS}
    if prev_states is not None:
        prev_states = np.asarray(prev_states, dtype=np.float64)
    for n in range(N):
        polys, off, multi, on_route, c_inter, r_inter, rear = [], [], [], [], [], [], []
        for t in range(41):
            x, y, h = S[n, t, 0], S[n, t, 1], S[n, t, 2]
            poly = _box_polygon(x, y, h, L, W)
            polys.append(poly)
            corners = [Point(c) for c in list(poly.exterior.coords)[:4]]
            inside = [[lane.covers(c) for c in corners] for lane in rs.lanes]
            off.append(not all(any(inside[m][i] for m in range(len(rs.lanes))) for i in range(4)))
            touched = sum(1 for m in range(len(rs.lanes)) if any(inside[m]))
            multi.append(touched > 1 and not any(all(inside[m]) for m in range(len(rs.lanes))))
            cp = Point(x, y)
            rx, ry = x - ro * math.cos(h), y - ro * math.sin(h)
            rp = Point(rx, ry)
            rear.append((rx, ry))
            on_route.append(any(rs.on_route[m] and lane.covers(cp) for m, lane in enumerate(rs.lanes)))
            c_inter.append(any(rs.in_inter[m] and lane.covers(cp) for m, lane in enumerate(rs.lanes)))
            r_inter.append(any(rs.in_inter[m] and lane.covers(rp) for m, lane in enumerate(rs.lanes)))
        # NC
        collided = set(rs.ignored)
        nc = 1.0
        for t in range(41):
            for a, apoly, ax, ay in rs.agents[t]:
                if a in collided or not polys[t].intersects(apoly):
                    continue
                h = S[n, t, 2]
                if abs(S[n, t, 3]) <= cfg.ego_stopped_speed_threshold:
                    fault = False
                elif rs.stopped[a]:
                    fault = True
                elif _bearing(rear[t][0], rear[t][1], h, ax, ay) > behind:
                    fault = False
                else:
                    c = list(polys[t].exterior.coords)
                    if LineString([c[0], c[3]]).intersects(apoly):
                        fault = True
                    else:
                        fault = multi[t] or off[t]
                if fault:
                    nc = min(nc, cfg.static_object_collision_score if rs.static[a] else 0.0)
                else:
                    collided.add(a)
        out["NC"][n] = nc
        out["DAC"][n] = 0.0 if any(off) else 1.0
        # DDC
        prog = [0.0] + [math.hypot(S[n, t, 0] - S[n, t - 1, 0], S[n, t, 1] - S[n, t - 1, 1]) if not on_route[t] else 0.0
                        for t in range(1, 41)]
        worst = max(sum(prog[max(0, t - ddc_window):t + 1]) for t in range(41))
        out["DDC"][n] = (1.0 if worst < cfg.driving_direction_compliance_threshold
                         else (0.5 if worst < cfg.driving_direction_violation_threshold else 0.0))
        # TLC
        out["TLC"][n] = 0.0 if any(rs.red[t, m] and polys[t].intersects(rs.lanes[m])
                                   for t in range(41) for m in range(len(rs.lanes))) else 1.0
        # EP
        p0 = rs.route.project(Point(S[n, 0, 0], S[n, 0, 1]))
        p1 = rs.route.project(Point(S[n, 40, 0], S[n, 40, 1]))
        out["EP"][n] = max(p1 - p0, 0.0)
        # TTC
        temp = set(rs.ignored)
        ttc = 1.0
        for t in range(41 - max(ttc_offsets)):
            sp = abs(S[n, t, 3])
            h = S[n, t, 2]
            for k in ttc_offsets:
                proj = affinity.translate(polys[t], sp * math.cos(h) * k * DT, sp * math.sin(h) * k * DT)
                for a, apoly, ax, ay in rs.agents[t + k]:
                    if a in temp or sp < cfg.stopped_speed_threshold or not proj.intersects(apoly):
                        continue
                    b = _bearing(rear[t][0], rear[t][1], h, ax, ay)
                    if b < ahead or ((multi[t] or off[t] or r_inter[t]) and b <= behind):
                        ttc = 0.0
                    else:
                        temp.add(a)
        out["TTC"][n] = ttc
        # LK
        streak = 0
        lk = 1.0
        for t in range(41):
            if c_inter[t]:
                continue
            if rs.route.distance(Point(S[n, t, 0], S[n, t, 1])) > cfg.lane_keeping_deviation_limit:
                streak += 1
            else:
                streak = 0
            if streak >= lk_steps:
                lk = 0.0
                break
        out["LK"][n] = lk
        out["HC"][n] = _hc(np.concatenate([rs.history, S[n]], axis=0), cfg)
        if prev_states is None or not np.isfinite(prev_states[n]).all():
            out["EC"][n] = np.nan
        else:
            out["EC"][n] = _ec(S[n], _with_accel(prev_states[n][None])[0], cfg)
    return out


def ref_score_trajectories(clip: Clip, poses: np.ndarray, prev_poses: np.ndarray | None = None,
                           human_filter: bool = True, reference_plans: np.ndarray | None = None,
                           config: ScorerConfig | None = None) -> dict:
    """Full pipeline for one clip, proposal by proposal.

    Args:
        clip: the clip. poses: ``(N, 8, 3)`` ego-frame poses. prev_poses: ``(N, 8, 3)`` poses
            of the previous frame or None (EC dropped). reference_plans: ``(R, 41, 4)`` IDM
            plans (default: :func:`~mosaic_ray.scoring.reference.reference_proposals` of the
            clip, the shared input generator). config: thresholds and weights (None: the
            defaults).

    Returns:
        dict with ``terms`` (term -> (N,)), ``epdms`` (N,), ``human_terms`` (term -> float),
        ``states`` (N, 41, 5), ``reference_index``.
    """
    cfg = DEFAULT_SCORER_CONFIG if config is None else config
    w = cfg.weights
    rs = RefScene.from_clip(clip, cfg)
    g = rs.geom
    if reference_plans is None:
        from .reference import reference_proposals
        reference_plans = reference_proposals(E.prepare_scene(clip))
    cand = [ref_simulate(rs.start, p, g, rs.accel0, rs.steer0) for p in np.asarray(poses, float)]
    refs = []
    for plan in reference_plans:
        rear = np.array([[x - g.rear_offset * math.cos(h), y - g.rear_offset * math.sin(h), h]
                         for x, y, h, _ in plan])
        init = np.array([*rear[0], rs.start[3], rs.accel0, rs.steer0])
        refs.append(_to_centre(ref_track(rear, init, g.wheel_base), g.rear_offset))
    human = ref_simulate(rs.start, rs.human_poses, g, rs.accel0, rs.steer0)
    N, R = len(cand), len(refs)
    allst = np.array(cand + refs + [human]).reshape(N + R + 1, 41, 5)
    prev = None
    if prev_poses is not None:
        pc = [ref_simulate(rs.prev_start, p, g, rs.prev_accel, rs.prev_steer) for p in np.asarray(prev_poses, float)]
        hp = ref_simulate(rs.prev_start, rs.human_prev_poses, g, rs.prev_accel, rs.prev_steer)
        prev = np.array(pc + [np.full((41, 5), np.nan)] * R + [hp]).reshape(N + R + 1, 41, 5)
    raw = ref_score_states(rs, allst, prev, cfg)
    pen = raw["NC"] * raw["DAC"] * raw["DDC"] * raw["TLC"]
    prog = raw["EP"]
    # reference choice
    best, best_score = 0, -1.0
    rp = [prog[N + r] * pen[N + r] for r in range(R)]
    m = max(rp) if R else 0.0
    for r in range(R):
        i = N + r
        ep = rp[r] / m if m > cfg.progress_distance_threshold else (0.0 if pen[i] == 0 else 1.0)
        sc = pen[i] * (w["EP"] * ep + w["TTC"] * raw["TTC"][i] + w["LK"] * raw["LK"][i] + w["HC"] * raw["HC"][i]) \
            / (w["EP"] + w["TTC"] + w["LK"] + w["HC"])
        if sc > best_score:
            best, best_score = r, sc
    ref_val = prog[N + best] * pen[N + best] if R else 0.0
    terms = {k: raw[k][:N].copy() for k in TERMS}
    for n in range(N):
        mm = max(prog[n] * pen[n], ref_val)
        terms["EP"][n] = (prog[n] * pen[n] / mm if mm > cfg.progress_distance_threshold
                          else (0.0 if pen[n] == 0 else 1.0))
    hi = N + R
    human = {k: float(raw[k][hi]) for k in TERMS}
    hv = prog[hi] * pen[hi]
    human["EP"] = 1.0 if hv > cfg.progress_distance_threshold else (0.0 if pen[hi] == 0 else 1.0)
    if prev is None:
        terms["EC"][:] = np.nan
        human["EC"] = float("nan")
    if human_filter:
        for k in FILTERED_TERMS:
            if human[k] == 0.0:
                terms[k][:] = 1.0
    names = [k for k in ("EP", "TTC", "LK", "HC", "EC") if (prev is not None or k != "EC") and w[k] != 0]
    den = sum(w[k] for k in names)
    epdms = np.array([terms["NC"][n] * terms["DAC"][n] * terms["DDC"][n] * terms["TLC"][n]
                      * sum(w[k] * terms[k][n] for k in names) / den for n in range(N)])
    return {"terms": terms, "epdms": epdms, "human_terms": human, "states": allst[:N],
            "reference_index": best}
