"""The logged (expert) futures of clips, as the planner's trajectory targets see them."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mosaic_ray.data.clip import POSE_STEPS, T0_INDEX, Clip
from mosaic_ray.planner.features import to_frame, wrap_angle


def expert_futures(clips: Sequence[Clip]) -> np.ndarray:
    """Logged future poses of clips in their t0 ego frames.

    Args:
        clips: n clips (``ego_states`` (T, 4) float: x, y in m, heading in rad, speed in m/s).

    Returns:
        (n, 8, 3) float64: x, y (m) and heading (rad) at the 8 NAVSIM pose steps (0.5 s … 4 s),
        relative to the ego pose at t0 (the vocabulary's k-means input, Hydra-MDP).
    """
    out = np.zeros((len(clips), len(POSE_STEPS), 3))
    for i, c in enumerate(clips):
        x0, y0, h0, _ = c.ego_states[T0_INDEX]
        fut = c.ego_states[T0_INDEX + POSE_STEPS]
        out[i, :, :2] = to_frame(fut[:, :2], np.array([x0, y0]), h0)
        out[i, :, 2] = wrap_angle(fut[:, 2] - h0)
    return out
