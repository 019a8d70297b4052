"""Lane maps shared by the CommonRoad and ScenarioNet readers: lanes to a clip's map arrays.

Both readers describe the road as lanes, each a left bound, a right bound and a centre-line
sampled at the same vertices in the driving direction (CommonRoad's lanelet; NAVSIM's /
nuPlan's lane with its left and right boundaries), plus the lane graph (successors,
predecessors, same-direction neighbours). The drivable area is the union of the lane
polygons, computed by the scorer (:mod:`mosaic_ray.scoring.epdms`) from the clip's
``lane_left`` / ``lane_right``; NAVSIM builds it from the nuPlan map's roadblock, roadblock
connector and car-park polygons (``get_drivable_area_map`` in
``navsim/planning/simulation/planner/pdm_planner/observation/pdm_observation_utils.py``).

How a reader uses this module
-----------------------------
1. It fills a :class:`LaneLists` with its source's lanes (:meth:`LaneLists.add`), in a
   deterministic order. The reader alone knows its format: :func:`mosaic_ray.data.commonroad.
   build_map` takes lanelet bounds as stored and reads intersections and traffic lights from
   commonroad-io objects; :func:`mosaic_ray.data.scenarionet.build_map` derives the bounds from
   a centre-line and half-widths with the geometry helpers below (:func:`dedupe_indices`,
   :func:`simplify_indices`, :func:`left_normals`, :func:`median_smooth`,
   :func:`ray_distances`, :func:`offset_bounds`).
2. :func:`add_straight_extensions` adds the straight lane extensions where a lane leaves the
   source's map crop (a documented deviation from NAVSIM, whose maps have no crop edge).
3. :func:`assemble_map` concatenates the lanes into one :class:`MapArrays` (the arrays a clip
   stores, see :class:`mosaic_ray.data.clip.Clip`) with a prepared polygon per lane.
4. Per clip, :func:`plan_route` finds the lanes the logged future drives through and the
   route centre-line (NAVSIM's route roadblocks and centre-line,
   ``navsim/planning/simulation/planner/pdm_planner/abstract_pdm_planner.py``).

Units: metres for coordinates and lengths, radians for headings (wrapped to [-pi, pi)).
All coordinates are the source's map frame (x, y); arrays are float64 unless said otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely

from mosaic_ray.data.clip import T0_INDEX

__all__ = [
    "EXTENSION_ID_OFFSET", "MapArrays", "LaneLists", "Route",
    "wrap_angle", "extend_straight", "dedupe_indices", "dedupe_polyline", "simplify_indices",
    "left_normals", "offset_bounds", "median_smooth", "ray_distances", "lane_polygons",
    "add_straight_extensions", "assemble_map", "lane_heading_at", "lanes_containing",
    "follow_lanes", "plan_route",
]

#: An extension lane's id: ``lane id + EXTENSION_ID_OFFSET`` beyond the lane's end,
#: ``lane id + 2 * EXTENSION_ID_OFFSET`` before its start (real lane ids stay below it).
EXTENSION_ID_OFFSET = 10**9


# ------------------------------------------------------------------------- one polyline
def wrap_angle(a: np.ndarray | float) -> np.ndarray | float:
    """Angle(s) in rad wrapped to [-pi, pi) (same shape as ``a``; a 0-d array for a scalar)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def extend_straight(point: np.ndarray, direction: np.ndarray, length: float, n: int = 4) -> np.ndarray:
    """``n`` points (n, 2) from ``point`` (2,) along the unit vector ``direction`` (2,), evenly
    spaced over ``length`` m; the first is ``point`` itself."""
    return point[None, :] + direction[None, :] * np.linspace(0.0, length, n)[:, None]


def dedupe_indices(p: np.ndarray, min_step: float = 0.05) -> list[int]:
    """Indices of the vertices of polyline ``p`` (n, 2) kept when every vertex closer than
    ``min_step`` m to the last kept one is dropped (the first vertex is always kept; ``[]``
    for an empty ``p``)."""
    keep = [0] if len(p) else []
    for i in range(1, len(p)):
        if np.linalg.norm(p[i] - p[keep[-1]]) > min_step:
            keep.append(i)
    return keep


def dedupe_polyline(p: np.ndarray, min_step: float = 0.05) -> np.ndarray:
    """``p`` (n, 2) without repeated vertices, (k, 2) (see :func:`dedupe_indices`)."""
    return p[dedupe_indices(p, min_step)]


def simplify_indices(p: np.ndarray, tol: float) -> np.ndarray:
    """Indices (k,) int of the vertices of polyline ``p`` (n, 2) kept by Douglas-Peucker
    simplification with tolerance ``tol`` m (all of them for ``tol <= 0`` or n <= 2); the
    ends are always kept."""
    n = len(p)
    if n <= 2 or tol <= 0:
        return np.arange(n)
    keep = np.zeros(n, bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        seg = p[b] - p[a]
        L = float(np.hypot(*seg))
        q = p[a + 1:b] - p[a]
        d = np.abs(seg[0] * q[:, 1] - seg[1] * q[:, 0]) / L if L > 1e-9 else np.hypot(q[:, 0], q[:, 1])
        j = int(np.argmax(d))
        if d[j] > tol:
            m = a + 1 + j
            keep[m] = True
            stack.extend([(a, m), (m, b)])
    return np.flatnonzero(keep)


def left_normals(c: np.ndarray) -> np.ndarray:
    """Unit left normals (n, 2) of polyline ``c`` (n >= 2, 2): the tangent by central
    differences (one-sided at the ends) turned by +90°."""
    d = np.empty_like(c)
    d[1:-1] = c[2:] - c[:-2]
    d[0] = c[1] - c[0]
    d[-1] = c[-1] - c[-2]
    n = np.hypot(d[:, 0], d[:, 1])
    d = d / np.maximum(n, 1e-9)[:, None]
    return np.column_stack([-d[:, 1], d[:, 0]])


def offset_bounds(c: np.ndarray, half_left: np.ndarray, half_right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left and right bounds (n, 2) of a lane with centre-line ``c`` (n, 2) and per-vertex
    half-widths ``half_left`` / ``half_right`` (n,) m along :func:`left_normals`."""
    nrm = left_normals(c)
    return c + nrm * half_left[:, None], c - nrm * half_right[:, None]


def median_smooth(w: np.ndarray, k: int = 2) -> np.ndarray:
    """Running median (n,) of ``w`` (n,) over ``2k + 1`` samples, edges padded by repetition
    (``w`` itself when n <= 2)."""
    if len(w) <= 2:
        return w
    pad = np.pad(w, k, mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * k + 1)
    return np.median(win, axis=1)


def ray_distances(c: np.ndarray, idx: np.ndarray, side: float, length: float, tree, geoms) -> np.ndarray:
    """Distance (len(idx),) m from the centre-line vertices ``c[idx]`` along the left
    (``side=1``) or right (``side=-1``) normal to the nearest geometry that a ray of
    ``length`` m meets, NaN where none does (hits closer than 0.3 m are ignored: the lane's
    own line drawn on the centre).

    Args:
        c: (n, 2) centre-line; idx: (k,) int vertex indices; tree: a ``shapely.STRtree`` over
            ``geoms`` (object array of line strings), or None (all NaN).
    """
    best = np.full(len(idx), np.nan)
    if not len(idx) or tree is None:
        return best
    nrm = left_normals(c)
    p0 = c[idx]
    p1 = p0 + side * nrm[idx] * length
    rays = shapely.linestrings(np.stack([p0, p1], axis=1))
    ri, li = tree.query(rays, predicate="intersects")
    if not len(ri):
        return best
    dist = shapely.distance(shapely.points(p0[ri]), shapely.intersection(rays[ri], geoms[li]))
    for r, dd in zip(ri, dist):
        if np.isfinite(dd) and dd > 0.3 and not (best[r] <= dd):
            best[r] = dd
    return best


def lane_polygons(lefts: list[np.ndarray], rights: list[np.ndarray]) -> list:
    """A prepared ``shapely.Polygon`` per lane: the left bound (n, 2) followed by the reversed
    right bound (n, 2); an invalid (self-intersecting) polygon is repaired with ``buffer(0)``
    (the CommonRoad lanelet polygon, ``Lanelet.polygon``)."""
    polys = [shapely.Polygon(np.concatenate([lf, rt[::-1]])) for lf, rt in zip(lefts, rights)]
    polys = [p if p.is_valid else p.buffer(0) for p in polys]
    for p in polys:
        shapely.prepare(p)
    return polys


# ------------------------------------------------------------------------------ network
@dataclass
class MapArrays:
    """A lane network as the arrays a clip stores (see :class:`~mosaic_ray.data.clip.Clip`).

    Attributes (L lanes, V vertices in all, S stop lines):
        lane_ids: (L,) int64 lane ids (extensions: see :data:`EXTENSION_ID_OFFSET`).
        offsets: (L + 1,) int32; lane ``i`` has vertices ``offsets[i]:offsets[i + 1]``.
        left, right, center: (V, 2) float64 bounds and centre-lines (m), driving direction.
        in_intersection: (L,) bool, a lane inside a junction (no extension is added to it).
        is_extension: (L,) bool, a straight extension beyond the map crop.
        successors, predecessors, same_dir_neighbours: lane id -> list of lane ids.
        polygons: L prepared shapely polygons, index-aligned with ``lane_ids``.
        stop_lines: (S, 2, 2) float64 segments (m).
        tl_lanes: lane id -> commonroad-io ``TrafficLight`` objects governing entry into the
            lane (CommonRoad reader; ``{}`` for ScenarioNet, whose states are per step).
        index: lane id -> row in ``lane_ids``.
    """

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
    polygons: list
    stop_lines: np.ndarray
    tl_lanes: dict[int, list]
    index: dict[int, int]


@dataclass
class LaneLists:
    """Lanes collected by a reader before :func:`assemble_map`, one list entry per lane.

    ``lefts`` / ``rights`` / ``centers`` hold (n_i, 2) float64 arrays (m) with equal n_i per
    lane; the topology dicts map lane id -> list of lane ids.
    """

    ids: list[int] = field(default_factory=list)
    lefts: list[np.ndarray] = field(default_factory=list)
    rights: list[np.ndarray] = field(default_factory=list)
    centers: list[np.ndarray] = field(default_factory=list)
    in_intersection: list[bool] = field(default_factory=list)
    is_extension: list[bool] = field(default_factory=list)
    successors: dict[int, list[int]] = field(default_factory=dict)
    predecessors: dict[int, list[int]] = field(default_factory=dict)
    neighbours: dict[int, list[int]] = field(default_factory=dict)

    def add(self, lane_id: int, left: np.ndarray, right: np.ndarray, center: np.ndarray,
            in_intersection: bool, successors: list[int], predecessors: list[int],
            neighbours: list[int], is_extension: bool = False) -> None:
        """Append one lane (bounds and centre-line (n, 2), m; ``neighbours``: same-direction
        lanes beside it)."""
        self.ids.append(lane_id)
        self.lefts.append(left)
        self.rights.append(right)
        self.centers.append(center)
        self.in_intersection.append(in_intersection)
        self.is_extension.append(is_extension)
        self.successors[lane_id] = successors
        self.predecessors[lane_id] = predecessors
        self.neighbours[lane_id] = neighbours

    def index(self) -> dict[int, int]:
        """Lane id -> position in :attr:`ids`."""
        return {lid: i for i, lid in enumerate(self.ids)}


def add_straight_extensions(lanes: LaneLists, length_m: float) -> None:
    """Extend every lane that leaves the map crop by a straight lane of ``length_m`` m, in place.

    A lane (not in an intersection, not itself an extension) without successors gets one
    beyond its end, id ``lane id + EXTENSION_ID_OFFSET``, and one without predecessors gets
    one before its start, id ``lane id + 2 * EXTENSION_ID_OFFSET``: 4 vertices along the
    direction of the lane's last (first) centre-line segment, bounds shifted the same way,
    ordered in the driving direction, linked as the lane's only successor (predecessor).
    Extensions of same-direction neighbours are neighbours. A zero-length end segment gets no
    extension; ``length_m <= 0`` adds none.

    Why: the NGSIM crops end where the camera view ended and ScenarioNet converters crop the
    map around the log; a planner that drives further than the logged human would otherwise
    leave the drivable area at the crop's edge, which NAVSIM's full maps never make it do.
    """
    if length_m <= 0:
        return
    n_real = len(lanes.ids)
    for i in range(n_real):
        lid = lanes.ids[i]
        if lanes.in_intersection[i] or lanes.is_extension[i]:
            continue
        c = lanes.centers[i]
        for forward, missing in ((True, not lanes.successors[lid]), (False, not lanes.predecessors[lid])):
            if not missing:
                continue
            d = (c[-1] - c[-2]) if forward else (c[0] - c[1])
            norm = np.linalg.norm(d)
            if norm < 1e-6:
                continue
            d = d / norm
            j = -1 if forward else 0
            L = extend_straight(lanes.lefts[i][j], d, length_m)
            R = extend_straight(lanes.rights[i][j], d, length_m)
            C = extend_straight(c[j], d, length_m)
            if not forward:  # keep vertices ordered along the driving direction
                L, R, C = L[::-1], R[::-1], C[::-1]
            eid = lid + EXTENSION_ID_OFFSET * (1 if forward else 2)
            lanes.add(eid, L, R, C, False, [], [], [], is_extension=True)
            if forward:
                lanes.successors[lid] = [eid]
                lanes.predecessors[eid] = [lid]
            else:
                lanes.predecessors[lid] = [eid]
                lanes.successors[eid] = [lid]
    ext_of = {}
    for eid in lanes.ids[n_real:]:
        ext_of[(eid % EXTENSION_ID_OFFSET, eid // EXTENSION_ID_OFFSET)] = eid
    for (base, kind), eid in ext_of.items():
        lanes.neighbours[eid] = [ext_of[(nb, kind)] for nb in lanes.neighbours.get(base, []) if (nb, kind) in ext_of]


def assemble_map(lanes: LaneLists, stop_lines: list[np.ndarray] | np.ndarray,
                 tl_lanes: dict[int, list] | None = None) -> MapArrays:
    """Concatenate collected lanes into :class:`MapArrays` (an empty network gives empty
    arrays) with a polygon per lane (:func:`lane_polygons`).

    Args:
        lanes: the lanes, extensions included.
        stop_lines: (2, 2) segments (m), or an (S, 2, 2) array.
        tl_lanes: see :attr:`MapArrays.tl_lanes` (default ``{}``).
    """
    counts = [len(c) for c in lanes.centers]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    empty2 = np.zeros((0, 2))

    def cat(arrs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrs) if arrs else empty2

    return MapArrays(
        lane_ids=np.asarray(lanes.ids, np.int64), offsets=offsets,
        left=cat(lanes.lefts), right=cat(lanes.rights), center=cat(lanes.centers),
        in_intersection=np.asarray(lanes.in_intersection, bool),
        is_extension=np.asarray(lanes.is_extension, bool),
        successors=lanes.successors, predecessors=lanes.predecessors,
        same_dir_neighbours=lanes.neighbours, polygons=lane_polygons(lanes.lefts, lanes.rights),
        stop_lines=np.asarray(stop_lines, float).reshape(-1, 2, 2), tl_lanes=tl_lanes or {},
        index=lanes.index(),
    )


# ------------------------------------------------------------------------------- routes
def lane_heading_at(m: MapArrays, i: int, xy: np.ndarray) -> float:
    """Heading (rad) of lane ``i``'s centre-line segment at its vertex nearest ``xy`` (2,)."""
    c = m.center[m.offsets[i]:m.offsets[i + 1]]
    j = int(np.argmin(np.linalg.norm(c - xy, axis=1)))
    a, b = (c[j], c[j + 1]) if j + 1 < len(c) else (c[j - 1], c[j])
    return math.atan2(b[1] - a[1], b[0] - a[0])


def lanes_containing(m: MapArrays, xy: np.ndarray, heading: np.ndarray) -> list[list[int]]:
    """For points ``xy`` (n, 2) with headings ``heading`` (n,) rad, the lane indices (rows of
    ``m.lane_ids``) whose polygon contains each point and whose direction there is within 90°
    of the heading."""
    hits: list[list[int]] = [[] for _ in range(len(xy))]
    for i, poly in enumerate(m.polygons):
        inside = shapely.contains_xy(poly, xy[:, 0], xy[:, 1])
        for k in np.flatnonzero(inside):
            if abs(wrap_angle(lane_heading_at(m, i, xy[k]) - heading[k])) < math.pi / 2:
                hits[k].append(i)
    return hits


def follow_lanes(m: MapArrays, start: int, route: set[int], goal: np.ndarray, ahead_m: float,
                 forward: bool) -> list[int]:
    """Lane indices from lane index ``start`` along successors (``forward``) or predecessors
    for at least ``ahead_m`` m (or until the graph ends), choosing among several lanes those
    whose ids are in ``route``, then the one ending nearest ``goal`` (2,); in driving order
    (``start`` first going forward, last going backward)."""
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
    """The route of a clip from its logged ego window and the map.

    Args:
        m: the map; ego_states: (T_ALL, 4) float x, y (m), heading (rad), speed (m/s);
            ego_valid: (T_ALL,) bool.

    Returns:
        :class:`Route`; the centre-line is the lane chain from the lane under the ego at t0
        (40 m back, 220 m ahead), or the logged path when the ego is on no lane at t0.
    """
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
        on_route.update(follow_lanes(m, route_idx[-1], route_ids, goal, 150.0, True))
        on_route.update(follow_lanes(m, route_idx[0], route_ids, goal, 50.0, False))
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
        back = follow_lanes(m, first, route_ids, ego_states[T0_INDEX, :2], 40.0, False)
        chain = back[:-1] + follow_lanes(m, first, route_ids, goal, 220.0, True)
        center = dedupe_polyline(np.concatenate([m.center[m.offsets[i]:m.offsets[i + 1]] for i in chain]))
        source = "map"
    else:  # ego on no lane at t0: the logged path, extended straight
        path = ego_states[ego_valid][:, :2]
        d = path[-1] - path[-2] if len(path) > 1 else np.array([1.0, 0.0])
        n = np.linalg.norm(d)
        d = d / n if n > 1e-6 else np.array([math.cos(fut[-1, 2]), math.sin(fut[-1, 2])])
        center = dedupe_polyline(np.concatenate([path, extend_straight(path[-1], d, 100.0, 6)[1:]]))
        source = "log"
    if len(center) < 2:
        center = np.stack([ego_states[T0_INDEX, :2], ego_states[T0_INDEX, :2] + 1.0])
    return Route(route_idx, on_route, chain, center, source)
