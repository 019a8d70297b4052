"""Score a planner on clips: its chosen trajectory's EPDMS and nine terms per frame and per clip.

Used for the importance of pool clips (EPDMS of the base model on each clip, MOSAIC §3.2.1),
for pilot-run ΔU and for the final validation utility U = mean EPDMS over validation clips
(the paper reports ×100). A clip with several frames (``ingest.clip_s``) counts once: its score
is the mean over its frames, and U is the mean over clips (:meth:`ClipScores.utility`). EC needs the planner's output 0.5 s earlier in the same log: the
planner is run on the clip's previous-frame observation where the clip has one; elsewhere EC
and its weight are dropped for that clip (EPDMS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mosaic_ray.data.clip import Clip
from mosaic_ray.planner.features import FeatureSpec, featurize_clips
from mosaic_ray.planner.training import plan_batches
from mosaic_ray.scoring.epdms import TERMS, prepare_scene, score_many


@dataclass
class ClipScores:
    """Per-frame results of one planner on ``n`` frames (rows; a clip of one frame is a row).

    Attributes:
        clip_ids: (n,) object str: the clip of each frame (repeated for a clip's frames).
        epdms: (n,) float64 in [0, 1], human-filtered.
        terms: (n, 9) float64, columns in :data:`TERMS` order; EC is NaN where unavailable.
        ec_available: (n,) bool.
        entropy: (n,) float64, nats, of the vocabulary softmax.
        embedding: (n, E) float32 scene embeddings.
        choice: (n,) int64 chosen vocabulary index.
        trajectory: (n, 8, 3) float32 chosen poses (ego frame, m / rad).
        frame_ids: (n,) object str, or None (= ``clip_ids``: a frame per clip).
    """

    clip_ids: np.ndarray
    epdms: np.ndarray
    terms: np.ndarray
    ec_available: np.ndarray
    entropy: np.ndarray
    embedding: np.ndarray
    choice: np.ndarray
    trajectory: np.ndarray
    frame_ids: np.ndarray | None = None

    def _groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(clip ids sorted (C,), clip index of every frame (n,), frames per clip (C,))."""
        ids = np.asarray([str(c) for c in self.clip_ids], dtype=object).astype(str)
        uniq, inv = np.unique(ids, return_inverse=True)
        return uniq, inv, np.bincount(inv, minlength=uniq.size)

    @staticmethod
    def _clip_mean(values: np.ndarray, inv: np.ndarray, k: np.ndarray) -> np.ndarray:
        """(C,) float64 mean of the (n,) frame ``values`` per clip (``inv``, ``k``: :meth:`_groups`)."""
        return np.bincount(inv, weights=np.asarray(values, np.float64), minlength=k.size) / k

    def per_clip(self) -> dict:
        """Per-clip EPDMS for the bootstrap intervals (:mod:`mosaic_ray.evaluate.stats`):
        ``{"clip_id": [str] (C, sorted), "epdms": [float] (mean over the clip's frames),
        "n_frames": [int]}``."""
        uniq, inv, k = self._groups()
        if uniq.size == len(self.epdms):  # a frame per clip: the rows as they are
            return {"clip_id": [str(c) for c in self.clip_ids], "epdms": [float(v) for v in self.epdms],
                    "n_frames": [1] * len(self.epdms)}
        mean = self._clip_mean(self.epdms, inv, k)
        return {"clip_id": uniq.tolist(), "epdms": [float(v) for v in mean], "n_frames": [int(v) for v in k]}

    def utility(self) -> dict:
        """U = mean over clips of the clip's mean EPDMS over its frames (with a frame per clip:
        the mean over rows), and each term the same way over the frames where it is defined
        (EC). Keys ``epdms``, ``epdms_std_clips`` (over clips), ``n_clips``, ``n_frames``,
        ``terms``; all on the 0..1 scale.

        Raises:
            ValueError: nothing scored.
        """
        if len(self.epdms) == 0:
            raise ValueError("no clips scored")
        uniq, inv, k = self._groups()
        C = uniq.size
        if C == len(self.epdms):  # a frame per clip: plain means over the rows (bitwise as before frames)
            inv, k = np.arange(C), np.ones(C, np.int64)
        clip_epdms = self._clip_mean(self.epdms, inv, k)
        terms = {}
        for j, t in enumerate(TERMS):
            col = np.asarray(self.terms[:, j], np.float64)
            fin = np.isfinite(col)
            if not fin.any():
                terms[t] = float("nan")
                continue
            if C == len(self.epdms):
                terms[t] = float(np.nanmean(col))
                continue
            n_def = np.bincount(inv, weights=fin.astype(float), minlength=C)
            tot = np.bincount(inv, weights=np.where(fin, col, 0.0), minlength=C)
            terms[t] = float(np.mean(tot[n_def > 0] / n_def[n_def > 0]))
        return {"epdms": float(np.mean(clip_epdms)), "epdms_std_clips": float(np.std(clip_epdms)),
                "n_clips": int(C), "n_frames": int(len(self.epdms)), "terms": terms}


class SceneCache:
    """Prepared scorer scenes by frame id (scene preparation is per frame, model independent)."""

    def __init__(self):
        self._scenes: dict[str, object] = {}

    def get(self, clip: Clip):
        s = self._scenes.get(clip.frame_id)
        if s is None:
            s = prepare_scene(clip)
            self._scenes[clip.frame_id] = s
        return s


def score_planner(model, clips: list[Clip], spec: FeatureSpec, cache: SceneCache | None = None,
                  feats: dict | None = None, batch_size: int = 256) -> ClipScores:
    """Run ``model`` on ``clips`` and score its chosen trajectories with EPDMS.

    Args:
        model: a :class:`~mosaic_ray.planner.model.VocabularyPlanner` (eval mode is set).
        clips: the clips; ``feats`` may pass their precomputed features (with ``prev_*``).

    Raises:
        ValueError: empty ``clips``.
    """
    if not clips:
        raise ValueError("no clips to score")
    cache = cache or SceneCache()
    feats = feats if feats is not None else featurize_clips(clips, spec, with_prev=True)
    cur = plan_batches(model, feats, batch_size)
    prev = plan_batches(model, feats, batch_size, prefix="prev_")
    n = len(clips)
    epdms = np.zeros(n)
    terms = np.full((n, len(TERMS)), np.nan)
    ec_ok = np.zeros(n, bool)
    # the previous frame's plan is tracked from t0 - 0.5 s by the scorer (same vehicle geometry
    # and initial dynamics as the current frame); the tracking of every clip runs in one call
    prev_poses = [prev["trajectory"][i].astype(np.float64) if feats["prev_valid"][i] else None for i in range(n)]
    results = score_many([cache.get(c) for c in clips], cur["trajectory"].astype(np.float64), prev_poses)
    for i, res in enumerate(results):
        epdms[i] = res.epdms[0]
        for j, t in enumerate(TERMS):
            terms[i, j] = res.terms[t][0]
        ec_ok[i] = res.ec_available
    return ClipScores(np.array([c.clip_id for c in clips], dtype=object), epdms, terms, ec_ok,
                      cur["entropy"].astype(np.float64), cur["embedding"], cur["choice"].astype(np.int64),
                      cur["trajectory"], np.array([c.frame_id for c in clips], dtype=object))


def score_human(clips: list[Clip], cache: SceneCache | None = None) -> dict:
    """EPDMS of the logged human futures (no human filter): the data's own ceiling."""
    from mosaic_ray.scoring.epdms import score_human as _score_human

    cache = cache or SceneCache()
    vals, terms = [], {t: [] for t in TERMS}
    for c in clips:
        t, e = _score_human(cache.get(c))
        vals.append(e)
        for k in TERMS:
            terms[k].append(t[k])
    return {"epdms": float(np.mean(vals)),
            "terms": {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                      for k, v in ((k, np.asarray(v, float)) for k, v in terms.items())}}
