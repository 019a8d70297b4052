"""Cut NAVSIM-style clips from CommonRoad scenario files (the NGSIM recordings, or any location:
the site is the benchmark id's country and map, :func:`site_of`).

Every recorded vehicle whose track covers 1.5 s of history and 4 s of future is a
pseudo-ego (NAVSIM's scene layout at the recordings' 0.1 s step); its windows are
non-overlapping by default. One file is read with ``commonroad-io`` and turned into
:class:`~mosaic_ray.data.clip.Clip` objects plus :class:`QuarantineRecord` objects for whatever
could not become a clip (unreadable XML, a file without trajectories, a clip that fails
validation), so every candidate is accounted for.

Map handling (documented deviations). :func:`build_map` reads the lanelet network (the
CommonRoad-specific part: lanelets, intersections, traffic lights) into
:class:`~mosaic_ray.data.maps.LaneLists`; the extensions, the map arrays with their lane
polygons and the route come from :mod:`mosaic_ray.data.maps`, shared with the ScenarioNet
reader (:mod:`mosaic_ray.data.scenarionet`).

* The whole lanelet network of a file is the clip's map (the NGSIM maps are 100–250 m crops).
* Lanes that leave the crop (no successor / no predecessor) get a straight extension of
  ``map_extension_m`` (flag ``lane_is_extension``,
  :func:`~mosaic_ray.data.maps.add_straight_extensions`): the recordings stop where the
  camera view ended, and without the extension a planner that drives further than the logged
  human would leave the drivable area at the crop's edge, which NAVSIM's full maps never do.
* Intersection lanes are the successors listed by the intersections' incomings.
* A traffic light attached to an incoming lanelet governs entry into that lanelet's
  successors in the light's direction (left / straight / right); ``lane_tl_state`` carries
  the state of the governing light per step, from the light's cycle.

Source: NAVSIM scene layout (``navsim/common/dataclasses.py``, 4 history frames = 1.5 s,
8 future poses = 4 s); CommonRoad 2020a format (``commonroad-io`` 2022.1).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import numpy as np

from mosaic_ray.data.clip import (
    AGENT_CYCLIST, AGENT_PEDESTRIAN, AGENT_STATIC, AGENT_VEHICLE, N_FUT, N_HIST, N_PRE, T0_INDEX,
    T_ALL, TL_GREEN, TL_INACTIVE, TL_NONE, TL_RED, TL_RED_YELLOW, TL_YELLOW, Clip,
    ClipValidationError, group_frame, make_clip_id, near_ego, window_fields,
)
from mosaic_ray.data.maps import LaneLists, MapArrays, add_straight_extensions, assemble_map, plan_route

SITES = (("US101", "US101"), ("Lanker", "Lankershim"), ("Peach", "Peachtree"))
_SEGMENT_RE = re.compile(r"^([A-Z]{3}_[A-Za-z0-9]+-\d+)_\d+")
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


#: file-level reasons meaning "the file holds no usable track" (not a fault of the file): a
#: map-only scenario (``no_trajectories``, the ``*_S-1.xml`` files), no track long enough for
#: one clip window (``no_windows``), every window's ego below ``min_speed_mps``
#: (``below_min_speed``), a reader that returned neither clips nor records (``no_candidates``,
#: added by ingest). Every other reason is a quarantine of bad data or a duplicate.
NO_USABLE_TRACK_REASONS = frozenset({"no_trajectories", "no_windows", "below_min_speed", "no_candidates"})


@dataclass
class QuarantineRecord:
    """A candidate that did not become a clip, with the reason (every candidate is counted).

    A record with ``ego_id == -1`` and ``t0 == -1`` stands for the whole file; its reason is
    then either a fault (``unreadable_xml``, ``bad_map``...) or one of
    :data:`NO_USABLE_TRACK_REASONS`."""

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
    clip_steps: int | None = None  # frames grouped into clips of this many steps (100 = 10 s); None: a frame per clip
    min_speed_mps: float = 0.0
    map_extension_m: float = 60.0
    agent_radius_m: float = 120.0


def site_of(name: str) -> str:
    """Recording site of a CommonRoad benchmark id or file name: the country and map of the id,
    e.g. ``DEU_Flensburg-1_1_T-1`` -> ``DEU_Flensburg``; the three NGSIM maps keep their site
    names (``USA_Lanker-2_3_T-1`` -> ``Lankershim``, ``USA_US101-22_1_T-1`` -> ``US101``,
    ``USA_Peach-1_1_T-1`` -> ``Peachtree``).

    Raises:
        ValueError: ``name`` is not a CommonRoad benchmark id (``CCC_Map-N_M...``).
    """
    segment = segment_of(name)
    country_map = segment.rsplit("-", 1)[0]
    for key, site in SITES:
        if country_map == f"USA_{key}":
            return site
    return country_map


def segment_of(name: str) -> str:
    """Map segment of a CommonRoad benchmark id or file name: its country, map and map id, the
    ``USA_US101-22`` part of ``USA_US101-22_1_T-1.xml``.

    Raises:
        ValueError: ``name`` does not follow the CommonRoad benchmark-id pattern.
    """
    m = _SEGMENT_RE.match(os.path.basename(name))
    if not m:
        raise ValueError(f"cannot tell the map segment of {name!r} (expected a CommonRoad benchmark id "
                         "such as DEU_Flensburg-1_1_T-1)")
    return m.group(1)


def site_and_segment(name: str, scenario_id: str | None = None) -> tuple[str, str]:
    """``(site, segment)`` from the file name, else from the scenario id the XML declares.

    Raises:
        ValueError: neither is a CommonRoad benchmark id.
    """
    try:
        return site_of(name), segment_of(name)
    except ValueError:
        if scenario_id is None:
            raise
    try:
        return site_of(scenario_id), segment_of(scenario_id)
    except ValueError as e:
        raise ValueError(f"neither the file name {name!r} nor its scenario id {scenario_id!r} is a "
                         "CommonRoad benchmark id (CCC_Map-N_M..., e.g. DEU_Flensburg-1_1_T-1)") from e


def list_scenario_files(data_dir: str) -> list[str]:
    """All ``*.xml`` files under ``data_dir`` (recursively), sorted for determinism."""
    out = []
    for root, _, files in os.walk(data_dir):
        out.extend(os.path.join(root, f) for f in files if f.endswith(".xml"))
    return sorted(out)


# ------------------------------------------------------------------------------------ map
def build_map(scenario, extension_m: float) -> MapArrays:
    """Lanes, polygons and topology of a scenario's lanelet network, with straight extensions.

    Every lanelet is a lane with its stored left / right / centre vertices (m); intersection
    lanes are the successors listed by the intersections' incomings; same-direction adjacent
    lanelets are neighbours; a lanelet's stop line (or its end, where the stop line gives no
    points) is a stop line; ``tl_lanes`` maps each successor of a lanelet with traffic lights
    to the lights whose direction covers the successor's turn. Lanes that leave the crop get
    :func:`~mosaic_ray.data.maps.add_straight_extensions` of ``extension_m`` m.

    Args:
        scenario: a commonroad-io ``Scenario``.
        extension_m: length of the straight extensions (0: none).

    Raises:
        ValueError: the lanelet network has no lanelets (the file is quarantined ``bad_map``).
    """
    net = scenario.lanelet_network
    lanelets = sorted(net.lanelets, key=lambda l: l.lanelet_id)
    if not lanelets:
        raise ValueError("the lanelet network has no lanelets")
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

    lanes = LaneLists()
    stop = []
    tl_lanes: dict[int, list] = {}
    for l in lanelets:
        lid = l.lanelet_id
        nb = []
        if l.adj_left is not None and l.adj_left_same_direction:
            nb.append(l.adj_left)
        if l.adj_right is not None and l.adj_right_same_direction:
            nb.append(l.adj_right)
        lanes.add(lid, np.asarray(l.left_vertices, float), np.asarray(l.right_vertices, float),
                  np.asarray(l.center_vertices, float), lid in intersection_lanes,
                  list(l.successor or []), list(l.predecessor or []), nb)
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
    add_straight_extensions(lanes, extension_m)
    return assemble_map(lanes, stop, tl_lanes)


def _tl_state(tl, step: int) -> int:
    if not getattr(tl, "active", True):
        return TL_INACTIVE
    try:
        st = tl.get_state_at_time_step(int(step))
    except Exception:  # a malformed cycle: treat as unknown
        return TL_NONE
    return _TL_MAP.get(st.value, TL_NONE)


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
        candidate that did not (``invalid_clip``, ``clip_error``), or one record for the whole
        file: a fault (``unreadable_xml``, ``unknown_scenario_id``: neither the file name nor
        the scenario id is a CommonRoad benchmark id, ``bad_map``) or no usable
        track (``no_trajectories``: map only; ``no_windows``: every track is shorter than one
        clip window, ``N_HIST + 1 + N_FUT`` = 56 steps = 5.6 s; ``below_min_speed``: every
        window's ego stays below ``opts.min_speed_mps``). A file therefore always gives at
        least one clip or one record. Windows below ``min_speed_mps`` in a file that has other
        clips or records are dropped without a record (a filter, not a candidate).
    """
    from commonroad.common.file_reader import CommonRoadFileReader

    opts = opts or CutOptions()
    name = os.path.basename(path)
    try:  # from the file name when it is a benchmark id; else from the XML's scenario id below
        site, segment = site_and_segment(name)
    except ValueError:
        site, segment = "", ""
    try:
        scenario, _ = CommonRoadFileReader(path).open()
    except Exception as e:  # commonroad-io raises many types for broken XML
        return [], [QuarantineRecord(name, segment, site, -1, -1, "unreadable_xml",
                                     f"{type(e).__name__}: {str(e)[:300]}")]
    if not segment:
        try:
            site, segment = site_and_segment(name, str(scenario.scenario_id))
        except ValueError as e:
            return [], [QuarantineRecord(name, "", "", -1, -1, "unknown_scenario_id", str(e))]
    tracks = extract_tracks(scenario)
    moving = [t for t in tracks if t.first_step > STATIC_FIRST_STEP]
    if not moving:
        return [], [QuarantineRecord(name, segment, site, -1, -1, "no_trajectories",
                                     "the file holds no recorded trajectories")]
    n_windows = sum(len(window_starts(len(t.states), opts.stride_steps)) for t in moving)
    if n_windows == 0:
        longest = max(len(t.states) for t in moving)
        span = N_HIST + 1 + N_FUT
        return [], [QuarantineRecord(name, segment, site, -1, -1, "no_windows",
                                     f"{len(moving)} recorded tracks, the longest {longest} steps "
                                     f"({longest * 0.1:.1f} s); a clip needs {span} steps ({span * 0.1:.1f} s)")]
    try:
        m = build_map(scenario, opts.map_extension_m)
    except Exception as e:
        return [], [QuarantineRecord(name, segment, site, -1, -1, "bad_map",
                                     f"{type(e).__name__}: {str(e)[:300]}")]
    tags = sorted(t.value for t in (scenario.tags or ()))
    scenario_id = str(scenario.scenario_id)
    clips, bad = [], []
    n_slow = 0
    for ego in moving:
        for off in window_starts(len(ego.states), opts.stride_steps):
            t0 = ego.first_step + off
            try:
                clip = _make_clip(m, tracks, ego, t0, opts, site=site, segment=segment,
                                  scenario_id=scenario_id, source_file=name, tags=tags)
                if clip is None:  # the ego stays below min_speed_mps
                    n_slow += 1
                    continue
                clip.validate()
                clips.append(group_frame(clip, ego.first_step, opts.clip_steps))
            except ClipValidationError as e:
                bad.append(QuarantineRecord(name, segment, site, ego.obstacle_id, t0, "invalid_clip", str(e)))
            except Exception as e:  # never crash a worker on one bad vehicle
                bad.append(QuarantineRecord(name, segment, site, ego.obstacle_id, t0, "clip_error",
                                            f"{type(e).__name__}: {str(e)[:300]}"))
    if not clips and not bad:
        bad.append(QuarantineRecord(name, segment, site, -1, -1, "below_min_speed",
                                    f"all {n_slow} windows: the ego stays below {opts.min_speed_mps} m/s"))
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
        if not near_ego(st, v, ego_states, ego_valid, opts.agent_radius_m):
            continue
        ids.append(tr.obstacle_id)
        types.append(tr.agent_type)
        sizes.append((tr.length, tr.width))
        states.append(st)
        valid.append(v)
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
        **window_fields(ego_states, ego_valid, (ego.length, ego.width), ids, types, sizes, states, valid),
        lane_ids=m.lane_ids, lane_offsets=m.offsets, lane_left=m.left, lane_right=m.right,
        lane_center=m.center, lane_in_intersection=m.in_intersection, lane_on_route=on_route_mask,
        lane_tl_state=tl_state, lane_is_extension=m.is_extension,
        route_lane_ids=np.asarray([int(m.lane_ids[i]) for i in route_idx], np.int64),
        route_center=route_center, stop_lines=m.stop_lines,
    )


def cut_each(cut: Callable[[str, Any], tuple[list[Clip], list[QuarantineRecord]]], paths: Iterable[str],
             opts: Any = None) -> tuple[list[Clip], list[QuarantineRecord]]:
    """``cut(path, opts)`` (a reader's one-file function) over several files, in-process:
    all clips, then all quarantine records, in file order."""
    clips, bad = [], []
    for p in paths:
        c, b = cut(p, opts)
        clips.extend(c)
        bad.extend(b)
    return clips, bad


def cut_files(paths: Iterable[str], opts: CutOptions | None = None) -> tuple[list[Clip], list[QuarantineRecord]]:
    """:func:`cut_file` over several files (in-process; the Ray stage parallelises files)."""
    return cut_each(cut_file, paths, opts)
