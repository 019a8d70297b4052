"""Small hand-made clips for the scorer tests.

Conventions: the ego box is 4.5 m x 2.0 m, lanes are 3.5 m wide, time index k of a 61-step
array is t = (k - 20) * 0.1 s. Every builder returns a valid :class:`Clip`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mosaic_ray.data.clip import (AGENT_STATIC, AGENT_VEHICLE, T0_INDEX, T_ALL, TL_GREEN,
                                  TL_NONE, TL_RED, Clip)

EGO_SIZE = (4.5, 2.0)
LANE_W = 3.5
TIMES = (np.arange(T_ALL) - T0_INDEX) * 0.1  # s, per 61-step index


@dataclass
class Lane:
    center: np.ndarray  # (n, 2) along the driving direction
    width: float = LANE_W
    on_route: bool = True
    in_intersection: bool = False
    tl: np.ndarray | int = TL_NONE  # scalar or (61,) int8
    lane_id: int | None = None


@dataclass
class Agent:
    states: np.ndarray  # (61, 4)
    size: tuple[float, float] = (4.5, 2.0)
    type: int = AGENT_VEHICLE
    valid: np.ndarray | None = None


def line(x0: float, x1: float, y: float, n: int = 31) -> np.ndarray:
    """Straight centre-line from (x0, y) to (x1, y) (direction of travel x0 -> x1)."""
    return np.stack([np.linspace(x0, x1, n), np.full(n, float(y))], axis=1)


def lane_bounds(center: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    d = np.gradient(center, axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1)  # left normal
    return center + 0.5 * width * nrm, center - 0.5 * width * nrm


def track(fn: Callable[[np.ndarray], tuple]) -> np.ndarray:
    """(61, 4) states from fn(t) -> (x, y, heading, speed) arrays over TIMES."""
    x, y, h, v = fn(TIMES)
    return np.stack([np.broadcast_to(np.asarray(a, float), TIMES.shape) for a in (x, y, h, v)], axis=1)


def const_vel(x0: float, y0: float, v: float, heading: float = 0.0) -> np.ndarray:
    """(61, 4) constant-velocity track passing (x0, y0) at t0."""
    return track(lambda t: (x0 + v * np.cos(heading) * t, y0 + v * np.sin(heading) * t, heading, v))


def braking(x0: float, v0: float, decel: float, t_start: float = 0.0, y0: float = 0.0) -> np.ndarray:
    """(61, 4) along +x: constant v0, then from t_start constant decel to a stop."""
    def fn(t):
        tb = np.clip(t - t_start, 0.0, v0 / decel)
        tc = np.minimum(t, t_start)
        x = x0 + v0 * tc + v0 * tb - 0.5 * decel * tb ** 2
        v = np.where(t < t_start, v0, v0 - decel * tb)
        return x, y0, 0.0, v
    return track(fn)


def lateral_path(x0: float, v: float, y_of_t: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(61, 4) along +x at speed v with lateral position y(t) and consistent heading/speed."""
    def fn(t):
        y = y_of_t(t)
        dy = np.gradient(y, t)
        return x0 + v * t, y, np.arctan2(dy, v), np.hypot(v, dy)
    return track(fn)


def build_clip(lanes: Sequence[Lane], ego_states: np.ndarray, agents: Sequence[Agent] = (),
               route_center: np.ndarray | None = None, has_prev_frame: bool = True,
               ego_size: tuple[float, float] = EGO_SIZE) -> Clip:
    """Assemble a Clip (CSR lanes, agents, route) from lane and agent specs."""
    L = len(lanes)
    lefts, rights, centers, offs = [], [], [], [0]
    tl = np.zeros((L, T_ALL), dtype=np.int8)
    for i, ln in enumerate(lanes):
        le, ri = lane_bounds(np.asarray(ln.center, float), ln.width)
        lefts.append(le)
        rights.append(ri)
        centers.append(np.asarray(ln.center, float))
        offs.append(offs[-1] + len(ln.center))
        tl[i] = np.broadcast_to(np.asarray(ln.tl, dtype=np.int8), (T_ALL,))
    ids = np.array([ln.lane_id if ln.lane_id is not None else 100 + i for i, ln in enumerate(lanes)],
                   dtype=np.int64)
    on_route = np.array([ln.on_route for ln in lanes], dtype=bool)
    if route_center is None:
        route_center = centers[int(np.argmax(on_route))]  # the first on-route lane
    A = len(agents)
    a_states = np.zeros((A, T_ALL, 4))
    a_valid = np.ones((A, T_ALL), dtype=bool)
    for j, ag in enumerate(agents):
        a_states[j] = ag.states
        if ag.valid is not None:
            a_valid[j] = ag.valid
            a_states[j][~a_valid[j]] = np.nan
    ego_valid = np.ones(T_ALL, dtype=bool)
    clip = Clip(
        clip_id="test", dataset="synthetic", site="test", segment="test", scenario_id="test",
        source_file="", tags=[], t0=0, ego_id=1, route_source="test",
        has_prev_frame=has_prev_frame,
        ego_states=np.asarray(ego_states, float), ego_valid=ego_valid,
        ego_size=np.asarray(ego_size, float),
        agent_ids=np.arange(A, dtype=np.int64) + 10,
        agent_types=np.array([ag.type for ag in agents], dtype=np.int8),
        agent_size=np.array([ag.size for ag in agents], dtype=float).reshape(A, 2),
        agent_states=a_states, agent_valid=a_valid,
        lane_ids=ids, lane_offsets=np.asarray(offs, dtype=np.int32),
        lane_left=np.concatenate(lefts), lane_right=np.concatenate(rights),
        lane_center=np.concatenate(centers),
        lane_in_intersection=np.array([ln.in_intersection for ln in lanes], dtype=bool),
        lane_on_route=on_route, lane_tl_state=tl,
        lane_is_extension=np.zeros(L, dtype=bool),
        route_lane_ids=ids[on_route], route_center=np.asarray(route_center, float),
        stop_lines=np.zeros((0, 2, 2)),
    )
    clip.validate()
    return clip


# ------------------------------------------------------------------------ standard scenes
def two_lane_road(ego_states: np.ndarray | None = None, agents: Sequence[Agent] = (),
                  with_oncoming: bool = True, **kw) -> Clip:
    """Straight road along +x from x=-150 to 300 m: lane 0 (y=0) and lane 1 (y=3.5) same
    direction and on route; lane 2 (y=7.0) opposite direction, off route. Road edges at
    y=-1.75 and y=8.75 (y=5.25 without the oncoming lane). Route centre-line: lane 0's."""
    if ego_states is None:
        ego_states = const_vel(0.0, 0.0, 10.0)
    lanes = [Lane(line(-150, 300, 0.0)), Lane(line(-150, 300, LANE_W))]
    if with_oncoming:
        lanes.append(Lane(line(300, -150, 2 * LANE_W), on_route=False))
    return build_clip(lanes, ego_states, agents, route_center=line(-150, 300, 0.0), **kw)


def signal_road(tl_state: int | np.ndarray = TL_RED, ego_states: np.ndarray | None = None,
                agents: Sequence[Agent] = (), **kw) -> Clip:
    """One lane along +x (y=0): approach x in [-150, 50], an intersection lane x in [50, 70]
    governed by a light in state ``tl_state`` (scalar or per step), exit lane [70, 300]."""
    if ego_states is None:
        ego_states = const_vel(0.0, 0.0, 10.0)
    lanes = [Lane(line(-150, 50, 0.0, 21)),
             Lane(line(50, 70, 0.0, 5), in_intersection=True, tl=tl_state),
             Lane(line(70, 300, 0.0, 24))]
    return build_clip(lanes, ego_states, agents, route_center=line(-150, 300, 0.0, 46), **kw)


def future(states61: np.ndarray) -> np.ndarray:
    """(1, 41, 4) future part (t0..4 s) of a 61-step track, for score_states."""
    return np.asarray(states61)[None, T0_INDEX:]


def ego_frame_poses(states61: np.ndarray) -> np.ndarray:
    """(1, 8, 3) planner poses of a 61-step track in the ego frame at t0."""
    x0, y0, h0 = states61[T0_INDEX, :3]
    fut = states61[T0_INDEX + 5 * np.arange(1, 9)]
    c, s = np.cos(h0), np.sin(h0)
    dx, dy = fut[:, 0] - x0, fut[:, 1] - y0
    h = (fut[:, 2] - h0 + np.pi) % (2 * np.pi) - np.pi
    return np.stack([c * dx + s * dy, -s * dx + c * dy, h], axis=-1)[None]


def with_speed_accel(states61: np.ndarray) -> np.ndarray:
    """Recompute the heading and speed of a 61-step track from its positions (consistent
    kinematics for comfort tests)."""
    out = np.array(states61, dtype=float, copy=True)
    vx = np.gradient(out[:, 0], 0.1)
    vy = np.gradient(out[:, 1], 0.1)
    out[:, 2] = np.unwrap(np.arctan2(vy, vx))
    out[:, 3] = np.hypot(vx, vy)
    return out


def kinematic_track(speed: Callable[[np.ndarray], np.ndarray], yaw_rate: Callable[[np.ndarray], np.ndarray],
                    x0: float = 0.0, y0: float = 0.0, h0: float = 0.0) -> np.ndarray:
    """(61, 4) track integrated from speed v(t) and yaw rate w(t) (fine sub-steps), passing
    (x0, y0) with heading h0 at t0."""
    sub = 20
    tt = np.linspace(TIMES[0], TIMES[-1], (len(TIMES) - 1) * sub + 1)
    v, w = np.broadcast_to(speed(tt), tt.shape), np.broadcast_to(yaw_rate(tt), tt.shape)
    dt = tt[1] - tt[0]
    h = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * dt)])
    x = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] * np.cos(h[1:]) + v[:-1] * np.cos(h[:-1])) * dt)])
    y = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] * np.sin(h[1:]) + v[:-1] * np.sin(h[:-1])) * dt)])
    k = np.arange(len(TIMES)) * sub
    i0 = T0_INDEX * sub
    hh = h[k] - h[i0]
    c, s = np.cos(h0 - h[i0]), np.sin(h0 - h[i0])
    px, py = x[k] - x[i0], y[k] - y[i0]
    return np.stack([x0 + c * px - s * py, y0 + s * px + c * py, h0 + hh, v[k]], axis=1)


# ------------------------------------------------------------------------ random scenes
def _curve(kappa: float, s: np.ndarray, offset: float):
    """Points (n, 2) and headings of a constant-curvature road at arc lengths s, shifted
    ``offset`` to the left."""
    if abs(kappa) < 1e-9:
        x, y, h = s, np.zeros_like(s), np.zeros_like(s)
    else:
        h = kappa * s
        x, y = np.sin(h) / kappa, (1 - np.cos(h)) / kappa
    return np.stack([x - offset * np.sin(h), y + offset * np.cos(h)], axis=1), h


def random_scene(rng: np.random.Generator, max_agents: int = 5) -> Clip:
    """A random but valid clip for property tests: 2-3 lanes along a constant-curvature road
    (one oncoming, off-route), optionally an on-route signalised intersection lane ahead
    with a random red/green schedule, 0..max_agents agents (vehicles, a static object, a
    pedestrian) near the ego path, a random global placement; ego history and future at
    roughly constant speed with a random lateral move."""
    kappa = rng.choice([0.0, rng.uniform(-1 / 80, 1 / 80)])
    rot, tx, ty = rng.uniform(-np.pi, np.pi), rng.uniform(-500, 500), rng.uniform(-500, 500)
    c, s_ = np.cos(rot), np.sin(rot)

    def place(p):
        return np.stack([tx + c * p[..., 0] - s_ * p[..., 1], ty + s_ * p[..., 0] + c * p[..., 1]], -1)

    s_all = np.linspace(-60.0, 140.0, 41)
    lanes = []
    inter = rng.random() < 0.5
    x1 = rng.uniform(15.0, 50.0)
    if inter:
        tl = np.where(rng.random(T_ALL) < 0.5, TL_RED, TL_GREEN).astype(np.int8)
        tl = np.repeat(tl[::10], 10)[:T_ALL]  # switch at most every second
        for lo, hi, flag, light in ((-60.0, x1, False, TL_NONE), (x1, x1 + 20.0, True, tl), (x1 + 20.0, 140.0, False, TL_NONE)):
            ss = np.linspace(lo, hi, max(3, int((hi - lo) / 5)))
            lanes.append(Lane(place(_curve(kappa, ss, 0.0)[0]), in_intersection=flag, tl=light))
    else:
        lanes.append(Lane(place(_curve(kappa, s_all, 0.0)[0])))
    lanes.append(Lane(place(_curve(kappa, s_all, LANE_W)[0])))
    if rng.random() < 0.7:
        lanes.append(Lane(place(_curve(kappa, s_all[::-1], -LANE_W)[0]), on_route=False))
    route = place(_curve(kappa, np.linspace(-60.0, 140.0, 81) + rng.uniform(0.3, 2.2), 0.0)[0])  # no vertex at the ego

    def along(s0, v, lat0, lat1, accel=0.0):
        t = TIMES
        sv = s0 + v * t + 0.5 * accel * np.clip(t, 0, None) ** 2
        u = np.clip((t + 0.5) / 2.5, 0, 1)
        lat = lat0 + (lat1 - lat0) * u * u * (3 - 2 * u)
        p, h = _curve(kappa, sv, 0.0)
        p = p + lat[:, None] * np.stack([-np.sin(h), np.cos(h)], 1)
        st = np.zeros((T_ALL, 4))
        st[:, :2] = place(p)
        st = with_speed_accel(st)
        still = st[:, 3] < 0.05
        st[still, 2] = h[still] + rot + (np.pi if v < 0 else 0.0)
        st[still, 3] = 0.0
        return st

    v0 = rng.uniform(1.0, 14.0)
    ego = along(0.0, v0, rng.uniform(-0.4, 0.4), rng.choice([0.0, 0.0, LANE_W, rng.uniform(-1, 4)]),
                rng.uniform(-2.0, 1.0))
    agents = []
    for _ in range(int(rng.integers(0, max_agents + 1))):
        kind = rng.random()
        lane = rng.choice([0.0, LANE_W, -LANE_W])
        s0 = rng.uniform(-25.0, 45.0)
        if abs(s0) < 6.0 and abs(lane) < 1.0:
            s0 += 12.0
        if kind < 0.12:  # static object on or beside the road
            st = along(s0, 0.0, lane + rng.uniform(-1, 1), lane)
            st[:, 3] = 0.0
            agents.append(Agent(st, size=(1.0, 1.0), type=AGENT_STATIC))
        elif kind < 0.2:  # pedestrian crossing
            st = along(s0, 0.0, -6.0, 6.0)
            agents.append(Agent(with_speed_accel(st), size=(0.6, 0.6), type=1))
        else:
            v = 0.0 if rng.random() < 0.2 else rng.uniform(0.5, 16.0)
            if lane < -1.0:
                st = along(s0 + 40.0, -v, lane, lane)
            else:
                st = along(s0, v, lane, rng.choice([lane, lane + rng.uniform(-3.5, 3.5)]), rng.uniform(-2, 1))
            valid = None
            if rng.random() < 0.2:
                valid = np.ones(T_ALL, bool)
                valid[int(rng.integers(20, 61)):] = False
            agents.append(Agent(st, size=(rng.uniform(3.5, 5.5), rng.uniform(1.6, 2.2)), valid=valid))
    return build_clip(lanes, ego, agents, route_center=route, has_prev_frame=bool(rng.random() < 0.8))


def random_poses(rng: np.random.Generator, n: int, v0: float) -> np.ndarray:
    """(n, 8, 3) random but plausible ego-frame planner poses (speeding up, braking,
    stopping, lane changes, turns)."""
    t = 0.5 * np.arange(1, 9)
    out = np.zeros((n, 8, 3))
    for i in range(n):
        a = rng.uniform(-4.0, 2.5)
        v = np.maximum(v0 + a * t, 0.0)
        x = np.cumsum(np.concatenate([[0.5 * (v0 + v[0]) * 0.5], 0.5 * (v[1:] + v[:-1]) * 0.5]))
        yaw = rng.choice([0.0, rng.normal(0.0, 0.12)])
        lat = rng.choice([0.0, rng.uniform(-4.0, 4.0)])
        u = np.clip(t / 3.0, 0, 1)
        y = lat * u * u * (3 - 2 * u) + 0.5 * yaw * x * x / max(x[-1], 1.0)
        hx = np.gradient(x)
        hy = np.gradient(y)
        out[i] = np.stack([x, y, np.arctan2(hy, np.maximum(hx, 1e-3))], -1)
    return out


__all__ = ["EGO_SIZE", "LANE_W", "TIMES", "Lane", "Agent", "line", "lane_bounds", "track",
           "const_vel", "braking", "lateral_path", "build_clip", "two_lane_road", "signal_road",
           "future", "ego_frame_poses", "with_speed_accel", "kinematic_track", "random_scene",
           "random_poses", "AGENT_STATIC", "AGENT_VEHICLE", "TL_GREEN", "TL_RED", "TL_NONE"]
