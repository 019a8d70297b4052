"""Cut NAVSIM-style clips from CommonRoad scenario files (NGSIM recordings).

Every recorded vehicle whose track covers 1.5 s of history and 4 s of future is a
pseudo-ego (NAVSIM's scene layout at the recordings' 0.1 s step); its windows are
non-overlapping by default. One file is read with ``commonroad-io`` and turned into
:class:`~mosaic_ray.data.clip.Clip` objects plus :class:`QuarantineRecord` objects for whatever
could not become a clip (unreadable XML, a file without trajectories, a clip that fails
validation), so every candidate is accounted for.

Map handling (documented deviations):

* The whole lanelet network of a file is the clip's map (the NGSIM maps are 100–250 m crops).
* Lanes that leave the crop (no successor / no predecessor) get a straight extension of
  ``map_extension_m`` (flag ``lane_is_extension``): the recordings stop where the camera view
  ended, and without the extension a planner that drives further than the logged human
  would leave the drivable area at the crop's edge, which NAVSIM's full maps never do.
* Intersection lanes are the successors listed by the intersections' incomings.
* A traffic light attached to an incoming lanelet governs entry into that lanelet's
  successors in the light's direction (left / straight / right); ``lane_tl_state`` carries
  the state of the governing light per step, from the light's cycle.

Source: NAVSIM scene layout (``navsim/common/dataclasses.py``, 4 history frames = 1.5 s,
8 future poses = 4 s); CommonRoad 2020a format (``commonroad-io`` 2022.1).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import shapely

from mosaic_ray.data.clip import (
    AGENT_CYCLIST, AGENT_PEDESTRIAN, AGENT_STATIC, AGENT_VEHICLE, N_FUT, N_HIST, N_PRE, T0_INDEX,
    T_ALL, TL_GREEN, TL_INACTIVE, TL_NONE, TL_RED, TL_RED_YELLOW, TL_YELLOW, Clip,
    ClipValidationError, make_clip_id,
)

SITES = (("US101", "US101"), ("Lanker", "Lankershim"), ("Peach", "Peachtree"))
_SEGMENT_RE = re.compile(r"^([A-Z]{3}_[A-Za-z0-9]+-\d+)_\d+")
EXTENSION_ID_OFFSET = 10**9
STATIC_FIRST_STEP = -10**6  #: marks a static obstacle's one-state track

_TYPE_MAP = {
    "car": AGENT_VEHICLE, "truck": AGENT_VEHICLE, "bus": AGENT_VEHICLE, "priorityVehicle": AGENT_VEHICLE,
    "motorcycle": AGENT_CYCLIST, "bicycle": AGENT_CYCLIST, "pedestrian": AGENT_PEDESTRIAN,
    "parkedVehicle": AGENT_STATIC, "constructionZone": AGENT_STATIC, "building": AGENT_STATIC,
    "pillar": AGENT_STATIC, "median_strip": AGENT_STATIC, "roadBoundary": AGENT_STATIC,
    "unknown": AGENT_VEHICLE, "train": AGENT_VEHICLE, "taxi": AGENT_VEHICLE,
}
_TL_MAP = {"green": TL_GREEN, "yellow": TL_YELLOW, "red": TL_RED, "redYellow": TL_RED_YELLOW,
           "inactive": TL_INACTIVE}
# which turn directions a light's direction covers
_TL_COVERS = {"right": {"right"}, "straight": {"straight"}, "left": {"left"},
              "leftStraight": {"left", "straight"}, "straightRight": {"straight", "right"},
              "leftRight": {"left", "right"}, "all": {"left", "straight", "right"}}


@dataclass
class QuarantineRecord:
    """A candidate that did not become a clip, with the reason (every candidate is counted)."""

    source_file: str
    segment: str
    site: str
    ego_id: int
    t0: int
    reason: str
    detail: str = ""
    clip_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CutOptions:
    """Clip-cutting options (a subset of :class:`mosaic_ray.config.IngestConfig`)."""

    stride_steps: int | None = None  # None: non-overlapping windows (56 steps)
    min_speed_mps: float = 0.0
    map_extension_m: float = 60.0
    agent_radius_m: float = 120.0


def site_of(file_name: str) -> str:
    """Recording site of a CommonRoad NGSIM file name, e.g. ``USA_Lanker-2_3_T-1`` -> Lankershim.

    Raises:
        ValueError: the name matches no known site.
    """
    for key, site in SITES:
        if key in file_name:
            return site
    raise ValueError(f"cannot tell the site of {file_name!r} (expected US101, Lanker or Peach)")


def segment_of(file_name: str) -> str:
    """Map segment, the ``USA_US101-22`` part of ``USA_US101-22_1_T-1.xml``.

    Raises:
        ValueError: the name does not follow the CommonRoad benchmark-id pattern.
    """
    m = _SEGMENT_RE.match(os.path.basename(file_name))
    if not m:
        raise ValueError(f"cannot tell the map segment of {file_name!r}")
    return m.group(1)


def list_scenario_files(data_dir: str) -> list[str]:
    """All ``*.xml`` files under ``data_dir`` (recursively), sorted for determinism."""
    out = []
    for root, _, files in os.walk(data_dir):
        out.extend(os.path.join(root, f) for f in files if f.endswith(".xml"))
    return sorted(out)


# ------------------------------------------------------------------------------------ map
@dataclass
class MapArrays:
    """The lanelet network of one file as arrays (see :class:`Clip` for the layout)."""

    lane_ids: np.ndarray
    offsets: np.ndarray
    left: np.ndarray
    right: np.ndarray
    center: np.ndarray
    in_intersection: np.ndarray
    is_extension: np.ndarray
    successors: dict[int, list[int]]
    predecessors: dict[int, list[int]]
    same_dir_neighbours: dict[int, list[int]]
    polygons: list  # shapely polygons, index-aligned with lane_ids
    stop_lines: np.ndarray
    tl_lanes: dict[int, list]  # lane id -> list of (TrafficLight) governing entry
    index: dict[int, int]


def _extend(points: np.ndarray, direction: np.ndarray, length: float, n: int = 4) -> np.ndarray:
    return points[None, :] + direction[None, :] * np.linspace(0.0, length, n)[:, None]


def build_map(scenario, extension_m: float) -> MapArrays:
    """Arrays, polygons and topology of a scenario's lanelet network, with extensions."""
    net = scenario.lanelet_network
    lanelets = sorted(net.lanelets, key=lambda l: l.lanelet_id)
    intersection_lanes: set[int] = set()
    turn_of: dict[int, str] = {}
    for inter in net.intersections:
        for inc in inter.incomings:
            for d, lanes in (("left", inc.successors_left), ("right", inc.successors_right),
                             ("straight", inc.successors_straight)):
                for lid in lanes or ():
                    intersection_lanes.add(lid)
                    turn_of[lid] = d
    lights = {tl.traffic_light_id: tl for tl in net.traffic_lights}

    ids, lefts, rights, centers, inter, ext = [], [], [], [], [], []
    succ: dict[int, list[int]] = {}
    pred: dict[int, list[int]] = {}
    neigh: dict[int, list[int]] = {}
    stop = []
    tl_lanes: dict[int, list] = {}
    for l in lanelets:
        lid = l.lanelet_id
        ids.append(lid)
        lefts.append(np.asarray(l.left_vertices, float))
        rights.append(np.asarray(l.right_vertices, float))
        centers.append(np.asarray(l.center_vertices, float))
        inter.append(lid in intersection_lanes)
        ext.append(False)
        succ[lid] = list(l.successor or [])
        pred[lid] = list(l.predecessor or [])
        nb = []
        if l.adj_left is not None and l.adj_left_same_direction:
            nb.append(l.adj_left)
        if l.adj_right is not None and l.adj_right_same_direction:
            nb.append(l.adj_right)
        neigh[lid] = nb
        if l.stop_line is not None:
            s = l.stop_line
            a = np.asarray(s.start if s.start is not None else l.left_vertices[-1], float)
            b = np.asarray(s.end if s.end is not None else l.right_vertices[-1], float)
            stop.append(np.stack([a, b]))
        for tl_id in l.traffic_lights or ():
            tl = lights.get(tl_id)
            if tl is None:
                continue
            for s_id in l.successor or ():
                covered = _TL_COVERS.get(tl.direction.value, {"left", "straight", "right"})
                if turn_of.get(s_id, "straight") in covered or tl.direction.value == "all":
                    tl_lanes.setdefault(s_id, []).append(tl)
    # straight extensions where lanes leave the crop
    for i, l in enumerate(lanelets):
        lid = l.lanelet_id
        if extension_m <= 0 or lid in intersection_lanes:
            continue
        c = centers[i]
        for forward, missing in ((True, not succ[lid]), (False, not pred[lid])):
            if not missing:
                continue
            if forward:
                d = c[-1] - c[-2]
                start_l, start_r = lefts[i][-1], rights[i][-1]
                cs = c[-1]
            else:
                d = c[0] - c[1]
                start_l, start_r = lefts[i][0], rights[i][0]
                cs = c[0]
            norm = np.linalg.norm(d)
            if norm < 1e-6:
                continue
            d = d / norm
            L, R, C = _extend(start_l, d, extension_m), _extend(start_r, d, extension_m), _extend(cs, d, extension_m)
            if not forward:  # keep vertices ordered along the driving direction
                L, R, C = L[::-1], R[::-1], C[::-1]
            eid = lid + EXTENSION_ID_OFFSET * (1 if forward else 2)
            ids.append(eid)
            lefts.append(L)
            rights.append(R)
            centers.append(C)
            inter.append(False)
            ext.append(True)
            succ[eid], pred[eid], neigh[eid] = [], [], []
            if forward:
                succ[lid] = [eid]
                pred[eid] = [lid]
            else:
                pred[lid] = [eid]
                succ[eid] = [lid]
    # extensions of same-direction neighbours are neighbours too
    ext_of = {}
    for eid in ids:
        if eid >= EXTENSION_ID_OFFSET:
            ext_of[(eid % EXTENSION_ID_OFFSET, eid // EXTENSION_ID_OFFSET)] = eid
    for (base, kind), eid in ext_of.items():
        neigh[eid] = [ext_of[(n, kind)] for n in neigh.get(base, []) if (n, kind) in ext_of]
    counts = [len(c) for c in centers]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    polys = [shapely.Polygon(np.concatenate([lf, rt[::-1]])) for lf, rt in zip(lefts, rights)]
    polys = [p if p.is_valid else p.buffer(0) for p in polys]
    for p in polys:
        shapely.prepare(p)
    return MapArrays(
        lane_ids=np.asarray(ids, np.int64), offsets=offsets,
        left=np.concatenate(lefts), right=np.concatenate(rights), center=np.concatenate(centers),
        in_intersection=np.asarray(inter, bool), is_extension=np.asarray(ext, bool),
        successors=succ, predecessors=pred, same_dir_neighbours=neigh, polygons=polys,
        stop_lines=np.asarray(stop, float).reshape(-1, 2, 2), tl_lanes=tl_lanes,
        index={lid: i for i, lid in enumerate(ids)},
    )


def _lane_heading_at(m: MapArrays, i: int, xy: np.ndarray) -> float:
    c = m.center[m.offsets[i]:m.offsets[i + 1]]
    j = int(np.argmin(np.linalg.norm(c - xy, axis=1)))
    a, b = (c[j], c[j + 1]) if j + 1 < len(c) else (c[j - 1], c[j])
    return math.atan2(b[1] - a[1], b[0] - a[0])


def _wrap(a: np.ndarray | float) -> np.ndarray | float:
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def lanes_containing(m: MapArrays, xy: np.ndarray, heading: np.ndarray) -> list[list[int]]:
    """For points (n, 2) with headings (n,), the lane indices containing each point whose
    direction is within 90° of the heading."""
    hits: list[list[int]] = [[] for _ in range(len(xy))]
    for i, poly in enumerate(m.polygons):
        inside = shapely.contains_xy(poly, xy[:, 0], xy[:, 1])
        for k in np.flatnonzero(inside):
            if abs(_wrap(_lane_heading_at(m, i, xy[k]) - heading[k])) < math.pi / 2:
                hits[k].append(i)
    return hits


def _chain(m: MapArrays, start: int, route: set[int], goal: np.ndarray, ahead_m: float,
           forward: bool) -> list[int]:
    """Follow successors (or predecessors) from lane index ``start`` for ``ahead_m`` metres,
    preferring route lanes, then the lane ending nearest ``goal``."""
    out = [start]
    travelled = 0.0
    cur = start
    seen = {start}
    while travelled < ahead_m:
        nxt_ids = (m.successors if forward else m.predecessors).get(int(m.lane_ids[cur]), [])
        cand = [m.index[n] for n in nxt_ids if n in m.index and m.index[n] not in seen]
        if not cand:
            break
        in_route = [c for c in cand if int(m.lane_ids[c]) in route]
        if in_route:
            cand = in_route
        cur = min(cand, key=lambda c: float(np.linalg.norm(
            m.center[m.offsets[c + 1] - 1 if forward else m.offsets[c]] - goal)))
        seen.add(cur)
        out.append(cur)
        c = m.center[m.offsets[cur]:m.offsets[cur + 1]]
        travelled += float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum())
    return out if forward else out[::-1]


def _dedupe_polyline(p: np.ndarray, min_step: float = 0.05) -> np.ndarray:
    keep = [0]
    for i in range(1, len(p)):
        if np.linalg.norm(p[i] - p[keep[-1]]) > min_step:
            keep.append(i)
    return p[keep]


def _tl_state(tl, step: int) -> int:
    if not getattr(tl, "active", True):
        return TL_INACTIVE
    try:
        st = tl.get_state_at_time_step(int(step))
    except Exception:  # a malformed cycle: treat as unknown
        return TL_NONE
    return _TL_MAP.get(st.value, TL_NONE)


@dataclass
class Route:
    """Where the logged future goes on the map (the route NAVSIM's scorer needs).

    Attributes:
        route_idx: lane indices the logged future drives through, in order.
        on_route: lane indices of the route's carriageway: the route lanes, the successor chain
            150 m ahead and 50 m behind, and their same-direction neighbours (nuPlan roadblocks).
        chain: lane indices whose centre-lines make up ``center``.
        center: (P, 2) float64 route centre-line (m), along the travel direction.
        source: ``"map"`` (a lane chain) or ``"log"`` (the ego was on no lane at t0: the
            logged path extended straight by 100 m).
    """

    route_idx: list[int]
    on_route: set[int]
    chain: list[int]
    center: np.ndarray
    source: str


def plan_route(m: MapArrays, ego_states: np.ndarray, ego_valid: np.ndarray) -> Route:
    """The route of a clip from its logged ego states (T_ALL, 4) and the map (shared by the
    CommonRoad and ScenarioNet readers)."""
    fut = ego_states[T0_INDEX:]
    hits = lanes_containing(m, fut[:, :2], fut[:, 2]) if len(m.lane_ids) else [[] for _ in fut]
    route_idx: list[int] = []
    for h in hits:
        for i in h:
            if i not in route_idx:
                route_idx.append(i)
    route_ids = {int(m.lane_ids[i]) for i in route_idx}
    on_route: set[int] = set(route_idx)
    goal = fut[-1, :2]
    if route_idx:
        on_route.update(_chain(m, route_idx[-1], route_ids, goal, 150.0, True))
        on_route.update(_chain(m, route_idx[0], route_ids, goal, 50.0, False))
    frontier = list(on_route)
    while frontier:
        i = frontier.pop()
        for nb in m.same_dir_neighbours.get(int(m.lane_ids[i]), []):
            j = m.index.get(nb)
            if j is not None and j not in on_route:
                on_route.add(j)
                frontier.append(j)
    chain: list[int] = []
    if hits[0]:  # a successor chain from the lane at t0
        first = next((i for i in route_idx if i in hits[0]), hits[0][0])
        back = _chain(m, first, route_ids, ego_states[T0_INDEX, :2], 40.0, False)
        chain = back[:-1] + _chain(m, first, route_ids, goal, 220.0, True)
        center = _dedupe_polyline(np.concatenate([m.center[m.offsets[i]:m.offsets[i + 1]] for i in chain]))
        source = "map"
    else:  # ego on no lane at t0: the logged path, extended straight
        path = ego_states[ego_valid][:, :2]
        d = path[-1] - path[-2] if len(path) > 1 else np.array([1.0, 0.0])
        n = np.linalg.norm(d)
        d = d / n if n > 1e-6 else np.array([math.cos(fut[-1, 2]), math.sin(fut[-1, 2])])
        center = _dedupe_polyline(np.concatenate([path, _extend(path[-1], d, 100.0, 6)[1:]]))
        source = "log"
    if len(center) < 2:
        center = np.stack([ego_states[T0_INDEX, :2], ego_states[T0_INDEX, :2] + 1.0])
    return Route(route_idx, on_route, chain, center, source)


# --------------------------------------------------------------------------------- tracks
@dataclass
class Track:
    obstacle_id: int
    agent_type: int
    length: float
    width: float
    first_step: int
    states: np.ndarray  # (n, 4) x, y, heading, speed

    def window(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """States (stop-start, 4) with NaN outside the track, and the validity mask."""
        n = stop - start
        out = np.full((n, 4), np.nan)
        valid = np.zeros(n, bool)
        a = max(start, self.first_step)
        b = min(stop, self.first_step + len(self.states))
        if b > a:
            out[a - start:b - start] = self.states[a - self.first_step:b - self.first_step]
            valid[a - start:b - start] = True
        return out, valid


def extract_tracks(scenario) -> list[Track]:
    """Dynamic obstacles with a trajectory (and static obstacles as one-state tracks)."""
    tracks = []
    for o in scenario.dynamic_obstacles:
        traj = getattr(o.prediction, "trajectory", None)
        if traj is None:
            continue
        sts = [o.initial_state] + list(traj.state_list)
        arr = np.array([[s.position[0], s.position[1], s.orientation,
                         getattr(s, "velocity", 0.0) or 0.0] for s in sts], float)
        steps = np.array([s.time_step for s in sts])
        if len(steps) > 1 and np.any(np.diff(steps) != 1):  # resample gaps by forward fill
            full = np.arange(steps[0], steps[-1] + 1)
            idx = np.searchsorted(steps, full, side="right") - 1
            arr = arr[idx]
        shape = o.obstacle_shape
        tracks.append(Track(int(o.obstacle_id), _TYPE_MAP.get(o.obstacle_type.value, AGENT_VEHICLE),
                            float(getattr(shape, "length", 4.5)), float(getattr(shape, "width", 1.8)),
                            int(steps[0]), arr))
    for o in scenario.static_obstacles:
        s = o.initial_state
        shape = o.obstacle_shape
        arr = np.array([[s.position[0], s.position[1], s.orientation, 0.0]])
        tracks.append(Track(int(o.obstacle_id), AGENT_STATIC, float(getattr(shape, "length", 1.0)),
                            float(getattr(shape, "width", 1.0)), STATIC_FIRST_STEP, arr))
    return tracks


# ---------------------------------------------------------------------------------- clips
def window_starts(track_len: int, stride_steps: int | None) -> list[int]:
    """Offsets of t0 within a track (0-based) for the clip windows it supports.

    A window needs ``N_HIST`` steps before t0 and ``N_FUT`` after. Non-overlapping windows
    (``stride_steps=None``) are ``N_HIST + 1 + N_FUT`` = 56 steps apart; the first t0 is
    shifted by ``N_PRE`` when the track is long enough to give the EC previous frame.
    """
    span = N_HIST + 1 + N_FUT
    if track_len < span:
        return []
    stride = stride_steps or span
    first = N_HIST + (N_PRE if track_len >= span + N_PRE else 0)
    return list(range(first, track_len - N_FUT, stride))


def cut_file(path: str, opts: CutOptions | None = None) -> tuple[list[Clip], list[QuarantineRecord]]:
    """Read one CommonRoad XML file and cut its clips.

    Returns:
        (clips, quarantine): clips that passed :meth:`Clip.validate`; a record for each
        candidate that did not (reason ``invalid_clip``), or one record for the whole file
        (``unreadable_xml``, ``no_trajectories``).
    """
    from commonroad.common.file_reader import CommonRoadFileReader

    opts = opts or CutOptions()
    name = os.path.basename(path)
    try:
        site, segment = site_of(name), segment_of(name)
    except ValueError as e:
        return [], [QuarantineRecord(name, "", "", -1, -1, "unknown_file_name", str(e))]
    try:
        scenario, _ = CommonRoadFileReader(path).open()
    except Exception as e:  # commonroad-io raises many types for broken XML
        return [], [QuarantineRecord(name, segment, site, -1, -1, "unreadable_xml",
                                     f"{type(e).__name__}: {str(e)[:300]}")]
    tracks = extract_tracks(scenario)
    moving = [t for t in tracks if t.first_step > STATIC_FIRST_STEP]
    if not moving:
        return [], [QuarantineRecord(name, segment, site, -1, -1, "no_trajectories",
                                     "the file holds no recorded trajectories")]
    try:
        m = build_map(scenario, opts.map_extension_m)
    except Exception as e:
        return [], [QuarantineRecord(name, segment, site, -1, -1, "bad_map",
                                     f"{type(e).__name__}: {str(e)[:300]}")]
    tags = sorted(t.value for t in (scenario.tags or ()))
    scenario_id = str(scenario.scenario_id)
    clips, bad = [], []
    for ego in moving:
        for off in window_starts(len(ego.states), opts.stride_steps):
            t0 = ego.first_step + off
            try:
                clip = _make_clip(m, tracks, ego, t0, opts, site=site, segment=segment,
                                  scenario_id=scenario_id, source_file=name, tags=tags)
                if clip is None:
                    continue
                clip.validate()
                clips.append(clip)
            except ClipValidationError as e:
                bad.append(QuarantineRecord(name, segment, site, ego.obstacle_id, t0, "invalid_clip", str(e)))
            except Exception as e:  # never crash a worker on one bad vehicle
                bad.append(QuarantineRecord(name, segment, site, ego.obstacle_id, t0, "clip_error",
                                            f"{type(e).__name__}: {str(e)[:300]}"))
    return clips, bad


def _make_clip(m: MapArrays, tracks: list[Track], ego: Track, t0: int, opts: CutOptions, *,
               site: str, segment: str, scenario_id: str, source_file: str, tags: list[str]) -> Clip | None:
    start, stop = t0 - T0_INDEX, t0 - T0_INDEX + T_ALL
    ego_states, ego_valid = ego.window(start, stop)
    if opts.min_speed_mps > 0 and np.nanmax(ego_states[:, 3]) < opts.min_speed_mps:
        return None
    # agents near the ego at any step of the window
    ids, types, sizes, states, valid = [], [], [], [], []
    for tr in tracks:
        if tr is ego:
            continue
        if tr.first_step <= STATIC_FIRST_STEP:  # static obstacle: same box at every step
            st = np.repeat(tr.states[:1], T_ALL, 0)
            v = np.ones(T_ALL, bool)
        else:
            st, v = tr.window(start, stop)
        if not v.any():
            continue
        both = v & ego_valid
        if not both.any():
            continue
        d = np.linalg.norm(st[both, :2] - ego_states[both, :2], axis=1)
        if d.min() > opts.agent_radius_m:
            continue
        ids.append(tr.obstacle_id)
        types.append(tr.agent_type)
        sizes.append((tr.length, tr.width))
        states.append(st)
        valid.append(v)
    A = len(ids)
    route = plan_route(m, ego_states, ego_valid)
    route_idx, on_route, route_center, route_source = route.route_idx, route.on_route, route.center, route.source
    # traffic lights per lane and step
    L = len(m.lane_ids)
    tl_state = np.zeros((L, T_ALL), np.int8)
    for lid, tls in m.tl_lanes.items():
        i = m.index.get(lid)
        if i is None:
            continue
        for k in range(T_ALL):
            sts = [_tl_state(tl, start + k) for tl in tls]
            tl_state[i, k] = max(sts) if TL_RED not in sts else TL_RED
    on_route_mask = np.zeros(L, bool)
    on_route_mask[sorted(on_route)] = True
    start_xy = ego_states[T0_INDEX, :2]
    return Clip(
        clip_id=make_clip_id(segment, t0, start_xy), dataset="commonroad-ngsim", site=site,
        segment=segment, scenario_id=scenario_id, source_file=source_file, tags=list(tags),
        t0=int(t0), ego_id=int(ego.obstacle_id), route_source=route_source,
        has_prev_frame=bool(ego_valid[:N_PRE].all()),
        ego_states=np.where(ego_valid[:, None], ego_states, 0.0), ego_valid=ego_valid,
        ego_size=np.array([ego.length, ego.width]),
        agent_ids=np.asarray(ids, np.int64), agent_types=np.asarray(types, np.int8),
        agent_size=np.asarray(sizes, float).reshape(A, 2),
        agent_states=np.asarray(states, float).reshape(A, T_ALL, 4),
        agent_valid=np.asarray(valid, bool).reshape(A, T_ALL),
        lane_ids=m.lane_ids, lane_offsets=m.offsets, lane_left=m.left, lane_right=m.right,
        lane_center=m.center, lane_in_intersection=m.in_intersection, lane_on_route=on_route_mask,
        lane_tl_state=tl_state, lane_is_extension=m.is_extension,
        route_lane_ids=np.asarray([int(m.lane_ids[i]) for i in route_idx], np.int64),
        route_center=route_center, stop_lines=m.stop_lines,
    )


def cut_files(paths: Iterable[str], opts: CutOptions | None = None) -> tuple[list[Clip], list[QuarantineRecord]]:
    """:func:`cut_file` over several files (in-process; the Ray stage parallelises files)."""
    clips, bad = [], []
    for p in paths:
        c, b = cut_file(p, opts)
        clips.extend(c)
        bad.extend(b)
    return clips, bad
