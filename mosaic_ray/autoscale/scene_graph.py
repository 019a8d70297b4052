"""Heterogeneous spatio-temporal scene graph of a clip, the input of Graph-RAE (AutoScale §4.1).

Source: AutoScale §4.1 "Graph Spatial-Temporal Autoencoder" and Appendix A.1 "Graph Definition"
(Eq. 9): a graph per scene over the history + future steps; nodes are the ego, the dynamic
agents and the map elements, each a per-step polyline of 2-D position, heading and curvature
(plus speed for dynamic nodes, Eq. 9); directed edges map→agent, agent→agent and all→ego carry
per-step relative position, heading difference and curvature difference. The paper's text lost
the equation bodies; the concrete choices below (step subsampling, crop radii, how a map
polyline is paired with a time step, the label rules) are **reconstructed** and their constants
live in :class:`GraphSpec`.

Frame and units
---------------
Everything is expressed in the ego's frame at t0 (origin: ego box centre at t0, x axis along
the ego heading at t0): positions in m, headings in rad (wrapped to [-π, π)), curvature in
1/m, speed in m/s. A rigid motion (rotation + translation) of the whole raw clip therefore
leaves the graph unchanged up to floating-point error.

Steps
-----
The graph's ``T`` steps are the clip's history and future subsampled every
``GraphSpec.time_stride`` steps of 0.1 s, t0 included (stride 5: 0.5 s steps, 2 Hz like
SimScale's clips: -1.5, -1.0, -0.5, 0.0 s history and 0.5 .. 4.0 s future, ``T = 12``;
:func:`graph_steps`). The clip's optional pre-history (-2.0 .. -1.6 s) is not used.

Nodes (fixed layout so that scenes batch)
-----------------------------------------
``N = 1 + max_agents + max_map`` slots: slot 0 the ego, slots ``1 .. max_agents`` the agents
nearest to the ego (smallest same-step distance over the graph steps, within
``agent_radius_m``), slots ``1 + max_agents ..`` the map elements nearest to the ego path.
Map elements are the lane centre-lines (the NGSIM CommonRoad maps hold no separate crossings
or dividers; lane bounds would duplicate the shared bounds of neighbouring lanes) and the stop
lines; each is cropped to the span of its points within ``map_radius_m`` of the ego path
(history + future, 0.1 s resolution) and resampled to ``T`` points equally spaced in arc
length, so a map node's "step" index is a point index along the element, not a time.
Per-point channels (``NODE_FEATURES = 5``): x, y (m), heading (rad), curvature (1/m), speed
(m/s; 0 for map nodes). Headings of dynamic nodes are the recorded ones; those of map points
the polyline tangent. Curvature is the heading change over arc length between neighbouring
valid points (central difference), 0 where the node moves less than ``min_move_m`` between
them, clipped to ``±curvature_clip``.

Edges (fixed template for the fixed node layout)
------------------------------------------------
``E = M·A + A·(A-1) + A + M`` (``A = max_agents``, ``M = max_map``), as (src, dst) pairs,
messages flowing src → dst: map→agent (type 0), agent→agent (type 1, non-ego agents), all→ego
(type 2: every agent and map slot to slot 0). Per-step channels (``EDGE_FEATURES = 4``): the
src position in the dst's local frame at that step (dx, dy, m), heading difference
wrap(h_src − h_dst) (rad), curvature difference κ_src − κ_dst (1/m). Dynamic sources are paired
step by step; a map source contributes, at each dst step, its point nearest to the dst's
position (**reconstructed**: the paper pairs "across all steps" without saying how a map
polyline meets a time step). An edge step is valid where the dst point is valid and the src
point is (dynamic) or the src has any valid point (map); an edge is valid where both slots
are and it has a valid step.

Labels (for SupCon, §4.1 "Contrastive Learning for Regularization"; rules **reconstructed**)
---------------------------------------------------------------------------------------
* ``command`` (:data:`CMD_LEFT`, :data:`CMD_STRAIGHT`, :data:`CMD_RIGHT`, :data:`CMD_STOP`), from the
  ego future at graph resolution in the t0 frame: STOP if the future path is shorter than
  ``cmd_stop_m``; else LEFT if the heading change at +4 s is ≥ ``cmd_turn_rad`` or the lateral
  offset at +4 s is ≥ ``cmd_lateral_m`` (turns and lane changes to the left); RIGHT for the
  mirrored conditions; else STRAIGHT.
* ``overlap`` in {0, 1, 2, 3} = agent bit + 2 · map bit: the agent bit is set when the ego's
  future path (t ≥ 0) properly crosses the path (all valid graph steps) of an agent, the map bit
  when it crosses a map polyline (lane centre-line or stop line); a crossing counts only at a
  crossing angle ≥ ``overlap_min_angle_rad`` (folded to [0, π/2]) so that following a vehicle in
  its lane or driving along a lane does not count.

The graph is a dict of numpy arrays (:data:`GRAPH_KEYS`, shapes in :func:`build_scene_graph`);
:func:`collate` stacks graphs into torch tensors; :func:`augment_graph` makes the contrastive
views Graph-RAE trains on (see :mod:`mosaic_ray.autoscale.graph_rae`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mosaic_ray.data.clip import (AGENT_CYCLIST, AGENT_PEDESTRIAN, AGENT_STATIC, AGENT_VEHICLE, N_PRE,
                                  T0_INDEX, T_ALL, Clip)

__all__ = [
    "GraphSpec", "SceneGraph", "GRAPH_KEYS", "NODE_FEATURES", "EDGE_FEATURES",
    "NODE_EGO", "NODE_VEHICLE", "NODE_PEDESTRIAN", "NODE_CYCLIST", "NODE_STATIC", "NODE_LANE",
    "NODE_STOP_LINE", "NODE_PAD", "NUM_NODE_TYPES", "MAP_NODE_TYPES",
    "EDGE_MAP_TO_AGENT", "EDGE_AGENT_TO_AGENT", "EDGE_TO_EGO", "NUM_EDGE_TYPES",
    "CMD_LEFT", "CMD_STRAIGHT", "CMD_RIGHT", "CMD_STOP", "NUM_COMMANDS", "NUM_OVERLAP",
    "graph_steps", "edge_template", "edge_features", "scene_labels", "build_scene_graph",
    "augment_graph", "collate",
]

log = logging.getLogger(__name__)

# node types (ids into the node-type embedding)
NODE_EGO, NODE_VEHICLE, NODE_PEDESTRIAN, NODE_CYCLIST, NODE_STATIC = 0, 1, 2, 3, 4
NODE_LANE, NODE_STOP_LINE, NODE_PAD = 5, 6, 7
NUM_NODE_TYPES = 8
MAP_NODE_TYPES = (NODE_LANE, NODE_STOP_LINE)
_AGENT_NODE_TYPE = {AGENT_VEHICLE: NODE_VEHICLE, AGENT_PEDESTRIAN: NODE_PEDESTRIAN,
                    AGENT_CYCLIST: NODE_CYCLIST, AGENT_STATIC: NODE_STATIC}

# edge types
EDGE_MAP_TO_AGENT, EDGE_AGENT_TO_AGENT, EDGE_TO_EGO = 0, 1, 2
NUM_EDGE_TYPES = 3

# driving-command and overlap labels
CMD_LEFT, CMD_STRAIGHT, CMD_RIGHT, CMD_STOP = 0, 1, 2, 3
NUM_COMMANDS = 4
NUM_OVERLAP = 4

NODE_FEATURES = 5  #: x (m), y (m), heading (rad), curvature (1/m), speed (m/s)
EDGE_FEATURES = 4  #: dx (m), dy (m) in the dst frame, heading diff (rad), curvature diff (1/m)
F_X, F_Y, F_HEADING, F_CURV, F_SPEED = range(NODE_FEATURES)

#: the keys of a scene graph dict
GRAPH_KEYS = ("node_feat", "node_point_mask", "node_mask", "node_type", "node_ref", "edge_index",
              "edge_type", "edge_feat", "edge_point_mask", "edge_mask", "t0_pos", "command", "overlap")

SceneGraph = dict  #: ``str -> np.ndarray`` with the keys of :data:`GRAPH_KEYS`


@dataclass(frozen=True)
class GraphSpec:
    """Sizes and constants of the scene graph (defaults small enough for CPU; the paper's
    values are lost in the text, AUTOSCALE.md "Graph-RAE")."""

    max_agents: int = 16  #: agent slots A
    max_map: int = 24  #: map-element slots M
    time_stride: int = 5  #: graph step in 0.1 s steps (5: 0.5 s, T = 12)
    agent_radius_m: float = 60.0  #: agents farther than this from the ego at every step are left out
    map_radius_m: float = 40.0  #: map points farther than this from the ego path are cropped
    map_densify_m: float = 1.0  #: spacing (m) of map polylines before cropping
    include_stop_lines: bool = True
    min_move_m: float = 0.25  #: below this arc length between points curvature is 0
    curvature_clip: float = 0.5  #: |curvature| clip (1/m)
    cmd_stop_m: float = 2.0  #: future path shorter than this: STOP
    cmd_turn_rad: float = 0.26  #: heading change at +4 s for LEFT/RIGHT (about 15°)
    cmd_lateral_m: float = 2.5  #: lateral offset at +4 s for LEFT/RIGHT (lane changes)
    overlap_min_angle_rad: float = 0.05  #: smallest crossing angle that counts as an overlap

    @property
    def num_steps(self) -> int:
        """T, the graph's steps (= points per polyline)."""
        return len(graph_steps(self)[0])

    @property
    def num_nodes(self) -> int:
        return 1 + self.max_agents + self.max_map

    @property
    def num_edges(self) -> int:
        A, M = self.max_agents, self.max_map
        return M * A + A * (A - 1) + A + M


# ============================================================================ helpers
def graph_steps(spec: GraphSpec) -> tuple[np.ndarray, int]:
    """Indices into the clip's 61-step arrays of the graph's ``T`` steps and the position of t0
    among them: ``(steps (T,) int64, t0_pos)``; step ``k`` is at time ``(k - 20) * 0.1`` s."""
    s = int(spec.time_stride)
    if s < 1:
        raise ValueError(f"time_stride must be >= 1, got {s}")
    hist = np.arange(T0_INDEX, N_PRE - 1, -s)[::-1]
    fut = np.arange(T0_INDEX + s, T_ALL, s)
    return np.concatenate([hist, fut]).astype(np.int64), len(hist) - 1


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def _to_frame(xy: np.ndarray, origin: np.ndarray, heading: float) -> np.ndarray:
    c, s = np.cos(heading), np.sin(heading)
    d = xy - origin
    return np.stack([d[..., 0] * c + d[..., 1] * s, -d[..., 0] * s + d[..., 1] * c], axis=-1)


def _curvature(xy: np.ndarray, heading: np.ndarray, valid: np.ndarray, spec: GraphSpec) -> np.ndarray:
    """Curvature (..., T) 1/m from positions (..., T, 2), headings (..., T) and validity (..., T):
    heading change over arc length to the neighbouring valid points (central where both exist)."""
    T = xy.shape[-2]
    prev = np.roll(np.arange(T), 1)
    nxt = np.roll(np.arange(T), -1)
    has_p = valid & np.roll(valid, 1, axis=-1)
    has_n = valid & np.roll(valid, -1, axis=-1)
    has_p[..., 0] = False
    has_n[..., -1] = False
    ds_p = np.linalg.norm(xy - xy[..., prev, :], axis=-1)
    ds_n = np.linalg.norm(xy[..., nxt, :] - xy, axis=-1)
    dh_p = _wrap(heading - heading[..., prev])
    dh_n = _wrap(heading[..., nxt] - heading)
    dh = np.where(has_p, dh_p, 0.0) + np.where(has_n, dh_n, 0.0)
    ds = np.where(has_p, ds_p, 0.0) + np.where(has_n, ds_n, 0.0)
    ok = valid & (has_p | has_n) & (ds >= spec.min_move_m)
    k = np.where(ok, dh / np.where(ok, ds, 1.0), 0.0)
    return np.clip(k, -spec.curvature_clip, spec.curvature_clip)


def _densify(p: np.ndarray, spacing: float) -> np.ndarray:
    """Polyline (n, 2) resampled at ``spacing`` m (endpoints kept)."""
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-9])
    p = p[keep]
    if len(p) < 2:
        return p
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    q = np.linspace(0.0, s[-1], max(2, int(np.ceil(s[-1] / spacing)) + 1))
    return np.stack([np.interp(q, s, p[:, 0]), np.interp(q, s, p[:, 1])], axis=1)


def _resample(p: np.ndarray, n: int) -> np.ndarray:
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    q = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(q, s, p[:, 0]), np.interp(q, s, p[:, 1])], axis=1)


def _points_to_path(pts: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Distance (n,) of points (n, 2) to the polyline ``path`` (m, 2)."""
    a, b = path[:-1], path[1:]
    ab = b - a
    L2 = np.maximum((ab ** 2).sum(1), 1e-12)
    t = np.clip(((pts[:, None, :] - a[None]) * ab[None]).sum(-1) / L2[None], 0.0, 1.0)
    proj = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(pts[:, None, :] - proj, axis=-1).min(axis=1)


# ============================================================================ edges
def edge_template(spec: GraphSpec) -> tuple[np.ndarray, np.ndarray]:
    """The fixed edge list of the node layout: ``(edge_index (E, 2) int64 [src, dst],
    edge_type (E,) int64)``, map→agent, then agent→agent, then all→ego."""
    A, M = spec.max_agents, spec.max_map
    agents = np.arange(1, 1 + A)
    maps = np.arange(1 + A, 1 + A + M)
    m2a = np.stack(np.meshgrid(maps, agents, indexing="ij"), -1).reshape(-1, 2)
    aa = np.stack(np.meshgrid(agents, agents, indexing="ij"), -1).reshape(-1, 2)
    a2a = aa[aa[:, 0] != aa[:, 1]]
    src_e = np.concatenate([agents, maps])
    to_ego = np.stack([src_e, np.zeros_like(src_e)], -1)
    idx = np.concatenate([m2a, a2a, to_ego]).astype(np.int64).reshape(-1, 2)
    typ = np.concatenate([np.full(len(m2a), EDGE_MAP_TO_AGENT), np.full(len(a2a), EDGE_AGENT_TO_AGENT),
                          np.full(len(to_ego), EDGE_TO_EGO)]).astype(np.int64)
    return idx, typ


def edge_features(node_feat: np.ndarray, node_point_mask: np.ndarray, node_type: np.ndarray,
                  edge_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-step edge attributes from the node arrays of one graph (see the module docstring).

    Args:
        node_feat: (N, T, 5) float; node_point_mask: (N, T) bool; node_type: (N,) int;
        edge_index: (E, 2) int [src, dst].

    Returns:
        ``edge_feat`` (E, T, 4) float32 (dx, dy m in the dst frame, heading diff rad,
        curvature diff 1/m; 0 at invalid steps) and ``edge_point_mask`` (E, T) bool.
    """
    src, dst = edge_index[:, 0], edge_index[:, 1]
    d, dm = node_feat[dst].astype(np.float64), node_point_mask[dst]
    s, sm = node_feat[src].astype(np.float64), node_point_mask[src]
    is_map = np.isin(node_type[src], MAP_NODE_TYPES)
    if is_map.any():  # at each dst step, the map source's point nearest to the dst position
        dist = np.linalg.norm(d[is_map, :, None, :2] - s[is_map, None, :, :2], axis=-1)  # (Em, T, P)
        dist = np.where(sm[is_map][:, None, :], dist, np.inf)
        near = np.argmin(dist, axis=-1)  # (Em, T)
        s_map = np.take_along_axis(s[is_map], near[..., None], axis=1)
        s = s.copy()
        s[is_map] = s_map
        sm = sm.copy()
        sm[is_map] = np.broadcast_to(sm[is_map].any(axis=1, keepdims=True), sm[is_map].shape)
    mask = dm & sm
    rel = s[..., :2] - d[..., :2]  # rotated into the dst's heading at each step below
    c, sn = np.cos(d[..., F_HEADING]), np.sin(d[..., F_HEADING])
    dx = rel[..., 0] * c + rel[..., 1] * sn
    dy = -rel[..., 0] * sn + rel[..., 1] * c
    dh = _wrap(s[..., F_HEADING] - d[..., F_HEADING])
    dk = s[..., F_CURV] - d[..., F_CURV]
    feat = np.stack([dx, dy, dh, dk], axis=-1)
    feat = np.where(mask[..., None], feat, 0.0)
    return feat.astype(np.float32), mask


def _finish_edges(g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    feat, pmask = edge_features(g["node_feat"], g["node_point_mask"], g["node_type"], g["edge_index"])
    src, dst = g["edge_index"][:, 0], g["edge_index"][:, 1]
    g["edge_feat"], g["edge_point_mask"] = feat, pmask
    g["edge_mask"] = g["node_mask"][src] & g["node_mask"][dst] & pmask.any(axis=1)
    return g


# ============================================================================ labels
def _crossings(p: np.ndarray, q: np.ndarray, min_angle: float) -> bool:
    """Whether polyline segments ``p`` (S1, 2, 2) and ``q`` (S2, 2, 2) properly cross at an
    angle (folded to [0, π/2]) of at least ``min_angle`` rad."""
    if len(p) == 0 or len(q) == 0:
        return False

    def cross(a, b):
        return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]

    p1, p2 = p[:, None, 0], p[:, None, 1]
    q1, q2 = q[None, :, 0], q[None, :, 1]
    d1, d2 = cross(q2 - q1, p1 - q1), cross(q2 - q1, p2 - q1)
    d3, d4 = cross(p2 - p1, q1 - p1), cross(p2 - p1, q2 - p1)
    hit = (d1 * d2 < 0) & (d3 * d4 < 0)
    if not hit.any():
        return False
    ap = np.arctan2(*(p2 - p1)[..., ::-1].transpose(2, 0, 1))
    aq = np.arctan2(*(q2 - q1)[..., ::-1].transpose(2, 0, 1))
    ang = np.abs(_wrap(ap - aq))
    ang = np.minimum(ang, np.pi - ang)
    return bool((hit & (ang >= min_angle)).any())


def _segments(xy: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Segments (S, 2, 2) between consecutive valid points of one polyline (T, 2)."""
    ok = valid[:-1] & valid[1:]
    return np.stack([xy[:-1][ok], xy[1:][ok]], axis=1)


def scene_labels(node_feat: np.ndarray, node_point_mask: np.ndarray, node_mask: np.ndarray,
                 node_type: np.ndarray, spec: GraphSpec) -> tuple[int, int]:
    """``(command, overlap)`` of one graph by the rules of the module docstring (reconstructed).

    Args:
        node_feat (N, T, 5), node_point_mask (N, T) bool, node_mask (N,) bool, node_type (N,):
        the clean graph's node arrays (ego-t0 frame).
    """
    _, t0 = graph_steps(spec)
    ego = node_feat[0, t0:].astype(np.float64)
    ego_ok = node_point_mask[0, t0:]
    fut = ego[ego_ok]
    length = float(np.linalg.norm(np.diff(fut[:, :2], axis=0), axis=1).sum()) if len(fut) > 1 else 0.0
    if length < spec.cmd_stop_m:
        command = CMD_STOP
    else:
        dh = float(_wrap(fut[-1, F_HEADING] - fut[0, F_HEADING]))
        lat = float(fut[-1, F_Y] - fut[0, F_Y])
        if dh >= spec.cmd_turn_rad or lat >= spec.cmd_lateral_m:
            command = CMD_LEFT
        elif dh <= -spec.cmd_turn_rad or lat <= -spec.cmd_lateral_m:
            command = CMD_RIGHT
        else:
            command = CMD_STRAIGHT
    ego_seg = _segments(ego[:, :2], ego_ok)
    agent_bit = map_bit = False
    for i in np.flatnonzero(node_mask)[1:]:
        seg = _segments(node_feat[i, :, :2].astype(np.float64), node_point_mask[i])
        is_map = int(node_type[i]) in MAP_NODE_TYPES
        if (map_bit if is_map else agent_bit):
            continue
        if _crossings(ego_seg, seg, spec.overlap_min_angle_rad):
            if is_map:
                map_bit = True
            else:
                agent_bit = True
        if agent_bit and map_bit:
            break
    return command, int(agent_bit) + 2 * int(map_bit)


# ============================================================================ build
def build_scene_graph(clip: Clip, spec: GraphSpec | None = None) -> SceneGraph:
    """The scene graph of one clip (module docstring for the rules).

    Returns:
        dict of numpy arrays (``T = spec.num_steps``, ``N = spec.num_nodes``,
        ``E = spec.num_edges``):

        * ``node_feat`` (N, T, 5) float32: x, y (m), heading (rad), curvature (1/m), speed (m/s)
          per point in the ego-t0 frame, 0 at invalid points;
        * ``node_point_mask`` (N, T) bool; ``node_mask`` (N,) bool (slot used);
        * ``node_type`` (N,) int64 (``NODE_*``, ``NODE_PAD`` for empty slots);
        * ``node_ref`` (N,) int64: index of the source object in the clip (ego 0, agent index,
          lane index, or ``num_lanes + stop-line index``), -1 for empty slots;
        * ``edge_index`` (E, 2) int64 [src, dst]; ``edge_type`` (E,) int64 (``EDGE_*``);
        * ``edge_feat`` (E, T, 4) float32; ``edge_point_mask`` (E, T) bool; ``edge_mask`` (E,) bool;
        * ``t0_pos`` () int64: position of t0 among the T steps;
        * ``command`` () int64 (``CMD_*``); ``overlap`` () int64 (0..3).
    """
    spec = spec or GraphSpec()
    steps, t0 = graph_steps(spec)
    T, A, M = len(steps), spec.max_agents, spec.max_map
    N = 1 + A + M
    origin = clip.ego_states[T0_INDEX, :2].astype(np.float64)
    psi0 = float(clip.ego_states[T0_INDEX, 2])

    feat = np.zeros((N, T, NODE_FEATURES))
    pmask = np.zeros((N, T), bool)
    ntype = np.full(N, NODE_PAD, np.int64)
    nref = np.full(N, -1, np.int64)

    # ego
    ego = clip.ego_states[steps]
    ego_ok = clip.ego_valid[steps].copy()
    feat[0, :, :2] = _to_frame(ego[:, :2], origin, psi0)
    feat[0, :, F_HEADING] = _wrap(ego[:, 2] - psi0)
    feat[0, :, F_SPEED] = ego[:, 3]
    pmask[0] = ego_ok
    ntype[0], nref[0] = NODE_EGO, 0

    # agents: nearest by same-step distance over the graph steps
    if clip.num_agents:
        st = clip.agent_states[:, steps]  # (A0, T, 4)
        ok = clip.agent_valid[:, steps] & ego_ok[None] & np.isfinite(st).all(-1)
        dist = np.linalg.norm(np.nan_to_num(st[..., :2]) - ego[None, :, :2], axis=-1)
        dmin = np.where(ok, dist, np.inf).min(axis=1)
        order = [int(i) for i in np.argsort(dmin, kind="stable") if dmin[i] <= spec.agent_radius_m][:A]
        for slot, i in enumerate(order, start=1):
            v = clip.agent_valid[i, steps] & np.isfinite(st[i]).all(-1)
            s = np.nan_to_num(st[i])
            feat[slot, :, :2] = _to_frame(s[:, :2], origin, psi0)
            feat[slot, :, F_HEADING] = _wrap(s[:, 2] - psi0)
            feat[slot, :, F_SPEED] = s[:, 3]
            pmask[slot] = v
            ntype[slot] = _AGENT_NODE_TYPE.get(int(clip.agent_types[i]), NODE_VEHICLE)
            nref[slot] = i

    # map elements: cropped to the ego path's neighbourhood, nearest first
    path = clip.ego_states[N_PRE:, :2].astype(np.float64)  # history + future at 0.1 s
    cands: list[tuple[float, int, int, int, np.ndarray]] = []
    polylines = [(NODE_LANE, i, clip.lane_centerline(i)) for i in range(clip.num_lanes)]
    if spec.include_stop_lines:
        polylines += [(NODE_STOP_LINE, clip.num_lanes + j, np.asarray(sl, float))
                      for j, sl in enumerate(clip.stop_lines)]
    lo, hi = path.min(axis=0) - spec.map_radius_m, path.max(axis=0) + spec.map_radius_m
    near: list[tuple[int, int, np.ndarray]] = []
    for typ, ref, poly in polylines:
        poly = np.asarray(poly, np.float64)
        if len(poly) and ((poly.max(axis=0) < lo) | (poly.min(axis=0) > hi)).any():
            continue  # its bounding box lies beyond map_radius_m of the path's: no point is in range
        dense = _densify(poly, spec.map_densify_m)
        if len(dense) >= 2:
            near.append((typ, ref, dense))
    # one distance computation for every candidate's points (the hot loop of graph building)
    dd_all = _points_to_path(np.concatenate([d for _, _, d in near]), path) if near else np.zeros(0)
    ends = np.cumsum([len(d) for _, _, d in near])
    for (typ, ref, dense), stop in zip(near, ends):
        dd = dd_all[stop - len(dense):stop]
        inside = np.flatnonzero(dd <= spec.map_radius_m)
        if len(inside) == 0:
            continue
        part = dense[inside[0]:inside[-1] + 1]
        if len(part) < 2:  # a single point in range: keep its neighbouring segment
            j = int(inside[0])
            part = dense[max(0, j - 1):j + 2]
        cands.append((float(dd[inside].min()), len(cands), typ, ref, part))
    cands.sort(key=lambda c: (c[0], c[1]))
    for slot, (_, _, typ, ref, part) in enumerate(cands[:M], start=1 + A):
        p = _to_frame(_resample(part, T), origin, psi0)
        tang = np.gradient(p, axis=0)
        feat[slot, :, :2] = p
        feat[slot, :, F_HEADING] = np.arctan2(tang[:, 1], tang[:, 0])
        pmask[slot] = True
        ntype[slot], nref[slot] = typ, ref

    feat[..., F_CURV] = _curvature(feat[..., :2], feat[..., F_HEADING], pmask, spec)
    feat = np.where(pmask[..., None], feat, 0.0)
    nmask = pmask.any(axis=1)
    ntype[~nmask] = NODE_PAD
    eidx, etype = edge_template(spec)
    g: dict[str, Any] = dict(node_feat=feat.astype(np.float32), node_point_mask=pmask, node_mask=nmask,
                             node_type=ntype, node_ref=nref, edge_index=eidx, edge_type=etype)
    _finish_edges(g)
    cmd, ov = scene_labels(g["node_feat"], pmask, nmask, ntype, spec)
    g["t0_pos"] = np.int64(t0)
    g["command"], g["overlap"] = np.int64(cmd), np.int64(ov)
    return g


# ============================================================================ views
def augment_graph(graph: SceneGraph, rng: np.random.Generator, *, rot_max_rad: float = 0.2,
                  trans_max_m: float = 2.0, drop_node_p: float = 0.1, drop_point_p: float = 0.1,
                  noise_m: float = 0.1, heading_noise_rad: float = 0.02) -> SceneGraph:
    """A random view of a graph for SimCLR (AutoScale §4.1, "random translation and rotation of
    all polylines"; the view recipe is **reconstructed**, see :mod:`~mosaic_ray.autoscale.graph_rae`).

    In order: every agent / map slot (never the ego) is dropped with ``drop_node_p``; every valid
    point (except the ego's t0 point) with ``drop_point_p``; positions get i.i.d. N(0, noise_m²)
    noise (m) and headings N(0, heading_noise_rad²) (rad); then the whole graph is moved by one
    rigid motion in the ego-t0 frame, rotation U(−rot_max_rad, rot_max_rad) about the origin and
    translation U(−trans_max_m, trans_max_m)² (m) — an ego localisation/heading error, since a
    rigid motion of the raw scene alone would leave the ego-frame graph unchanged. Curvatures
    are kept; edge features and masks are recomputed. Labels are copied. Returns a new dict.
    """
    g = {k: np.array(v, copy=True) for k, v in graph.items()}
    N, T = g["node_point_mask"].shape
    feat = g["node_feat"].astype(np.float64)
    pm = g["node_point_mask"]
    drop_node = rng.random(N) < drop_node_p
    drop_node[0] = False
    pm &= ~drop_node[:, None]
    drop_pt = rng.random((N, T)) < drop_point_p
    drop_pt[0, int(g["t0_pos"])] = False
    pm &= ~drop_pt
    feat[..., :2] += rng.normal(0.0, noise_m, (N, T, 2)) if noise_m > 0 else 0.0
    feat[..., F_HEADING] += rng.normal(0.0, heading_noise_rad, (N, T)) if heading_noise_rad > 0 else 0.0
    th = rng.uniform(-rot_max_rad, rot_max_rad)
    tr = rng.uniform(-trans_max_m, trans_max_m, 2)
    c, s = np.cos(th), np.sin(th)
    x, y = feat[..., F_X].copy(), feat[..., F_Y].copy()
    feat[..., F_X] = c * x - s * y + tr[0]
    feat[..., F_Y] = s * x + c * y + tr[1]
    feat[..., F_HEADING] = _wrap(feat[..., F_HEADING] + th)
    feat = np.where(pm[..., None], feat, 0.0)
    g["node_feat"], g["node_point_mask"] = feat.astype(np.float32), pm
    g["node_mask"] = g["node_mask"] & pm.any(axis=1)
    g["node_type"] = np.where(g["node_mask"], g["node_type"], NODE_PAD)
    return _finish_edges(g)


# ============================================================================ batching
def collate(graphs: Sequence[SceneGraph]) -> dict[str, Any]:
    """Stack graphs of one :class:`GraphSpec` into torch tensors with a leading batch axis B:
    float32 arrays -> ``torch.float32``, bool -> ``torch.bool``, ints -> ``torch.int64``
    (``t0_pos`` / ``command`` / ``overlap`` become (B,)).

    Raises:
        ValueError: the graphs' shapes differ (built with different specs).
    """
    import torch

    if not graphs:
        raise ValueError("collate needs at least one graph")
    out: dict[str, Any] = {}
    for k in GRAPH_KEYS:
        arrs = [np.asarray(g[k]) for g in graphs]
        shp = arrs[0].shape
        if any(a.shape != shp for a in arrs):
            raise ValueError(f"collate: {k} shapes differ ({sorted({a.shape for a in arrs})}): "
                             "build all graphs with the same GraphSpec")
        a = np.stack(arrs)
        if a.dtype == np.bool_:
            out[k] = torch.from_numpy(a)
        elif np.issubdtype(a.dtype, np.floating):
            out[k] = torch.from_numpy(a.astype(np.float32))
        else:
            out[k] = torch.from_numpy(a.astype(np.int64))
    return out


