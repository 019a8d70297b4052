"""Cut NAVSIM-style clips from ScenarioNet scenario files (Waymo, nuScenes, nuPlan, AV2, Lyft).

ScenarioNet (Li et al., NeurIPS 2023 datasets track; ``metadriverse/scenarionet``) converts
driving logs into one "unified scenario description" (MetaDrive's ``ScenarioDescription``),
one pickled dict per scenario::

    {"id", "version", "length",                      # length = T steps
     "metadata": {"dataset", "sdc_id", "ts" (T,), "sample_rate", "map"/location, "scenario_id", ...},
     "tracks": {obj_id: {"type": "VEHICLE" | "PEDESTRIAN" | "CYCLIST" | "TRAFFIC_CONE" | ...,
                         "state": {"position" (T,3)|(T,2), "heading" (T,)|(T,1),
                                   "velocity" (T,2), "valid" (T,)|(T,1),
                                   "length"/"width"/"height" (T,)|(T,1)}, "metadata": {...}}},
     "map_features": {feat_id: {"type": "LANE_*" | "ROAD_LINE_*" | "ROAD_EDGE_*" | "CROSSWALK"
                                | "STOP_SIGN" | ..., "polyline" (N,3)|(N,2), "polygon",
                                "entry_lanes", "exit_lanes", "left_neighbor", "right_neighbor",
                                "width" (N,2), "interpolating", "lane", "position"}},
     "dynamic_map_states": {id: {"type": "TRAFFIC_LIGHT", "lane", "stop_point",
                                 "state": {"object_state": [T states]}}}}

Files are loaded with :func:`mosaic_ray.data.safe_pickle.safe_load` (they come from outside;
plain ``pickle.load`` would run any code a file names). This module turns one file into
:class:`~mosaic_ray.data.clip.Clip` objects with the CommonRoad reader's conventions
(:mod:`mosaic_ray.data.commonroad`) and a :class:`~mosaic_ray.data.commonroad.QuarantineRecord`
for whatever cannot become a clip, so every later stage works unchanged.

Structure: :func:`parse_scenario` checks shapes and resamples the tracks; :func:`build_map`
does the ScenarioNet-specific map part (lane features, half-widths from ``width`` /
``polygon`` / road lines, traffic-light states, stop lines, crosswalks) and hands the lanes to
:mod:`mosaic_ray.data.maps`, shared with the CommonRoad reader, for the geometry helpers
(de-duplication, Douglas-Peucker, normals, ray casting), the straight extensions, the map
arrays with their lane polygons and the route (:func:`~mosaic_ray.data.maps.plan_route`);
:func:`cut_scenario` cuts the windows.

Conventions and documented choices
----------------------------------
* **Egos.** The ``sdc`` track (``metadata["sdc_id"]``) always; with
  ``ScenarioNetOptions.other_egos`` also every other ``VEHICLE`` track whose window moves
  (max speed >= ``other_ego_min_speed_mps``; parked cars are not pseudo-egos). Windows follow
  :func:`~mosaic_ray.data.commonroad.window_starts` over each contiguous valid run of the
  ego track. A *candidate* is one (ego, window); each becomes a clip or a quarantine record.
* **Agents.** Every other track that comes within ``agent_radius_m`` of the ego. Types:
  VEHICLE -> ``AGENT_VEHICLE``, PEDESTRIAN -> ``AGENT_PEDESTRIAN``, CYCLIST (and
  ``BICYCLE``/``MOTORCYCLIST``) -> ``AGENT_CYCLIST``, TRAFFIC_CONE / TRAFFIC_BARRIER /
  TRAFFIC_OBJECT / barrier-like types -> ``AGENT_STATIC`` (NC scores 0.5 for them); OTHER /
  UNSET / unknown types -> ``AGENT_VEHICLE`` if the track moves faster than 1 m/s, else
  ``AGENT_STATIC``. A static-type object is placed at the median of its valid positions and
  valid at every step (perception drops occluded cones; they do not move). Box = median
  length/width over the track's valid steps in the clip window (ScenarioNet stores them per
  step). States are the box centre, heading and speed = ``|velocity|`` (finite differences of
  position when a converter gives no velocity).
* **Ids.** Object ids are strings in ScenarioNet: decimal ids become their integer; others
  (``"ego"``, UUIDs) a stable 60-bit hash (:func:`object_int_id`). Lane ids are the integer
  feature ids when all are decimal and below 10^9, otherwise their rank in sorted order.
* **Time.** The step is ``median(diff(metadata["ts"]))`` when ``ts`` has one entry per step,
  else ``metadata["sample_rate"]`` (seconds, or Hz when > 1), else 0.1 s. Off 0.1 s the
  tracks are resampled to 0.1 s linearly (heading through its wrapped difference, i.e.
  unwrapped; a resampled step is valid when both neighbours are) and traffic-light states
  by the previous sample.
* **Lanes.** ``LANE_*`` features (``LANE_BIKE_LANE`` only with ``include_bike_lanes``): the
  polyline is the centre-line (vertices closer than 5 cm dropped, then simplified with
  Douglas-Peucker at ``simplify_tolerance_m``); the polygon is the centre-line offset by per-vertex half-widths
  left and right, from, in order: the converter's ``width`` (ScenarioNet's Waymo converter
  stores (N, 2) distances to the left and right boundary lines; 0 = unknown; a (N,) or
  scalar ``width`` is a full width), the distance to the lane's ``polygon`` outline where a
  converter gives one (nuScenes, nuPlan), the nearest ``ROAD_LINE_*`` / ``ROAD_EDGE_*``
  polyline hit by a perpendicular ray of ``max_half_width_m`` (so lanes beside a kerb reach
  the kerb), else ``default_half_width_m``; median-smoothed and clipped to
  [``min_half_width_m``, ``max_half_width_m``]. Intersection lanes without a width get
  ``intersection_half_width_m`` (no ray casting inside junctions, where the rays would meet
  the lines of crossing roads).
* **Drivable area.** As in the CommonRoad path, the union of the clip's lane polygons
  (lanes, intersection lanes, straight extensions of ``map_extension_m`` where a lane has no
  exit / entry lane, i.e. leaves the converter's map crop:
  :func:`~mosaic_ray.data.maps.add_straight_extensions`). Road edges (kerbs) enter only
  through the half-widths above (a lane side without a boundary line reaches the nearest
  line or edge); the ``ROAD_EDGE_*`` polylines themselves are not stored (the clip schema has
  lanes only). Known consequence: Waymo draws turn lanes as stylised arcs and drivers cut
  the corner by several metres, so a logged turn can leave the lanes (the logged human's DAC
  over the fixture's 48 clips is about 0.9, as on the NGSIM validation clips, 0.92; 1.0 on
  its sdc clips); a convex hull of the junction's lanes was tried and rejected (7x the lane
  area: sidewalks and corners became drivable).
* **Topology.** ``exit_lanes`` -> successors, ``entry_lanes`` -> predecessors,
  ``left_neighbor`` / ``right_neighbor`` -> same-direction neighbours (Waymo's neighbours
  are same-direction lanes). Intersection lanes: Waymo's ``interpolating`` lanes and lanes
  controlled by a traffic light.
* **Traffic lights.** ``dynamic_map_states`` per step, Waymo ``LANE_STATE_*`` and MetaDrive's
  simplified ``TRAFFIC_LIGHT_*`` names mapped as MetaDrive's ``simplify_light_status`` does:
  STOP / ARROW_STOP / FLASHING_STOP -> ``TL_RED``, CAUTION / ARROW_CAUTION / FLASHING_CAUTION
  -> ``TL_YELLOW``, GO / ARROW_GO -> ``TL_GREEN``, UNKNOWN / None -> ``TL_NONE``. The state
  applies to the controlled ``lane`` (Waymo's stop point lies at that lane's start: the
  light governs entry into it, the clip's ``lane_tl_state`` meaning); when the stop point
  lies at the lane's far end instead, to its exit lanes. Several lights on one lane: red
  wins, else the highest code.
* **Stop lines.** A segment across the lane at each traffic light's stop point and at the
  start of each lane a ``STOP_SIGN`` controls. Crosswalks, stop signs and lights near the
  logged future become clip tags (``crosswalk``, ``stop_sign``, ``traffic_light``); the clip
  schema has no crosswalk polygons.
* **Map crop.** A clip keeps the lanes within ``map_radius_m`` of the ego's window positions
  plus its on-route lanes (nuPlan / nuScenes maps span whole cities).
* **Metadata.** ``dataset`` = ``"scenarionet-<metadata.dataset>"``; ``site`` (the default
  domain column) = ``metadata["map"]`` (nuScenes / nuPlan location; also ``city``,
  ``location``, ``map_name``) or else the dataset name (Waymo gives no location);
  ``scenario_id`` = ``metadata["scenario_id"]`` or ``id``; ``segment`` (the split unit and
  the dedup key): ``"<dataset>_<scenario_id>"`` (``segment_by="scenario"``, default: a
  scenario is one log excerpt, so no log is shared between splits) or ``"<dataset>_<site>"``
  (``segment_by="map"``: no road shared between splits, coarse).
* **Shapes.** Accepted: position (T,2)/(T,3); heading, valid, length, width (T,)/(T,1)
  (length/width also scalar); velocity (T,2)/(T,3) or absent; every track the scenario's
  length; ``object_state`` lists of T entries. Anything else quarantines the whole scenario
  (reason ``bad_track`` / ``bad_map``, the detail names the object, field and shape) — a
  silently dropped agent would hide collisions from NC. Non-finite values at valid steps
  make those steps invalid.

Quarantine reasons: ``unsafe_pickle``, ``unreadable_pickle`` (truncated / corrupt / I/O),
``bad_scenario`` (not a scenario dict), ``bad_metadata``, ``no_sdc``, ``bad_track``,
``bad_map``, ``no_windows`` (no track long enough: one record for the file), and per
candidate ``invalid_clip`` / ``clip_error`` as in the CommonRoad path.

Sources: ScenarioNet docs "Scenario Description" / MetaDrive ``scenario_description.py``,
``metadrive/type.py`` (``MetaDriveType``), ScenarioNet ``converter/waymo/utils.py``
(``extract_width``, ``compute_width``), ``common_utils.read_dataset_summary``; Waymo Open
Motion Dataset ``scenario.proto`` / ``map.proto`` (``TrafficSignalLaneState``, ``stop_point``).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import shapely

from mosaic_ray.data.clip import (
    AGENT_CYCLIST, AGENT_PEDESTRIAN, AGENT_STATIC, AGENT_VEHICLE, DT, N_PRE, T0_INDEX, T_ALL,
    TL_GREEN, TL_NONE, TL_RED, TL_YELLOW, Clip, ClipValidationError, group_frame, make_clip_id, near_ego,
    window_fields,
)
from mosaic_ray.data.commonroad import CutOptions, QuarantineRecord, cut_each, window_starts
from mosaic_ray.data.maps import (
    EXTENSION_ID_OFFSET, LaneLists, MapArrays, add_straight_extensions, assemble_map, dedupe_indices,
    median_smooth, offset_bounds, plan_route, ray_distances, simplify_indices, wrap_angle,
)
from mosaic_ray.data.safe_pickle import CorruptPickleError, UnsafePickleError, safe_load

__all__ = [
    "ScenarioNetOptions", "ScenarioShapeError", "list_scenarionet_files", "read_scenario",
    "cut_scenarionet_file", "cut_scenario", "cut_scenarionet_files", "object_int_id",
    "tl_code", "agent_type_code", "sample_interval", "METADATA_FILES",
]

METADATA_FILES = ("dataset_summary.pkl", "dataset_mapping.pkl")

_VEHICLE_TYPES = {"VEHICLE", "CAR", "TRUCK", "BUS"}
_PEDESTRIAN_TYPES = {"PEDESTRIAN"}
_CYCLIST_TYPES = {"CYCLIST", "BICYCLE", "MOTORCYCLIST", "MOTORCYCLE"}
_STATIC_TYPES = {"TRAFFIC_CONE", "TRAFFIC_BARRIER", "TRAFFIC_OBJECT", "BARRIER", "CONE",
                 "BUILDING", "INVISIBLE_WALL", "GROUND", "STATIC", "STATIC_OBJECT"}
_OTHER_MOVING_SPEED = 1.0  # m/s: an OTHER/unknown track faster than this is a vehicle

_TL_CODES = {
    "LANE_STATE_STOP": TL_RED, "LANE_STATE_ARROW_STOP": TL_RED, "LANE_STATE_FLASHING_STOP": TL_RED,
    "LANE_STATE_CAUTION": TL_YELLOW, "LANE_STATE_ARROW_CAUTION": TL_YELLOW,
    "LANE_STATE_FLASHING_CAUTION": TL_YELLOW,
    "LANE_STATE_GO": TL_GREEN, "LANE_STATE_ARROW_GO": TL_GREEN,
    "LANE_STATE_UNKNOWN": TL_NONE,
    "TRAFFIC_LIGHT_RED": TL_RED, "TRAFFIC_LIGHT_YELLOW": TL_YELLOW, "TRAFFIC_LIGHT_GREEN": TL_GREEN,
    "TRAFFIC_LIGHT_UNKNOWN": TL_NONE,
}


class ScenarioShapeError(ValueError):
    """A scenario's arrays do not fit the accepted ScenarioNet variants (message: what and where).

    ``reason`` is the quarantine reason (``bad_track``, ``bad_map``, ``bad_metadata``,
    ``bad_scenario``, ``no_sdc``).
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class ScenarioNetOptions(CutOptions):
    """Clip-cutting options for ScenarioNet files (CommonRoad's :class:`CutOptions` plus these).

    Attributes (metres, m/s):
        other_egos: also cut clips for moving ``VEHICLE`` tracks other than the sdc.
        other_ego_min_speed_mps: such a track must reach this speed in the window.
        segment_by: ``"scenario"`` (segment = dataset + scenario id) or ``"map"``
            (dataset + map/location).
        min_half_width_m, max_half_width_m: clip range of lane half-widths.
        default_half_width_m: half-width where nothing else tells.
        intersection_half_width_m: half-width of intersection lanes without a width.
        simplify_tolerance_m: Douglas-Peucker tolerance for lane centre-lines.
        map_radius_m: keep lanes within this distance of the ego's window positions.
        include_bike_lanes: make ``LANE_BIKE_LANE`` features lanes (drivable area).
    """

    other_egos: bool = False
    other_ego_min_speed_mps: float = 1.0
    segment_by: str = "scenario"
    min_half_width_m: float = 1.0
    max_half_width_m: float = 2.75
    default_half_width_m: float = 1.75
    intersection_half_width_m: float = 2.25
    simplify_tolerance_m: float = 0.1
    map_radius_m: float = 200.0
    include_bike_lanes: bool = False


# ------------------------------------------------------------------------------- listing
def list_scenarionet_files(dirs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Scenario files of one ScenarioNet dataset folder, or of several (one input).

    A folder with ``dataset_summary.pkl`` lists its scenarios there and, through
    ``dataset_mapping.pkl``, the sub-folder (possibly outside the folder, as
    ``scenarionet.merge`` writes) of each: ``<dir>/<mapping[name]>/<name>`` — both loaded with
    the restricted unpickler. A folder without them: every ``*.pkl`` under it (recursively),
    the two metadata file names excluded. Files listed but missing are returned anyway so
    that ingest quarantines them (``unreadable_pickle``) instead of losing them.

    Args:
        dirs: a folder or a list of folders.

    Returns:
        Sorted, de-duplicated (by real path) file paths.

    Raises:
        FileNotFoundError: a folder does not exist.
        UnsafePickleError / CorruptPickleError: a summary or mapping file is unsafe or broken.
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    out: dict[str, str] = {}
    for d in dirs:
        d = os.fspath(d)
        if not os.path.isdir(d):
            raise FileNotFoundError(f"ScenarioNet folder {d!r} does not exist")
        summary = os.path.join(d, METADATA_FILES[0])
        mapping_file = os.path.join(d, METADATA_FILES[1])
        if os.path.isfile(summary):
            names = list(safe_load(summary).keys())
            mapping = safe_load(mapping_file) if os.path.isfile(mapping_file) else {}
            paths = [os.path.normpath(os.path.join(d, str(mapping.get(n, "") or ""), str(n))) for n in names]
        else:
            paths = []
            for root, _, files in os.walk(d):
                paths.extend(os.path.join(root, f) for f in files
                             if f.endswith(".pkl") and f not in METADATA_FILES)
        for p in paths:
            out.setdefault(os.path.realpath(p) if os.path.exists(p) else p, p)
    return sorted(out.values())


# ------------------------------------------------------------------------------- helpers
def object_int_id(obj_id: Any) -> int:
    """Integer id of a ScenarioNet object id: the integer itself for decimal ids (< 2^62),
    else a stable 60-bit SHA-1 hash of the string (``"ego"``, UUIDs)."""
    s = str(obj_id)
    if s.isdigit() and int(s) < 2**62:
        return int(s)
    return int(hashlib.sha1(s.encode()).hexdigest()[:15], 16)


def tl_code(state: Any) -> int:
    """``TL_*`` code of a ScenarioNet / Waymo light state string (None / unknown -> TL_NONE)."""
    if state is None:
        return TL_NONE
    return _TL_CODES.get(str(state).upper(), TL_NONE)


def agent_type_code(type_name: Any, max_speed: float = 0.0) -> int:
    """``AGENT_*`` code of a ScenarioNet object type (see the module docstring)."""
    t = str(type_name).upper()
    if t in _VEHICLE_TYPES:
        return AGENT_VEHICLE
    if t in _PEDESTRIAN_TYPES:
        return AGENT_PEDESTRIAN
    if t in _CYCLIST_TYPES:
        return AGENT_CYCLIST
    if t in _STATIC_TYPES:
        return AGENT_STATIC
    return AGENT_VEHICLE if max_speed > _OTHER_MOVING_SPEED else AGENT_STATIC


def sample_interval(metadata: dict, length: int) -> float:
    """Seconds between the scenario's steps (see the module docstring, "Time").

    Raises:
        ScenarioShapeError: (``bad_metadata``) a non-positive or non-finite interval.
    """
    ts = metadata.get("ts", metadata.get("timestep"))
    dt = None
    if ts is not None:
        ts = np.asarray(ts, dtype=float).reshape(-1)
        if ts.size == length and length > 1 and np.isfinite(ts).all():
            dt = float(np.median(np.diff(ts)))
    if dt is None and metadata.get("sample_rate") is not None:
        r = float(metadata["sample_rate"])
        dt = 1.0 / r if r > 1.0 else r
    if dt is None:
        dt = DT
    if not (math.isfinite(dt) and dt > 0):
        raise ScenarioShapeError("bad_metadata", f"sample interval {dt!r} s is not positive")
    return dt


def read_scenario(path: str | os.PathLike) -> dict:
    """Load one ScenarioNet scenario with the restricted unpickler and check its top level.

    Raises:
        UnsafePickleError: the file names a refused global (nothing it names is run).
        CorruptPickleError: truncated / malformed pickle.
        OSError: the file cannot be read.
        ScenarioShapeError: (``bad_scenario``) not a dict with ``tracks``, ``map_features``
            and ``metadata`` mappings.
    """
    d = safe_load(path)
    if not isinstance(d, dict):
        raise ScenarioShapeError("bad_scenario", f"top level is {type(d).__name__}, expected dict")
    for k in ("tracks", "map_features", "metadata"):
        if not isinstance(d.get(k), dict):
            raise ScenarioShapeError("bad_scenario", f"key {k!r} missing or not a dict")
    return d


def _vec(state: dict, key: str, T: int, oid: str, allow_scalar: bool = False,
         required: bool = True) -> np.ndarray | None:
    """A per-step scalar field as (T,) float, accepting (T,) and (T,1) (and scalars)."""
    if key not in state or state[key] is None:
        if required:
            raise ScenarioShapeError("bad_track", f"track {oid}: state has no {key!r}")
        return None
    a = np.asarray(state[key])
    if a.dtype == object:
        raise ScenarioShapeError("bad_track", f"track {oid}: {key} has dtype object")
    if allow_scalar and a.ndim == 0:
        return np.full(T, float(a))
    if a.shape == (T,) or a.shape == (T, 1):
        return a.reshape(T).astype(float) if key != "valid" else a.reshape(T)
    raise ScenarioShapeError("bad_track", f"track {oid}: {key} has shape {a.shape}, expected ({T},) or ({T}, 1)"
                             + (" or a scalar" if allow_scalar else ""))


@dataclass
class SNTrack:
    """One ScenarioNet track at 0.1 s: ``states`` (T, 4) x, y, heading, speed (NaN where
    invalid), ``valid`` (T,) bool, ``size`` (T, 2) length, width; ``type_name`` raw type."""

    obj_id: str
    int_id: int
    type_name: str
    agent_type: int
    states: np.ndarray
    valid: np.ndarray
    size: np.ndarray

    def window(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """States (stop-start, 4), NaN outside the track or where invalid, and validity."""
        n = stop - start
        out = np.full((n, 4), np.nan)
        valid = np.zeros(n, bool)
        a, b = max(start, 0), min(stop, len(self.states))
        if b > a:
            out[a - start:b - start] = self.states[a:b]
            valid[a - start:b - start] = self.valid[a:b]
        out[~valid] = np.nan
        return out, valid

    def box(self, start: int, stop: int) -> tuple[float, float]:
        """Median (length, width) over the valid steps in [start, stop) (all steps if none)."""
        a, b = max(start, 0), min(stop, len(self.states))
        v = self.valid[a:b]
        sz = self.size[a:b][v] if v.any() else self.size[self.valid] if self.valid.any() else self.size
        sz = sz[np.isfinite(sz).all(1) & (sz > 0).all(1)]
        if not len(sz):
            return float("nan"), float("nan")
        L, W = np.median(sz, axis=0)
        return float(L), float(W)


def parse_track(oid: str, tr: Any, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Arrays of one raw ScenarioNet track at the scenario's own step.

    Returns:
        ``(states (T,4), valid (T,), size (T,2), type_name)``; states hold x, y, heading, speed.

    Raises:
        ScenarioShapeError: (``bad_track``) the track does not fit the accepted variants.
    """
    if not isinstance(tr, dict) or not isinstance(tr.get("state"), dict):
        raise ScenarioShapeError("bad_track", f"track {oid}: no 'state' dict")
    st = tr["state"]
    if "position" not in st:
        raise ScenarioShapeError("bad_track", f"track {oid}: state has no 'position'")
    pos = np.asarray(st["position"])
    if pos.dtype == object or pos.ndim != 2 or pos.shape[0] != T or pos.shape[1] not in (2, 3):
        raise ScenarioShapeError("bad_track", f"track {oid}: position has shape {pos.shape}, "
                                              f"expected ({T}, 2) or ({T}, 3)")
    xy = pos[:, :2].astype(float)
    heading = _vec(st, "heading", T, oid)
    valid = _vec(st, "valid", T, oid).astype(bool)
    length = _vec(st, "length", T, oid, allow_scalar=True)
    width = _vec(st, "width", T, oid, allow_scalar=True)
    vel = st.get("velocity")
    if vel is not None:
        vel = np.asarray(vel)
        if vel.dtype == object or vel.ndim != 2 or vel.shape[0] != T or vel.shape[1] not in (2, 3):
            raise ScenarioShapeError("bad_track", f"track {oid}: velocity has shape {vel.shape}, "
                                                  f"expected ({T}, 2) or ({T}, 3)")
        speed = np.hypot(vel[:, 0].astype(float), vel[:, 1].astype(float))
    else:  # finite differences over the valid steps (the caller's step; scaled later)
        speed = np.full(T, np.nan)
    valid = valid & np.isfinite(xy).all(1) & np.isfinite(heading) & (np.isfinite(speed) | (vel is None))
    states = np.column_stack([xy, heading, speed])
    size = np.column_stack([length, width])
    return states, valid, size, str(tr.get("type", "UNSET"))


def _fill_speed_from_positions(states: np.ndarray, valid: np.ndarray, dt: float) -> None:
    n = len(states)
    sp = np.zeros(n)
    for k in range(n):
        if not valid[k]:
            continue
        a = k - 1 if k > 0 and valid[k - 1] else k
        b = k + 1 if k + 1 < n and valid[k + 1] else k
        if b > a:
            sp[k] = float(np.linalg.norm(states[b, :2] - states[a, :2])) / ((b - a) * dt)
    states[:, 3] = np.where(valid, sp, np.nan)


def resample_track(states: np.ndarray, valid: np.ndarray, size: np.ndarray, dt: float,
                   n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear resampling of a track from step ``dt`` (s) to 0.1 s.

    Args:
        states: (T, 4) float x, y, heading, speed (m, m, rad, m/s); valid: (T,) bool;
            size: (T, 2) float length, width (m); n_out: steps at 0.1 s.

    Returns:
        ``(states (n_out, 4), valid (n_out,), size (n_out, 2))``. Heading interpolates through
        its wrapped difference (i.e. unwrapped); a new step is valid when both source
        neighbours are (or it falls on a valid source step); invalid steps hold NaN.
    """
    t = np.arange(n_out) * DT / dt
    i0 = np.clip(np.floor(t + 1e-9).astype(int), 0, len(states) - 1)
    i1 = np.clip(i0 + 1, 0, len(states) - 1)
    f = np.clip(t - i0, 0.0, 1.0)
    exact = f < 1e-6
    v = valid[i0] & (exact | valid[i1])
    a, b = states[i0], states[i1]
    out = a + f[:, None] * (b - a)
    out[:, 2] = a[:, 2] + f * wrap_angle(b[:, 2] - a[:, 2])
    out[exact] = a[exact]
    sz = size[i0] + f[:, None] * (size[i1] - size[i0])
    out[~v] = np.nan
    return out, v, sz


# ----------------------------------------------------------------------------------- map
def _ids_list(v: Any) -> list[str]:
    """Feature ids of a lane-link field: a list of ids, or of dicts with ``feature_id`` / ``id``."""
    if v is None:
        return []
    if isinstance(v, (str, int, np.integer)):
        return [str(v)]
    out = []
    for x in v:
        if isinstance(x, dict):
            x = x.get("feature_id", x.get("id"))
        if x is not None:
            out.append(str(x))
    return out


def _xy(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == object or arr.ndim != 2 or arr.shape[1] not in (2, 3) or arr.shape[0] < 1:
        raise ScenarioShapeError("bad_map", f"{what} has shape {arr.shape}, expected (N, 2) or (N, 3)")
    return arr[:, :2].astype(float)


@dataclass
class SNMap:
    """The scenario's map as :class:`MapArrays` plus ScenarioNet extras.

    ``tl_codes``: lane id -> (T,) int8 ``TL_*`` per scenario step (0.1 s); ``stop_sign_lanes``,
    ``crosswalks`` (shapely polygons), ``id_of_feature``: feature id -> lane id.
    """

    arrays: MapArrays
    tl_codes: dict[int, np.ndarray]
    stop_sign_lanes: set[int]
    crosswalks: list
    id_of_feature: dict[str, int]


def _half_widths(c: np.ndarray, feat: dict, inter: bool, lines_tree, lines,
                 opts: ScenarioNetOptions, fid: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(c)
    wl = np.full(n, np.nan)
    wr = np.full(n, np.nan)
    w = feat.get("width")
    if w is not None:
        w = np.asarray(w, dtype=float) if np.asarray(w).dtype != object else None
    if w is not None:
        if w.ndim == 2 and w.shape == (n, 2):
            wl, wr = w[:, 0].copy(), w[:, 1].copy()
        elif w.ndim == 2 and w.shape == (n, 1) or w.shape == (n,):
            wl = wr = w.reshape(n) / 2.0
        elif w.ndim == 0:
            wl = wr = np.full(n, float(w) / 2.0)
        else:
            raise ScenarioShapeError("bad_map", f"lane {fid}: width has shape {w.shape}, expected ({n}, 2), ({n},) or a scalar")
        wl, wr = wl.copy(), wr.copy()
        for a in (wl, wr):
            a[~(np.isfinite(a) & (a > 0.05))] = np.nan
    missing = np.isnan(wl) | np.isnan(wr)
    if missing.any() and feat.get("polygon") is not None:
        try:
            poly = shapely.Polygon(_xy(feat["polygon"], f"lane {fid} polygon"))
            if poly.is_valid and poly.area > 0.1:
                d = shapely.distance(shapely.points(c), poly.exterior)
                wl = np.where(np.isnan(wl), d, wl)
                wr = np.where(np.isnan(wr), d, wr)
        except ScenarioShapeError:
            raise
        except Exception:
            pass
    if inter:  # no ray casting inside junctions: crossing lines would cut the lane short
        wl = np.where(np.isnan(wl), opts.intersection_half_width_m, wl)
        wr = np.where(np.isnan(wr), opts.intersection_half_width_m, wr)
    else:
        for side, arr in ((1.0, wl), (-1.0, wr)):
            idx = np.flatnonzero(np.isnan(arr))
            arr[idx] = ray_distances(c, idx, side, opts.max_half_width_m, lines_tree, lines)
        wl = np.where(np.isnan(wl), opts.default_half_width_m, wl)
        wr = np.where(np.isnan(wr), opts.default_half_width_m, wr)
    wl = np.clip(median_smooth(wl), opts.min_half_width_m, opts.max_half_width_m)
    wr = np.clip(median_smooth(wr), opts.min_half_width_m, opts.max_half_width_m)
    return wl, wr


def build_map(scn: dict, T: int, dt: float, opts: ScenarioNetOptions) -> SNMap:
    """Lanes, polygons, topology, traffic lights and stop lines of a ScenarioNet scenario.

    Args:
        scn: the scenario dict; T: steps at 0.1 s after resampling; dt: the source step (s).

    Raises:
        ScenarioShapeError: (``bad_map``) a feature does not fit.
    """
    feats: dict = scn["map_features"]
    lane_fids = []
    for fid, f in feats.items():
        if not isinstance(f, dict):
            raise ScenarioShapeError("bad_map", f"map feature {fid}: not a dict")
        t = str(f.get("type", ""))
        if t.startswith("LANE_") and (opts.include_bike_lanes or t != "LANE_BIKE_LANE"):
            lane_fids.append(str(fid))
    lane_fids.sort(key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    numeric = all(s.isdigit() and int(s) < EXTENSION_ID_OFFSET for s in lane_fids)
    id_of = {s: (int(s) if numeric else i) for i, s in enumerate(sorted(lane_fids) if not numeric else lane_fids)}
    fmap = {str(k): v for k, v in feats.items()}

    # road lines / edges for width estimation; crosswalks; stop signs
    lines, crosswalks, stop_signs = [], [], []
    for fid, f in fmap.items():
        t = str(f.get("type", ""))
        if t.startswith("ROAD_LINE_") or t.startswith("ROAD_EDGE_"):
            if f.get("polyline") is not None:
                pl = _xy(f["polyline"], f"{t} {fid} polyline")
                if len(pl) >= 2:
                    lines.append(shapely.LineString(pl))
        elif t == "CROSSWALK" and f.get("polygon") is not None:
            pg = _xy(f["polygon"], f"crosswalk {fid} polygon")
            if len(pg) >= 3:
                crosswalks.append(shapely.Polygon(pg))
        elif t == "STOP_SIGN":
            stop_signs.append(f)
    lines_arr = np.array(lines, dtype=object)
    tree = shapely.STRtree(lines_arr) if len(lines) else None

    # traffic lights: lane -> per-step codes at 0.1 s
    n_src = int(round((T - 1) * DT / dt)) + 1 if dt != DT else T
    tl_lane_codes: dict[str, list[np.ndarray]] = {}
    tl_stop_points: list[tuple[str, np.ndarray]] = []
    for key, s in (scn.get("dynamic_map_states") or {}).items():
        if not isinstance(s, dict):
            raise ScenarioShapeError("bad_map", f"dynamic map state {key}: not a dict")
        if str(s.get("type", "TRAFFIC_LIGHT")) != "TRAFFIC_LIGHT":
            continue
        obj = (s.get("state") or {}).get("object_state")
        if obj is None:
            continue
        obj = list(obj)
        if len(obj) < n_src:
            raise ScenarioShapeError("bad_map", f"traffic light {key}: {len(obj)} states, expected {n_src}")
        codes_src = np.array([tl_code(x) for x in obj[:n_src]], np.int8)
        if dt != DT:
            idx = np.clip(np.floor(np.arange(T) * DT / dt + 1e-9).astype(int), 0, n_src - 1)
            codes = codes_src[idx]
        else:
            codes = codes_src[:T]
        lane = s.get("lane", key)
        lanes = _ids_list(lane)
        sp = s.get("stop_point")
        for lf in lanes:
            tl_lane_codes.setdefault(lf, []).append(codes)
            if sp is not None and np.asarray(sp).size >= 2:
                tl_stop_points.append((lf, np.asarray(sp, float).reshape(-1)[:2]))

    # which lanes the lights govern (the controlled lane, or its exits when the stop point
    # lies at its far end)
    governed: dict[str, list[np.ndarray]] = {}
    for lf, codes_list in tl_lane_codes.items():
        f = fmap.get(lf)
        if f is None or lf not in id_of:
            continue
        c = _xy(f["polyline"], f"lane {lf} polyline")
        sp = next((p for l2, p in tl_stop_points if l2 == lf), None)
        targets = [lf]
        if sp is not None and len(c) >= 2 and np.linalg.norm(c[-1] - sp) + 1.0 < np.linalg.norm(c[0] - sp) \
                and np.linalg.norm(c[0] - sp) > 3.0:
            targets = [e for e in _ids_list(f.get("exit_lanes")) if e in id_of] or [lf]
        for tgt in targets:
            governed.setdefault(tgt, []).extend(codes_list)
    tl_codes: dict[int, np.ndarray] = {}
    for lf, lst in governed.items():
        arr = np.stack(lst)
        comb = np.where((arr == TL_RED).any(0), TL_RED, arr.max(0)).astype(np.int8)
        tl_codes[id_of[lf]] = comb

    lanes = LaneLists()
    for lf in lane_fids:
        f = fmap[lf]
        if f.get("polyline") is None:
            raise ScenarioShapeError("bad_map", f"lane {lf}: no polyline")
        raw = _xy(f["polyline"], f"lane {lf} polyline")
        ok = np.isfinite(raw).all(1)
        raw = raw[ok]
        keep = dedupe_indices(raw)  # drop repeated points, keep the original indices for the widths
        if len(keep) < 2:
            continue  # a degenerate lane (one point): no area, no direction
        lid = id_of[lf]
        is_inter = bool(f.get("interpolating", False)) or lid in tl_codes or lf in tl_lane_codes
        fw = dict(f)
        if fw.get("width") is not None:
            w = np.asarray(fw["width"])
            if w.ndim >= 1 and w.shape[0] == len(ok):
                fw["width"] = w[ok][keep]
            elif w.ndim >= 1:
                raise ScenarioShapeError("bad_map", f"lane {lf}: width has shape {w.shape}, "
                                                    f"expected ({len(ok)}, 2), ({len(ok)},) or a scalar")
        c = raw[keep]
        wl, wr = _half_widths(c, fw, is_inter, tree, lines_arr, opts, lf)
        sel = simplify_indices(c, opts.simplify_tolerance_m)
        c, wl, wr = c[sel], wl[sel], wr[sel]
        left, right = offset_bounds(c, wl, wr)
        lanes.add(lid, left, right, c, is_inter,
                  [id_of[x] for x in _ids_list(f.get("exit_lanes")) if x in id_of],
                  [id_of[x] for x in _ids_list(f.get("entry_lanes")) if x in id_of],
                  [id_of[x] for x in _ids_list(f.get("left_neighbor")) + _ids_list(f.get("right_neighbor"))
                   if x in id_of])
    present = set(lanes.ids)
    for d in (lanes.successors, lanes.predecessors, lanes.neighbours):
        for k in d:
            d[k] = [x for x in d[k] if x in present]

    # straight extensions where lanes leave the converter's map crop
    add_straight_extensions(lanes, opts.map_extension_m)

    # stop lines: at traffic-light stop points and at the start of stop-sign lanes
    index = lanes.index()
    stop: list[np.ndarray] = []

    def across(i: int, xy: np.ndarray) -> np.ndarray:
        c = lanes.centers[i]
        j = int(np.argmin(np.linalg.norm(c - xy, axis=1)))
        return np.stack([lanes.lefts[i][j], lanes.rights[i][j]])

    for lf, sp in tl_stop_points:
        i = index.get(id_of.get(lf, -1))
        if i is not None:
            stop.append(across(i, sp))
    stop_sign_lanes: set[int] = set()
    for s in stop_signs:
        for lf in _ids_list(s.get("lane")):
            i = index.get(id_of.get(lf, -1))
            if i is not None:
                stop.append(across(i, lanes.centers[i][0]))
                stop_sign_lanes.add(lanes.ids[i])
    arrays = assemble_map(lanes, stop)
    return SNMap(arrays, tl_codes, stop_sign_lanes, crosswalks, id_of)


# ---------------------------------------------------------------------------------- cutting
@dataclass
class ParsedScenario:
    """A scenario's tracks at 0.1 s, its map and metadata (what :func:`cut_scenario` uses)."""

    tracks: list[SNTrack]
    sdc: SNTrack
    map: SNMap
    n_steps: int
    dt_source: float
    dataset: str
    site: str
    segment: str
    scenario_id: str
    tags: list[str]


def parse_scenario(scn: dict, opts: ScenarioNetOptions | None = None) -> ParsedScenario:
    """Validate shapes, resample to 0.1 s and build the map of a scenario dict.

    Raises:
        ScenarioShapeError: what does not fit (``reason`` is the quarantine reason).
    """
    opts = opts or ScenarioNetOptions()
    meta = scn["metadata"]
    tracks_raw: dict = scn["tracks"]
    sdc_id = meta.get("sdc_id")
    if sdc_id is None or str(sdc_id) not in {str(k) for k in tracks_raw}:
        raise ScenarioShapeError("no_sdc", f"metadata sdc_id {sdc_id!r} names no track")
    lengths = set()
    for oid, tr in tracks_raw.items():
        pos = (tr.get("state") or {}).get("position") if isinstance(tr, dict) else None
        if pos is None:
            raise ScenarioShapeError("bad_track", f"track {oid}: no state/position")
        lengths.add(int(np.shape(pos)[0]) if np.ndim(pos) >= 1 else -1)
    T_src = int(scn.get("length") or max(lengths))
    dt = sample_interval(meta, T_src)
    resample = abs(dt - DT) > 1e-3
    T = int(math.floor((T_src - 1) * dt / DT + 1e-6)) + 1 if resample else T_src
    tracks: list[SNTrack] = []
    for oid in sorted(tracks_raw, key=str):
        states, valid, size, tname = parse_track(str(oid), tracks_raw[oid], T_src)
        if np.isnan(states[:, 3]).all() and valid.any():
            _fill_speed_from_positions(states, valid, dt)
        if resample:
            states, valid, size = resample_track(states, valid, size, dt, T)
        vmax = float(np.nanmax(states[valid, 3])) if valid.any() else 0.0
        atype = agent_type_code(tname, vmax)
        if atype == AGENT_STATIC and valid.any() and str(tname).upper() in _STATIC_TYPES:
            # static object: one place, present at every step
            med = np.median(states[valid], axis=0)
            states = np.tile(np.array([med[0], med[1], med[2], 0.0]), (T, 1))
            size = np.tile(np.median(size[valid], axis=0), (T, 1))
            valid = np.ones(T, bool)
        tracks.append(SNTrack(str(oid), object_int_id(oid), tname, atype, states, valid, size))
    sdc = next(t for t in tracks if t.obj_id == str(sdc_id))
    m = build_map(scn, T, dt, opts)
    dataset = str(meta.get("dataset") or "unknown")
    loc = next((meta[k] for k in ("map", "city", "location", "map_name") if meta.get(k)), None)
    site = str(loc) if loc is not None else dataset
    scenario_id = str(meta.get("scenario_id") or scn.get("id") or meta.get("id") or "")
    if not scenario_id:
        raise ScenarioShapeError("bad_metadata", "no scenario id (metadata.scenario_id / id)")
    if opts.segment_by == "map":
        segment = f"{dataset}_{site}"
    elif opts.segment_by == "scenario":
        segment = f"{dataset}_{scenario_id}"
    else:
        raise ValueError(f"segment_by must be 'scenario' or 'map', got {opts.segment_by!r}")
    tags = sorted({str(meta["scenario_type"])} if meta.get("scenario_type") else set())
    return ParsedScenario(tracks, sdc, m, T, dt, f"scenarionet-{dataset}", site, segment, scenario_id, tags)


def _runs(valid: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous True runs of a mask as (start, length)."""
    out, k, n = [], 0, len(valid)
    while k < n:
        if valid[k]:
            j = k
            while j < n and valid[j]:
                j += 1
            out.append((k, j - k))
            k = j
        else:
            k += 1
    return out


def candidate_windows(ps: ParsedScenario, opts: ScenarioNetOptions) -> list[tuple[SNTrack, int, int]]:
    """(ego track, t0 step, first step of the contiguous valid run holding t0) of every candidate
    frame, sdc first (see the module docstring); the run's first step is where its clips start."""
    egos = [ps.sdc]
    if opts.other_egos:
        egos += [t for t in ps.tracks if t is not ps.sdc and t.agent_type == AGENT_VEHICLE
                 and str(t.type_name).upper() in _VEHICLE_TYPES]
    out = []
    for ego in egos:
        for start, n in _runs(ego.valid):
            for off in window_starts(n, opts.stride_steps):
                t0 = start + off
                if ego is not ps.sdc:
                    w, v = ego.window(t0 - T0_INDEX, t0 - T0_INDEX + T_ALL)
                    if np.nanmax(np.where(v, w[:, 3], 0.0)) < opts.other_ego_min_speed_mps:
                        continue
                out.append((ego, t0, start))
    return out


def cut_scenario(scn: dict, source_file: str, opts: ScenarioNetOptions | None = None
                 ) -> tuple[list[Clip], list[QuarantineRecord]]:
    """Clips of one loaded scenario dict (see :func:`cut_scenarionet_file`)."""
    opts = opts or ScenarioNetOptions()
    meta = scn.get("metadata") if isinstance(scn, dict) else None
    seg0 = str((meta or {}).get("scenario_id") or (scn.get("id") if isinstance(scn, dict) else "") or "")
    try:
        ps = parse_scenario(scn, opts)
    except ScenarioShapeError as e:
        return [], [QuarantineRecord(source_file, seg0, "", -1, -1, e.reason, str(e)[:500])]
    except Exception as e:  # a scenario dict this reader does not understand
        return [], [QuarantineRecord(source_file, seg0, "", -1, -1, "bad_scenario",
                                     f"{type(e).__name__}: {str(e)[:300]}")]
    cands = candidate_windows(ps, opts)
    if not cands:
        return [], [QuarantineRecord(source_file, ps.segment, ps.site, ps.sdc.int_id, -1, "no_windows",
                                     f"no ego track has {T_ALL - N_PRE} contiguous valid steps "
                                     f"(scenario of {ps.n_steps} steps at 0.1 s)")]
    clips, bad = [], []
    n_slow = 0
    for ego, t0, run_start in cands:
        try:
            clip = _make_clip(ps, ego, t0, opts, source_file)
            if clip is None:  # the ego stays below min_speed_mps
                n_slow += 1
                continue
            clip.validate()
            clips.append(group_frame(clip, run_start, opts.clip_steps))
        except ClipValidationError as e:
            bad.append(QuarantineRecord(source_file, ps.segment, ps.site, ego.int_id, t0, "invalid_clip", str(e)))
        except Exception as e:  # never crash a worker on one bad vehicle
            bad.append(QuarantineRecord(source_file, ps.segment, ps.site, ego.int_id, t0, "clip_error",
                                        f"{type(e).__name__}: {str(e)[:300]}"))
    if not clips and not bad:  # every file gives a clip or a record
        bad.append(QuarantineRecord(source_file, ps.segment, ps.site, -1, -1, "below_min_speed",
                                    f"all {n_slow} windows: the ego stays below {opts.min_speed_mps} m/s"))
    return clips, bad


def cut_scenarionet_file(path: str, opts: ScenarioNetOptions | None = None
                         ) -> tuple[list[Clip], list[QuarantineRecord]]:
    """Read one ScenarioNet ``.pkl`` (restricted unpickler) and cut its clips.

    Args:
        path: the scenario file.
        opts: :class:`ScenarioNetOptions` (a plain :class:`CutOptions` is accepted and
            completed with the ScenarioNet defaults).

    Returns:
        ``(clips, quarantine)``: clips that passed :meth:`Clip.validate`, and a record per
        candidate that did not (``invalid_clip``, ``clip_error``) or one for the whole file
        (``unsafe_pickle``, ``unreadable_pickle``, ``bad_scenario``, ``bad_metadata``,
        ``no_sdc``, ``bad_track``, ``bad_map``; or no usable track: ``no_windows``,
        ``below_min_speed``, see :data:`~mosaic_ray.data.commonroad.NO_USABLE_TRACK_REASONS`).
        Never raises for bad data; always gives at least one clip or one record.
    """
    if opts is None:
        opts = ScenarioNetOptions()
    elif not isinstance(opts, ScenarioNetOptions):
        opts = ScenarioNetOptions(**{k: getattr(opts, k) for k in CutOptions.__dataclass_fields__})
    name = os.path.basename(path)
    try:
        scn = read_scenario(path)
    except UnsafePickleError as e:
        return [], [QuarantineRecord(name, "", "", -1, -1, "unsafe_pickle", str(e)[:500])]
    except (CorruptPickleError, OSError) as e:
        return [], [QuarantineRecord(name, "", "", -1, -1, "unreadable_pickle", f"{type(e).__name__}: {str(e)[:300]}")]
    except ScenarioShapeError as e:
        return [], [QuarantineRecord(name, "", "", -1, -1, e.reason, str(e)[:500])]
    return cut_scenario(scn, name, opts)


def cut_scenarionet_files(paths: Iterable[str], opts: ScenarioNetOptions | None = None
                          ) -> tuple[list[Clip], list[QuarantineRecord]]:
    """:func:`cut_scenarionet_file` over several files (in-process)."""
    return cut_each(cut_scenarionet_file, paths, opts)


def _make_clip(ps: ParsedScenario, ego: SNTrack, t0: int, opts: ScenarioNetOptions,
               source_file: str) -> Clip | None:
    m = ps.map.arrays
    start, stop = t0 - T0_INDEX, t0 - T0_INDEX + T_ALL
    ego_states, ego_valid = ego.window(start, stop)
    if opts.min_speed_mps > 0 and np.nanmax(ego_states[:, 3]) < opts.min_speed_mps:
        return None
    ego_L, ego_W = ego.box(start, stop)
    ids, types, sizes, states, valid = [], [], [], [], []
    for tr in ps.tracks:
        if tr is ego:
            continue
        st, v = tr.window(start, stop)
        if not near_ego(st, v, ego_states, ego_valid, opts.agent_radius_m):
            continue
        L, W = tr.box(start, stop)
        if not (np.isfinite(L) and np.isfinite(W) and L > 0 and W > 0):
            L, W = (0.5, 0.5) if tr.agent_type in (AGENT_PEDESTRIAN, AGENT_STATIC) else (4.5, 1.8)
        ids.append(tr.int_id)
        types.append(tr.agent_type)
        sizes.append((L, W))
        states.append(st)
        valid.append(v)

    # route: lanes the logged future drives through (shared with the CommonRoad reader)
    route = plan_route(m, ego_states, ego_valid)
    route_idx, on_route, chain = route.route_idx, route.on_route, route.chain
    route_center, route_source = route.center, route.source
    route_ids = {int(m.lane_ids[i]) for i in route_idx}
    fut = ego_states[T0_INDEX:]

    # crop the map: lanes near the ego's window positions, plus on-route and chain lanes
    L_all = len(m.lane_ids)
    if L_all:
        path = ego_states[ego_valid][:, :2]
        lo, hi = path.min(0) - opts.map_radius_m, path.max(0) + opts.map_radius_m
        cmin = np.minimum.reduceat(m.center, m.offsets[:-1], axis=0)
        cmax = np.maximum.reduceat(m.center, m.offsets[:-1], axis=0)
        near_box = (cmax >= lo).all(1) & (cmin <= hi).all(1)
        keep = np.zeros(L_all, bool)
        for i in np.flatnonzero(near_box):
            c = m.center[m.offsets[i]:m.offsets[i + 1]]
            dd = np.min(np.linalg.norm(c[:, None, :] - path[None, ::5, :], axis=2))
            keep[i] = dd <= opts.map_radius_m
        keep[sorted(on_route | set(chain) | set(route_idx))] = True
    else:
        keep = np.zeros(0, bool)
    sel = np.flatnonzero(keep)
    counts = np.diff(m.offsets)[sel]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    vidx = np.concatenate([np.arange(m.offsets[i], m.offsets[i + 1]) for i in sel]) if len(sel) else np.zeros(0, int)
    lane_ids = m.lane_ids[sel]
    on_route_mask = np.isin(sel, sorted(on_route))

    # traffic lights per lane and step
    tl_state = np.zeros((len(sel), T_ALL), np.int8)
    k_lo, k_hi = max(0, -start), min(T_ALL, ps.n_steps - start)
    for r, i in enumerate(sel):
        codes = ps.map.tl_codes.get(int(m.lane_ids[i]))
        if codes is not None and k_hi > k_lo:
            tl_state[r, k_lo:k_hi] = codes[start + k_lo:start + k_hi]

    # tags: what the logged future meets
    tags = set(ps.tags)
    fut_line = shapely.LineString(fut[:, :2]) if np.ptp(fut[:, :2], axis=0).max() > 0.05 else shapely.Point(fut[0, :2])
    probe = fut_line.buffer(5.0)
    if any(probe.intersects(cw) for cw in ps.map.crosswalks):
        tags.add("crosswalk")
    if route_ids & ps.map.stop_sign_lanes or set(int(m.lane_ids[i]) for i in on_route) & ps.map.stop_sign_lanes:
        tags.add("stop_sign")
    if (tl_state[on_route_mask] > 0).any():
        tags.add("traffic_light")
    if m.in_intersection[route_idx].any() if route_idx else False:
        tags.add("intersection")

    start_xy = ego_states[T0_INDEX, :2]
    return Clip(
        clip_id=make_clip_id(ps.segment, t0, start_xy), dataset=ps.dataset, site=ps.site,
        segment=ps.segment, scenario_id=ps.scenario_id, source_file=source_file, tags=sorted(tags),
        t0=int(t0), ego_id=int(ego.int_id), route_source=route_source,
        **window_fields(ego_states, ego_valid, (ego_L, ego_W), ids, types, sizes, states, valid),
        lane_ids=lane_ids, lane_offsets=offsets, lane_left=m.left[vidx].reshape(-1, 2),
        lane_right=m.right[vidx].reshape(-1, 2), lane_center=m.center[vidx].reshape(-1, 2),
        lane_in_intersection=m.in_intersection[sel], lane_on_route=on_route_mask,
        lane_tl_state=tl_state, lane_is_extension=m.is_extension[sel],
        route_lane_ids=np.asarray([int(m.lane_ids[i]) for i in route_idx], np.int64),
        route_center=route_center, stop_lines=m.stop_lines,
    )
