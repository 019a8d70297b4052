"""The planner features as computed observation by observation before issue 14 batched them
(mosaic_ray/planner/features.py at 2f23c4c, frozen): the reference tests/test_batched_scoring.py
compares :func:`mosaic_ray.planner.features.featurize_clips` against, bit for bit."""

from __future__ import annotations

import numpy as np

from mosaic_ray.data.clip import (
    AGENT_VEHICLE, N_HIST, POSE_STEPS, T0_INDEX, TL_GREEN, TL_RED, TL_RED_YELLOW, TL_YELLOW, Clip,
)
from mosaic_ray.planner.features import AGENT_FEATS, LANE_ATTRS, POS_SCALE, SPEED_SCALE, FeatureSpec


def to_frame(xy: np.ndarray, origin: np.ndarray, heading: float) -> np.ndarray:
    """Global points (..., 2) -> frame at ``origin`` (2,) rotated by ``heading`` (rad)."""
    c, s = np.cos(heading), np.sin(heading)
    d = xy - origin
    return np.stack([d[..., 0] * c + d[..., 1] * s, -d[..., 0] * s + d[..., 1] * c], axis=-1)


def wrap_angle(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def resample_polyline(p: np.ndarray, s_query: np.ndarray) -> np.ndarray:
    """Points of polyline ``p`` (n, 2) at arc lengths ``s_query`` (m,), extrapolating linearly."""
    seg = np.diff(p, axis=0)
    ls = np.linalg.norm(seg, axis=1)
    keep = np.concatenate([[True], ls > 1e-9])
    p = p[keep]
    if len(p) < 2:
        return np.repeat(p[:1], len(s_query), 0)
    seg = np.diff(p, axis=0)
    ls = np.linalg.norm(seg, axis=1)
    s = np.concatenate([[0.0], np.cumsum(ls)])
    idx = np.clip(np.searchsorted(s, s_query, side="right") - 1, 0, len(seg) - 1)
    t = (s_query - s[idx]) / ls[idx]
    return p[idx] + seg[idx] * t[:, None]


def resample_lanes(points: np.ndarray, offsets: np.ndarray, lanes: np.ndarray, P: int) -> np.ndarray:
    """Resample several polylines at once: each of ``lanes`` to ``P`` points evenly spaced over
    its length (what :func:`resample_polyline` does lane by lane, vectorised over the lanes).

    Args:
        points: (n, 2) float64 points of all polylines, concatenated (m).
        offsets: (M + 1,) int, polyline ``i`` is ``points[offsets[i]:offsets[i + 1]]`` (≥ 1 point).
        lanes: (L,) int, the polylines to resample, in output order.
        P: points per polyline.

    Returns:
        (L, P, 2) float64. A polyline whose points all coincide repeats its first point. Equal to
        the lane-by-lane result up to floating-point rounding (the arc lengths are one cumulative
        sum over all lanes, offset per lane, instead of one sum per lane).
    """
    lanes = np.asarray(lanes, dtype=np.int64)
    L = len(lanes)
    if L == 0:
        return np.zeros((0, P, 2))
    starts, ends = offsets[lanes], offsets[lanes + 1]
    counts = ends - starts
    lane_of = np.repeat(np.arange(L), counts)                       # lane of each gathered point
    first = np.zeros(int(counts.sum()), bool)
    first[np.concatenate([[0], np.cumsum(counts)[:-1]])] = True
    idx = np.arange(len(lane_of)) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
    p = points[idx]
    step = np.zeros(len(p))
    step[1:] = np.linalg.norm(np.diff(p, axis=0), axis=1)
    step[first] = 0.0
    total = np.bincount(lane_of, weights=step, minlength=L)             # the lane's length (m)
    keep = first | (step > 1e-9)                                        # drop repeated points
    p, lane_of, first = p[keep], lane_of[keep], first[keep]
    step = np.zeros(len(p))
    step[1:] = np.linalg.norm(np.diff(p, axis=0), axis=1)
    step[first] = 0.0
    cs = np.cumsum(step)
    lane_first = np.flatnonzero(first)                                  # (L,) first kept point per lane
    s = cs - cs[lane_first][lane_of]                                    # arc length within the lane
    n_kept = np.diff(np.append(lane_first, len(p)))
    span = s.max() + 1.0 if len(s) else 1.0
    key = s + lane_of * span                                            # sorted: lanes apart by > length
    q = np.linspace(0.0, 1.0, P)[None, :] * total[:, None]              # (L, P) query arc lengths
    j = np.searchsorted(key, (q + (np.arange(L) * span)[:, None]).ravel(), side="right").reshape(L, P) - 1
    lo = lane_first[:, None]
    j = np.clip(j, lo, lo + np.maximum(n_kept[:, None] - 2, 0))         # segment start within the lane
    seg = p[np.minimum(j + 1, len(p) - 1)] - p[j]
    ls = np.linalg.norm(seg, axis=-1)
    t = np.where(ls > 0, (q - s[j]) / np.where(ls > 0, ls, 1.0), 0.0)
    out = p[j] + seg * t[..., None]
    single = n_kept < 2
    if single.any():
        out[single] = p[lane_first[single]][:, None, :]
    return out


def project_on_polyline(p: np.ndarray, q: np.ndarray) -> float:
    """Arc length along polyline ``p`` (n, 2) of the closest point to ``q`` (2,)."""
    a, b = p[:-1], p[1:]
    ab = b - a
    L2 = np.maximum((ab ** 2).sum(1), 1e-12)
    t = np.clip(((q - a) * ab).sum(1) / L2, 0, 1)
    d = np.linalg.norm(a + ab * t[:, None] - q, axis=1)
    j = int(np.argmin(d))
    s = np.concatenate([[0.0], np.cumsum(np.sqrt(L2))])
    return float(s[j] + t[j] * np.sqrt(L2[j]))


def build_observation(clip: Clip, spec: FeatureSpec, offset: int = 0) -> dict[str, np.ndarray]:
    """Features of ``clip`` observed at step t0 + ``offset`` (0 or :data:`PREV_OFFSET`).

    Raises:
        ValueError: the history needed for ``offset`` is not valid in the clip.
    """
    ti = T0_INDEX + offset
    if ti - N_HIST < 0 or not clip.ego_valid[ti - N_HIST:ti + 1].all():
        raise ValueError(f"clip {clip.clip_id}: no valid history for offset {offset}")
    x0, y0, h0, _ = clip.ego_states[ti]
    origin = np.array([x0, y0])
    out: dict[str, np.ndarray] = {}
    hist = clip.ego_states[ti - N_HIST:ti + 1]
    hp = to_frame(hist[:, :2], origin, h0)
    hh = wrap_angle(hist[:, 2] - h0)
    out["ego"] = np.column_stack([hp / POS_SCALE, np.cos(hh), np.sin(hh), hist[:, 3] / SPEED_SCALE])

    A = spec.max_agents
    agents = np.zeros((A, AGENT_FEATS))
    amask = np.zeros(A, bool)
    if clip.num_agents:
        v = clip.agent_valid[:, ti]
        idx = np.flatnonzero(v)
        if len(idx):
            st = clip.agent_states[idx, ti]
            p = to_frame(st[:, :2], origin, h0)
            order = np.argsort(np.linalg.norm(p, axis=1))[:A]
            idx, st, p = idx[order], st[order], p[order]
            prev_ti = max(ti - 10, 0)
            pv = clip.agent_valid[idx, prev_ti]
            pp = np.where(pv[:, None], to_frame(np.nan_to_num(clip.agent_states[idx, prev_ti, :2]), origin, h0), p)
            ah = wrap_angle(st[:, 2] - h0)
            n = len(idx)
            agents[:n] = np.column_stack([
                p / POS_SCALE, np.cos(ah), np.sin(ah), st[:, 3] / SPEED_SCALE,
                clip.agent_size[idx, 0] / 5.0, clip.agent_size[idx, 1] / 2.0,
                (p - pp) / POS_SCALE, (clip.agent_types[idx] == AGENT_VEHICLE).astype(float)])
            amask[:n] = True
    out["agents"], out["agents_mask"] = agents, amask

    Lm, P = spec.max_lanes, spec.lane_points
    lanes = np.zeros((Lm, P, 2))
    lattr = np.zeros((Lm, LANE_ATTRS))
    lmask = np.zeros(Lm, bool)
    if clip.num_lanes:
        cl = to_frame(clip.lane_center, origin, h0)
        offs = clip.lane_offsets
        dmin = np.minimum.reduceat(np.linalg.norm(cl, axis=1), offs[:-1])
        order = np.argsort(dmin)[:Lm]
        order = order[dmin[order] < 100.0]
        n = len(order)
        if n:
            lanes[:n] = resample_lanes(cl, offs, order, P)
            tl = clip.lane_tl_state[order, ti]
            lattr[:n] = np.column_stack([
                clip.lane_on_route[order], clip.lane_in_intersection[order], clip.lane_is_extension[order],
                tl == TL_RED, (tl == TL_YELLOW) | (tl == TL_RED_YELLOW), tl == TL_GREEN])
            lmask[:n] = True
    out["lanes"], out["lanes_attr"], out["lanes_mask"] = lanes / POS_SCALE, lattr, lmask

    rc = clip.route_center
    s0 = project_on_polyline(rc, origin)
    rp = resample_polyline(rc, s0 + np.linspace(-10.0, 140.0, spec.route_points))
    out["route"] = to_frame(rp, origin, h0) / POS_SCALE

    fut_idx = ti + POSE_STEPS
    if fut_idx[-1] < clip.ego_states.shape[0]:
        fut = clip.ego_states[fut_idx]
        out["target"] = np.column_stack([to_frame(fut[:, :2], origin, h0), wrap_angle(fut[:, 2] - h0)])
    else:
        out["target"] = np.full((len(POSE_STEPS), 3), np.nan)
    return {k: v.astype(np.float32) if v.dtype != bool else v for k, v in out.items()}
