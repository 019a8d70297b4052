"""Settings of AutoScale's synthetic scene pool (:class:`SynthesizeConfig`), apart from the
synthesis code (:mod:`mosaic_ray.autoscale.synthesize`) so that the config model imports
neither the scorer nor SciPy (every Ray worker imports the config).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["EXPERT_KINDS", "SynthesizeConfig"]

#: the pseudo-expert kinds: a return to the logged path, or the reference planner along the route
EXPERT_KINDS = ("recovery", "planner")


class SynthesizeConfig(BaseModel):
    """Settings of the synthetic scene pool (SimScale-style pseudo-experts; see the module
    docstring). Units: m, s, m/s, rad.

    Raises (on construction / assignment):
        pydantic.ValidationError: a range with ``lo > hi``, an unknown expert kind, a mix
            without a positive weight, a horizon outside (0, 4] s, a non-positive limit.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    split: Literal["train", "pool"] = Field("train", description="the real clip split the scenes "
                                                                              "are made from")
    per_clip: int = Field(12, ge=1, description="synthetic scenes kept per real clip (the quota; 12 so that the "
                          "pool holds >= 10 per real clip on NGSIM, where some clips yield few)")
    max_attempts_per_clip: int | None = Field(
        40, ge=1, description="attempts per real clip at most (stop earlier at per_clip kept); None = per_clip")
    dy_range: tuple[float, float] = Field((-1.0, 1.0), description="lateral offset at t0, m (left +)")
    dpsi_range: tuple[float, float] = Field((-0.08, 0.08), description="heading offset at t0, rad")
    dv_range: tuple[float, float] = Field((-2.0, 2.0), description="speed offset at t0, m/s")
    experts: dict[str, float] = Field(default_factory=lambda: {"recovery": 0.5, "planner": 0.5},
                                      description="expert kind -> share of the attempts")
    min_epdms: float = Field(0.5, ge=0.0, le=1.0, description="keep a pseudo-expert with EPDMS >= this")
    seed: int = Field(0, ge=0)
    # recovery
    recovery_horizon_s: float = Field(3.5, gt=0.0, le=4.0, description="latest return to the logged path")
    recovery_min_s: float = Field(1.0, gt=0.0, description="earliest return considered")
    speed_blend_s: float = Field(3.0, gt=0.0, description="speed blends back to the logged speed over this")
    recovery_max_lat_accel: float = Field(2.0, gt=0.0, description="m/s^2, lateral accel. of d(t) vs the path")
    recovery_max_lat_jerk: float = Field(4.0, gt=0.0, description="m/s^3, lateral jerk of d(t) vs the path")
    recovery_max_curvature: float = Field(0.1, gt=0.0, description="1/m, |d''(s)| of the lateral profile")
    path_smoothing_s: float = Field(2.5, gt=0.0, description="Savitzky-Golay window of the logged path, s of "
                                    "travel at the clip's mean logged speed ...")
    path_smoothing_min_m: float = Field(8.0, gt=0.0, description="... but at least this (m) ...")
    path_smoothing_max_m: float = Field(30.0, gt=0.0, description="... and at most this (m)")
    speed_smoothing_s: float = Field(1.5, gt=0.0, description="Savitzky-Golay window of the logged speed, s")
    # feasibility of every future (finite differences at 0.1 s)
    max_speed: float = Field(40.0, gt=0.0, description="m/s")
    max_accel: float = Field(4.0, gt=0.0, description="m/s^2")
    max_decel: float = Field(6.0, gt=0.0, description="m/s^2 (magnitude)")
    max_lon_jerk: float = Field(15.0, gt=0.0, description="m/s^3")
    max_lat_accel: float = Field(6.0, gt=0.0, description="m/s^2, speed x yaw rate")
    max_yaw_rate: float = Field(1.0, gt=0.0, description="rad/s")
    max_yaw_accel: float = Field(3.0, gt=0.0, description="rad/s^2")
    max_curvature: float = Field(0.3, gt=0.0, description="1/m, yaw rate / speed where speed > 1 m/s")
    check_history_overlap: bool = Field(True, description="quarantine a perturbed history that overlaps an agent")
    # the Ray stage
    num_cpus_per_actor: float = Field(1.0, gt=0.0)
    num_actors: int | None = Field(None, ge=1, description="None = fit to the CPUs Ray sees")

    @field_validator("dy_range", "dpsi_range", "dv_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = float(v[0]), float(v[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"expected a finite (lo, hi) with lo <= hi, got {v}")
        return lo, hi

    @field_validator("experts")
    @classmethod
    def _experts(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(set(v) - set(EXPERT_KINDS))
        if bad:
            raise ValueError(f"unknown expert kinds {bad}; known: {list(EXPERT_KINDS)}")
        if any((not math.isfinite(w)) or w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"expert shares must be finite, >= 0, with a positive sum, got {v}")
        return {k: float(v[k]) for k in EXPERT_KINDS if k in v}

    @model_validator(mode="after")
    def _horizon(self) -> "SynthesizeConfig":
        if self.recovery_min_s > self.recovery_horizon_s:
            raise ValueError(f"recovery_min_s {self.recovery_min_s} > recovery_horizon_s {self.recovery_horizon_s}")
        return self

    @property
    def attempts_per_clip(self) -> int:
        """Attempts per real clip at most (``max_attempts_per_clip``, at least ``per_clip``)."""
        return max(self.per_clip, self.max_attempts_per_clip or self.per_clip)
