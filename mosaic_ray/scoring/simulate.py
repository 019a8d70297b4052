"""Turn planner poses into 0.1 s ego states (the scorer's stand-in for NAVSIM's tracker).

NAVSIM (``navsim/planning/simulation/planner/pdm_planner/simulation/pdm_simulator.py``)
interpolates the 8 planned poses and tracks them with an LQR controller on a kinematic
bicycle model, so the scored states are dynamically feasible and lag the plan slightly.

**Deviation.** Here the states are the plan itself, interpolated: a cubic spline through the
start position and the 8 poses, clamped at t = 0 to the start velocity (so the trajectory
leaves t0 with the logged speed and heading) and natural at 4.0 s. There is no tracking lag,
no steering/acceleration limit and no bicycle-model constraint; a plan that jumps sideways is
scored as drawn. The spline is linear in its data, so the interpolation is one precomputed
(41, 10) matrix applied to all candidates at once.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline

from .geometry import wrap_angle

__all__ = ["simulate_poses", "POSE_TIMES", "STATE_TIMES", "HEADING_BLEND_SPEED"]

DT = 0.1  #: s, output step
POSE_TIMES = np.arange(1, 9) * 0.5  #: s, times of the 8 planner poses
STATE_TIMES = np.arange(41) * DT  #: s, times of the 41 output states
HEADING_BLEND_SPEED = 0.5  #: m/s, below this the heading is blended towards the pose heading


def _spline_operators() -> tuple[np.ndarray, np.ndarray]:
    """(41, 10) matrices mapping [value at t=0, 8 pose values, start derivative] to the
    spline value and its time derivative at the 41 output times."""
    knots = np.concatenate([[0.0], POSE_TIMES])
    pos = np.zeros((41, 10))
    vel = np.zeros((41, 10))
    for j in range(10):
        vals = np.zeros(9)
        d0 = 0.0
        if j < 9:
            vals[j] = 1.0
        else:
            d0 = 1.0
        cs = CubicSpline(knots, vals, bc_type=((1, d0), (2, 0.0)))
        pos[:, j] = cs(STATE_TIMES)
        vel[:, j] = cs(STATE_TIMES, 1)
    return pos, vel


_POS_OP, _VEL_OP = _spline_operators()
# linear interpolation of the pose headings (knots 0, 0.5, ..., 4.0 s) at the 41 steps
_HEAD_OP = np.zeros((41, 9))
for _k in range(41):
    _t = STATE_TIMES[_k] / 0.5
    _i = min(int(np.floor(_t)), 7)
    _f = _t - _i
    _HEAD_OP[_k, _i] += 1.0 - _f
    _HEAD_OP[_k, _i + 1] += _f


def simulate_poses(start_state: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Interpolate ego-frame planner poses into global 0.1 s states.

    Args:
        start_state: ``(4,)`` or ``(N, 4)`` float ``[x, y, heading, speed]`` of the ego box
            centre at t0 in the global frame (m, m, rad, m/s).
        poses: ``(N, 8, 3)`` float ego-frame poses ``[x forward, y left, heading relative]``
            (m, m, rad) at 0.5, 1.0, ..., 4.0 s, relative to the start state.

    Returns:
        ``(N, 41, 4)`` float64 global states ``[x, y, heading, speed]`` at t = 0, 0.1, ...,
        4.0 s; index 0 equals the start state. Position: cubic spline through the start and
        the poses with the start velocity ``(speed, 0)`` (ego frame) as initial derivative and
        a natural end. Speed: ``|d position / dt|`` (m/s, never negative). Heading: the
        spline tangent where speed >= 0.5 m/s, smoothly blended below that to the linearly
        interpolated pose heading; a tangent pointing backwards relative to the pose heading
        (reversing) is turned by pi.

    Raises:
        ValueError: on bad shapes or non-finite input.
    """
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (8, 3):
        raise ValueError(f"poses: expected (N, 8, 3), got {poses.shape}")
    N = poses.shape[0]
    start = np.asarray(start_state, dtype=np.float64)
    if start.shape == (4,):
        start = np.broadcast_to(start, (N, 4))
    elif start.shape != (N, 4):
        raise ValueError(f"start_state: expected (4,) or ({N}, 4), got {start.shape}")
    if not (np.isfinite(poses).all() and np.isfinite(start).all()):
        raise ValueError("simulate_poses: non-finite start_state or poses")
    if N == 0:
        return np.zeros((0, 41, 4))

    v0 = start[:, 3]
    data_x = np.concatenate([np.zeros((N, 1)), poses[:, :, 0], v0[:, None]], axis=1)  # (N, 10)
    data_y = np.concatenate([np.zeros((N, 1)), poses[:, :, 1], np.zeros((N, 1))], axis=1)
    px = data_x @ _POS_OP.T  # (N, 41) ego frame
    py = data_y @ _POS_OP.T
    vx = data_x @ _VEL_OP.T
    vy = data_y @ _VEL_OP.T
    speed = np.hypot(vx, vy)

    knot_h = np.concatenate([np.zeros((N, 1)), poses[:, :, 2]], axis=1)
    knot_h = np.unwrap(knot_h, axis=1)
    pose_h = knot_h @ _HEAD_OP.T  # (N, 41)
    tan_h = np.arctan2(vy, vx)
    diff = wrap_angle(tan_h - pose_h)
    reverse = np.abs(diff) > 0.5 * np.pi
    diff = np.where(reverse, wrap_angle(diff + np.pi), diff)
    u = np.clip(speed / HEADING_BLEND_SPEED, 0.0, 1.0)
    w = u * u * (3.0 - 2.0 * u)  # smoothstep
    rel_h = pose_h + w * diff
    rel_h[:, 0] = 0.0

    x0, y0, h0 = start[:, 0:1], start[:, 1:2], start[:, 2:3]
    c, s = np.cos(h0), np.sin(h0)
    out = np.empty((N, 41, 4))
    out[..., 0] = x0 + c * px - s * py
    out[..., 1] = y0 + s * px + c * py
    out[..., 2] = wrap_angle(h0 + rel_h)
    out[..., 3] = speed
    out[:, 0, :] = start
    return out
