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
    "points_to_segments_distance",
    "relative_bearing",
    "is_agent_ahead",
    "is_agent_behind",
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
        q = flat[i:i + step]
        rx = q[:, None, 0] - a[None, :, 0]
        ry = q[:, None, 1] - a[None, :, 1]
        t = np.clip((rx * d[None, :, 0] + ry * d[None, :, 1]) * inv[None], 0.0, 1.0)
        ex = rx - t * d[None, :, 0]
        ey = ry - t * d[None, :, 1]
        out[i:i + step] = np.sqrt((ex * ex + ey * ey).min(axis=1))
    return out.reshape(lead)


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
        rx = q[:, None, 0] - a[None, :, 0]
        ry = q[:, None, 1] - a[None, :, 1]
        t = np.clip((rx * d[None, :, 0] + ry * d[None, :, 1]) * inv[None], 0.0, 1.0)
        ex = rx - t * d[None, :, 0]
        ey = ry - t * d[None, :, 1]
        k = np.argmin(ex * ex + ey * ey, axis=1)
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
