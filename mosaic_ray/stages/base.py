"""The base step: trajectory vocabulary, the base planner on D_train, its calibration and test EPDMS.

The vocabulary is k-means of the logged futures of D_train ∪ pool (mirrored too when the
recipe augments with mirror images), Hydra-MDP style; the base planner is trained on D_train
through Ray Train (:func:`mosaic_ray.stages.trainer.train_planner`; or the same loop in the
driver, ``train.base_backend: in_process``) and scored on the
calibration clips (the pilots' reference) and the test clips (budget 0 of the final tables,
next to the logged human driving: the data's own EPDMS ceiling).
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import numpy as np

from mosaic_ray import layout
from mosaic_ray.data.split import CALIBRATION, TEST
from mosaic_ray.planner.futures import expert_futures
from mosaic_ray.stages.ingest import load_clips
from mosaic_ray.stages.step import Context, Step, needs_of
from mosaic_ray.storage import Storage

if TYPE_CHECKING:
    from mosaic_ray.evaluate.planner_eval import SceneCache

# torch (the planner, its training and evaluation) is imported where a step runs, not with the
# step list: a `mosaic-ray` command starts without it

log = logging.getLogger(__name__)


def evaluate_checkpoint(storage: Storage, checkpoint: str, clips=None, cache: SceneCache | None = None) -> dict:
    """Utility of a stored planner checkpoint on some clips (default: the test split): ``{"epdms", "terms", "n_clips",
    "per_clip"}`` (EPDMS and the nine terms on the 0..1 scale, means over the clips;
    ``per_clip``: ``{"clip_id": [str], "epdms": [float]}`` for the bootstrap intervals of
    :mod:`mosaic_ray.evaluate.stats`).

    A checkpoint with non-finite weights is refused before it is scored, and a non-finite
    mean EPDMS is refused after, so no NaN model's number is ever reported as a result.

    Args:
        checkpoint: storage-relative ``planner/*.pt``.
        clips: the clips to score (default: the test split: final tables only).

    Raises:
        NonFiniteTrainingError: NaN/inf weights or a non-finite mean EPDMS (names the checkpoint).
    """
    from mosaic_ray.evaluate.planner_eval import score_planner
    from mosaic_ray.planner.model import load_checkpoint
    from mosaic_ray.planner.training import NonFiniteTrainingError, require_finite_weights

    model = load_checkpoint(storage.local_copy(checkpoint))
    require_finite_weights(model, f"checkpoint {storage.uri(checkpoint)}")
    feats = None
    if clips is None and cache is None:  # the test split: read, featurised and prepared once per process
        from mosaic_ray.stages import split_memo

        memo = split_memo.eval_inputs(storage, TEST, model.spec.features)
        if memo is not None:
            clips, feats, cache = memo
    clips = clips if clips is not None else load_clips(storage, TEST)
    scores = score_planner(model, clips, model.spec.features, cache=cache, feats=feats)
    util = scores.utility()
    # per-clip scores, so that the report's bootstrap intervals can be recomputed from the run
    util["per_clip"] = scores.per_clip()  # a clip's frames averaged: the bootstrap resamples clips
    if not np.isfinite(util["epdms"]):
        raise NonFiniteTrainingError(f"checkpoint {storage.uri(checkpoint)}: EPDMS is "
                                     f"{util['epdms']}; no result is reported for it")
    return util


def run_base(ctx: Context) -> dict:
    """Build the vocabulary, train and evaluate the base planner; returns the base payload
    (also written to ``planner/base_eval.json``)."""
    from mosaic_ray.evaluate.planner_eval import SceneCache, score_human
    from mosaic_ray.planner.model import build_vocabulary
    from mosaic_ray.stages.trainer import train_planner, train_planner_in_process

    st, cfg = ctx.storage, ctx.cfg
    fut = np.concatenate([expert_futures(load_clips(st, "train")), expert_futures(load_clips(st, "pool"))])
    if cfg.planner.augment_mirror:
        fut = np.concatenate([fut, fut * np.array([1.0, -1.0, -1.0])])
    anchors = build_vocabulary(fut, cfg.planner.vocab_size, seed=cfg.planner.seed)
    buf = io.BytesIO()
    np.save(buf, anchors)
    st.write_bytes(layout.VOCABULARY, buf.getvalue())
    log.info("[base] vocabulary of %d anchors from %d futures; training on D_train", len(anchors), len(fut))
    if cfg.train.base_backend == "in_process":
        info = train_planner_in_process(cfg, st, name="base", epochs=cfg.planner.base_epochs,
                                        seed=cfg.planner.seed, fresh=ctx.force, label="in_process")
    else:
        info = train_planner(cfg, st, name="base", epochs=cfg.planner.base_epochs, seed=cfg.planner.seed,
                             fresh=ctx.force)
    # calibration: what the pilots' gains are measured against; test: budget 0 of the final tables
    util_cal = evaluate_checkpoint(st, info["checkpoint"], load_clips(st, CALIBRATION))
    clips, cache = load_clips(st, TEST), SceneCache()
    util = evaluate_checkpoint(st, info["checkpoint"], clips, cache)
    human = score_human(clips, cache)
    payload = {**info, CALIBRATION: util_cal, TEST: util, "human": human, "vocab_size": int(len(anchors))}
    st.write_json(layout.BASE_EVAL, payload)
    return payload


#: the base step (needs the ingested clips)
STEP = Step("base", run_base,
            needs=needs_of({layout.INGEST_SUMMARY: "ingest"}),
            outputs=(layout.VOCABULARY, layout.BASE_CHECKPOINT, layout.BASE_EVAL),
            record=layout.BASE_RECORD, config_keys=("planner", "train.num_workers"), upstream=("ingest",),
            describe=lambda p: (f"test EPDMS {100 * p['test']['epdms']:.2f}, calibration "
                                f"{100 * p['calibration']['epdms']:.2f} "
                                f"(logged human {100 * p['human']['epdms']:.2f})"))
