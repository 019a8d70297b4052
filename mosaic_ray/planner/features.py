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
from typing import Sequence

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
    return resample_lanes_many([(points, offsets, lanes)], P)


def resample_lanes_many(blocks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], P: int) -> np.ndarray:
    """:func:`resample_lanes` of several observations in one pass: ``blocks`` of ``(points,
    offsets, lanes)`` -> ``(sum L, P, 2)`` float64, block after block, each block's lanes equal
    bit for bit to its own :func:`resample_lanes` call (the cumulative sums run per block, on
    the rows of a padded array, and each block is searched with its own keys)."""
    Ls = np.array([len(b[2]) for b in blocks], dtype=np.int64)
    Lt = int(Ls.sum())
    if Lt == 0:
        return np.zeros((0, P, 2))
    pbase = np.concatenate([[0], np.cumsum([b[0].shape[0] for b in blocks])])
    points = np.concatenate([np.asarray(b[0], np.float64).reshape(-1, 2) for b in blocks])
    starts = np.concatenate([np.asarray(b[1], np.int64)[np.asarray(b[2], np.int64)] + pbase[i]
                             for i, b in enumerate(blocks)])
    ends = np.concatenate([np.asarray(b[1], np.int64)[np.asarray(b[2], np.int64) + 1] + pbase[i]
                           for i, b in enumerate(blocks)])
    blk = np.repeat(np.arange(len(blocks)), Ls)                          # block of each lane
    counts = ends - starts
    lane_of = np.repeat(np.arange(Lt), counts)                          # lane of each gathered point
    first = np.zeros(int(counts.sum()), bool)
    first[np.concatenate([[0], np.cumsum(counts)[:-1]])] = True
    idx = np.arange(len(lane_of)) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
    p = points[idx]
    step = np.zeros(len(p))
    step[1:] = np.linalg.norm(np.diff(p, axis=0), axis=1)
    step[first] = 0.0
    total = np.bincount(lane_of, weights=step, minlength=Lt)            # the lane's length (m)
    keep = first | (step > 1e-9)                                        # drop repeated points
    p, lane_of, first = p[keep], lane_of[keep], first[keep]
    step = np.zeros(len(p))
    step[1:] = np.linalg.norm(np.diff(p, axis=0), axis=1)
    step[first] = 0.0
    # one cumulative sum per block: the blocks' steps as the rows of a zero-padded array
    pb = blk[lane_of]                                                   # block of each kept point
    bstart = np.searchsorted(pb, np.arange(len(blocks) + 1))
    pos = np.arange(len(p)) - bstart[pb]
    pad = np.zeros((len(blocks), int(np.diff(bstart).max())))
    pad[pb, pos] = step
    cs = np.cumsum(pad, axis=1)[pb, pos]
    lane_first = np.flatnonzero(first)                                  # (Lt,) first kept point per lane
    s = cs - cs[lane_first][lane_of]                                    # arc length within the lane
    n_kept = np.diff(np.append(lane_first, len(p)))
    nonempty = bstart[1:] > bstart[:-1]
    smax = np.full(len(blocks), -1.0)
    smax[nonempty] = np.maximum.reduceat(s, bstart[:-1][nonempty])
    span = np.where(nonempty, smax + 1.0, 1.0)                          # lanes apart by > length
    lane_local = np.arange(Lt) - np.repeat(np.cumsum(Ls) - Ls, Ls)
    key = s + lane_local[lane_of] * span[pb]                            # sorted within a block
    q = np.linspace(0.0, 1.0, P)[None, :] * total[:, None]              # (Lt, P) query arc lengths
    qk = q + (lane_local * span[blk])[:, None]
    j = np.empty((Lt, P), dtype=np.int64)
    lb = np.concatenate([[0], np.cumsum(Ls)])
    for i in range(len(blocks)):
        if Ls[i]:
            a, b = bstart[i], bstart[i + 1]
            j[lb[i]:lb[i + 1]] = np.searchsorted(key[a:b], qk[lb[i]:lb[i + 1]].ravel(),
                                                  side="right").reshape(-1, P) - 1 + a
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


def project_on_polyline(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Arc length along polyline ``p`` (n, 2) of the closest point to ``q`` (2,) or to each of
    several points ``q`` (Q, 2) -> float64 () or (Q,) (m)."""
    q = np.asarray(q, dtype=np.float64)
    a, b = p[:-1], p[1:]
    ab = b - a
    L2 = np.maximum((ab ** 2).sum(1), 1e-12)
    qq = q.reshape(-1, 1, 2)
    t = np.clip(((qq - a) * ab).sum(-1) / L2, 0, 1)                      # (Q, n - 1)
    d = np.linalg.norm(a + ab * t[..., None] - qq, axis=-1)
    j = np.argmin(d, axis=-1)
    s = np.concatenate([[0.0], np.cumsum(np.sqrt(L2))])
    out = s[j] + t[np.arange(j.size), j] * np.sqrt(L2[j])
    return out.reshape(q.shape[:-1])


def build_observation(clip: Clip, spec: FeatureSpec, offset: int = 0) -> dict[str, np.ndarray]:
    """Features of ``clip`` observed at step t0 + ``offset`` (0 or :data:`PREV_OFFSET`): the
    one-observation case of :func:`build_observations` (arrays without the leading axis).

    Raises:
        ValueError: the history needed for ``offset`` is not valid in the clip.
    """
    return {k: v[0] for k, v in build_observations([clip], [T0_INDEX + offset], spec).items()}


def build_observations(clips: Sequence[Clip], steps: Sequence[int], spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Features of K observations: clip ``clips[k]`` observed at step ``steps[k]`` (t0 or
    t0 − 0.5 s; a clip may appear twice), in the ego frame at that step.

    Everything is computed for all observations at once (frames, history, targets, the
    agents' and lanes' features over the concatenated agents and lane points of all
    observations, the lanes' resampling in one :func:`resample_lanes_many` pass); only each
    observation's ranking of its agents and lanes (argsort) and the route projection (both
    observations of a clip in one call) run per observation or per clip. The arithmetic is
    each observation's own: the result equals one observation at a time, bit for bit
    (tests/test_batched_scoring.py against the frozen per-observation code).

    Args:
        clips: K clips. steps: K observation steps (index into the 61 steps).
        spec: the feature sizes.

    Returns:
        dict of ``(K, ...)`` arrays, shapes as in the module docstring (float32; masks bool).

    Raises:
        ValueError: an observation's 1.5 s history is not valid.
    """
    K = len(clips)
    tis = np.asarray(steps, dtype=np.int64).reshape(K)
    for c, ti in zip(clips, tis):
        if ti - N_HIST < 0 or not c.ego_valid[ti - N_HIST:ti + 1].all():
            raise ValueError(f"clip {c.clip_id}: no valid history for offset {int(ti) - T0_INDEX}")
    Lm, P, A = spec.max_lanes, spec.lane_points, spec.max_agents
    st0 = np.stack([c.ego_states[ti] for c, ti in zip(clips, tis)])        # (K, 4)
    origin, h0 = st0[:, :2], st0[:, 2]
    out: dict[str, np.ndarray] = {}

    # ---- ego history (K, 16, 5)
    hist = np.stack([c.ego_states[ti - N_HIST:ti + 1] for c, ti in zip(clips, tis)])
    hp = to_frame(hist[..., :2], origin[:, None], h0[:, None])
    hh = wrap_angle(hist[..., 2] - h0[:, None])
    out["ego"] = np.concatenate([hp / POS_SCALE, np.cos(hh)[..., None], np.sin(hh)[..., None],
                                 hist[..., 3:4] / SPEED_SCALE], axis=-1)

    # ---- agents (K, A, 10): the nearest A valid agents at the step, over all observations' agents
    agents = np.zeros((K, A, AGENT_FEATS))
    amask = np.zeros((K, A), bool)
    na = np.array([c.num_agents for c in clips], dtype=np.int64)
    if na.sum():
        has = [k for k in range(K) if na[k]]
        ob = np.repeat(np.arange(K), na)
        pti = np.maximum(tis - 10, 0)
        st = np.concatenate([clips[k].agent_states[:, tis[k]] for k in has])        # (sum A, 4)
        valid = np.concatenate([clips[k].agent_valid[:, tis[k]] for k in has])
        pst = np.concatenate([clips[k].agent_states[:, pti[k], :2] for k in has])
        pval = np.concatenate([clips[k].agent_valid[:, pti[k]] for k in has])
        size = np.concatenate([clips[k].agent_size for k in has])
        veh = np.concatenate([clips[k].agent_types for k in has]) == AGENT_VEHICLE
        rows = np.flatnonzero(valid)
        obv = ob[rows]
        p = to_frame(st[rows, :2], origin[obv], h0[obv])
        dist = np.linalg.norm(p, axis=1)
        bounds = np.searchsorted(obv, np.arange(K + 1))
        pick, slot = [], []
        for k in range(K):  # each observation's own ranking (argsort as one clip alone)
            lo, hi = bounds[k], bounds[k + 1]
            if hi > lo:
                o = np.argsort(dist[lo:hi])[:A]
                pick.append(lo + o)
                slot.append(np.arange(o.size))
        if pick:
            sel = np.concatenate(pick)
            sl = np.concatenate(slot)
            r, ok_ = rows[sel], obv[sel]
            ps = p[sel]
            pp = np.where(pval[r][:, None], to_frame(np.nan_to_num(pst[r]), origin[ok_], h0[ok_]), ps)
            ah = wrap_angle(st[r, 2] - h0[ok_])
            agents[ok_, sl] = np.column_stack([
                ps / POS_SCALE, np.cos(ah), np.sin(ah), st[r, 3] / SPEED_SCALE,
                size[r, 0] / 5.0, size[r, 1] / 2.0, (ps - pp) / POS_SCALE, veh[r].astype(float)])
            amask[ok_, sl] = True
    out["agents"], out["agents_mask"] = agents, amask

    # ---- lanes (K, Lm, P, 2): the nearest Lm lanes within 100 m, resampled per observation
    lanes = np.zeros((K, Lm, P, 2))
    lattr = np.zeros((K, Lm, LANE_ATTRS))
    lmask = np.zeros((K, Lm), bool)
    nl = np.array([c.num_lanes for c in clips], dtype=np.int64)
    has = [k for k in range(K) if nl[k]]
    if has:
        npts = np.array([clips[k].lane_center.shape[0] for k in has])
        ob = np.repeat(np.asarray(has), npts)
        cl = to_frame(np.concatenate([clips[k].lane_center for k in has]), origin[ob], h0[ob])
        pbase = np.concatenate([[0], np.cumsum(npts)])
        starts = np.concatenate([clips[k].lane_offsets[:-1] + pbase[i] for i, k in enumerate(has)])
        dmin_all = np.minimum.reduceat(np.linalg.norm(cl, axis=1), starts)
        lbase = np.concatenate([[0], np.cumsum(nl[has])])
        blocks, dest = [], []
        for i, k in enumerate(has):
            dmin = dmin_all[lbase[i]:lbase[i + 1]]
            order = np.argsort(dmin)[:Lm]
            order = order[dmin[order] < 100.0]
            if len(order):
                blocks.append((cl[pbase[i]:pbase[i + 1]], clips[k].lane_offsets, order))
                dest.append(k)
        if blocks:
            res = resample_lanes_many(blocks, P)
            r0 = 0
            for k, (_, _, order) in zip(dest, blocks):
                c, n = clips[k], len(order)
                lanes[k, :n] = res[r0:r0 + n]
                r0 += n
                tl = c.lane_tl_state[order, tis[k]]
                lattr[k, :n] = np.column_stack([
                    c.lane_on_route[order], c.lane_in_intersection[order], c.lane_is_extension[order],
                    tl == TL_RED, (tl == TL_YELLOW) | (tl == TL_RED_YELLOW), tl == TL_GREEN])
                lmask[k, :n] = True
    out["lanes"], out["lanes_attr"], out["lanes_mask"] = lanes / POS_SCALE, lattr, lmask

    # ---- route (K, R, 2): sampled from 10 m behind to 140 m ahead; one call per clip
    route = np.empty((K, spec.route_points, 2))
    along = np.linspace(-10.0, 140.0, spec.route_points)
    groups: dict[int, list[int]] = {}
    for k, c in enumerate(clips):
        groups.setdefault(id(c), []).append(k)
    for ks in groups.values():
        rc = clips[ks[0]].route_center
        s0 = project_on_polyline(rc, origin[ks])                          # (n,)
        rp = resample_polyline(rc, (s0[:, None] + along[None, :]).ravel()).reshape(len(ks), -1, 2)
        route[ks] = to_frame(rp, origin[ks][:, None], h0[ks][:, None]) / POS_SCALE
    out["route"] = route

    # ---- target (K, 8, 3): logged poses at +0.5 .. +4.0 s (NaN past the clip's end)
    target = np.full((K, len(POSE_STEPS), 3), np.nan)
    fut_idx = tis[:, None] + POSE_STEPS[None, :]
    inside = [k for k in range(K) if fut_idx[k, -1] < clips[k].ego_states.shape[0]]
    if inside:
        fut = np.stack([clips[k].ego_states[fut_idx[k]] for k in inside])        # (n, 8, 4)
        target[inside] = np.concatenate([to_frame(fut[..., :2], origin[inside][:, None], h0[inside][:, None]),
                                         wrap_angle(fut[..., 2] - h0[inside][:, None])[..., None]], axis=-1)
    out["target"] = target
    return {k: v.astype(np.float32) if v.dtype != bool else v for k, v in out.items()}


def stack_observations(obs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-clip feature dicts into batch arrays (B, ...)."""
    return {k: np.stack([o[k] for o in obs]) for k in obs[0]}


def featurize_clips(clips: list[Clip], spec: FeatureSpec, with_prev: bool = True) -> dict[str, np.ndarray]:
    """Batch features of ``clips`` at t0, and at t0 − 0.5 s as ``prev_*`` keys (where the clip
    has no previous frame, ``prev_valid`` is False and the ``prev_*`` arrays repeat t0's).
    Both observations of every clip go through one :func:`build_observations` call."""
    B = len(clips)
    prev_ok = np.array([bool(with_prev and c.has_prev_frame) for c in clips], dtype=bool)
    pk = np.flatnonzero(prev_ok)
    obs = build_observations(list(clips) + [clips[k] for k in pk],
                             [T0_INDEX] * B + [T0_INDEX + PREV_OFFSET] * pk.size, spec)
    out = {k: v[:B] for k, v in obs.items()}
    out["clip_id"] = np.array([c.clip_id for c in clips], dtype=object)
    out["frame_id"] = np.array([c.frame_id for c in clips], dtype=object)
    if with_prev:
        for k in INPUT_KEYS:
            v = out[k].copy()
            v[pk] = obs[k][B:]
            out[f"prev_{k}"] = v
        out["prev_valid"] = prev_ok
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
