"""Vectorised planar geometry for the EPDMS scorer (plain numpy).

Everything here works on float64 arrays in metres and radians, in any right-handed planar
frame (x east/forward, y north/left, headings counter-clockwise from +x).

Boxes
-----
An oriented box is given by its centre ``(x, y)``, its ``heading`` (direction of its length
axis) and its ``length`` / ``width`` (full extents). Functions that take "box arrays" use a
trailing axis of 5: ``[x, y, heading, length, width]``. Corners come in NAVSIM's
``BBCoordsIndex`` order — front-left, rear-left, rear-right, front-right (counter-clockwise) —
so the front bumper is the segment from corner 0 to corner 3.

Boundary conventions
--------------------
* Boxes are closed sets: two boxes that only touch (a shared edge or vertex) *intersect*, as
  with shapely's ``intersects``. The separating-axis test uses strict ``>`` for separation,
  so exact touching counts as contact up to floating-point rounding (about 1e-12 m).
* Point-in-polygon uses the crossing-number (even-odd) rule with a horizontal ray towards
  +x and half-open edge spans in y: a point exactly on an edge may be reported inside or
  outside (it is inside exactly one of two polygons that share that edge). Self-intersecting
  rings follow the even-odd rule.
* Projection onto a polyline clamps to its ends (like shapely's ``LineString.project``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "wrap_angle",
    "box_corners",
    "boxes_intersect",
    "segment_intersects_box",
    "points_in_polygons",
    "points_in_polygons_pairs",
    "project_to_polyline",
    "near_polyline",
    "points_to_segments_distance",
    "relative_bearing",
    "is_agent_ahead",
    "is_agent_behind",
    "SegmentGrid",
    "PolygonGrid",
    "masks_test",
    "lane_bits",
    "sweep_pairs",
    "boxes_intersect_ring",
]

_TWO_PI = 2.0 * np.pi


def wrap_angle(angle: np.ndarray | float) -> np.ndarray:
    """Wrap angles (rad, any shape) to ``[-pi, pi)``. Returns float64 of the same shape."""
    a = np.asarray(angle, dtype=np.float64)
    return (a + np.pi) % _TWO_PI - np.pi


# ----------------------------------------------------------------------------------- boxes
def box_corners(x, y, heading, length, width) -> np.ndarray:
    """Corners of oriented boxes.

    Args:
        x, y: box centres (m), any broadcastable shapes ``S``.
        heading: rad, broadcastable to ``S``.
        length, width: full extents (m), broadcastable to ``S``.

    Returns:
        ``S + (4, 2)`` float64 corners in the order front-left, rear-left, rear-right,
        front-right (NAVSIM ``BBCoordsIndex``; counter-clockwise).
    """
    x, y, heading, length, width = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (x, y, heading, length, width)))
    c, s = np.cos(heading), np.sin(heading)
    hl, hw = 0.5 * length, 0.5 * width
    # local corner offsets (forward, left)
    fx = np.stack([hl, -hl, -hl, hl], axis=-1)
    fy = np.stack([hw, hw, -hw, -hw], axis=-1)
    cx, cy = c[..., None], s[..., None]
    out = np.empty(x.shape + (4, 2), dtype=np.float64)
    out[..., 0] = x[..., None] + cx * fx - cy * fy
    out[..., 1] = y[..., None] + cy * fx + cx * fy
    return out


def _check_boxes(b: np.ndarray, name: str) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    if b.ndim < 1 or b.shape[-1] != 5:
        raise ValueError(f"{name}: expected trailing axis of 5 [x, y, heading, length, width], got {b.shape}")
    return b


def boxes_intersect(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """Separating-axis test for pairs of oriented boxes.

    Args:
        box_a, box_b: ``(..., 5)`` float arrays ``[x, y, heading, length, width]`` (m, rad);
            leading shapes must broadcast against each other.

    Returns:
        bool array of the broadcast leading shape: True where the (closed) boxes overlap or
        touch.

    Raises:
        ValueError: if a trailing axis is not 5 or the leading shapes do not broadcast.
    """
    a = _check_boxes(box_a, "box_a")
    b = _check_boxes(box_b, "box_b")
    dx = b[..., 0] - a[..., 0]
    dy = b[..., 1] - a[..., 1]
    ca, sa = np.cos(a[..., 2]), np.sin(a[..., 2])
    cb, sb = np.cos(b[..., 2]), np.sin(b[..., 2])
    hla, hwa = 0.5 * a[..., 3], 0.5 * a[..., 4]
    hlb, hwb = 0.5 * b[..., 3], 0.5 * b[..., 4]
    # |cos|, |sin| of the relative heading
    c = np.abs(ca * cb + sa * sb)
    s = np.abs(ca * sb - sa * cb)
    sep = np.abs(dx * ca + dy * sa) > hla + hlb * c + hwb * s          # axis: a's length
    sep |= np.abs(-dx * sa + dy * ca) > hwa + hlb * s + hwb * c        # axis: a's width
    sep |= np.abs(dx * cb + dy * sb) > hlb + hla * c + hwa * s         # axis: b's length
    sep |= np.abs(-dx * sb + dy * cb) > hwb + hla * s + hwa * c        # axis: b's width
    return ~sep


def segment_intersects_box(p0: np.ndarray, p1: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Whether segments touch oriented boxes (separating-axis test with three axes).

    Used for nuPlan's front-bumper rule (segment front-left -> front-right of the ego box
    against the object box).

    Args:
        p0, p1: ``(..., 2)`` segment end points (m).
        box: ``(..., 5)`` boxes ``[x, y, heading, length, width]``; all leading shapes
            broadcast together.

    Returns:
        bool array of the broadcast leading shape; touching counts as intersecting.
        A zero-length segment is tested as a point.

    Raises:
        ValueError: on a bad trailing axis.
    """
    p0 = np.asarray(p0, dtype=np.float64)
    p1 = np.asarray(p1, dtype=np.float64)
    if p0.shape[-1:] != (2,) or p1.shape[-1:] != (2,):
        raise ValueError(f"p0/p1: expected trailing axis of 2, got {p0.shape}, {p1.shape}")
    b = _check_boxes(box, "box")
    cb, sb = np.cos(b[..., 2]), np.sin(b[..., 2])
    hl, hw = 0.5 * b[..., 3], 0.5 * b[..., 4]
    r0x, r0y = p0[..., 0] - b[..., 0], p0[..., 1] - b[..., 1]
    r1x, r1y = p1[..., 0] - b[..., 0], p1[..., 1] - b[..., 1]
    # box length axis
    e0, e1 = r0x * cb + r0y * sb, r1x * cb + r1y * sb
    sep = (np.minimum(e0, e1) > hl) | (np.maximum(e0, e1) < -hl)
    # box width axis
    e0, e1 = -r0x * sb + r0y * cb, -r1x * sb + r1y * cb
    sep |= (np.minimum(e0, e1) > hw) | (np.maximum(e0, e1) < -hw)
    # segment normal
    dx, dy = p1[..., 0] - p0[..., 0], p1[..., 1] - p0[..., 1]
    ln = np.hypot(dx, dy)
    ok = ln > 0
    safe = np.where(ok, ln, 1.0)
    nx, ny = -dy / safe, dx / safe
    dist = np.abs(r0x * nx + r0y * ny)
    rad = hl * np.abs(cb * nx + sb * ny) + hw * np.abs(-sb * nx + cb * ny)
    sep |= ok & (dist > rad)
    return ~sep


# --------------------------------------------------------------------------- point in polygon
def _polygon_edges(polygons: np.ndarray, n_vertices: np.ndarray | None):
    polys = np.asarray(polygons, dtype=np.float64)
    if polys.ndim != 3 or polys.shape[-1] != 2:
        raise ValueError(f"polygons: expected (M, V, 2), got {polys.shape}")
    M, V, _ = polys.shape
    if n_vertices is None:
        n = np.full(M, V, dtype=np.int64)
    else:
        n = np.asarray(n_vertices, dtype=np.int64)
        if n.shape != (M,):
            raise ValueError(f"n_vertices: expected ({M},), got {n.shape}")
        if np.any(n > V) or np.any(n < 0):
            raise ValueError("n_vertices: values must lie in [0, V]")
    j = np.arange(V)
    valid = j[None, :] < n[:, None]                                   # (M, V)
    nxt = np.where(j[None, :] + 1 < n[:, None], j[None, :] + 1, 0)   # (M, V)
    start = np.where(valid[..., None], polys, 0.0)
    end = np.take_along_axis(polys, nxt[..., None], axis=1)
    end = np.where(valid[..., None], end, 0.0)
    return start, end, valid, n


def points_in_polygons_pairs(points: np.ndarray, polygons: np.ndarray,
                             n_vertices: np.ndarray | None = None,
                             block: int = 2_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Sparse point-in-polygon: the (point, polygon) index pairs with the point inside.

    Crossing-number rule (see the module docstring for boundaries), evaluated only for pairs
    whose point lies in the polygon's bounding box (found by sorting the points along x and y
    and sweeping each polygon's range on the more selective axis), so the cost scales with
    the number of such pairs times ``V`` rather than with ``P * M * V``.

    Args:
        points: ``(P, 2)`` float (m).
        polygons: ``(M, V, 2)`` float, padded rings (no repeated closing vertex needed).
        n_vertices: ``(M,)`` int, the number of real vertices of each ring (rows beyond it are
            padding and ignored); None means all ``V``. Rings with < 3 vertices contain nothing.
        block: soft cap on the number of candidate pairs handled at once (memory bound).

    Returns:
        ``(p_idx, m_idx)`` int64 arrays of equal length (no particular order).

    Raises:
        ValueError: on bad shapes.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[-1] != 2:
        raise ValueError(f"points: expected (P, 2), got {pts.shape}")
    start, end, valid, n = _polygon_edges(polygons, n_vertices)
    M, V = valid.shape
    P = pts.shape[0]
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    if P == 0 or M == 0 or V == 0:
        return empty
    big = np.where(valid[..., None], start, np.nan)
    usable = n >= 3
    lo = np.full((M, 2), np.inf)
    hi = np.full((M, 2), -np.inf)
    if usable.any():
        lo[usable] = np.nanmin(big[usable], axis=1)
        hi[usable] = np.nanmax(big[usable], axis=1)
    # candidate pairs: sweep each polygon's bbox along x or y, whichever selects fewer points
    orders, firsts, countss = [], [], []
    for ax in (0, 1):
        order = np.argsort(pts[:, ax])
        vals = pts[order, ax]
        f = np.searchsorted(vals, lo[:, ax], side="left")
        l_ = np.searchsorted(vals, hi[:, ax], side="right")
        orders.append(order)
        firsts.append(f)
        countss.append(np.where(usable, np.maximum(l_ - f, 0), 0))
    use_y = countss[1] < countss[0]
    # edge data for the crossing test: x at which the edge meets a given y
    y1e, y2e = start[..., 1], end[..., 1]
    x1e = start[..., 0]
    dye = y2e - y1e
    slope = np.where(dye != 0, (end[..., 0] - x1e) / np.where(dye != 0, dye, 1.0), 0.0)
    p_list, m_list = [], []
    pstep = max(1, block // max(V, 1))
    for ax in (0, 1):
        other = 1 - ax
        counts = np.where(use_y if ax == 1 else ~use_y, countss[ax], 0)
        ms = np.nonzero(counts)[0]
        if ms.size == 0:
            continue
        order, first = orders[ax], firsts[ax]
        csum = np.cumsum(counts[ms])
        g0 = 0
        while g0 < ms.size:
            base = csum[g0 - 1] if g0 else 0
            g1 = max(int(np.searchsorted(csum, base + block, side="right")), g0 + 1)
            grp = ms[g0:g1]
            cnt = counts[grp]
            mi = np.repeat(grp, cnt)
            offs = np.arange(mi.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            pi = order[first[mi] + offs]
            q = pts[pi, other]
            keep = (q >= lo[mi, other]) & (q <= hi[mi, other])
            pi, mi = pi[keep], mi[keep]
            for b0 in range(0, pi.size, pstep):
                pj, mj = pi[b0:b0 + pstep], mi[b0:b0 + pstep]
                px = pts[pj, 0][:, None]
                py = pts[pj, 1][:, None]
                y1 = y1e[mj]
                straddle = (y1 > py) != (y2e[mj] > py)
                xint = x1e[mj] + (py - y1) * slope[mj]
                cross = straddle & (px < xint) & valid[mj]
                inside = (np.count_nonzero(cross, axis=1) & 1).astype(bool)
                p_list.append(pj[inside])
                m_list.append(mj[inside])
            g0 = g1
    if not p_list:
        return empty
    return (np.concatenate(p_list).astype(np.int64), np.concatenate(m_list).astype(np.int64))


def points_in_polygons(points: np.ndarray, polygons: np.ndarray,
                       n_vertices: np.ndarray | None = None) -> np.ndarray:
    """Dense point-in-polygon matrix (crossing number).

    Args:
        points: ``(..., 2)`` float (m); leading shape ``S`` is flattened internally.
        polygons: ``(M, V, 2)`` padded rings.
        n_vertices: ``(M,)`` real vertex counts, or None for all ``V``.

    Returns:
        ``S + (M,)`` bool: True where the point lies inside the polygon.

    Raises:
        ValueError: on bad shapes.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-1:] != (2,):
        raise ValueError(f"points: expected trailing axis of 2, got {pts.shape}")
    polys = np.asarray(polygons, dtype=np.float64)
    if polys.ndim != 3 or polys.shape[-1] != 2:
        raise ValueError(f"polygons: expected (M, V, 2), got {polys.shape}")
    M = polys.shape[0]
    lead = pts.shape[:-1]
    flat = pts.reshape(-1, 2)
    pi, mi = points_in_polygons_pairs(flat, polys, n_vertices)
    out = np.zeros((flat.shape[0], M), dtype=bool)
    out[pi, mi] = True
    return out.reshape(lead + (M,))


# ------------------------------------------------------------------------------ polylines
def points_to_segments_distance(points: np.ndarray, segments: np.ndarray,
                                block: int = 2_000_000) -> np.ndarray:
    """Distance from each point to the nearest of a set of segments.

    Args:
        points: ``(..., 2)`` float (m).
        segments: ``(S, 2, 2)`` float, segment start/end points (m). ``S`` may be 0.

    Returns:
        ``(...)`` float64 distances (m); ``inf`` when there are no segments.

    Raises:
        ValueError: on bad shapes.
    """
    pts = np.asarray(points, dtype=np.float64)
    seg = np.asarray(segments, dtype=np.float64)
    if pts.shape[-1:] != (2,):
        raise ValueError(f"points: expected trailing axis of 2, got {pts.shape}")
    if seg.ndim != 3 or seg.shape[1:] != (2, 2):
        raise ValueError(f"segments: expected (S, 2, 2), got {seg.shape}")
    lead = pts.shape[:-1]
    flat = pts.reshape(-1, 2)
    out = np.full(flat.shape[0], np.inf)
    S = seg.shape[0]
    if S == 0 or flat.shape[0] == 0:
        return out.reshape(lead)
    a = seg[:, 0]
    d = seg[:, 1] - seg[:, 0]
    dd = np.einsum("ij,ij->i", d, d)
    inv = np.where(dd > 0, 1.0 / np.where(dd > 0, dd, 1.0), 0.0)
    step = max(1, block // S)
    for i in range(0, flat.shape[0], step):
        _, _, _, d2 = _offsets_to_segments(flat[i:i + step], a, d, inv)
        out[i:i + step] = np.sqrt(d2.min(axis=1))
    return out.reshape(lead)


def _offsets_to_segments(q: np.ndarray, a: np.ndarray, d: np.ndarray,
                         inv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every point against every segment ``a + t d``: points ``q`` ``(P, 2)``, segments ``a``,
    ``d`` ``(S, 2)``, ``inv`` ``(S,)`` = 1 / |d|^2 (0 for a zero-length segment) ->
    ``(t, ex, ey, d2)``, each ``(P, S)`` float64: ``t = clip((r . d) inv, 0, 1)`` with
    ``r = q - a``, the offset ``e = r - t d`` (m) from the nearest point and ``d2 = |e|^2``.
    Computed in place in four buffers (half the memory traffic of one array per
    operation; the same arithmetic)."""
    rx = np.subtract(q[:, None, 0], a[None, :, 0])
    ry = np.subtract(q[:, None, 1], a[None, :, 1])
    t = np.multiply(rx, d[None, :, 0])
    ex = np.multiply(ry, d[None, :, 1])
    t += ex
    t *= inv[None]
    np.clip(t, 0.0, 1.0, out=t)
    np.multiply(t, d[None, :, 0], out=ex)
    np.subtract(rx, ex, out=ex)
    ey = np.multiply(t, d[None, :, 1], out=rx)
    np.subtract(ry, ey, out=ey)
    d2 = np.multiply(ex, ex, out=ry)
    d2 += ey * ey
    return t, ex, ey, d2


def project_to_polyline(points: np.ndarray, polyline: np.ndarray,
                        block: int = 2_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project points onto a polyline (nearest point, clamped to the ends).

    Args:
        points: ``(..., 2)`` float (m).
        polyline: ``(K, 2)`` float, ``K >= 2`` vertices in travel order (m).

    Returns:
        ``(arc, lateral, distance)``, each ``(...)`` float64: ``arc`` is the arc length (m)
        from the first vertex to the nearest point on the polyline; ``lateral`` is the signed
        offset (m, positive to the left of the travel direction of the nearest segment);
        ``distance`` its absolute value (the Euclidean distance to the polyline).

    Raises:
        ValueError: on bad shapes or fewer than 2 vertices.
    """
    pts = np.asarray(points, dtype=np.float64)
    line = np.asarray(polyline, dtype=np.float64)
    if pts.shape[-1:] != (2,):
        raise ValueError(f"points: expected trailing axis of 2, got {pts.shape}")
    if line.ndim != 2 or line.shape[1] != 2 or line.shape[0] < 2:
        raise ValueError(f"polyline: expected (K>=2, 2), got {line.shape}")
    lead = pts.shape[:-1]
    flat = pts.reshape(-1, 2)
    a = line[:-1]
    d = line[1:] - line[:-1]
    seg_len = np.hypot(d[:, 0], d[:, 1])
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    dd = seg_len ** 2
    inv = np.where(dd > 0, 1.0 / np.where(dd > 0, dd, 1.0), 0.0)
    S = a.shape[0]
    arc = np.empty(flat.shape[0])
    lat = np.empty(flat.shape[0])
    step = max(1, block // S)
    for i in range(0, flat.shape[0], step):
        q = flat[i:i + step]
        t, ex, ey, d2 = _offsets_to_segments(q, a, d, inv)
        k = np.argmin(d2, axis=1)
        r = np.arange(q.shape[0])
        tk = t[r, k]
        arc[i:i + step] = cum[k] + tk * seg_len[k]
        ux = np.where(seg_len[k] > 0, d[k, 0] / np.where(seg_len[k] > 0, seg_len[k], 1.0), 0.0)
        uy = np.where(seg_len[k] > 0, d[k, 1] / np.where(seg_len[k] > 0, seg_len[k], 1.0), 0.0)
        cross = ux * ey[r, k] - uy * ex[r, k]
        dist = np.hypot(ex[r, k], ey[r, k])
        # sign from the side of the nearest segment; on the line (or beyond an end along
        # its extension) the sign is +
        lat[i:i + step] = np.where(cross < 0, -dist, dist)
    lat_r = lat.reshape(lead)
    return arc.reshape(lead), lat_r, np.abs(lat_r)


# ----------------------------------------------------------------------------- bearings
def relative_bearing(ego_xy: np.ndarray, ego_heading: np.ndarray, obj_xy: np.ndarray) -> np.ndarray:
    """Absolute angle (rad, in ``[0, pi]``) between the ego heading and the ego->object ray.

    As nuPlan's ``is_agent_ahead`` / ``is_agent_behind``: ``|wrap(atan2(dy, dx) - heading)|``.
    All inputs broadcast (``ego_xy``/``obj_xy`` with a trailing axis of 2). An object exactly
    at the ego position has bearing 0.
    """
    e = np.asarray(ego_xy, dtype=np.float64)
    o = np.asarray(obj_xy, dtype=np.float64)
    ang = np.arctan2(o[..., 1] - e[..., 1], o[..., 0] - e[..., 0])
    return np.abs(wrap_angle(ang - np.asarray(ego_heading, dtype=np.float64)))


def is_agent_ahead(ego_xy, ego_heading, obj_xy, tolerance_deg: float = 30.0) -> np.ndarray:
    """nuPlan ``is_agent_ahead``: relative bearing < ``tolerance_deg`` (default 30 deg)."""
    return relative_bearing(ego_xy, ego_heading, obj_xy) < np.deg2rad(tolerance_deg)


def is_agent_behind(ego_xy, ego_heading, obj_xy, tolerance_deg: float = 150.0) -> np.ndarray:
    """nuPlan ``is_agent_behind``: relative bearing > ``tolerance_deg`` (default 150 deg)."""
    return relative_bearing(ego_xy, ego_heading, obj_xy) > np.deg2rad(tolerance_deg)


# ------------------------------------------------------------------------- grid indexes
_GRID_JITTER = 0.3183098861837907  # fraction of a cell: keeps cell centres off round coordinates


def _segment_point_distance(px, py, ax, ay, bx, by) -> np.ndarray:
    """Distance (m) of points ``(px, py)`` to segments ``a -> b`` (broadcast arrays): with
    ``t = clip(((p - a) . d) / |d|^2, 0, 1)`` (0 for a zero-length segment), ``|p - a - t d|``.
    Computed in place in three buffers of the broadcast shape."""
    dx, dy = bx - ax, by - ay
    dd = dx * dx + dy * dy
    rx = np.subtract(px, ax)
    ry = np.subtract(py, ay)
    t = np.multiply(rx, dx)
    tmp = np.multiply(ry, dy)
    t += tmp
    t /= np.where(dd > 0, dd, 1.0)
    np.copyto(t, 0.0, where=~(dd > 0))
    np.clip(t, 0.0, 1.0, out=t)
    np.subtract(rx, np.multiply(t, dx, out=tmp), out=rx)
    np.subtract(ry, np.multiply(t, dy, out=tmp), out=ry)
    np.multiply(rx, rx, out=rx)
    np.multiply(ry, ry, out=ry)
    rx += ry
    return np.sqrt(rx, out=rx)


def near_polyline(points: np.ndarray, polyline: np.ndarray, radius: float,
                  block: int = 1_000_000) -> np.ndarray:
    """Whether each point lies within ``radius`` (m, closed) of a polyline, by testing every
    (point, segment) pair: for a few hundred points and tens of segments this costs less
    than building a :class:`SegmentGrid`, and gives the same answers (the same distance
    expression, :func:`_segment_point_distance`).

    Args:
        points: ``(..., 2)`` float (m).
        polyline: ``(K, 2)`` float vertices (m); ``K < 2``: no segment, nothing is near.
        radius: m.

    Returns:
        ``(...)`` bool.
    """
    pts = np.asarray(points, dtype=np.float64)
    line = np.asarray(polyline, dtype=np.float64).reshape(-1, 2)
    lead = pts.shape[:-1]
    flat = pts.reshape(-1, 2)
    out = np.zeros(flat.shape[0], dtype=bool)
    S = line.shape[0] - 1
    if S < 1 or flat.shape[0] == 0:
        return out.reshape(lead)
    a, b = line[:-1], line[1:]
    step = max(1, block // S)
    for i in range(0, flat.shape[0], step):
        q = flat[i:i + step]
        d = _segment_point_distance(q[:, None, 0], q[:, None, 1], a[None, :, 0], a[None, :, 1],
                                    b[None, :, 0], b[None, :, 1])
        out[i:i + step] = (d <= radius).any(axis=1)
    return out.reshape(lead)


class SegmentGrid:
    """Uniform grid listing, per cell, the segments that pass within ``radius + r`` of the cell
    centre (``r`` = half the cell diagonal), so every segment within ``radius`` of any point of
    the cell is listed. Exact candidate generation for distance and crossing queries.

    Args:
        seg_a, seg_b: ``(S, 2)`` float segment end points (m).
        cell: cell size (m).
        radius: query radius (m) the lists must support.
        bbox: optional ``(xmin, ymin, xmax, ymax)`` the grid must cover (default: the
            segments' bounding box); the grid always covers the segments' box grown by
            ``radius + 2 cell``, so a point outside the grid is farther than ``radius`` from
            every segment.
        extent: optional ``(xmin, ymin, xmax, ymax)``: a *cropped* grid covering exactly this
            box (``bbox`` ignored). Its answers are exact for points inside ``extent``;
            :meth:`near` raises ValueError for a point outside it. Scoring uses it to index
            only the area one query touches (cost grows with the crop, not with the map).

    Attributes:
        x0, y0 (grid origin, m), cell, gx, gy (cells along x / y), ptr ``(gx*gy + 1,)`` int64
        CSR offsets and ids ``(K,)`` int64 segment indices, a, b ``(S, 2)`` float64,
        extent (None, or the crop box).
    """

    def __init__(self, seg_a: np.ndarray, seg_b: np.ndarray, cell: float = 1.0, radius: float = 0.0,
                 bbox: tuple[float, float, float, float] | None = None,
                 extent: tuple[float, float, float, float] | None = None):
        a = np.asarray(seg_a, dtype=np.float64).reshape(-1, 2)
        b = np.asarray(seg_b, dtype=np.float64).reshape(-1, 2)
        if a.shape != b.shape:
            raise ValueError(f"seg_a/seg_b: shapes differ {a.shape} vs {b.shape}")
        self.a, self.b, self.cell, self.radius = a, b, float(cell), float(radius)
        self.extent = None if extent is None else tuple(float(v) for v in extent)
        pad = radius + 2.0 * cell
        if extent is not None:
            lo, hi = np.asarray(self.extent[:2]), np.asarray(self.extent[2:])
            if not (hi >= lo).all():
                raise ValueError(f"extent: empty box {self.extent}")
        elif a.shape[0]:
            lo = np.minimum(a.min(0), b.min(0)) - pad
            hi = np.maximum(a.max(0), b.max(0)) + pad
        else:
            lo, hi = np.zeros(2), np.ones(2) * cell
        if bbox is not None and extent is None:
            lo = np.minimum(lo, np.asarray(bbox[:2], np.float64))
            hi = np.maximum(hi, np.asarray(bbox[2:], np.float64))
        lo = lo - _GRID_JITTER * cell
        self.x0, self.y0 = float(lo[0]), float(lo[1])
        self.gx = int(np.ceil((hi[0] - lo[0]) / cell)) + 1
        self.gy = int(np.ceil((hi[1] - lo[1]) / cell)) + 1
        r = cell * np.sqrt(0.5) * (1.0 + 1e-9) + radius
        S = a.shape[0]
        if S == 0:
            self.ptr = np.zeros(self.gx * self.gy + 1, dtype=np.int64)
            self.ids = np.zeros(0, dtype=np.int64)
            return
        mn = (np.minimum(a, b) - r - [self.x0, self.y0]) / cell
        mx = (np.maximum(a, b) + r - [self.x0, self.y0]) / cell
        ix0 = np.clip(np.floor(mn[:, 0]).astype(np.int64), 0, self.gx - 1)
        iy0 = np.clip(np.floor(mn[:, 1]).astype(np.int64), 0, self.gy - 1)
        ix1 = np.clip(np.floor(mx[:, 0]).astype(np.int64), 0, self.gx - 1)
        iy1 = np.clip(np.floor(mx[:, 1]).astype(np.int64), 0, self.gy - 1)
        nx, ny = ix1 - ix0 + 1, iy1 - iy0 + 1
        cnt = nx * ny
        seg = np.repeat(np.arange(S), cnt)
        off = np.arange(seg.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        cx = ix0[seg] + off % nx[seg]
        cy = iy0[seg] + off // nx[seg]
        px = self.x0 + (cx + 0.5) * cell
        py = self.y0 + (cy + 0.5) * cell
        d = _segment_point_distance(px, py, a[seg, 0], a[seg, 1], b[seg, 0], b[seg, 1])
        keep = d <= r
        cells = (cy * self.gx + cx)[keep]
        seg = seg[keep]
        order = np.argsort(cells, kind="stable")
        self.ids = seg[order]
        self.ptr = np.zeros(self.gx * self.gy + 1, dtype=np.int64)
        np.add.at(self.ptr, cells + 1, 1)
        self.ptr = np.cumsum(self.ptr)

    def cells_of(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cell index ``(P,)`` int64 (-1 outside the grid) and cell centres ``(P, 2)``."""
        ix = np.floor((pts[:, 0] - self.x0) / self.cell).astype(np.int64)
        iy = np.floor((pts[:, 1] - self.y0) / self.cell).astype(np.int64)
        inside = (ix >= 0) & (ix < self.gx) & (iy >= 0) & (iy < self.gy)
        cell = np.where(inside, iy * self.gx + ix, -1)
        centre = np.stack([self.x0 + (ix + 0.5) * self.cell, self.y0 + (iy + 0.5) * self.cell], axis=-1)
        return cell, centre

    def candidates(self, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(point index, segment index)`` candidate pairs for points in cells ``cell``
        (``(P,)``, -1 = outside: no candidates)."""
        ok = cell >= 0
        c = np.where(ok, cell, 0)
        start = self.ptr[c]
        cnt = np.where(ok, self.ptr[c + 1] - start, 0)
        p = np.repeat(np.arange(cell.size), cnt)
        off = np.arange(p.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        return p, self.ids[start[p] + off]

    def near(self, points: np.ndarray, radius: float | None = None) -> np.ndarray:
        """Whether each point lies within ``radius`` (default: the grid's) of some segment.

        Args:
            points: ``(..., 2)`` float (m).

        Returns:
            ``(...)`` bool, exact (closed: distance <= radius).

        Raises:
            ValueError: ``radius`` exceeds the radius the grid was built for.
        """
        rad = self.radius if radius is None else float(radius)
        if rad > self.radius + 1e-12:
            raise ValueError(f"radius {rad} > grid radius {self.radius}")
        pts = np.asarray(points, dtype=np.float64)
        lead = pts.shape[:-1]
        flat = pts.reshape(-1, 2)
        cell, _ = self.cells_of(flat)
        if self.extent is not None and (cell < 0).any():
            raise ValueError(f"points outside the cropped grid's extent {self.extent}")
        p, s = self.candidates(cell)
        out = np.zeros(flat.shape[0], dtype=bool)
        if p.size:
            d = _segment_point_distance(flat[p, 0], flat[p, 1], self.a[s, 0], self.a[s, 1],
                                        self.b[s, 0], self.b[s, 1])
            out[p[d <= rad]] = True
        return out.reshape(lead)


def _segments_cross(p, q, a, b) -> np.ndarray:
    """Proper crossing of segments p-q and a-b (all ``(K, 2)``), strict orientation tests."""
    def orient(o, u, w):
        return (u[:, 0] - o[:, 0]) * (w[:, 1] - o[:, 1]) - (u[:, 1] - o[:, 1]) * (w[:, 0] - o[:, 0])
    o1, o2 = orient(a, b, p), orient(a, b, q)
    o3, o4 = orient(p, q, a), orient(p, q, b)
    return ((o1 > 0) != (o2 > 0)) & ((o3 > 0) != (o4 > 0))


_CROP_REACH = 2.0  # cells: a cropped grid reaches about 1.3 cells beyond its box


def _crop_parity_edges(a: np.ndarray, b: np.ndarray, extent, cell: float) -> np.ndarray:
    """``(E,)`` bool: the segments ``a -> b`` (``(E, 2)``, or boxes given as their two
    corners) that can set a cropped :class:`PolygonGrid`'s parity: in the box's rows and not
    right of it (an edge right of the box crosses the rows right of every cell centre and
    would only toggle the unused column ``gx``)."""
    x0, y0, x1, y1 = extent
    m = _CROP_REACH * cell
    return ((np.maximum(a[:, 1], b[:, 1]) >= y0 - m) & (np.minimum(a[:, 1], b[:, 1]) <= y1 + m)
            & (np.minimum(a[:, 0], b[:, 0]) <= x1 + m))


class PolygonGrid:
    """Exact even-odd membership of points in M polygon rings, answered per point as a lane
    bitmask.

    Cell centres get their membership once, by scan-line parity over all rings (a crossing
    at x toggles the cells whose centre lies right of x); a query point then takes its cell
    centre's membership and flips ring ``m`` for every edge of ``m`` that crosses the
    segment point -> cell centre (those edges are exactly the ones listed in the cell by a
    :class:`SegmentGrid` of radius 0). Both steps are exact in general position; a point
    exactly on a ring edge may come out either way (as with any crossing-number test).

    A grid *cropped* to ``extent`` answers exactly for points inside that box at a cost that
    grows with the box, not with the map: its cells' parity counts the crossings of every edge
    left of the box in the box's rows (they toggle the whole row), edges right of, above or
    below the box are dropped, and only edges that reach the box are listed per cell.

    Args:
        rings: M arrays ``(n_m, 2)`` (m), each an open ring (the closing edge is implied).
        cell: grid cell (m).
        extent: None (the whole map), or ``(xmin, ymin, xmax, ymax)`` (m): crop the grid to
            this box; :meth:`query` then raises ValueError for a point outside it.

    Attributes:
        M (rings), W (uint64 words per mask), grid (the :class:`SegmentGrid` of ring edges),
        edge_ring ``(E,)`` int64, centre_mask ``(gy*(gx+1), W)`` uint64 (the membership of the
        centre of cell (ix, iy) is row ``iy * (gx + 1) + ix``; column ``gx`` is unused),
        extent (None or the crop box).
    """

    def __init__(self, rings: list[np.ndarray], cell: float = 1.0, _edges=None,
                 extent: tuple[float, float, float, float] | None = None):
        if _edges is None:
            a_list, b_list, r_list = [], [], []
            for m, ring in enumerate(rings):
                r = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
                if r.shape[0] < 3:
                    continue
                a_list.append(r)
                b_list.append(np.roll(r, -1, axis=0))
                r_list.append(np.full(r.shape[0], m, dtype=np.int64))
            a = np.concatenate(a_list) if a_list else np.zeros((0, 2))
            b = np.concatenate(b_list) if b_list else np.zeros((0, 2))
            edge_ring = np.concatenate(r_list) if r_list else np.zeros(0, dtype=np.int64)
            M = len(rings)
        else:
            a, b, edge_ring, M = _edges
        self.M = M
        self.W = max(1, (self.M + 63) // 64)
        self.extent = None if extent is None else tuple(float(v) for v in extent)
        word = edge_ring // 64
        bit = np.left_shift(np.uint64(1), (edge_ring % 64).astype(np.uint64))
        # the edges whose crossings set the centres' parity (all, or those in the crop's rows)
        # and, among them, the edges listed per cell (those that reach the crop)
        par = flip = slice(None)
        if extent is not None and a.shape[0]:
            par = _crop_parity_edges(a, b, self.extent, cell)
            flip = par & (np.maximum(a[:, 0], b[:, 0]) >= self.extent[0] - _CROP_REACH * cell)
        self.edge_ring, self.edge_word, self.edge_bit = edge_ring[flip], word[flip], bit[flip]
        self.grid = g = SegmentGrid(a[flip], b[flip], cell=cell, radius=0.0, extent=self.extent)
        # scan-line parity of the cell centres
        tog = np.zeros((g.gy, g.gx + 1, self.W), dtype=np.uint64)
        a, b, pword, pbit = a[par], b[par], word[par], bit[par]
        if a.shape[0]:
            ya, yb = a[:, 1], b[:, 1]
            ymin, ymax = np.minimum(ya, yb), np.maximum(ya, yb)
            j0 = np.clip(np.ceil((ymin - g.y0) / cell - 0.5).astype(np.int64), 0, g.gy)
            j1 = np.clip(np.ceil((ymax - g.y0) / cell - 0.5).astype(np.int64), 0, g.gy)  # exclusive
            cnt = np.maximum(j1 - j0, 0)
            e = np.repeat(np.arange(a.shape[0]), cnt)
            row = j0[e] + np.arange(e.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            yc = g.y0 + (row + 0.5) * cell
            ok = (ya[e] > yc) != (yb[e] > yc)
            e, row, yc = e[ok], row[ok], yc[ok]
            xi = a[e, 0] + (yc - a[e, 1]) * (b[e, 0] - a[e, 0]) / (b[e, 1] - a[e, 1])
            col = np.floor((xi - g.x0) / cell - 0.5).astype(np.int64) + 1
            col = np.clip(col, 0, g.gx)
            np.bitwise_xor.at(tog, (row, col, pword[e]), pbit[e])
        # in place (10x faster than a new array here), kept (gy, gx + 1, W): no copy of the slice
        np.bitwise_xor.accumulate(tog, axis=1, out=tog)
        self.centre_mask = tog.reshape(-1, self.W)  # row iy * (gx + 1) + ix; column gx unused

    @classmethod
    def from_lanes(cls, left: np.ndarray, right: np.ndarray, offsets: np.ndarray,
                   cell: float = 1.0, extent: tuple[float, float, float, float] | None = None,
                   lane_bbox: np.ndarray | None = None) -> "PolygonGrid":
        """Grid of lane rings ``left[a:b] + reversed(right[a:b])`` given as CSR arrays
        (``left``/``right`` ``(V, 2)``, ``offsets`` ``(M + 1,)``), built without a Python loop
        over lanes; equal to ``PolygonGrid([ring_0, ..., ring_{M-1}], cell, extent=extent)``.

        ``lane_bbox``: optional ``(M, 4)`` ``[xmin, ymin, xmax, ymax]`` of each ring (m); with
        an ``extent``, the rings whose box cannot reach the crop (the edge tests of
        :class:`PolygonGrid` applied to the box) are not built at all (they keep their bits)."""
        off = np.asarray(offsets, dtype=np.int64)
        M = off.size - 1
        n = np.diff(off)
        V = int(off[-1]) if M else 0
        pts = np.concatenate([np.asarray(left, np.float64).reshape(-1, 2),
                              np.asarray(right, np.float64).reshape(-1, 2)])
        # ring vertex indices into ``pts``: left a..b-1, then right b-1..a (offset by V)
        sel = np.arange(M)
        if extent is not None and lane_bbox is not None:
            bb = np.asarray(lane_bbox, dtype=np.float64).reshape(-1, 4)
            sel = np.flatnonzero(_crop_parity_edges(bb[:, :2], bb[:, 2:], extent, cell))
        ring_len = 2 * n[sel]
        lane = np.repeat(sel, ring_len)
        k = np.arange(lane.size) - np.repeat(np.cumsum(ring_len) - ring_len, ring_len)
        a0, nn = off[lane], n[lane]
        idx = np.where(k < nn, a0 + k, V + a0 + (2 * nn - 1 - k))
        nxt_k = np.where(k + 1 < 2 * nn, k + 1, 0)
        nidx = np.where(nxt_k < nn, a0 + nxt_k, V + a0 + (2 * nn - 1 - nxt_k))
        keep = 2 * nn >= 3
        return cls([], cell, _edges=(pts[idx[keep]], pts[nidx[keep]], lane[keep], M), extent=extent)

    def _edge_sides(self) -> None:
        """Per (cell, edge) pair: the side of the cell centre relative to the edge's line, and
        the edge line data as flat float arrays (query speed-up)."""
        g = self.grid
        self._ax, self._ay = g.a[:, 0].copy(), g.a[:, 1].copy()
        self._dx, self._dy = g.b[:, 0] - g.a[:, 0], g.b[:, 1] - g.a[:, 1]
        cell = np.repeat(np.arange(g.gx * g.gy), np.diff(g.ptr))
        qx = g.x0 + (cell % g.gx + 0.5) * g.cell
        qy = g.y0 + (cell // g.gx + 0.5) * g.cell
        e = g.ids
        self._qside = (self._dx[e] * (qy - self._ay[e]) - self._dy[e] * (qx - self._ax[e])) > 0
        self._pair_cell = cell

    def query(self, points: np.ndarray) -> np.ndarray:
        """Membership bitmasks.

        Args:
            points: ``(..., 2)`` float (m).

        Returns:
            ``(..., W)`` uint64: bit ``m % 64`` of word ``m // 64`` set where the point lies
            inside ring ``m`` (even-odd rule).
        """
        if not hasattr(self, "_qside"):
            self._edge_sides()
        pts = np.asarray(points, dtype=np.float64)
        lead = pts.shape[:-1]
        px = np.ascontiguousarray(pts[..., 0]).reshape(-1)
        py = np.ascontiguousarray(pts[..., 1]).reshape(-1)
        g = self.grid
        ix = np.floor((px - g.x0) * (1.0 / g.cell)).astype(np.int64)
        iy = np.floor((py - g.y0) * (1.0 / g.cell)).astype(np.int64)
        inside = (ix >= 0) & (ix < g.gx) & (iy >= 0) & (iy < g.gy)
        cell = iy * g.gx + ix
        if not inside.all():
            if self.extent is not None:
                raise ValueError(f"points outside the cropped lane grid's extent {self.extent}")
            cell[~inside] = 0
            iy = np.where(inside, iy, 0)
        out = self.centre_mask[cell + iy]  # centre_mask rows are gx + 1 long
        start = g.ptr[cell]
        cnt = g.ptr[cell + 1] - start
        if not inside.all():
            out[~inside] = 0
            cnt[~inside] = 0
        total = int(cnt.sum())
        if total:
            p = np.repeat(np.arange(px.size), cnt)
            k = start[p] + (np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt))   # pair index
            e = g.ids[k]
            ax, ay, dx, dy = self._ax[e], self._ay[e], self._dx[e], self._dy[e]
            ppx, ppy = px[p], py[p]
            # p and the cell centre q on opposite sides of the edge's line
            cand = ((dx * (ppy - ay) - dy * (ppx - ax)) > 0) != self._qside[k]
            if cand.any():
                p, e, k = p[cand], e[cand], k[cand]
                ppx, ppy = ppx[cand], ppy[cand]
                ax, ay, bx, by = ax[cand], ay[cand], ax[cand] + dx[cand], ay[cand] + dy[cand]
                c = self._pair_cell[k]
                qx = g.x0 + (c % g.gx + 0.5) * g.cell
                qy = g.y0 + (c // g.gx + 0.5) * g.cell
                ux, uy = qx - ppx, qy - ppy
                o3 = ux * (ay - ppy) - uy * (ax - ppx)
                o4 = ux * (by - ppy) - uy * (bx - ppx)
                flip = (o3 > 0) != (o4 > 0)
                p, e = p[flip], e[flip]
                if p.size:
                    words = self.edge_word[e]
                    bits = self.edge_bit[e]
                    for w in range(self.W):
                        sel = words == w if self.W > 1 else slice(None)
                        pw, bw = p[sel], bits[sel]
                        if pw.size == 0:
                            continue
                        # pairs are grouped by point (ascending): XOR-reduce each group
                        starts = np.flatnonzero(np.concatenate([[True], pw[1:] != pw[:-1]]))
                        out[pw[starts], w] ^= np.bitwise_xor.reduceat(bw, starts)
        return out.reshape(lead + (self.W,))


def masks_test(masks: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """``(..., W)`` uint64 masks AND ``(W,)`` bits -> ``(...)`` bool (any common bit)."""
    return (np.bitwise_and(masks, bits) != 0).any(axis=-1)


def lane_bits(flags: np.ndarray) -> np.ndarray:
    """``(M,)`` bool -> ``(W,)`` uint64 bitmask of the flagged rings."""
    flags = np.asarray(flags, dtype=bool).reshape(-1)
    W = max(1, (flags.shape[0] + 63) // 64)
    bits = np.zeros(64 * W, dtype=bool)
    bits[:flags.shape[0]] = flags
    # bit m % 64 of word m // 64: little-endian bit order within bytes, bytes within words
    return np.packbits(bits, bitorder="little").view("<u8").astype(np.uint64)


#: below this many (group, ego, object) triples :func:`sweep_pairs` tests every triple (a few
#: array operations) instead of bucketing: scoring one planned trajectory with its reference
#: proposals (7 rows x 41 steps x tens of agents) is far below it, a vocabulary of 256 is above
SWEEP_DENSE_PAIRS = 65_536


def sweep_pairs(ego_xy: np.ndarray, ego_r: float, obj_xy: np.ndarray, obj_r: np.ndarray,
                obj_ok: np.ndarray, ego_ok: np.ndarray | None = None,
                _split: bool = True, dense_limit: int = SWEEP_DENSE_PAIRS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broad phase: ``(group, ego, object)`` index triples whose bounding circles overlap.

    Up to ``dense_limit`` triples, every triple takes the circle test. Above it, within each
    group (a time step, or a time step and TTC offset) the few objects are bucketed on a 2-D
    grid of cell ``R_max / 2`` (``R = ego_r + obj_r``); every ego position takes the objects
    of the 5 x 5 cells around its own (5 contiguous CSR runs, no search), then the circle
    test with each object's own radius filters the candidates. Long objects (a few trucks)
    are swept separately so that they do not widen every window. Both ways are exact and
    give the same set of triples (the same circle test); their order differs.

    Args:
        ego_xy: ``(G, N, 2)`` ego box centres (m). ego_r: ego bounding radius (m).
        obj_xy: ``(G, A, 2)`` object centres (m). obj_r: ``(A,)`` object bounding radii (m).
        obj_ok: ``(G, A)`` bool, objects present in the group.
        ego_ok: optional ``(G, N)`` bool, ego positions to test (default all).
        dense_limit: the most ``G * N * A`` tested densely (0: always bucket).

    Returns:
        ``(g, n, a)`` int64 arrays of equal length.
    """
    G, N = ego_xy.shape[:2]
    A = obj_xy.shape[1]
    empty = (np.zeros(0, np.int64),) * 3
    if G == 0 or N == 0 or A == 0 or not obj_ok.any() or (ego_ok is not None and not ego_ok.any()):
        return empty
    R = ego_r + np.asarray(obj_r, dtype=np.float64)                   # (A,)
    if G * N * A <= dense_limit:
        dx = ego_xy[:, :, None, 0] - obj_xy[:, None, :, 0]
        dy = ego_xy[:, :, None, 1] - obj_xy[:, None, :, 1]
        hit = (dx * dx + dy * dy <= R * R) & obj_ok[:, None, :]
        if ego_ok is not None:
            hit &= np.asarray(ego_ok, dtype=bool)[:, :, None]
        g, n, a = np.nonzero(hit)
        return g.astype(np.int64), n.astype(np.int64), a.astype(np.int64)
    present = obj_ok.any(axis=0)
    big = present & (R > 1.25 * np.median(R[present]) + 0.5)
    if _split and big.any() and (present & ~big).any():
        res = [sweep_pairs(ego_xy, ego_r, obj_xy, obj_r, obj_ok & m[None, :], ego_ok, False, 0) for m in (~big, big)]
        return tuple(np.concatenate([r[i] for r in res]) for i in range(3))
    Rmax = float(R[present].max())
    bw = 0.5 * Rmax
    ex = np.ascontiguousarray(ego_xy[..., 0]).ravel()
    ey = np.ascontiguousarray(ego_xy[..., 1]).ravel()
    ox = np.ascontiguousarray(obj_xy[..., 0]).ravel()
    oy = np.ascontiguousarray(obj_xy[..., 1]).ravel()
    okf = obj_ok.ravel()
    eok = np.ones(G * N, dtype=bool) if ego_ok is None else np.asarray(ego_ok, dtype=bool).ravel()
    # 2-D buckets of width R_max / 2 (2 spare rows / columns on each side): an object within
    # R_max of an ego lies in the 5 x 5 buckets around the ego's, i.e. in 5 contiguous runs
    # of the row-major CSR order
    lo_x = min(float(ex[eok].min()), float(ox[okf].min()))
    hi_x = max(float(ex[eok].max()), float(ox[okf].max()))
    lo_y = min(float(ey[eok].min()), float(oy[okf].min()))
    hi_y = max(float(ey[eok].max()), float(oy[okf].max()))
    nx = int((hi_x - lo_x) / bw) + 5
    ny = int((hi_y - lo_y) / bw) + 5
    per_g = nx * ny
    oix = np.clip(np.floor((ox - lo_x) / bw).astype(np.int64) + 2, 0, nx - 1)
    oiy = np.clip(np.floor((oy - lo_y) / bw).astype(np.int64) + 2, 0, ny - 1)
    ocell = np.where(okf, np.repeat(np.arange(G), A) * per_g + oiy * nx + oix, G * per_g)
    order = np.argsort(ocell, kind="stable")                            # object ids grouped by cell
    ptr = np.concatenate([[0], np.cumsum(np.bincount(ocell, minlength=G * per_g + 1))])
    eix = np.clip(np.floor((ex - lo_x) / bw).astype(np.int64) + 2, 2, nx - 3)
    eiy = np.clip(np.floor((ey - lo_y) / bw).astype(np.int64) + 2, 2, ny - 3)
    ebase = np.repeat(np.arange(G), N) * per_g + eix
    gns, gas = [], []
    for dy in (-2, -1, 0, 1, 2):
        row = ebase + (eiy + dy) * nx
        lo = ptr[row - 2]
        cnt = np.where(eok, ptr[row + 3] - lo, 0)
        total = int(cnt.sum())
        if total == 0:
            continue
        gn = np.repeat(np.arange(G * N), cnt)
        ga = order[np.repeat(lo - np.cumsum(cnt) + cnt, cnt) + np.arange(total)]   # flat g * A + a
        dx = ex[gn] - ox[ga]
        dyy = ey[gn] - oy[ga]
        Ra = R[ga % A]
        keep = dx * dx + dyy * dyy <= Ra * Ra
        gns.append(gn[keep])
        gas.append(ga[keep])
    if not gns:
        return empty
    gn, ga = np.concatenate(gns), np.concatenate(gas)
    return gn // N, gn % N, ga % A


def boxes_intersect_ring(boxes: np.ndarray, ring: np.ndarray,
                         corner_inside: np.ndarray | None = None) -> np.ndarray:
    """Whether oriented boxes intersect a polygon ring (closed sets, even-odd interior).

    True where a box corner lies inside the ring, a ring vertex lies inside the box, or a box
    edge crosses a ring edge.

    Args:
        boxes: ``(K, 5)`` ``[x, y, heading, length, width]`` (m, rad).
        ring: ``(V, 2)`` open ring (m).
        corner_inside: optional ``(K,)`` bool, already known "some corner inside the ring".

    Returns:
        ``(K,)`` bool.
    """
    b = _check_boxes(boxes, "boxes")
    ring = np.asarray(ring, dtype=np.float64)
    K = b.shape[0]
    if K == 0:
        return np.zeros(0, dtype=bool)
    corners = box_corners(b[:, 0], b[:, 1], b[:, 2], b[:, 3], b[:, 4])      # (K, 4, 2)
    if corner_inside is None:
        inside = points_in_polygons(corners.reshape(-1, 2), ring[None]).reshape(K, 4).any(axis=1)
    else:
        inside = np.asarray(corner_inside, dtype=bool).copy()
    # ring vertices inside the box
    c, s = np.cos(b[:, 2])[:, None], np.sin(b[:, 2])[:, None]
    rx = ring[None, :, 0] - b[:, 0:1]
    ry = ring[None, :, 1] - b[:, 1:2]
    lx, ly = rx * c + ry * s, -rx * s + ry * c
    inside |= ((np.abs(lx) <= 0.5 * b[:, 3:4]) & (np.abs(ly) <= 0.5 * b[:, 4:5])).any(axis=1)
    rest = np.nonzero(~inside)[0]
    if rest.size:
        V = ring.shape[0]
        ra, rb = ring, np.roll(ring, -1, axis=0)
        p = corners[rest]                                                   # (k, 4, 2)
        q = np.roll(p, -1, axis=1)
        P = np.broadcast_to(p[:, :, None, :], (rest.size, 4, V, 2)).reshape(-1, 2)
        Q = np.broadcast_to(q[:, :, None, :], (rest.size, 4, V, 2)).reshape(-1, 2)
        Ra = np.broadcast_to(ra[None, None], (rest.size, 4, V, 2)).reshape(-1, 2)
        Rb = np.broadcast_to(rb[None, None], (rest.size, 4, V, 2)).reshape(-1, 2)
        hit = _segments_cross(P, Q, Ra, Rb).reshape(rest.size, -1).any(axis=1)
        inside[rest] = hit
    return inside
