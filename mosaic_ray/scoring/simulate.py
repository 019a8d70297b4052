"""Ego motion for the EPDMS scorer: planner poses -> 0.1 s reference -> LQR-tracked bicycle.

Follows NAVSIM's pipeline (``navsim/evaluate/pdm_score.py`` ``transform_trajectory`` /
``get_trajectory_as_array``, ``pdm_planner/simulation/pdm_simulator.py``,
``batch_lqr.py``, ``batch_lqr_utils.py``, ``batch_kinematic_bicycle.py``), vectorised over
N proposals:

1. **Reference.** The start pose and the 8 planner poses (0.5 s apart) are linearly
   interpolated (x, y and the unwrapped heading, as nuPlan's ``InterpolatedTrajectory``) at
   0.1 s into 41 rear-axle reference poses.
2. **Profiles.** A velocity and a curvature profile are fitted to the reference poses by
   NAVSIM's regularised least squares (jerk penalty 1e-4, curvature-rate penalty 1e-2,
   initial-curvature penalty 1e-10). The velocity normal matrix does not depend on the
   headings, so its (pseudo-)inverse is one precomputed 40 x 40 operator; the curvature
   problem is solved in curvature variables, where its normal matrix is tridiagonal
   (Thomas algorithm, vectorised over N). Both are exact reformulations of NAVSIM's
   ``pinv`` solutions (the normal matrices are positive definite).
3. **LQR.** At each of the 40 steps NAVSIM's ``BatchLQRTracker`` (horizon 10 steps, longitudinal
   Q = 10, R = 1; lateral Q = diag(1, 10, 0), R = 1; stopping P-controller with gain 0.5 below
   0.2 m/s) gives an acceleration and a steering-rate command. The 10-step lateral
   composition ``A = M_9 ... M_0`` is written in closed form (the step matrices are unit
   upper-triangular), which is algebraically identical to NAVSIM's loop of ``einsum``.
4. **Bicycle model.** NAVSIM's ``BatchKinematicBicycleModel``: first-order lag on the
   acceleration (0.2 s) and steering angle (0.05 s), Euler integration at 0.1 s, steering
   clipped to +-pi/3, reference point at the rear axle.

Documented deviations
---------------------
* **Vehicle geometry.** NAVSIM tracks a Chrysler Pacifica (length 5.176 m, wheel base
  3.089 m, rear axle 1.461 m behind the box centre). Here the clip's own ego length ``L`` is
  used and the Pacifica proportions are kept: wheel base ``0.5968 L``, rear axle
  ``0.2823 L`` behind the box centre (:class:`EgoGeometry`).
* **Frames.** Planner poses and the returned states refer to the ego **box centre** (the
  clip convention); poses are converted to rear-axle poses for tracking and back.
* **Initial dynamics.** NAVSIM starts from the logged ego state including its acceleration
  and steering angle. The clips carry only x, y, heading and speed, so the initial
  acceleration is the backward difference of the logged speed over 0.2 s and the steering
  angle follows from the logged yaw rate over 0.2 s (``atan(omega * wheel_base / v)``, 0 below
  0.5 m/s), see :func:`initial_dynamics`.
* **Speed sign.** The returned speed is the bicycle model's signed longitudinal velocity
  (negative only when the tracker briefly reverses while stopping); every speed threshold
  of the scorer uses its absolute value, as NAVSIM's ``hypot(vx, vy)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import wrap_angle

__all__ = [
    "DT", "N_STATES", "POSE_TIMES", "STATE_TIMES", "EgoGeometry", "TrackerParams",
    "interpolate_poses", "fit_velocity_curvature", "initial_dynamics", "track",
    "simulate_poses", "track_states", "poses_to_global", "velocity_fit_operator",
]

DT = 0.1  #: s, output step
N_STATES = 41  #: states t = 0 .. 4.0 s
POSE_TIMES = np.arange(1, 9) * 0.5  #: s, times of the 8 planner poses
STATE_TIMES = np.arange(N_STATES) * DT  #: s, times of the 41 output states

# nuPlan get_pacifica_parameters()
PACIFICA_LENGTH = 5.176  # m (front 4.049 + rear 1.127)
PACIFICA_WHEEL_BASE = 3.089  # m
PACIFICA_REAR_AXLE_TO_CENTER = 1.461  # m


@dataclass(frozen=True)
class EgoGeometry:
    """Ego box and bicycle-model geometry (m).

    Attributes:
        length, width: box extents.
        rear_offset: distance from the box centre back to the rear axle.
        wheel_base: rear axle to front axle.
    """

    length: float
    width: float
    rear_offset: float
    wheel_base: float

    @classmethod
    def from_size(cls, length: float, width: float) -> "EgoGeometry":
        """Pacifica proportions scaled to ``length`` (see the module docstring)."""
        L = float(length)
        return cls(L, float(width), L * PACIFICA_REAR_AXLE_TO_CENTER / PACIFICA_LENGTH,
                   L * PACIFICA_WHEEL_BASE / PACIFICA_LENGTH)

    @classmethod
    def pacifica(cls) -> "EgoGeometry":
        return cls(PACIFICA_LENGTH, 2.297, PACIFICA_REAR_AXLE_TO_CENTER, PACIFICA_WHEEL_BASE)


@dataclass(frozen=True)
class TrackerParams:
    """NAVSIM ``BatchLQRTracker`` / ``BatchKinematicBicycleModel`` defaults."""

    q_longitudinal: float = 10.0
    r_longitudinal: float = 1.0
    q_lateral: tuple[float, float, float] = (1.0, 10.0, 0.0)
    r_lateral: float = 1.0
    tracking_horizon: int = 10
    jerk_penalty: float = 1e-4
    curvature_rate_penalty: float = 1e-2
    initial_curvature_penalty: float = 1e-10
    stopping_proportional_gain: float = 0.5
    stopping_velocity: float = 0.2  # m/s
    max_steering_angle: float = np.pi / 3  # rad
    accel_time_constant: float = 0.2  # s
    steering_angle_time_constant: float = 0.05  # s


DEFAULT_PARAMS = TrackerParams()


# ------------------------------------------------------------------------ interpolation
# knots t = 0, 0.5, ..., 4.0 s -> 41 states (linear): state k lies between knots _I0[k] and
# _I0[k] + 1 at fraction _F[k]
_U = STATE_TIMES / 0.5
_I0 = np.minimum(np.floor(_U + 1e-9).astype(np.int64), 7)
_F = _U - _I0
_I0.setflags(write=False)
_F.setflags(write=False)


def interpolate_poses(start: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Linear interpolation of pose knots at 0.1 s (nuPlan ``InterpolatedTrajectory``).

    Each state is ``(1 - f) * knot_i + f * knot_{i+1}`` of its two knots, element by element,
    so a row's result does not depend on the rows interpolated with it (a matrix product
    over the rows would: its BLAS kernel differs with the row count).

    Args:
        start: ``(N, 3)`` float global pose ``[x, y, heading]`` at t = 0 (m, m, rad).
        poses: ``(N, 8, 3)`` float global poses at 0.5 .. 4.0 s.

    Returns:
        ``(N, 41, 3)`` float64 poses at 0, 0.1, ..., 4.0 s; headings interpolated on the
        unwrapped sequence and wrapped to [-pi, pi).
    """
    knots = np.concatenate([np.asarray(start, np.float64)[:, None], np.asarray(poses, np.float64)], axis=1)
    knots[..., 2] = np.unwrap(knots[..., 2], axis=1)
    out = knots[:, _I0] * (1.0 - _F)[None, :, None] + knots[:, _I0 + 1] * _F[None, :, None]
    out[..., 2] = wrap_angle(out[..., 2])
    return out


def poses_to_global(start_state: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Ego-frame poses ``(N, 8, 3)`` relative to ``start_state`` ``(N, 4)`` or ``(4,)`` (box
    centre, global) -> global box-centre poses ``(N, 8, 3)``."""
    poses = np.asarray(poses, dtype=np.float64)
    st = np.broadcast_to(np.asarray(start_state, np.float64), (poses.shape[0], 4))
    c, s = np.cos(st[:, 2])[:, None], np.sin(st[:, 2])[:, None]
    out = np.empty(poses.shape)
    out[..., 0] = st[:, 0:1] + c * poses[..., 0] - s * poses[..., 1]
    out[..., 1] = st[:, 1:2] + s * poses[..., 0] + c * poses[..., 1]
    out[..., 2] = wrap_angle(st[:, 2:3] + poses[..., 2])
    return out


# ------------------------------------------------------------------------ profile fitting
def velocity_fit_operator(n_disp: int = N_STATES - 1, dt: float = DT,
                          jerk_penalty: float = DEFAULT_PARAMS.jerk_penalty) -> np.ndarray:
    """``(n_disp, n_disp)`` operator ``W`` with ``[v0, a_0 .. a_{n-2}] = W @ p``, where ``p_k`` is
    the k-th displacement projected on the heading (NAVSIM
    ``_fit_initial_velocity_and_acceleration_profile``: its normal matrix ``A^T A`` does not
    depend on the headings because ``cos^2 + sin^2 = 1``)."""
    M = n_disp
    C = np.zeros((M, M))
    C[:, 0] = dt
    for k in range(M):
        C[k, 1:k + 1] = dt * dt
    band = np.zeros((M - 2, M - 1))
    band[:, 1:] += np.eye(M - 2)
    band[:, :-1] -= np.eye(M - 2)
    R = np.concatenate([np.zeros((M - 2, 1)), band], axis=1)
    W = np.linalg.pinv(C.T @ C + jerk_penalty * R.T @ R) @ C.T
    W.setflags(write=False)
    return W


_VEL_OP = velocity_fit_operator()


def fit_velocity_curvature(ref: np.ndarray, params: TrackerParams = DEFAULT_PARAMS,
                           dt: float = DT) -> tuple[np.ndarray, np.ndarray]:
    """NAVSIM ``get_velocity_curvature_profiles_with_derivatives_from_poses``.

    Args:
        ref: ``(N, 41, 3)`` reference poses (rear axle, m / rad).

    Returns:
        ``(velocity (N, 40), curvature (N, 40))`` float64 profiles (m/s, 1/m).
    """
    N, P, _ = ref.shape
    M = P - 1
    d = np.diff(ref, axis=1)
    dh = wrap_angle(d[..., 2])
    h = ref[:, :-1, 2]
    p = np.cos(h) * d[..., 0] + np.sin(h) * d[..., 1]  # (N, M)
    W = _VEL_OP if (M == N_STATES - 1 and dt == DT and params.jerk_penalty == DEFAULT_PARAMS.jerk_penalty) \
        else velocity_fit_operator(M, dt, params.jerk_penalty)
    x = p @ W.T
    v = np.empty((N, M))
    v[:, 0] = x[:, 0]
    v[:, 1:] = x[:, :1] + np.cumsum(x[:, 1:] * dt, axis=1)
    # curvature: minimise sum (dh_i - v_i dt k_i)^2 + eps k_0^2 + (lam / dt^2) sum (k_{i+1} - k_i)^2
    mu = params.curvature_rate_penalty / (dt * dt)
    w = v * dt
    diag = w * w + 2.0 * mu
    diag[:, 0] += params.initial_curvature_penalty - mu
    diag[:, -1] -= mu
    rhs = w * dh
    # Thomas algorithm (symmetric tridiagonal, off-diagonal -mu), vectorised over N
    cp = np.empty((N, M))
    dp = np.empty((N, M))
    cp[:, 0] = -mu / diag[:, 0]
    dp[:, 0] = rhs[:, 0] / diag[:, 0]
    for i in range(1, M):
        den = diag[:, i] + mu * cp[:, i - 1]
        cp[:, i] = -mu / den
        dp[:, i] = (rhs[:, i] + mu * dp[:, i - 1]) / den
    k = np.empty((N, M))
    k[:, -1] = dp[:, -1]
    for i in range(M - 2, -1, -1):
        k[:, i] = dp[:, i] - cp[:, i] * k[:, i + 1]
    return v, k


# ------------------------------------------------------------------------ initial state
def initial_dynamics(states: np.ndarray, geometry: EgoGeometry, lag: int = 2,
                     dt: float = DT) -> tuple[np.ndarray, np.ndarray]:
    """Acceleration and steering angle at the last of logged box-centre states.

    Args:
        states: ``(..., k, 4)`` logged ``[x, y, heading, speed]`` at 0.1 s, ``k > lag``;
            the estimate refers to the last state.
        geometry: wheel base for the steering angle.
        lag: steps of the backward differences (2 = 0.2 s).

    Returns:
        ``(accel, steer)`` of shape ``(...)``: m/s^2 and rad (clipped to +-pi/3; 0 when the
        speed is below 0.5 m/s).
    """
    s = np.asarray(states, dtype=np.float64)
    v1, v0 = s[..., -1, 3], s[..., -1 - lag, 3]
    accel = (v1 - v0) / (lag * dt)
    omega = wrap_angle(s[..., -1, 2] - s[..., -1 - lag, 2]) / (lag * dt)
    moving = np.abs(v1) >= 0.5
    steer = np.where(moving, np.arctan(omega * geometry.wheel_base / np.where(moving, v1, 1.0)), 0.0)
    steer = np.clip(steer, -DEFAULT_PARAMS.max_steering_angle, DEFAULT_PARAMS.max_steering_angle)
    return accel, steer


# ------------------------------------------------------------------------ LQR + bicycle
def track(ref: np.ndarray, init: np.ndarray, geometry: EgoGeometry,
          params: TrackerParams = DEFAULT_PARAMS, dt: float = DT,
          wheel_base: np.ndarray | None = None) -> np.ndarray:
    """Track rear-axle reference poses with NAVSIM's LQR on the kinematic bicycle model.

    Args:
        ref: ``(N, 41, 3)`` rear-axle reference poses (global, m / rad); ``ref[:, 0]`` is the
            reference at the start.
        init: ``(N, 5)`` initial rear-axle state ``[x, y, heading, speed, accel]`` plus
            steering angle as a 6th column ``(N, 6)``: ``[x, y, h, v, a, steer]``.
        geometry: wheel base.
        wheel_base: optional ``(N,)`` wheel base per row (m), overriding ``geometry``'s: rows of
            several clips (egos of different sizes) tracked in one call. Every operation of the
            tracker is row by row, so a row's result does not depend on the other rows.

    Returns:
        ``(N, 41, 6)`` float64 simulated rear-axle states ``[x, y, heading, v, accel,
        steer]`` (m, m, rad, m/s signed, m/s^2, rad); index 0 is ``init``.
    """
    ref = np.asarray(ref, dtype=np.float64)
    N, P, _ = ref.shape
    out = np.empty((N, P, 6))
    if N == 0:
        return out
    v_prof, k_prof = fit_velocity_curvature(ref, params, dt)
    M = v_prof.shape[1]
    H = params.tracking_horizon
    WB = geometry.wheel_base if wheel_base is None else np.asarray(wheel_base, dtype=np.float64)
    # curvature windows for every step: (N, P-1, H)
    t_idx = np.arange(P - 1)
    ref_idx = np.minimum(t_idx + H, M - 1)
    win = t_idx[:, None] + np.arange(H)[None, :]
    win = np.where(win < ref_idx[:, None], win, ref_idx[:, None])
    k_win = k_prof[:, win]                                       # (N, P-1, H)
    v_ref_all = v_prof[:, ref_idx]                               # (N, P-1)
    # The lateral step matrices are unit upper-triangular with v_k = v + c k (c = accel dt),
    # so the 10-step composition A, B, g is a polynomial in (v, c) with constant weights and
    # curvature-window sums that can be precomputed for every step.
    kk = np.arange(H, dtype=np.float64)
    jj, kq = np.meshgrid(kk, kk, indexing="ij")                  # pairs j < k
    lower = (jj < kq)
    S0 = float(lower.sum())
    S1 = float(((jj + kq) * lower).sum())
    S2 = float((jj * kq * lower).sum())
    T0 = float((jj * lower).sum())
    T1 = float(((kq * jj + jj * jj) * lower).sum())
    T2 = float((kq * jj * jj * lower).sum())
    w0 = (lower).sum(axis=1).astype(np.float64)                  # per j: #k > j
    w1 = ((jj + kq) * lower).sum(axis=1)
    w2 = (jj * kq * lower).sum(axis=1)
    K0 = k_win.sum(axis=2)                                       # sum_k kappa_k
    K1 = k_win @ kk                                              # sum_k k kappa_k
    Kw0, Kw1, Kw2 = k_win @ w0, k_win @ w1, k_win @ w2
    sum_k, sum_k2 = float(kk.sum()), float((kk * kk).sum())
    q0, q1, q2 = params.q_lateral
    Bl = H * dt
    lon_gain = Bl * params.q_longitudinal / (Bl * params.q_longitudinal * Bl + params.r_longitudinal)
    a_lp = dt / (dt + params.accel_time_constant)
    s_lp = dt / (dt + params.steering_angle_time_constant)
    b2 = H * dt
    dt2, dt3 = dt * dt, dt * dt * dt

    # per-step slices as contiguous (P, N) rows
    rx, ry = np.ascontiguousarray(ref[:, :, 0].T), np.ascontiguousarray(ref[:, :, 1].T)
    rs, rc = np.ascontiguousarray(np.sin(ref[:, :, 2]).T), np.ascontiguousarray(np.cos(ref[:, :, 2]).T)
    rh = np.ascontiguousarray(ref[:, :, 2].T)
    vr = np.ascontiguousarray(v_ref_all.T)
    K0, K1 = np.ascontiguousarray(K0.T), np.ascontiguousarray(K1.T)
    Kw0, Kw1, Kw2 = np.ascontiguousarray(Kw0.T), np.ascontiguousarray(Kw1.T), np.ascontiguousarray(Kw2.T)
    two_pi = 2.0 * np.pi
    smax = params.max_steering_angle
    res = np.empty((P, 6, N))
    x, y, h = init[:, 0].astype(np.float64), init[:, 1].astype(np.float64), init[:, 2].astype(np.float64)
    v, a = init[:, 3].astype(np.float64), init[:, 4].astype(np.float64)
    st = np.arctan2(np.sin(init[:, 5]), np.cos(init[:, 5])).astype(np.float64)
    res[0] = np.stack([x, y, h, v, a, init[:, 5]])
    for t in range(P - 1):
        ex, ey = x - rx[t], y - ry[t]
        lat = ey * rc[t] - ex * rs[t]
        he = (h - rh[t] + np.pi) % two_pi - np.pi
        v_ref = vr[t]
        dv = v - v_ref
        stop = (v_ref <= params.stopping_velocity) & (v <= params.stopping_velocity)
        acc_cmd = np.where(stop, -params.stopping_proportional_gain * dv, -lon_gain * dv)
        c = acc_cmd * dt
        vv, vc, cc = v * v, v * c, c * c
        a01 = dt * (H * v + c * sum_k)
        a02 = (dt2 / WB) * (vv * S0 + vc * S1 + cc * S2)
        b1 = (dt2 / WB) * (v * sum_k + c * sum_k2)
        b0 = (dt3 / WB) * (vv * T0 + vc * T1 + cc * T2)
        g1 = -dt * (v * K0[t] + c * K1[t])
        g0 = -dt2 * (vv * Kw0[t] + vc * Kw1[t] + cc * Kw2[t])
        x0 = lat + a01 * he + a02 * st + g0
        x1 = (he + (a01 / WB) * st + g1 + np.pi) % two_pi - np.pi
        # the steering angle stays within +-pi/3, so its wrap is the identity
        bqb = q0 * b0 * b0 + q1 * b1 * b1 + q2 * b2 * b2
        tail = q0 * b0 * x0 + q1 * b1 * x1 + q2 * b2 * st
        rate_cmd = np.where(stop, 0.0, -tail / (bqb + params.r_lateral))
        # kinematic bicycle (NAVSIM propagate_state)
        a_new = a_lp * (acc_cmd - a) + a
        st_rate = s_lp * rate_cmd                   # (s_lp dt rate + st - st) / dt
        x = x + dt * v * np.cos(h)
        y = y + dt * v * np.sin(h)
        h = (h + dt * v * np.tan(st) / WB + np.pi) % two_pi - np.pi
        v = v + dt * a_new
        st = np.minimum(np.maximum(st + dt * st_rate, -smax), smax)
        a = a_new
        r = res[t + 1]
        r[0], r[1], r[2], r[3], r[4], r[5] = x, y, h, v, a, st
    out[:] = res.transpose(2, 0, 1)
    return out


def _centre_to_rear(xyh: np.ndarray, rear_offset: float) -> np.ndarray:
    out = np.array(xyh, dtype=np.float64, copy=True)
    out[..., 0] -= rear_offset * np.cos(xyh[..., 2])
    out[..., 1] -= rear_offset * np.sin(xyh[..., 2])
    return out


def _tracked_to_centre(sim: np.ndarray, rear_offset) -> np.ndarray:
    """(N, 41, 6) rear-axle states -> (N, 41, 5) box-centre ``[x, y, h, v, accel]``
    (``rear_offset`` a float or ``(N, 1)`` per row)."""
    out = np.empty(sim.shape[:-1] + (5,))
    out[..., 0] = sim[..., 0] + rear_offset * np.cos(sim[..., 2])
    out[..., 1] = sim[..., 1] + rear_offset * np.sin(sim[..., 2])
    out[..., 2:5] = sim[..., 2:5]
    return out


def _init_state(start: np.ndarray, accel, steer, geometry: EgoGeometry) -> np.ndarray:
    N = start.shape[0]
    init = np.empty((N, 6))
    init[:, :3] = _centre_to_rear(start[:, :3], geometry.rear_offset)
    init[:, 3] = start[:, 3]
    init[:, 4] = np.broadcast_to(np.asarray(accel, np.float64), (N,))
    init[:, 5] = np.broadcast_to(np.asarray(steer, np.float64), (N,))
    return init


def track_states(start_state: np.ndarray, ref_states: np.ndarray, geometry: EgoGeometry | None = None,
                 accel0: float | np.ndarray = 0.0, steer0: float | np.ndarray = 0.0,
                 params: TrackerParams = DEFAULT_PARAMS) -> np.ndarray:
    """Track 41 global box-centre reference states (e.g. the IDM reference proposals).

    Args:
        start_state: ``(4,)`` or ``(N, 4)`` global box-centre ``[x, y, heading, speed]``.
        ref_states: ``(N, 41, >=3)`` global box-centre reference poses at 0.1 s.
        geometry: ego geometry (default: Pacifica).
        accel0, steer0: initial acceleration (m/s^2) and steering angle (rad).

    Returns:
        ``(N, 41, 5)`` float64 global box-centre states ``[x, y, heading, speed, accel]``.
    """
    g = geometry or EgoGeometry.pacifica()
    ref_states = np.asarray(ref_states, dtype=np.float64)
    N = ref_states.shape[0]
    start = np.broadcast_to(np.asarray(start_state, np.float64), (N, 4))
    ref = _centre_to_rear(ref_states[..., :3], g.rear_offset)
    sim = track(ref, _init_state(start, accel0, steer0, g), g, params)
    return _tracked_to_centre(sim, g.rear_offset)


def simulate_poses(start_state: np.ndarray, poses: np.ndarray, geometry: EgoGeometry | None = None,
                   accel0: float | np.ndarray = 0.0, steer0: float | np.ndarray = 0.0,
                   params: TrackerParams = DEFAULT_PARAMS, with_accel: bool = False) -> np.ndarray:
    """Planner poses -> simulated 0.1 s ego states (interpolation + LQR + bicycle model).

    Args:
        start_state: ``(4,)`` or ``(N, 4)`` float global ``[x, y, heading, speed]`` of the ego
            box centre at t0 (m, m, rad, m/s).
        poses: ``(N, 8, 3)`` float ego-frame poses ``[x forward, y left, heading]`` (m, m, rad)
            of the box centre at 0.5, 1.0, ..., 4.0 s relative to the start state.
        geometry: ego geometry (default: Pacifica, :meth:`EgoGeometry.pacifica`).
        accel0, steer0: initial acceleration (m/s^2) and steering angle (rad), scalars or
            ``(N,)`` (see :func:`initial_dynamics`).
        with_accel: also return the tracker's acceleration as a 5th column.

    Returns:
        ``(N, 41, 4)`` (or ``(N, 41, 5)`` with ``with_accel``) float64 global box-centre states
        ``[x, y, heading, speed(, accel)]`` at t = 0, 0.1, ..., 4.0 s; index 0 is the start
        state (its speed as given).

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
        return np.zeros((0, N_STATES, 5 if with_accel else 4))
    g = geometry or EgoGeometry.pacifica()
    glob = poses_to_global(start, poses)
    ref = interpolate_poses(_centre_to_rear(start[:, :3], g.rear_offset),
                            _centre_to_rear(glob, g.rear_offset))
    sim = track(ref, _init_state(start, accel0, steer0, g), g, params)
    out = _tracked_to_centre(sim, g.rear_offset)
    return out if with_accel else out[..., :4]


