"""Planner inputs in the ego frame, built from a :class:`~mosaic_ray.data.clip.Clip`.

The frame is the ego box centre and heading at the observation step (t0, or t0 − 0.5 s for
the EC previous frame): x forward, y left, metres. Every feature array has a fixed shape
so batches stack; masks mark padding. Positions are divided by ``POS_SCALE`` and speeds by
``SPEED_SCALE`` for the network; targets stay in metres/radians.

Feature arrays of one observation (float32 unless noted):

* ``ego`` (16, 5): history x, y, cos h, sin h, speed (t − 1.5 s .. t).
* ``agents`` (A, 10) and ``agents_mask`` (A,) bool: nearest ``A`` agents at t: x, y, cos h,
  sin h, speed, length, width, dx, dy over the last 1 s, is-vehicle.
* ``lanes`` (Lm, P, 2) and ``lanes_attr`` (Lm, 6), ``lanes_mask`` (Lm,) bool: nearest lanes'
  centre-lines resampled to P points; attributes on-route, intersection, extension, red,
  yellow, green light at t.
* ``route`` (R, 2): the route centre-line sampled from 10 m behind to 140 m ahead.
* ``target`` (8, 3): logged future poses x, y, heading at +0.5 .. +4.0 s (imitation target).

Source: ego-frame encodings as in Hydra-MDP / TransFuser's ego-status and map inputs, made
vector-only (no cameras or LiDAR in the recordings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mosaic_ray.data.clip import (
    AGENT_VEHICLE, N_HIST, POSE_STEPS, T0_INDEX, TL_GREEN, TL_RED, TL_RED_YELLOW, TL_YELLOW, Clip,
)

POS_SCALE = 20.0
SPEED_SCALE = 10.0
AGENT_FEATS = 10
LANE_ATTRS = 6
PREV_OFFSET = -5  #: observation step of the EC previous frame, relative to t0


@dataclass(frozen=True)
class FeatureSpec:
    """Fixed feature sizes (from :class:`mosaic_ray.config.PlannerConfig`)."""

    max_agents: int = 24
    max_lanes: int = 40
    lane_points: int = 10
    route_points: int = 16

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "ego": (N_HIST + 1, 5), "agents": (self.max_agents, AGENT_FEATS),
            "agents_mask": (self.max_agents,), "lanes": (self.max_lanes, self.lane_points, 2),
            "lanes_attr": (self.max_lanes, LANE_ATTRS), "lanes_mask": (self.max_lanes,),
            "route": (self.route_points, 2), "target": (len(POSE_STEPS), 3),
        }


INPUT_KEYS = ("ego", "agents", "agents_mask", "lanes", "lanes_attr", "lanes_mask", "route")


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


def stack_observations(obs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-clip feature dicts into batch arrays (B, ...)."""
    return {k: np.stack([o[k] for o in obs]) for k in obs[0]}


def featurize_clips(clips: list[Clip], spec: FeatureSpec, with_prev: bool = True) -> dict[str, np.ndarray]:
    """Batch features of ``clips`` at t0, and at t0 − 0.5 s as ``prev_*`` keys (where the clip
    has no previous frame, ``prev_valid`` is False and the ``prev_*`` arrays repeat t0's)."""
    cur = [build_observation(c, spec, 0) for c in clips]
    out = stack_observations(cur)
    out["clip_id"] = np.array([c.clip_id for c in clips], dtype=object)
    if with_prev:
        prev, valid = [], []
        for c, o in zip(clips, cur):
            ok = bool(c.has_prev_frame)
            prev.append(build_observation(c, spec, PREV_OFFSET) if ok else o)
            valid.append(ok)
        for k, v in stack_observations(prev).items():
            if k in INPUT_KEYS:
                out[f"prev_{k}"] = v
        out["prev_valid"] = np.array(valid, bool)
    return out


def mirror_batch(batch: dict, xp=np) -> dict:
    """Left-right mirror of a feature batch (y -> -y, heading -> -heading): an augmentation.

    Works on numpy arrays or torch tensors (pass ``xp=torch``)."""
    out = dict(batch)
    def flip_y(a, col):
        a = a.clone() if hasattr(a, "clone") else a.copy()
        a[..., col] = -a[..., col]
        return a
    out["ego"] = flip_y(flip_y(batch["ego"], 1), 3)
    ag = flip_y(flip_y(batch["agents"], 1), 3)
    out["agents"] = flip_y(ag, 8)
    out["lanes"] = flip_y(batch["lanes"], 1)
    out["route"] = flip_y(batch["route"], 1)
    if "target" in batch:
        out["target"] = flip_y(flip_y(batch["target"], 1), 2)
    return out
