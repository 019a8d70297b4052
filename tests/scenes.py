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


__all__ = ["EGO_SIZE", "LANE_W", "TIMES", "Lane", "Agent", "line", "lane_bounds", "track",
           "const_vel", "braking", "lateral_path", "build_clip", "two_lane_road", "signal_road",
           "future", "AGENT_STATIC", "AGENT_VEHICLE", "TL_GREEN", "TL_RED", "TL_NONE"]
