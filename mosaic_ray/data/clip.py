"""Clips and frames: one pseudo-ego's 1.5 s of history and 4 s of future with its scene.

A **frame** is one t0 of one vehicle: its 1.5 s of history, 4 s of future and the scene around
it, in NAVSIM's scene layout (history, current frame t0, future) at the 0.1 s step of the
CommonRoad/NGSIM recordings, with everything in the scenario's global frame (metres, radians,
m/s). Planner inputs are made ego-relative later (:mod:`mosaic_ray.planner.features`). A frame
is one row of a shard and one training / evaluation sample.

A **clip** is the unit MOSAIC selects: up to ``clip_s`` = 10 s of one vehicle's track (a longer
track is split into consecutive 10 s clips from its first step, MOSAIC §4.1 and §7.1); its frames
are the t0s inside those 10 s, ``stride_s`` = 0.5 s apart, that have 1.5 s of history and 4 s of
future inside the track (:func:`clip_start`). Every frame row carries its ``clip_id`` (shared by
the clip's frames) and its own ``frame_id``. With ``clip_s`` unset every frame is its own clip
(``clip_id == frame_id``: the pre-issue-12 unit of one 5.5 s window per clip).

Time axis
---------
Every per-step array covers ``T_ALL = 61`` steps, index ``k`` meaning time
``(k - T0_INDEX) * DT`` relative to t0:

* ``k = 0..4``   pre-history (-2.0 s .. -1.6 s): present only when the track is long enough;
  it lets the scorer rebuild the frame 0.5 s earlier for the EC term.
* ``k = 5..20``  history (-1.5 s .. 0.0 s, 16 states, t0 included): always valid.
* ``k = 20..60`` future (0.0 s .. 4.0 s, 41 states): always valid for the ego.

Storage
-------
A clip is one Parquet row: scalar metadata columns plus, for each array field, a ``binary``
column holding the array's raw little-endian bytes and a ``<name>__shape`` column
(``list<int32>``). :func:`clips_to_table` and :func:`clips_from_table` convert.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

DT = 0.1  #: s, step of the recordings and of every per-step array
N_PRE = 5  #: extra history steps (0.5 s) for the EC previous frame
N_HIST = 15  #: history steps before t0 (1.5 s)
N_FUT = 40  #: future steps after t0 (4.0 s)
T0_INDEX = N_PRE + N_HIST  #: index of t0 in per-step arrays (20)
T_ALL = N_PRE + N_HIST + 1 + N_FUT  #: 61 steps
HIST_SLICE = slice(N_PRE, T0_INDEX + 1)  #: the 16 history states, t0 included
FUT_SLICE = slice(T0_INDEX, T_ALL)  #: the 41 future states, t0 included
POSE_STEPS = np.arange(5, N_FUT + 1, 5)  #: future step offsets of the 8 planner poses (0.5 s .. 4.0 s)

# Agent types (NAVSIM/ScenarioNet naming). NC treats STATIC as a static object (score 0.5).
AGENT_VEHICLE, AGENT_PEDESTRIAN, AGENT_CYCLIST, AGENT_STATIC = 0, 1, 2, 3
AGENT_TYPE_NAMES = {AGENT_VEHICLE: "vehicle", AGENT_PEDESTRIAN: "pedestrian",
                    AGENT_CYCLIST: "cyclist", AGENT_STATIC: "static"}

# Traffic-light states (CommonRoad TrafficLightState); 0 = no light governs the lane.
TL_NONE, TL_GREEN, TL_YELLOW, TL_RED, TL_RED_YELLOW, TL_INACTIVE = 0, 1, 2, 3, 4, 5
TL_STATE_NAMES = {TL_NONE: "none", TL_GREEN: "green", TL_YELLOW: "yellow", TL_RED: "red",
                  TL_RED_YELLOW: "red_yellow", TL_INACTIVE: "inactive"}

#: array fields: name -> (dtype, trailing shape with -1 for variable length)
ARRAY_FIELDS: dict[str, tuple[str, tuple[int, ...]]] = {
    "ego_states": ("float64", (T_ALL, 4)),
    "ego_valid": ("bool", (T_ALL,)),
    "ego_size": ("float64", (2,)),
    "agent_ids": ("int64", (-1,)),
    "agent_types": ("int8", (-1,)),
    "agent_size": ("float64", (-1, 2)),
    "agent_states": ("float64", (-1, T_ALL, 4)),
    "agent_valid": ("bool", (-1, T_ALL)),
    "lane_ids": ("int64", (-1,)),
    "lane_offsets": ("int32", (-1,)),
    "lane_left": ("float64", (-1, 2)),
    "lane_right": ("float64", (-1, 2)),
    "lane_center": ("float64", (-1, 2)),
    "lane_in_intersection": ("bool", (-1,)),
    "lane_on_route": ("bool", (-1,)),
    "lane_tl_state": ("int8", (-1, T_ALL)),
    "lane_is_extension": ("bool", (-1,)),
    "route_lane_ids": ("int64", (-1,)),
    "route_center": ("float64", (-1, 2)),
    "stop_lines": ("float64", (-1, 2, 2)),
}

META_FIELDS: dict[str, pa.DataType] = {
    "clip_id": pa.string(),
    "frame_id": pa.string(),
    "dataset": pa.string(),
    "site": pa.string(),
    "segment": pa.string(),
    "scenario_id": pa.string(),
    "source_file": pa.string(),
    "tags": pa.list_(pa.string()),
    "t0": pa.int32(),
    "ego_id": pa.int64(),
    "route_source": pa.string(),
    "has_prev_frame": pa.bool_(),
}


class ClipValidationError(ValueError):
    """A clip's arrays are inconsistent or not finite; the message names the field."""


@dataclass
class Clip:
    """One frame of a driving clip (a shard row) in the scenario's global frame.

    ``clip_id`` names the clip the frame belongs to (shared by its frames; the selection unit)
    and ``frame_id`` the frame itself (unique; empty on construction means ``clip_id``: a clip
    of one frame). The class keeps the name ``Clip`` because a row was a whole clip before
    clips had several frames.

    Attributes (``A`` agents, ``L`` lanes, ``V`` lane vertices in all, ``P`` route points,
    ``S`` stop lines; all coordinates in metres, headings in rad, speeds in m/s):

    * ``ego_states`` (T_ALL, 4) float64: x, y, heading, speed of the ego box centre.
    * ``ego_valid`` (T_ALL,) bool: False only in the optional pre-history (k < 5).
    * ``ego_size`` (2,) float64: box length, width.
    * ``agent_ids`` (A,) int64; ``agent_types`` (A,) int8 (``AGENT_*``);
      ``agent_size`` (A, 2) float64 length, width; ``agent_states`` (A, T_ALL, 4) float64
      x, y, heading, speed (NaN where invalid); ``agent_valid`` (A, T_ALL) bool.
    * ``lane_ids`` (L,) int64 lanelet ids; ``lane_offsets`` (L+1,) int32 CSR offsets into the
      vertex arrays ``lane_left``/``lane_right``/``lane_center`` (V, 2) float64 — lane ``i``
      owns rows ``lane_offsets[i]:lane_offsets[i+1]``, ordered along the driving direction.
      The lane polygon is ``left + reversed(right)``.
    * ``lane_in_intersection`` (L,) bool: lane lies inside an intersection (lane connector).
    * ``lane_on_route`` (L,) bool: lane is on the route's carriageway (the lanes the logged
      future drives through and their same-direction neighbours, like nuPlan's roadblocks).
    * ``lane_tl_state`` (L, T_ALL) int8: state (``TL_*``) of the traffic light governing
      entry into the lane at each step; non-zero only for lanes behind a signalised stop line.
    * ``lane_is_extension`` (L,) bool: a straight extension of a lane that leaves the map
      crop (the recordings' maps end where the camera view ended); see ingest.
    * ``route_lane_ids`` (R,) int64: lanelets the logged future drives through, in order.
    * ``route_center`` (P, 2) float64: the route centre-line (ordered along travel).
    * ``stop_lines`` (S, 2, 2) float64: stop-line segments (start, end).
    """

    clip_id: str
    dataset: str
    site: str
    segment: str
    scenario_id: str
    source_file: str
    tags: list[str]
    t0: int
    ego_id: int
    route_source: str
    has_prev_frame: bool
    ego_states: np.ndarray
    ego_valid: np.ndarray
    ego_size: np.ndarray
    agent_ids: np.ndarray
    agent_types: np.ndarray
    agent_size: np.ndarray
    agent_states: np.ndarray
    agent_valid: np.ndarray
    lane_ids: np.ndarray
    lane_offsets: np.ndarray
    lane_left: np.ndarray
    lane_right: np.ndarray
    lane_center: np.ndarray
    lane_in_intersection: np.ndarray
    lane_on_route: np.ndarray
    lane_tl_state: np.ndarray
    lane_is_extension: np.ndarray
    route_lane_ids: np.ndarray
    route_center: np.ndarray
    stop_lines: np.ndarray
    frame_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.frame_id:
            self.frame_id = self.clip_id

    # ------------------------------------------------------------------ helpers
    @property
    def num_agents(self) -> int:
        return int(self.agent_ids.shape[0])

    @property
    def num_lanes(self) -> int:
        return int(self.lane_ids.shape[0])

    def lane_polygon(self, i: int) -> np.ndarray:
        """Closed-ring vertices (n, 2) of lane ``i``: left bound then reversed right bound."""
        a, b = int(self.lane_offsets[i]), int(self.lane_offsets[i + 1])
        return np.concatenate([self.lane_left[a:b], self.lane_right[a:b][::-1]], axis=0)

    def lane_centerline(self, i: int) -> np.ndarray:
        a, b = int(self.lane_offsets[i]), int(self.lane_offsets[i + 1])
        return self.lane_center[a:b]

    @property
    def human_future(self) -> np.ndarray:
        """(41, 4) logged ego states from t0 to t0 + 4 s."""
        return self.ego_states[FUT_SLICE]

    @property
    def history(self) -> np.ndarray:
        """(16, 4) logged ego states from t0 - 1.5 s to t0."""
        return self.ego_states[HIST_SLICE]

    def validate(self) -> None:
        """Check shapes, dtypes and finiteness.

        Raises:
            ClipValidationError: naming the first offending field.
        """
        A, L = self.num_agents, self.num_lanes
        expect = {
            "ego_states": (T_ALL, 4), "ego_valid": (T_ALL,), "ego_size": (2,),
            "agent_types": (A,), "agent_size": (A, 2), "agent_states": (A, T_ALL, 4),
            "agent_valid": (A, T_ALL), "lane_offsets": (L + 1,), "lane_in_intersection": (L,),
            "lane_on_route": (L,), "lane_tl_state": (L, T_ALL), "lane_is_extension": (L,),
        }
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ClipValidationError(f"{name}: shape {got}, expected {shape}")
        V = int(self.lane_offsets[-1]) if L else 0
        for name in ("lane_left", "lane_right", "lane_center"):
            if getattr(self, name).shape != (V, 2):
                raise ClipValidationError(f"{name}: shape {getattr(self, name).shape}, expected {(V, 2)}")
        if L and np.any(np.diff(self.lane_offsets) < 2):
            raise ClipValidationError("lane_offsets: a lane has fewer than 2 vertices")
        if not self.ego_valid[N_PRE:].all():
            raise ClipValidationError("ego_valid: history/future steps missing")
        ego = self.ego_states[self.ego_valid]
        if not np.isfinite(ego).all():
            raise ClipValidationError("ego_states: non-finite value in a valid step")
        if not (np.isfinite(self.ego_size).all() and (self.ego_size > 0).all()):
            raise ClipValidationError("ego_size: must be finite and positive")
        if A and not np.isfinite(self.agent_states[self.agent_valid]).all():
            raise ClipValidationError("agent_states: non-finite value in a valid step")
        if A and not (np.isfinite(self.agent_size).all() and (self.agent_size > 0).all()):
            raise ClipValidationError("agent_size: must be finite and positive")
        for name in ("lane_left", "lane_right", "lane_center", "route_center", "stop_lines"):
            if not np.isfinite(getattr(self, name)).all():
                raise ClipValidationError(f"{name}: non-finite coordinate")
        if self.route_center.shape[0] < 2:
            raise ClipValidationError("route_center: fewer than 2 points")
        step = np.linalg.norm(np.diff(self.ego_states[FUT_SLICE, :2], axis=0), axis=1)
        if step.max(initial=0.0) > 6.0:  # 60 m/s between two 0.1 s steps: a broken track
            raise ClipValidationError(f"ego_states: jump of {step.max():.1f} m in one step")


def make_clip_id(segment: str, t0: int, start_xy: Sequence[float]) -> str:
    """Deterministic clip id: same (segment, t0, start position to 0.1 m) -> same id.

    Args:
        segment: the clip's map segment (``USA_US101-22``) or ScenarioNet segment.
        t0: time step of t0 in the recording (steps of :data:`DT`).
        start_xy: ego (x, y) at t0, m.

    Returns:
        16 lowercase hex characters (a SHA-1 prefix).

    The id names a clip in shards, scores and selections. Deduplication does not rely on it
    (the segment is part of it, so a recording copied under another segment name would get
    other ids): ingest deduplicates by :func:`content_key`, which hashes the recorded ego
    track only, and then also drops any clip whose id collides with a kept one.
    """
    key = f"{segment}|{int(t0)}|{float(start_xy[0]):.1f}|{float(start_xy[1]):.1f}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def make_group_clip_id(segment: str, source_file: str, ego_id: int, start_step: int) -> str:
    """Deterministic id of a clip of several frames: same (segment, file, ego, first step) ->
    same id. The file is part of it because the files of one NGSIM segment number their
    vehicles and steps each from the start (``USA_US101-10_1`` and ``_3`` both have a vehicle 12
    at step 0, different vehicles).

    Args:
        segment: the clip's map segment or ScenarioNet segment.
        source_file: the file the frames were cut from (base name).
        ego_id: the vehicle's id in that file.
        start_step: the recording step the clip's 10 s start at (:func:`clip_start`).

    Returns:
        16 lowercase hex characters (a SHA-1 prefix of a key no frame id uses).
    """
    key = f"clip|{segment}|{source_file}|{int(ego_id)}|{int(start_step)}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def clip_start(track_first_step: int, t0: int, clip_steps: int | None) -> int | None:
    """The recording step at which the clip holding frame ``t0`` starts (MOSAIC §7.1: a track
    is split into consecutive clips of ``clip_steps`` steps from its first step).

    Args:
        track_first_step: first recorded step of the vehicle's (contiguous) track.
        t0: the frame's t0 step (>= ``track_first_step``).
        clip_steps: clip length in steps of :data:`DT` (100 = 10 s); None = no grouping.

    Returns:
        The clip's first step, or None when ``clip_steps`` is None (every frame its own clip).

    Raises:
        ValueError: ``t0`` before the track or ``clip_steps`` < 1.
    """
    if clip_steps is None:
        return None
    if clip_steps < 1 or t0 < track_first_step:
        raise ValueError(f"clip_start: clip_steps={clip_steps}, t0={t0}, track starts at {track_first_step}")
    return track_first_step + ((t0 - track_first_step) // clip_steps) * clip_steps


def group_frame(frame: "Clip", track_first_step: int, clip_steps: int | None) -> "Clip":
    """Give ``frame`` its clip: ``frame_id`` keeps the frame's own id and ``clip_id`` becomes the
    id of the clip of ``clip_steps`` steps that holds it (:func:`clip_start`,
    :func:`make_group_clip_id`); unchanged when ``clip_steps`` is None. Returns ``frame``."""
    start = clip_start(track_first_step, frame.t0, clip_steps)
    if start is not None:
        frame.frame_id = frame.frame_id or frame.clip_id
        frame.clip_id = make_group_clip_id(frame.segment, frame.source_file, frame.ego_id, start)
    return frame


def content_key(ego_states: np.ndarray, t0: int) -> str:
    """Deduplication key of a clip from its recorded content only: t0 and the ego's x, y at
    the 56 history and future steps (``k = N_PRE .. T_ALL - 1``, always valid), rounded to
    0.1 m. File name, segment, site and obstacle id play no part, so the same recording under
    another name (or another segment) gets the same key.

    Args:
        ego_states: (T_ALL, 4) float x, y (m), heading (rad), speed (m/s), as in
            :attr:`Clip.ego_states`; only x, y of the always-valid steps are used.
        t0: time step of t0 in the recording.

    Returns:
        16 lowercase hex characters (a SHA-1 prefix).

    Raises:
        ValueError: ``ego_states`` is not (T_ALL, 4).
    """
    arr = np.asarray(ego_states, dtype=np.float64)
    if arr.shape != (T_ALL, 4):
        raise ValueError(f"ego_states: shape {arr.shape}, expected {(T_ALL, 4)}")
    dm = np.rint(arr[N_PRE:, :2] * 10.0).astype("<i8")  # decimetres; rint never gives -0
    h = hashlib.sha1(f"{int(t0)}|".encode())
    h.update(dm.tobytes())
    return h.hexdigest()[:16]


def near_ego(states: np.ndarray, valid: np.ndarray, ego_states: np.ndarray, ego_valid: np.ndarray,
             radius_m: float) -> bool:
    """Whether an agent comes within ``radius_m`` m of the ego at a step where both are valid
    (the readers' rule for which agents a clip keeps).

    Args:
        states, ego_states: (T, 4) float x, y (m), heading (rad), speed (m/s) over the window.
        valid, ego_valid: (T,) bool.
    """
    both = valid & ego_valid
    if not both.any():
        return False
    return bool(np.linalg.norm(states[both, :2] - ego_states[both, :2], axis=1).min() <= radius_m)


def window_fields(ego_states: np.ndarray, ego_valid: np.ndarray, ego_size: Sequence[float],
                  agent_ids: Sequence[int], agent_types: Sequence[int], agent_size: Sequence[Sequence[float]],
                  agent_states: Sequence[np.ndarray], agent_valid: Sequence[np.ndarray]) -> dict[str, Any]:
    """The ego and agent fields of a :class:`Clip` from what a reader collects for a window.

    Args:
        ego_states: (T_ALL, 4) float, NaN allowed where ``ego_valid`` (T_ALL,) is False (stored
            as 0 there); ego_size: (length, width) m; agent_ids / agent_types: A ints;
            agent_size: A (length, width) pairs (m); agent_states: A arrays (T_ALL, 4);
            agent_valid: A arrays (T_ALL,) bool.

    Returns:
        ``has_prev_frame``, ``ego_states``, ``ego_valid``, ``ego_size``, ``agent_ids`` (A,)
        int64, ``agent_types`` (A,) int8, ``agent_size`` (A, 2), ``agent_states``
        (A, T_ALL, 4), ``agent_valid`` (A, T_ALL) bool.
    """
    A = len(agent_ids)
    return dict(
        has_prev_frame=bool(ego_valid[:N_PRE].all()),
        ego_states=np.where(ego_valid[:, None], ego_states, 0.0), ego_valid=ego_valid,
        ego_size=np.array(ego_size, float),
        agent_ids=np.asarray(agent_ids, np.int64), agent_types=np.asarray(agent_types, np.int8),
        agent_size=np.asarray(agent_size, float).reshape(A, 2),
        agent_states=np.asarray(agent_states, float).reshape(A, T_ALL, 4),
        agent_valid=np.asarray(agent_valid, bool).reshape(A, T_ALL),
    )


# ---------------------------------------------------------------------------- Arrow codec
def clip_schema() -> pa.Schema:
    """Arrow schema of a clip shard (metadata columns, then ``name``/``name__shape`` pairs)."""
    fields = [pa.field(k, v) for k, v in META_FIELDS.items()]
    for name in ARRAY_FIELDS:
        fields.append(pa.field(name, pa.binary()))
        fields.append(pa.field(f"{name}__shape", pa.list_(pa.int32())))
    return pa.schema(fields)


def clip_to_row(clip: Clip) -> dict[str, Any]:
    row: dict[str, Any] = {k: getattr(clip, k) for k in META_FIELDS}
    row["tags"] = list(clip.tags)
    for name, (dtype, _) in ARRAY_FIELDS.items():
        arr = np.ascontiguousarray(getattr(clip, name), dtype=dtype)
        row[name] = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        row[f"{name}__shape"] = list(arr.shape)
    return row


def clips_to_table(clips: Iterable[Clip]) -> pa.Table:
    """Encode clips as an Arrow table with :func:`clip_schema`."""
    rows = [clip_to_row(c) for c in clips]
    return pa.Table.from_pylist(rows, schema=clip_schema())


def clip_from_row(row: dict[str, Any]) -> Clip:
    """Decode one row (a dict as from ``Table.to_pylist()`` or a Ray Data row)."""
    kwargs: dict[str, Any] = {}
    for k in META_FIELDS:
        v = row.get(k, "") if k == "frame_id" else row[k]  # shards from before frames: ""
        kwargs[k] = list(v) if k == "tags" else (v.item() if hasattr(v, "item") else v)
    for name, (dtype, _) in ARRAY_FIELDS.items():
        buf = row[name]
        kwargs[name] = _from_wire(buf, dtype, [int(s) for s in row[f"{name}__shape"]], 0, len(buf))
    return Clip(**kwargs)


def _from_wire(buf, dtype: str, shape: list[int], offset: int, nbytes: int) -> np.ndarray:
    """One array field of a clip row: ``nbytes`` little-endian bytes at ``offset`` of ``buf``
    (bytes or an Arrow buffer) -> a native-order, writable ``dtype`` array of ``shape``.

    Raises:
        ValueError / TypeError: the bytes do not fill the shape, or no buffer.
    """
    wire = np.dtype(dtype).newbyteorder("<")
    if nbytes % wire.itemsize:
        raise ValueError(f"{nbytes} bytes are not whole {dtype} values")
    arr = np.frombuffer(buf, dtype=wire, count=nbytes // wire.itemsize, offset=offset)
    return arr.reshape(shape).astype(dtype)  # native byte order, writable copy


def clips_from_table(table: pa.Table) -> list[Clip]:
    """Decode every row of an Arrow table with :func:`clip_schema` columns.

    The array columns are read straight from the Arrow buffers (one view per row and field,
    copied to a native writable array), not through Python ``bytes`` and lists; the result
    equals :func:`clip_from_row` of every row.

    Raises:
        ValueError / TypeError / KeyError: a missing column, a null array cell, or a buffer
            that does not match its shape (the score step then decodes row by row to isolate
            the bad rows).
    """
    n = table.num_rows
    meta = {k: table.column(k).to_pylist() if k in table.column_names or k != "frame_id" else [""] * n
            for k in META_FIELDS}
    arrays: dict[str, list[np.ndarray]] = {}
    for name, (dtype, _) in ARRAY_FIELDS.items():
        col = table.column(name).combine_chunks()
        shp = table.column(f"{name}__shape").combine_chunks()
        if not pa.types.is_binary(col.type) or col.null_count or shp.null_count:
            raise ValueError(f"{name}: not a binary column without nulls")
        bufs = col.buffers()
        offs = np.frombuffer(bufs[1], dtype=np.int32)[col.offset:col.offset + n + 1].tolist()
        data = bufs[2] if len(bufs) > 2 and bufs[2] is not None else b""
        k = np.diff(np.asarray(shp.offsets))
        if n and (k != k[0]).any():
            raise ValueError(f"{name}__shape: rows of different rank")
        shapes = np.asarray(shp.flatten()).reshape(n, int(k[0]) if n else 0).tolist()
        arrays[name] = [_from_wire(data, dtype, shapes[i], offs[i], offs[i + 1] - offs[i]) for i in range(n)]
    out = []
    for i in range(n):
        kw: dict[str, Any] = {k: (list(v[i]) if k == "tags" else v[i]) for k, v in meta.items()}
        kw.update({name: arrs[i] for name, arrs in arrays.items()})
        out.append(Clip(**kw))
    return out


def replace(clip: Clip, **changes: Any) -> Clip:
    """A copy of ``clip`` with fields replaced (``dataclasses.replace``). A new ``clip_id`` of a
    clip of one frame (``frame_id == clip_id``) renames the frame too, unless ``frame_id`` is
    given: a copy under a new id is a new frame, never a second row with the old frame's id."""
    if "clip_id" in changes and "frame_id" not in changes and clip.frame_id == clip.clip_id:
        changes["frame_id"] = changes["clip_id"]
    return dataclasses.replace(clip, **changes)
