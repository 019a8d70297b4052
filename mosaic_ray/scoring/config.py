"""The nine EPDMS terms and the scorer's thresholds and weights, in one place.

:class:`Term` is the single definition of the terms and their order (the columns of
:meth:`~mosaic_ray.scoring.epdms.EPDMSResult.terms_array` and of the distillation targets);
:data:`TERMS`, :data:`PENALTY_TERMS`, :data:`WEIGHTED_TERMS`, :data:`FILTERED_TERMS` and
:data:`DISTILL_TERMS` are derived from it.

:class:`ScorerConfig` holds every threshold and weight the terms use. Its defaults are
NAVSIM's (``navsim/planning/simulation/planner/pdm_planner/scoring/pdm_scorer.py``
``PDMScorerConfig``, the comfort bounds of ``pdm_comfort_metrics.py``, nuPlan's
``collision_utils`` / ``idm/utils.py`` for the collision rules); field names follow NAVSIM's
where NAVSIM has the field. The scorer entry points take it as ``config=`` (None: the
defaults, :data:`DEFAULT_SCORER_CONFIG`) and hand it down to the term functions, which read
no module constant for a threshold.

Not in the config, because they are structure rather than thresholds: the 0.1 s step and the
41 states (``DT``, ``N_STEPS``), the 0.5 s between frames for EC (``EC_SHIFT`` steps, fixed by
the clip layout), the 15 history states of HC, the Savitzky-Golay windows of
:func:`~mosaic_ray.scoring.epdms.comfort_signals` (NAVSIM's, not configurable there either),
the tracker (:class:`~mosaic_ray.scoring.simulate.TrackerParams`) and the PDM-Closed-like
reference planner (:mod:`mosaic_ray.scoring.reference`: IDM parameters, speed fractions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import IntEnum

import numpy as np

__all__ = ["Term", "TERMS", "PENALTY_TERMS", "WEIGHTED_TERMS", "FILTERED_TERMS", "DISTILL_TERMS",
           "ScorerConfig", "DEFAULT_SCORER_CONFIG"]

DT = 0.1  #: s, step of the simulated states
N_STEPS = 41  #: simulated states t = 0 .. 4.0 s


class Term(IntEnum):
    """The nine EPDMS terms; the value is the term's column index."""

    NC = 0   #: no at-fault collision (multiplicative)
    DAC = 1  #: drivable area compliance (multiplicative)
    DDC = 2  #: driving direction compliance (multiplicative)
    TLC = 3  #: traffic light compliance (multiplicative)
    EP = 4   #: ego progress (weighted)
    TTC = 5  #: time to collision within bound (weighted)
    LK = 6   #: lane keeping (weighted)
    HC = 7   #: history comfort (weighted)
    EC = 8   #: two-frame extended comfort (weighted; dropped without a previous frame)


TERMS: tuple[str, ...] = tuple(t.name for t in Term)
#: the multiplicative penalties (NAVSIM ``MultiMetricIndex``)
PENALTY_TERMS: tuple[str, ...] = tuple(t.name for t in Term if t <= Term.TLC)
#: the weighted terms (NAVSIM ``WeightedMetricIndex``)
WEIGHTED_TERMS: tuple[str, ...] = tuple(t.name for t in Term if t >= Term.EP)
#: the terms the human filter acts on (all but EC)
FILTERED_TERMS: tuple[str, ...] = tuple(t.name for t in Term if t is not Term.EC)
#: the 8 sub-scores the planner's distillation heads predict
DISTILL_TERMS: tuple[str, ...] = FILTERED_TERMS


@dataclass(frozen=True)
class ScorerConfig:
    """Thresholds and weights of the EPDMS scorer (defaults: NAVSIM / nuPlan).

    Weights (dimensionless; NAVSIM ``PDMScorerConfig``):
        progress_weight (EP, 5), ttc_weight (TTC, 5), lane_keeping_weight (LK, 2),
        history_comfort_weight (HC, 2), two_frame_extended_comfort_weight (EC, 2).

    NC (nuPlan ``collision_utils.get_collision_type`` / ``is_track_stopped``, ``idm/utils``):
        ego_stopped_speed_threshold: m/s, ego |speed| at or below which a contact is never at
            fault (``get_collision_type(stopped_speed_threshold=5e-2)``).
        object_stopped_speed_threshold: m/s, an object whose speed at its first valid step
            is at or below this is "stopped" (``is_track_stopped``, 5e-2).
        agent_behind_tolerance_deg: deg, relative bearing from the rear axle above which an
            object is behind (``is_agent_behind(tolerance_deg=150)``; NC and TTC).
        agent_ahead_tolerance_deg: deg, bearing below which an object is ahead
            (``is_agent_ahead(tolerance_deg=30)``; TTC).
        static_object_collision_score: NC value of an at-fault contact with a static object
            (NAVSIM ``_calculate_no_at_fault_collision``: 0.5; agents score 0).

    DDC (``PDMScorerConfig``):
        driving_direction_horizon: s, the sliding window (1.0).
        driving_direction_compliance_threshold: m, worst windowed oncoming displacement below
            which DDC = 1 (2.0).
        driving_direction_violation_threshold: m, below which DDC = 0.5, else 0 (6.0).

    TTC (``PDMScorerConfig``; ``_calculate_ttc``):
        stopped_speed_threshold: m/s, steps where the ego |speed| is below this are skipped
            (5e-3).
        future_collision_horizon_window: s, the box is projected at offsets
            ``0, 3, 6, ... steps < window / 0.1 s`` (1.0 -> 0, 0.3, 0.6, 0.9 s).
        ttc_offset_stride: steps between projections (3; a literal in NAVSIM).

    EP (``PDMScorerConfig``):
        progress_distance_threshold: m, EP normaliser above which EP = raw / normaliser,
            else 1 (5.0).

    LK (``PDMScorerConfig``, Hydra-MDP++):
        lane_keeping_deviation_limit: m, distance of the centre from the route centre-line
            (0.5).
        lane_keeping_horizon_window: s, consecutive time beyond the limit that fails LK
            (2.0 -> ``ceil(2.0 / 0.1)`` = 20 steps).

    HC (nuPlan / NAVSIM ``pdm_comfort_metrics.py``; strict bounds):
        min_lon_accel, max_lon_accel: m/s^2 (-4.05, 2.40); max_abs_lat_accel: m/s^2 (4.89);
        max_abs_mag_jerk: m/s^3 (8.37); max_abs_lon_jerk: m/s^3 (4.13);
        max_abs_yaw_rate: rad/s (0.95); max_abs_yaw_accel: rad/s^2 (1.93).

    EC (NAVSIM ``pdm_comfort_metrics.py`` two-frame extended comfort; RMS of the per-step
    difference between the frames, pass when <=):
        ec_acceleration_threshold: m/s^2 (0.7); ec_jerk_threshold: m/s^3 (0.5);
        ec_yaw_rate_threshold: rad/s (0.1); ec_yaw_accel_threshold: rad/s^2 (0.1).
    """

    # weights
    progress_weight: float = 5.0
    ttc_weight: float = 5.0
    lane_keeping_weight: float = 2.0
    history_comfort_weight: float = 2.0
    two_frame_extended_comfort_weight: float = 2.0
    # NC
    ego_stopped_speed_threshold: float = 5e-2
    object_stopped_speed_threshold: float = 5e-2
    agent_behind_tolerance_deg: float = 150.0
    agent_ahead_tolerance_deg: float = 30.0
    static_object_collision_score: float = 0.5
    # DDC
    driving_direction_horizon: float = 1.0
    driving_direction_compliance_threshold: float = 2.0
    driving_direction_violation_threshold: float = 6.0
    # TTC
    stopped_speed_threshold: float = 5e-3
    future_collision_horizon_window: float = 1.0
    ttc_offset_stride: int = 3
    # EP
    progress_distance_threshold: float = 5.0
    # LK
    lane_keeping_deviation_limit: float = 0.5
    lane_keeping_horizon_window: float = 2.0
    # HC
    min_lon_accel: float = -4.05
    max_lon_accel: float = 2.40
    max_abs_lat_accel: float = 4.89
    max_abs_mag_jerk: float = 8.37
    max_abs_lon_jerk: float = 4.13
    max_abs_yaw_rate: float = 0.95
    max_abs_yaw_accel: float = 1.93
    # EC
    ec_acceleration_threshold: float = 0.7
    ec_jerk_threshold: float = 0.5
    ec_yaw_rate_threshold: float = 0.1
    ec_yaw_accel_threshold: float = 0.1

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"ScorerConfig.{f.name}: expected a finite number, got {v!r}")
        if self.ttc_offset_stride < 1 or int(self.ttc_offset_stride) != self.ttc_offset_stride:
            raise ValueError(f"ScorerConfig.ttc_offset_stride: expected an int >= 1, got {self.ttc_offset_stride}")
        if not 0 < self.future_collision_horizon_window < (N_STEPS - 1) * DT:
            raise ValueError("ScorerConfig.future_collision_horizon_window: expected in (0, 4) s")
        if not 0 <= self.driving_direction_horizon:
            raise ValueError("ScorerConfig.driving_direction_horizon: expected >= 0 s")
        if self.lane_keeping_horizon_window <= 0 or self.lane_keeping_deviation_limit < 0:
            raise ValueError("ScorerConfig: lane keeping window must be > 0 s and limit >= 0 m")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("ScorerConfig: weights must be >= 0 with a positive sum")

    # ---- derived quantities (computed the way NAVSIM derives them from the config; the
    # step counts are taken to within 1e-9 steps so that e.g. 0.6 s is 6 steps, not the
    # 5 that int(0.6 / 0.1) gives; NAVSIM's defaults are exact either way)
    @property
    def weights(self) -> dict[str, float]:
        """``term -> weight`` for the weighted terms (:data:`WEIGHTED_TERMS` order)."""
        return {"EP": self.progress_weight, "TTC": self.ttc_weight, "LK": self.lane_keeping_weight,
                "HC": self.history_comfort_weight, "EC": self.two_frame_extended_comfort_weight}

    @property
    def behind_angle(self) -> float:
        """rad, :attr:`agent_behind_tolerance_deg`."""
        return float(np.deg2rad(self.agent_behind_tolerance_deg))

    @property
    def ahead_angle(self) -> float:
        """rad, :attr:`agent_ahead_tolerance_deg`."""
        return float(np.deg2rad(self.agent_ahead_tolerance_deg))

    @property
    def ddc_window_steps(self) -> int:
        """Steps of the DDC window, ``int(horizon / 0.1 s)`` (NAVSIM; 10: window [t-10, t])."""
        return _floor_steps(self.driving_direction_horizon)

    @property
    def ttc_offsets(self) -> tuple[int, ...]:
        """Steps of the TTC projections, ``range(0, int(window / 0.1 s), stride)`` ((0, 3, 6, 9))."""
        return tuple(range(0, _floor_steps(self.future_collision_horizon_window), int(self.ttc_offset_stride)))

    @property
    def ttc_last_step(self) -> int:
        """Last step TTC evaluates, ``40 - max offset`` (31)."""
        return N_STEPS - 1 - max(self.ttc_offsets)

    @property
    def lk_max_steps(self) -> int:
        """Consecutive steps beyond the limit that fail LK, ``ceil(window / 0.1 s)`` (20)."""
        return int(math.ceil(self.lane_keeping_horizon_window / DT - 1e-9))


def _floor_steps(seconds: float) -> int:
    """``int(seconds / 0.1 s)``, robust to the float error of the division."""
    return int(math.floor(seconds / DT + 1e-9))


DEFAULT_SCORER_CONFIG = ScorerConfig()
