"""A synthetic scene pool from real clips: perturbed ego states with pseudo-expert futures.

Source: SimScale (OpenDriveLab, 2026), as AutoScale uses it for its synthetic pool
(``../shared/docs/AUTOSCALE.md``, "Synthetic scenes"). SimScale perturbs the ego state of a
real scene and drives a **pseudo-expert** future from the perturbed state, of two kinds:
*recovery-based* (return to the logged trajectory) and *planner-based* (a rule planner drives
from the perturbed state along the route). SimScale re-renders camera images; our planner reads
vectorised scenes, so a synthetic scene here is the real clip (map, route, lights, agents) with
new ego states only. Other agents replay their logged motion (non-reactive, as in NAVSIM).
SimScale's generator is not public: everything below is written from that description, and the
constants are fields of :class:`SynthesizeConfig`. **Reconstructed / chosen here** (not from the
papers): the perturbation ranges, the quintic Frenet recovery and its limits, the history
re-timing, the feasibility limits and the EPDMS threshold; their defaults were set on the NGSIM
recordings (about 45-60 % of the attempts kept, >= 10 scenes per real clip on average).

Units everywhere: metres, seconds, m/s, rad; states are global ``[x, y, heading, speed]`` of
the ego box centre at the 0.1 s steps of :mod:`mosaic_ray.data.clip` (``T_ALL = 61`` steps,
t0 at ``T0_INDEX = 20``).

One attempt (:func:`synthesize_clip`, attempt ``i`` of a real clip)
-------------------------------------------------------------------
1. **Draw** ``dy`` (m, left of the logged heading positive), ``dpsi`` (rad, counter-clockwise)
   and ``dv`` (m/s) uniformly from the configured ranges with a generator seeded by
   ``(seed, sha1(source clip id), i)`` — the draw of attempt ``i`` does not depend on any
   other attempt. ``dv`` is raised to ``-v_log(t0)`` where it would make the speed negative;
   the recorded value is the one used. The expert kind of attempt ``i`` follows the configured
   mix by a deterministic largest-deficit schedule (0.5 / 0.5: recovery, planner, recovery, ...).
2. **Perturb** (:func:`perturb`): the t0 state becomes exactly
   ``(x_log + dy·n_log, heading_log + dpsi, v_log + dv)`` (``n_log`` the left normal of the
   logged heading). The logged history (pre-history included where valid) is moved by the
   rigid motion that takes the logged t0 pose onto the perturbed one, and re-timed along that
   moved path with the speeds ``max(v_log + dv, 0)``: positions, headings and speeds stay
   mutually consistent and ``dv = 0`` leaves the (moved) logged history unchanged.
3. **Pseudo-expert future** (41 states from t0):

   * ``recovery`` (:func:`recovery_expert`): a quintic lateral profile ``d(σ)`` in the Frenet
     frame of the logged path (the logged ego positions, Savitzky-Golay smoothed in arc length,
     :func:`logged_path`) over a return distance ``D``, from the perturbed offset and relative
     heading (``d(0) = d0``, ``d'(0) = tan(Δψ)(1 − κ d0)``, ``d''(0) = 0``) to
     ``d = d' = d'' = 0``, then following the path. Its speed blends from ``v_log + dv`` back to
     the (smoothed) logged speed with a quintic smoothstep over ``speed_blend_s`` (rate-limited
     where the log's own acceleration or jerk would break the feasibility limits). ``D`` is the
     shortest of the distances travelled after ``recovery_min_s .. recovery_horizon_s`` (0.25 s
     grid) whose lateral acceleration and jerk relative to the path stay within
     ``recovery_max_lat_accel`` / ``recovery_max_lat_jerk``, and never shorter than the distance
     that keeps the profile's curvature ``|d''|`` within ``recovery_max_curvature``. An ego that
     barely moves (stopped at a light) cannot return within the horizon; it keeps its offset
     until it drives (``return_s`` records when it is back on the path, NaN: not within 4 s).
   * ``planner`` (:func:`planner_expert`): the project's reference IDM planner
     (:mod:`mosaic_ray.scoring.reference`: IDM along the route centre-line at five speed
     fractions, leaders and red lights, lateral offset blended out over 2 s) run from the
     perturbed state, tracked by the scorer's LQR / kinematic bicycle model, and the proposal
     PDM-Closed's own rule picks (the EP-normalising reference of
     :func:`~mosaic_ray.scoring.epdms.score_trajectories` on the perturbed scene).

4. **Checks**, each failure a quarantine record with its reason:

   * ``infeasible: history_overlap`` — the perturbed history / t0 box overlaps an agent that
     the logged ego box did not touch (a physically impossible scene; the scorer would
     otherwise ignore that agent as "already in contact");
   * ``infeasible: lateral_accel`` / ``infeasible: lateral_jerk`` — no recovery distance meets
     the recovery limits;
   * ``infeasible: <speed | lon_accel | lon_jerk | yaw_rate | yaw_accel | lat_accel |
     curvature>`` — the 41 future states break a limit of :class:`SynthesizeConfig`
     (:func:`feasibility_violation`, finite differences at 0.1 s);
   * ``invalid_clip: ...`` — the scene fails :meth:`Clip.validate`;
   * ``below_threshold: epdms=0.41`` — the pseudo-expert's EPDMS (:func:`expert_epdms`) is
     below ``min_epdms``;
   * ``error: ...`` — anything unexpected (logged as a warning).

5. **Score** (:func:`expert_epdms`): the pseudo-expert is scored the way a logged human future
   is — its 8 poses (0.5 .. 4.0 s) tracked by the scorer from the perturbed t0 state — as a
   candidate of :func:`~mosaic_ray.scoring.epdms.score_trajectories` on the synthetic scene,
   so that its EP is normalised by the reference proposals; without the human filter (the
   "human" of a synthetic scene is the pseudo-expert itself); with EC when the clip has a
   previous frame (the expert's own poses seen from t0 − 0.5 s, as for the human). The
   stored scene reproduces the recorded value: ``expert_epdms(prepare_scene(scene))``.

A kept scene is the source clip with the new ``ego_states``, the id
``<source clip id>-p<i:03d>`` (:func:`synthetic_clip_id`), tags ``synthetic`` and
``expert_<kind>``, and its provenance in ``Clip.extra`` (:data:`PROVENANCE_FIELDS`: source
clip id, attempt index, dy, dpsi, dv, expert kind, seed, EPDMS, recovery return time);
:func:`scenes_to_table` writes the clip schema plus those columns.

Attempts per clip: they run in index order until ``per_clip`` scenes are kept or
``max_attempts_per_clip`` attempts were made (None: exactly ``per_clip`` attempts), so for
every source clip ``attempts = kept + quarantined``. Same config and seed -> identical scenes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from mosaic_ray.data.clip import (DT, N_PRE, POSE_STEPS, T0_INDEX, T_ALL, Clip, ClipValidationError,
                                  clip_from_row, clip_schema, clip_to_row)
from mosaic_ray.autoscale.synth_config import EXPERT_KINDS, SynthesizeConfig
from mosaic_ray.scoring.config import ScorerConfig
from mosaic_ray.scoring.epdms import Scene, prepare_scene, score_trajectories
from mosaic_ray.scoring.geometry import boxes_intersect, project_to_polyline, wrap_angle

__all__ = [
    "EXPERT_KINDS", "PROVENANCE_FIELDS", "SynthesizeConfig", "InfeasibleExpert", "LoggedPath", "RecoveryPlan",
    "perturb", "logged_path", "recovery_expert", "planner_expert", "feasibility_violation", "expert_poses",
    "expert_epdms", "synthesize_clip", "synthetic_clip_id", "expert_schedule", "draw_perturbation",
    "scenes_schema", "scenes_to_table", "scenes_from_table", "QUARANTINE_SCHEMA",
]

log = logging.getLogger(__name__)

N_FUTURE = T_ALL - T0_INDEX  #: 41 future states, t0 included
_EXTEND_M = 300.0  # straight extension of the logged path at both ends (m)
PATH_ORDER = 3

#: provenance columns of a synthetic scene (``Clip.extra`` keys and Parquet columns)
PROVENANCE_FIELDS: dict[str, pa.DataType] = {
    "source_clip_id": pa.string(),
    "synth_index": pa.int32(),
    "perturb_dy": pa.float64(),
    "perturb_dpsi": pa.float64(),
    "perturb_dv": pa.float64(),
    "expert_kind": pa.string(),
    "synth_seed": pa.int64(),
    "synth_epdms": pa.float64(),
    "recovery_return_s": pa.float64(),
}

#: one record per quarantined attempt
QUARANTINE_SCHEMA = pa.schema([
    ("source_clip_id", pa.string()), ("clip_id", pa.string()), ("synth_index", pa.int32()),
    ("expert_kind", pa.string()), ("perturb_dy", pa.float64()), ("perturb_dpsi", pa.float64()),
    ("perturb_dv", pa.float64()), ("synth_seed", pa.int64()), ("reason", pa.string()),
    ("category", pa.string()), ("epdms", pa.float64()), ("detail", pa.string()),
])


class InfeasibleExpert(ValueError):
    """A pseudo-expert cannot be built within the limits; ``reason`` is the quarantine reason
    (``infeasible: lateral_accel``, ...)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}{f' ({detail})' if detail else ''}")
        self.reason = reason
        self.detail = detail


# ================================================================================ perturbation
def _pose_rotation(dpsi: float) -> np.ndarray:
    c, s = math.cos(dpsi), math.sin(dpsi)
    return np.array([[c, -s], [s, c]])


def perturb(clip: Clip, dy: float, dpsi: float, dv: float) -> np.ndarray:
    """The ego states of ``clip`` with the t0 state perturbed and the history shifted into it.

    The t0 state (index ``T0_INDEX``) becomes exactly ``x_log + dy·n``, ``heading_log + dpsi``,
    ``v_log + dv`` with ``n = (−sin h_log, cos h_log)`` the left normal of the logged heading.
    Every valid step (pre-history, history, future) is moved by the rigid motion that maps the
    logged t0 pose onto the perturbed one (rotation by ``dpsi`` about the logged t0 position,
    then the shift ``dy·n``). The history steps ``k < T0_INDEX`` are then re-timed along the
    moved path: step ``k`` lies ``c_k + ∫_{t_k}^{t0} (v' − v_log) dt`` behind t0 in arc length
    (``c_k`` its logged arc distance, ``v' = max(v_log + dv, 0)``; beyond the first logged
    point the path continues straight back), with heading from the moved path and speed
    ``v'``. The future steps keep the moved logged future (a placeholder that the
    pseudo-experts replace), speeds ``max(v_log + dv, 0)``.

    Args:
        clip: a valid :class:`~mosaic_ray.data.clip.Clip`.
        dy: lateral offset, m (left of the logged heading positive).
        dpsi: heading offset, rad (counter-clockwise positive).
        dv: speed offset, m/s.

    Returns:
        ``(T_ALL, 4)`` float64 global ``[x, y, heading, speed]``; invalid pre-history steps
        (``clip.ego_valid`` False) stay 0 as in the clip.

    Raises:
        ValueError: a non-finite perturbation, or ``v_log(t0) + dv < 0``.
    """
    dy, dpsi, dv = float(dy), float(dpsi), float(dv)
    if not all(map(math.isfinite, (dy, dpsi, dv))):
        raise ValueError(f"perturbation must be finite, got dy={dy}, dpsi={dpsi}, dv={dv}")
    es = np.asarray(clip.ego_states, dtype=np.float64)
    valid = np.asarray(clip.ego_valid, dtype=bool)
    x0, y0, h0, v0 = es[T0_INDEX]
    if v0 + dv < 0.0:
        raise ValueError(f"speed at t0 would be negative: v_log {v0:.3f} + dv {dv:.3f} m/s")
    rot = _pose_rotation(dpsi)
    p0 = np.array([x0, y0])
    shift = p0 + dy * np.array([-math.sin(h0), math.cos(h0)])
    out = es.copy()
    out[valid, :2] = (es[valid, :2] - p0) @ rot.T + shift
    out[valid, 2] = wrap_angle(es[valid, 2] + dpsi)
    out[valid, 3] = np.maximum(es[valid, 3] + dv, 0.0)
    out[T0_INDEX] = [shift[0], shift[1], wrap_angle(h0 + dpsi), v0 + dv]

    # re-time the history along the moved path (backwards from t0)
    ks = np.nonzero(valid[:T0_INDEX + 1])[0]                 # valid steps up to t0, ascending
    moved = out[ks]                                          # positions / headings before re-timing
    back = moved[::-1]                                       # t0 first
    seg = np.hypot(*np.diff(back[:, :2], axis=0).T)
    c = np.concatenate([[0.0], np.cumsum(seg)])              # logged arc distance behind t0
    v_log = es[ks, 3][::-1]
    v_new = np.maximum(v_log + dv, 0.0)
    dv_int = np.concatenate([[0.0], np.cumsum(0.5 * ((v_new - v_log)[1:] + (v_new - v_log)[:-1]) * DT)])
    a = np.maximum.accumulate(np.maximum(c + dv_int, 0.0))   # arc distance behind t0, non-decreasing
    if abs(dv) > 0.0:
        h_back = np.unwrap(back[:, 2])
        inside = a <= c[-1]
        pos = np.empty((len(a), 2))
        head = np.empty(len(a))
        if c[-1] > 0.0:
            cu, idx = np.unique(c, return_index=True)        # np.interp needs increasing xp
            pos[:, 0] = np.interp(np.minimum(a, c[-1]), cu, back[idx, 0])
            pos[:, 1] = np.interp(np.minimum(a, c[-1]), cu, back[idx, 1])
            head[:] = np.interp(np.minimum(a, c[-1]), cu, h_back[idx])
        else:
            pos[:] = back[0, :2]
            head[:] = h_back[0]
        over = ~inside                                       # straight on behind the first point
        if over.any():
            hl = h_back[-1]
            pos[over] = back[-1, :2] - (a[over] - c[-1])[:, None] * np.array([math.cos(hl), math.sin(hl)])
            head[over] = hl
        rows = ks[::-1]
        out[rows[1:], 0] = pos[1:, 0]
        out[rows[1:], 1] = pos[1:, 1]
        out[rows[1:], 2] = wrap_angle(head[1:])
        out[rows[1:], 3] = v_new[1:]
    out[~valid] = 0.0
    return out


def draw_perturbation(cfg: SynthesizeConfig, source_id: str, index: int, v0: float) -> tuple[float, float, float]:
    """The ``(dy, dpsi, dv)`` of attempt ``index`` of clip ``source_id``: uniform draws from the
    configured ranges with ``numpy.random.default_rng(SeedSequence([seed, sha1(id), index]))``;
    ``dv`` raised to ``-v0`` (``v0`` the logged speed at t0, m/s) so the speed stays >= 0."""
    h = int.from_bytes(hashlib.sha1(source_id.encode()).digest()[:8], "little")
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), h, int(index)]))
    u = rng.random(3)
    (a0, a1), (b0, b1), (c0, c1) = cfg.dy_range, cfg.dpsi_range, cfg.dv_range
    dy, dpsi, dv = a0 + (a1 - a0) * u[0], b0 + (b1 - b0) * u[1], c0 + (c1 - c0) * u[2]
    return float(dy), float(dpsi), float(max(dv, -float(v0)))


def expert_schedule(cfg: SynthesizeConfig, n: int) -> list[str]:
    """The expert kind of attempts ``0 .. n-1``: at each attempt the kind furthest below its
    share of the attempts so far (largest deficit ``share·(i+1) − count``, ties in
    :data:`EXPERT_KINDS` order), so every prefix follows the mix as closely as integers allow."""
    kinds = [k for k in EXPERT_KINDS if cfg.experts.get(k, 0.0) > 0]
    total = sum(cfg.experts[k] for k in kinds)
    share = {k: cfg.experts[k] / total for k in kinds}
    count = dict.fromkeys(kinds, 0)
    out = []
    for i in range(n):
        k = max(kinds, key=lambda q: (share[q] * (i + 1) - count[q], -kinds.index(q)))
        count[k] += 1
        out.append(k)
    return out


def synthetic_clip_id(source_id: str, index: int) -> str:
    """``<source clip id>-p<index:03d>``: the id of attempt ``index`` of a real clip."""
    return f"{source_id}-p{int(index):03d}"


# ================================================================================ logged path
@dataclasses.dataclass(frozen=True)
class LoggedPath:
    """The logged ego path as a smooth polyline with Frenet quantities (arc length ``s``).

    Attributes (``K`` vertices, about 0.5 m apart, straight extensions of 300 m at both ends):
        xy: ``(K, 2)`` float64 vertices (m); s: ``(K,)`` arc length (m); heading: ``(K,)``
        unwrapped tangent heading (rad); kappa: ``(K,)`` curvature (1/m).
        raw_xy: ``(n, 2)`` the logged positions it was fitted to (history and future, m).
    """

    xy: np.ndarray
    s: np.ndarray
    heading: np.ndarray
    kappa: np.ndarray
    raw_xy: np.ndarray

    def at(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(xy (..., 2), heading (...), kappa (...))`` at arc lengths ``s`` (m)."""
        x = np.interp(s, self.s, self.xy[:, 0])
        y = np.interp(s, self.s, self.xy[:, 1])
        return np.stack([x, y], axis=-1), np.interp(s, self.s, self.heading), np.interp(s, self.s, self.kappa)


def _odd(n: float) -> int:
    k = int(round(n))
    return k if k % 2 == 1 else k + 1


def logged_path(clip: Clip, cfg: SynthesizeConfig | None = None, ds: float = 0.5) -> LoggedPath:
    """The logged ego path of ``clip``: valid history and future positions with jitter below
    0.25 m dropped, resampled every ``ds`` m of arc length and smoothed (Savitzky-Golay, order
    3, ``mode="interp"``, window ``path_smoothing_s`` of travel at the mean logged speed, clipped to
    ``[path_smoothing_min_m, path_smoothing_max_m]``), heading from the tangent, curvature
    its arc derivative; extended straight by 300 m at both ends. A path shorter than 2 m (a
    stopped ego) is the straight line through the t0 position along the logged t0 heading.

    Raises:
        ValueError: the clip has no valid ego steps from ``N_PRE`` on.
    """
    cfg = cfg or SynthesizeConfig()
    es = np.asarray(clip.ego_states, dtype=np.float64)
    valid = np.asarray(clip.ego_valid, dtype=bool).copy()
    valid[:N_PRE] = False
    raw = es[valid, :2]
    if raw.shape[0] < 1:
        raise ValueError("logged_path: no valid ego steps")
    keep = [0]
    for i in range(1, raw.shape[0]):
        if np.hypot(*(raw[i] - raw[keep[-1]])) >= 0.25:
            keep.append(i)
    pts = raw[keep]
    seg = np.hypot(*np.diff(pts, axis=0).T) if len(pts) > 1 else np.zeros(0)
    length = float(seg.sum())
    if length < 2.0:
        h0 = float(es[T0_INDEX, 2])
        u = np.array([math.cos(h0), math.sin(h0)])
        p = es[T0_INDEX, :2]
        xy = np.stack([p - _EXTEND_M * u, p, p + _EXTEND_M * u])
        s = np.array([0.0, _EXTEND_M, 2 * _EXTEND_M])
        return LoggedPath(xy, s, np.full(3, h0), np.zeros(3), raw)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(math.ceil(length / ds)) + 1)
    su = np.linspace(0.0, length, n)
    xu = np.interp(su, cum, pts[:, 0])
    yu = np.interp(su, cum, pts[:, 1])
    step = su[1] - su[0]
    window_m = float(np.clip(cfg.path_smoothing_s * length / (DT * (raw.shape[0] - 1)),
                             cfg.path_smoothing_min_m, cfg.path_smoothing_max_m))
    win = min(_odd(window_m / step), n if n % 2 == 1 else n - 1)
    if win > 3:
        from scipy.signal import savgol_filter  # 0.7 s of import: not at module level (config imports this module)

        xu = savgol_filter(xu, win, PATH_ORDER, mode="interp")
        yu = savgol_filter(yu, win, PATH_ORDER, mode="interp")
    dx, dy = np.gradient(xu, step), np.gradient(yu, step)
    head = np.unwrap(np.arctan2(dy, dx))
    kap = np.gradient(head, step)
    u0 = np.array([math.cos(head[0]), math.sin(head[0])])
    u1 = np.array([math.cos(head[-1]), math.sin(head[-1])])
    xy = np.concatenate([[[xu[0], yu[0]] - _EXTEND_M * u0], np.stack([xu, yu], -1), [[xu[-1], yu[-1]] + _EXTEND_M * u1]])
    s = np.concatenate([[0.0], su + _EXTEND_M, [length + 2 * _EXTEND_M]])
    return LoggedPath(xy, s, np.concatenate([[head[0]], head, [head[-1]]]),
                      np.concatenate([[0.0], kap, [0.0]]), raw)


# ================================================================================ recovery
def _quintic(d0: float, p0: float, D: float, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``d, d', d''`` (w.r.t. arc length) of the quintic with ``d(0) = d0``, ``d'(0) = p0``,
    ``d''(0) = 0`` and ``d = d' = d'' = 0`` at ``u = σ / D = 1``; 0 for ``u >= 1``."""
    u = np.clip(u, 0.0, 1.0)
    u2, u3, u4, u5 = u * u, u ** 3, u ** 4, u ** 5
    h0 = 1 - 10 * u3 + 15 * u4 - 6 * u5
    h1 = u - 6 * u3 + 8 * u4 - 3 * u5
    dh0 = -30 * u2 + 60 * u3 - 30 * u4
    dh1 = 1 - 18 * u2 + 32 * u3 - 15 * u4
    ddh0 = -60 * u + 180 * u2 - 120 * u3
    ddh1 = -36 * u + 96 * u2 - 60 * u3
    return d0 * h0 + p0 * D * h1, d0 * dh0 / D + p0 * dh1, d0 * ddh0 / D ** 2 + p0 * ddh1 / D


def _smoothstep5(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u ** 3 * (10 - 15 * u + 6 * u * u)


def _cumtrapz(v: np.ndarray, dt: float) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * dt)])


@dataclasses.dataclass(frozen=True)
class RecoveryPlan:
    """A recovery pseudo-expert.

    Attributes:
        states: ``(41, 4)`` float64 global ``[x, y, heading, speed]`` from t0 (m, rad, m/s).
        return_distance_m: ``D``, arc length over which the lateral offset goes to 0.
        return_s: time (s after t0) at which the ego is back on the path; NaN if not within 4 s.
        lateral: ``(41,)`` the Frenet offset ``d`` from the logged path (m).
    """

    states: np.ndarray
    return_distance_m: float
    return_s: float
    lateral: np.ndarray


def _smoothed_log_speed(clip: Clip, cfg: SynthesizeConfig) -> np.ndarray:
    """(41,) the logged speed t0 .. t0+4 s smoothed (Savitzky-Golay, order 2, window
    ``speed_smoothing_s``, over history and future), clipped at 0."""
    v = np.asarray(clip.ego_states[N_PRE:, 3], dtype=np.float64)
    win = min(_odd(cfg.speed_smoothing_s / DT), len(v) if len(v) % 2 == 1 else len(v) - 1)
    from scipy.signal import savgol_filter

    vs = savgol_filter(v, win, 2, mode="interp") if win > 2 else v
    return np.maximum(vs[T0_INDEX - N_PRE:], 0.0)


def _limit_speed_profile(v: np.ndarray, cfg: SynthesizeConfig) -> np.ndarray:
    """``v`` (41,) m/s unchanged when its accelerations lie within 0.9 x ``[-max_decel,
    max_accel]`` and its jerk within 0.5 x ``max_lon_jerk``; otherwise ``v`` followed by a
    rate limiter with those acceleration and jerk bounds (the logged speeds of NGSIM carry
    acceleration spikes of 10+ m/s^2 that smoothing alone does not remove)."""
    a_lo, a_hi, jmax = -0.9 * cfg.max_decel, 0.9 * cfg.max_accel, 0.5 * cfg.max_lon_jerk
    a = np.diff(v) / DT
    if a.min() >= a_lo and a.max() <= a_hi and np.abs(np.diff(a)).max(initial=0.0) / DT <= jmax:
        return v
    out = v.copy()
    a_prev = float(np.clip(a[0], a_lo, a_hi))
    for k in range(1, len(v)):
        a_k = float(np.clip((v[k] - out[k - 1]) / DT, a_prev - jmax * DT, a_prev + jmax * DT))
        a_k = min(max(a_k, a_lo), a_hi)
        out[k] = max(out[k - 1] + a_k * DT, 0.0)
        a_prev = (out[k] - out[k - 1]) / DT
    return out


def recovery_expert(clip: Clip, start: np.ndarray, cfg: SynthesizeConfig | None = None,
                    path: LoggedPath | None = None) -> RecoveryPlan:
    """A smooth return from the perturbed state ``start`` to the logged path, then following it.

    See the module docstring (quintic lateral profile ``d(σ)`` over the return distance ``D``
    in the Frenet frame of :func:`logged_path`; speed ``v(t) = max(v_s(t) + (v0 − v_s(0))·
    (1 − q(t / speed_blend_s)), 0)`` with ``v_s`` the smoothed logged speed and ``q`` the
    quintic smoothstep, rate-limited where it breaks the acceleration / jerk limits
    (:func:`_limit_speed_profile`); arc progress ``ṡ = v / sqrt((1 − κd)² + d'²)``). The 41 states are
    ``p(s) + d·n(s)``, heading ``θ(s) + atan2(d', 1 − κd)``, speed ``v``; state 0 is
    ``start`` exactly.

    Args:
        clip: the real clip (its logged ego path and speed).
        start: ``(4,)`` the perturbed t0 state ``[x, y, heading, speed]`` (global; m, rad, m/s).
        cfg: limits and horizons (None: defaults).
        path: the clip's :func:`logged_path` (computed when None).

    Returns:
        :class:`RecoveryPlan`.

    Raises:
        InfeasibleExpert: ``infeasible: lateral_accel`` / ``infeasible: lateral_jerk`` when no
            return distance keeps the profile within ``recovery_max_lat_accel`` /
            ``recovery_max_lat_jerk``; ``infeasible: curvature`` when ``1 − κd`` would vanish.
    """
    cfg = cfg or SynthesizeConfig()
    path = path or logged_path(clip, cfg)
    start = np.asarray(start, dtype=np.float64)
    arc, lat, _ = project_to_polyline(start[None, :2], path.xy)
    s0, d0 = float(arc[0]), float(lat[0])
    _, th0, k0 = path.at(np.array([s0]))
    rel = float(wrap_angle(start[2] - th0[0]))
    if abs(rel) >= 0.5 * math.pi - 1e-3 or 1.0 - k0[0] * d0 <= 0.2:
        raise InfeasibleExpert("infeasible: curvature", "start pose across the logged path")
    p0 = math.tan(rel) * (1.0 - float(k0[0]) * d0)
    t = np.arange(N_FUTURE) * DT
    vs = _smoothed_log_speed(clip, cfg)
    v = np.maximum(vs + (float(start[3]) - vs[0]) * (1.0 - _smoothstep5(t / cfg.speed_blend_s)), 0.0)
    v[0] = float(start[3])
    v = _limit_speed_profile(v, cfg)
    sigma0 = _cumtrapz(v, DT)                                # distance travelled (first guess)

    # shortest D keeping |d''| within the curvature limit (d'' scales as d0/D^2 + p0/D)
    uu = np.linspace(0.0, 1.0, 41)
    _, _, dd1 = _quintic(d0, 0.0, 1.0, uu)
    _, _, dd2 = _quintic(0.0, p0, 1.0, uu)
    Ds = np.geomspace(0.5, 500.0, 200)
    curv = np.abs(dd1[None, :] / Ds[:, None] ** 2 + dd2[None, :] / Ds[:, None]).max(axis=1)
    ok = curv <= cfg.recovery_max_curvature
    d_geo = float(Ds[np.argmax(ok)]) if ok.any() else float(Ds[-1])

    times = np.arange(cfg.recovery_min_s, cfg.recovery_horizon_s + 1e-9, 0.25)
    cands = sorted({max(float(np.interp(T, t, sigma0)), d_geo) for T in times})
    reason, detail = "infeasible: lateral_accel", ""
    chosen = None
    for D in cands:
        d, _, _ = _quintic(d0, p0, D, sigma0 / D)
        acc = np.diff(d, 2) / DT ** 2
        jerk = np.diff(d, 3) / DT ** 3
        a_max, j_max = float(np.abs(acc).max()), float(np.abs(jerk).max())
        if a_max > cfg.recovery_max_lat_accel:
            reason, detail = "infeasible: lateral_accel", f"{a_max:.2f} m/s^2 over D={D:.1f} m"
            continue
        if j_max > cfg.recovery_max_lat_jerk:
            reason, detail = "infeasible: lateral_jerk", f"{j_max:.2f} m/s^3 over D={D:.1f} m"
            continue
        chosen = D
        break
    if chosen is None:
        raise InfeasibleExpert(reason, detail)
    D = chosen

    # arc progress with the Frenet speed factor (fixed point; the factor is close to 1)
    sigma = sigma0
    for _ in range(3):
        d, dp, _ = _quintic(d0, p0, D, sigma / D)
        _, _, kap = path.at(s0 + sigma)
        f = np.sqrt((1.0 - kap * d) ** 2 + dp ** 2)
        sigma = _cumtrapz(v / np.maximum(f, 1e-6), DT)
    d, dp, _ = _quintic(d0, p0, D, sigma / D)
    xy, th, kap = path.at(s0 + sigma)
    if np.any(1.0 - kap * d <= 0.2):
        raise InfeasibleExpert("infeasible: curvature", "offset beyond the path's radius of curvature")
    states = np.empty((N_FUTURE, 4))
    states[:, 0] = xy[:, 0] - np.sin(th) * d
    states[:, 1] = xy[:, 1] + np.cos(th) * d
    states[:, 2] = wrap_angle(th + np.arctan2(dp, 1.0 - kap * d))
    states[:, 3] = v
    states[0] = start
    back = np.nonzero(sigma >= D - 1e-9)[0]
    return_s = float(t[back[0]]) if back.size else float("nan")
    return RecoveryPlan(states, float(D), return_s, d)


# ================================================================================ planner
def planner_expert(scene: Scene, scorer_cfg: ScorerConfig | None = None) -> np.ndarray:
    """The reference IDM planner's pseudo-expert from the perturbed state.

    Args:
        scene: :func:`~mosaic_ray.scoring.epdms.prepare_scene` of the perturbed clip (its t0
            state and history are the perturbed ones; the future is not used).
        scorer_cfg: the scorer config PDM-Closed's choice uses (None: defaults).

    Returns:
        ``(41, 4)`` float64 global states from t0: the tracked IDM proposal
        (:meth:`Scene.reference_states`) that :func:`~mosaic_ray.scoring.epdms.score_trajectories`
        keeps as its reference; speeds clipped at 0 (the tracker may reverse by a few mm/s
        when it stops).
    """
    res = score_trajectories(scene, np.zeros((0, 8, 3)), human_filter=False, config=scorer_cfg)
    out = np.array(scene.reference_states()[res.reference_index, :, :4])
    out[:, 3] = np.maximum(out[:, 3], 0.0)
    return out


# ================================================================================ checks, score
def feasibility_violation(future: np.ndarray, cfg: SynthesizeConfig | None = None) -> str | None:
    """The first limit a future breaks, or None.

    Args:
        future: ``(41, 4)`` global ``[x, y, heading, speed]`` at 0.1 s from t0.
        cfg: limits (None: defaults): speed in ``[0, max_speed]``; longitudinal acceleration
            (speed differences) in ``[-max_decel, max_accel]``; |longitudinal jerk| <=
            ``max_lon_jerk``; |yaw rate| (heading differences) <= ``max_yaw_rate``; |yaw
            acceleration| <= ``max_yaw_accel``; |speed x yaw rate| <= ``max_lat_accel``;
            |yaw rate / speed| <= ``max_curvature`` where the speed exceeds 1 m/s.

    Returns:
        ``"speed"``, ``"lon_accel"``, ``"lon_jerk"``, ``"yaw_rate"``, ``"yaw_accel"``,
        ``"lat_accel"``, ``"curvature"`` or ``"non_finite"``; None when feasible.
    """
    cfg = cfg or SynthesizeConfig()
    f = np.asarray(future, dtype=np.float64)
    if not np.isfinite(f).all():
        return "non_finite"
    v = f[:, 3]
    a = np.diff(v) / DT
    j = np.diff(a) / DT
    w = np.diff(np.unwrap(f[:, 2])) / DT
    wa = np.diff(w) / DT
    vm = 0.5 * (v[1:] + v[:-1])
    if v.min() < -1e-9 or v.max() > cfg.max_speed:
        return "speed"
    if a.min() < -cfg.max_decel or a.max() > cfg.max_accel:
        return "lon_accel"
    if np.abs(j).max() > cfg.max_lon_jerk:
        return "lon_jerk"
    if np.abs(w).max() > cfg.max_yaw_rate:
        return "yaw_rate"
    if np.abs(wa).max() > cfg.max_yaw_accel:
        return "yaw_accel"
    if np.abs(vm * w).max() > cfg.max_lat_accel:
        return "lat_accel"
    moving = vm > 1.0
    if moving.any() and np.abs(w[moving] / vm[moving]).max() > cfg.max_curvature:
        return "curvature"
    return None


def _frame_poses(states: np.ndarray, origin: np.ndarray) -> np.ndarray:
    x0, y0, h0 = origin[:3]
    c, s = math.cos(h0), math.sin(h0)
    dx, dy = states[:, 0] - x0, states[:, 1] - y0
    return np.stack([c * dx + s * dy, -s * dx + c * dy, wrap_angle(states[:, 2] - h0)], axis=-1)


def expert_poses(ego_states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Planner poses of a full ego track: ``(poses, prev_poses)``, each ``(8, 3)`` float64
    ``[x, y, heading]`` (m, rad) at 0.5 .. 4.0 s, in the ego frame at t0 and at t0 − 0.5 s
    (what :func:`~mosaic_ray.scoring.epdms.prepare_scene` derives for the logged human).

    Args:
        ego_states: ``(T_ALL, 4)`` global states.
    """
    es = np.asarray(ego_states, dtype=np.float64)
    pi = T0_INDEX - 5
    return _frame_poses(es[T0_INDEX + POSE_STEPS], es[T0_INDEX]), _frame_poses(es[pi + POSE_STEPS], es[pi])


def expert_epdms(scene: Scene, ego_states: np.ndarray | None = None,
                 scorer_cfg: ScorerConfig | None = None) -> tuple[float, dict[str, float]]:
    """EPDMS and terms of a pseudo-expert on its synthetic scene.

    The expert's 8 poses are one candidate of
    :func:`~mosaic_ray.scoring.epdms.score_trajectories` (tracked from the scene's t0 state,
    EP normalised by the reference proposals), without the human filter, with EC (its poses
    from t0 − 0.5 s) when ``scene.clip.has_prev_frame``.

    Args:
        scene: the prepared synthetic (or perturbed) scene; only its t0 state and history and
            the clip's map, route and agents enter.
        ego_states: ``(T_ALL, 4)`` the full synthetic ego track (None: ``scene.clip``'s, i.e. a
            stored synthetic scene is re-scored).
        scorer_cfg: None: the scorer defaults.

    Returns:
        ``(epdms, terms)``: float in [0, 1] and ``term -> float`` (EC NaN without EC).
    """
    es = scene.clip.ego_states if ego_states is None else ego_states
    poses, prev = expert_poses(es)
    res = score_trajectories(scene, poses[None], prev_poses=prev[None] if scene.clip.has_prev_frame else None,
                             human_filter=False, config=scorer_cfg)
    return float(res.epdms[0]), {k: float(v[0]) for k, v in res.terms.items()}


def _history_boxes(clip: Clip, ego_states: np.ndarray) -> np.ndarray:
    """(A,) bool: agents whose box touches the ego box at a valid step of t0-1.5 s .. t0."""
    A = clip.num_agents
    if A == 0:
        return np.zeros(0, dtype=bool)
    sl = slice(N_PRE, T0_INDEX + 1)
    es = np.asarray(ego_states, dtype=np.float64)[sl]
    L, W = float(clip.ego_size[0]), float(clip.ego_size[1])
    ego = np.stack([es[:, 0], es[:, 1], es[:, 2], np.full(len(es), L), np.full(len(es), W)], -1)  # (T, 5)
    ast = np.asarray(clip.agent_states, dtype=np.float64)[:, sl]                                   # (A, T, 4)
    val = np.asarray(clip.agent_valid, dtype=bool)[:, sl] & np.isfinite(ast).all(-1)
    size = np.asarray(clip.agent_size, dtype=np.float64)
    boxes = np.concatenate([np.nan_to_num(ast[..., :3]), np.broadcast_to(size[:, None, :], ast.shape[:2] + (2,))], -1)
    return (boxes_intersect(ego[None], boxes) & val).any(axis=1)


# ================================================================================ one clip
def _failing_terms(terms: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in terms.items() if np.isfinite(v) and v < 1.0)


def synthesize_clip(clip: Clip, cfg: SynthesizeConfig | None = None,
                    scorer_cfg: ScorerConfig | None = None) -> tuple[list[Clip], list[dict[str, Any]]]:
    """The synthetic scenes of one real clip (see the module docstring for one attempt).

    Attempts ``i = 0, 1, ...`` run until ``cfg.per_clip`` scenes are kept or
    ``cfg.attempts_per_clip`` attempts were made; every attempt is either a kept scene or a
    quarantine record, so ``attempts = len(kept) + len(quarantined)`` and the attempt indices
    are exactly ``0 .. attempts-1``.

    Args:
        clip: a valid real clip.
        cfg: None: :class:`SynthesizeConfig` defaults.
        scorer_cfg: the EPDMS scorer's config (None: NAVSIM's defaults).

    Returns:
        ``(scenes, quarantined)``: kept :class:`~mosaic_ray.data.clip.Clip` objects (provenance
        in ``extra``, :data:`PROVENANCE_FIELDS`) and dicts with the :data:`QUARANTINE_SCHEMA`
        fields (``reason`` e.g. ``below_threshold: epdms=0.41``, ``category`` its part before
        the colon).

    Raises:
        ClipValidationError: the real clip itself is invalid.
    """
    cfg = cfg or SynthesizeConfig()
    clip.validate()
    n = cfg.attempts_per_clip
    kinds = expert_schedule(cfg, n)
    path = logged_path(clip, cfg)
    logged_contacts = _history_boxes(clip, clip.ego_states) if cfg.check_history_overlap else None
    v_log0 = float(clip.ego_states[T0_INDEX, 3])
    kept: list[Clip] = []
    quarantined: list[dict[str, Any]] = []
    for i in range(n):
        if len(kept) >= cfg.per_clip:
            break
        kind = kinds[i]
        dy, dpsi, dv = draw_perturbation(cfg, clip.clip_id, i, v_log0)
        cid = synthetic_clip_id(clip.clip_id, i)
        base = {"source_clip_id": clip.clip_id, "clip_id": cid, "synth_index": i, "expert_kind": kind,
                "perturb_dy": dy, "perturb_dpsi": dpsi, "perturb_dv": dv, "synth_seed": int(cfg.seed)}

        def reject(reason: str, detail: str = "", epdms: float = float("nan")) -> None:
            quarantined.append({**base, "reason": reason, "category": reason.split(":", 1)[0],
                                "epdms": float(epdms), "detail": detail})

        try:
            es = perturb(clip, dy, dpsi, dv)
            if logged_contacts is not None:
                new = _history_boxes(clip, es) & ~logged_contacts
                if new.any():
                    reject("infeasible: history_overlap", f"agents {clip.agent_ids[new][:5].tolist()}")
                    continue
            pert = dataclasses.replace(clip, ego_states=es)
            scene = prepare_scene(pert, scorer_cfg)
            return_s = float("nan")
            if kind == "recovery":
                plan = recovery_expert(clip, es[T0_INDEX], cfg, path)
                future, return_s = plan.states, plan.return_s
            else:
                future = planner_expert(scene, scorer_cfg)
            why = feasibility_violation(future, cfg)
            if why is not None:
                reject(f"infeasible: {why}")
                continue
            full = es.copy()
            full[T0_INDEX + 1:] = future[1:]
            scene_clip = dataclasses.replace(
                clip, clip_id=cid, frame_id=cid, ego_states=full,  # a scene of its own: its own frame
                tags=[*clip.tags, "synthetic", f"expert_{kind}"], extra={})
            scene_clip.validate()
            epdms, terms = expert_epdms(scene, full, scorer_cfg)
            if not (np.isfinite(epdms) and epdms >= cfg.min_epdms):
                reject(f"below_threshold: epdms={epdms:.2f}", _failing_terms(terms), epdms)
                continue
            scene_clip.extra.update({"source_clip_id": clip.clip_id, "synth_index": i, "perturb_dy": dy,
                                     "perturb_dpsi": dpsi, "perturb_dv": dv, "expert_kind": kind,
                                     "synth_seed": int(cfg.seed), "synth_epdms": epdms,
                                     "recovery_return_s": return_s})
            kept.append(scene_clip)
        except InfeasibleExpert as e:
            reject(e.reason, e.detail)
        except ClipValidationError as e:
            reject(f"invalid_clip: {str(e)[:200]}")
        except Exception as e:  # a bad attempt must not lose the clip's other attempts
            log.warning("synthesize %s attempt %d (%s): %s: %s", clip.clip_id, i, kind, type(e).__name__, e)
            reject(f"error: {type(e).__name__}", str(e)[:300])
    return kept, quarantined


# ================================================================================ Arrow
def scenes_schema() -> pa.Schema:
    """The clip schema (:func:`~mosaic_ray.data.clip.clip_schema`) plus :data:`PROVENANCE_FIELDS`."""
    base = clip_schema()
    return pa.schema(list(base) + [pa.field(k, t) for k, t in PROVENANCE_FIELDS.items()])


def scenes_to_table(scenes: Sequence[Clip]) -> pa.Table:
    """Synthetic scenes -> an Arrow table with :func:`scenes_schema` (provenance from ``extra``).

    Raises:
        KeyError: a scene lacks a provenance field in ``extra``.
    """
    rows = []
    for c in scenes:
        row = clip_to_row(c)
        row.update({k: c.extra[k] for k in PROVENANCE_FIELDS})
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=scenes_schema())


def scenes_from_table(table: pa.Table) -> list[Clip]:
    """Rows of :func:`scenes_schema` -> clips with the provenance back in ``extra``."""
    out = []
    for row in table.to_pylist():
        c = clip_from_row(row)
        c.extra.update({k: row[k] for k in PROVENANCE_FIELDS if k in row})
        out.append(c)
    return out
