"""A per-process memo of the splits that small trainings read again and again.

Grid cells and pilot runs train inside Ray Tune trials on reused actors (``reuse_actors``):
one actor process runs many cells of one run, and every cell needs the featurised D_train,
the featurised selected pool clips and its evaluation split (clips, features at t0 and
t0 − 0.5 s, prepared scorer scenes). Without a memo each cell reads, decodes and featurises
them again (about 1–5 s a cell, as much as a small cell's training). This module keeps them
per process, so each split is featurised once per process and a cell only indexes its rows
(issue 12 part 6: "featurise each split once per run and reuse it").

Keys: the split's storage URI, its shard files and their sizes (:meth:`Storage.sizes`, what
the ingest record stores), and the feature spec: a re-ingested split or another planner size
is a different entry. Splits of more than :data:`MAX_TRAIN_ROWS` (training features) or
:data:`MAX_EVAL_ROWS` clips (evaluation inputs: prepared scenes are larger) are not memoised;
the callers then featurise what they need, as before. Results are identical either way
(features are computed per clip; tests/test_split_memo.py compares them).

Pure Python (no Ray); thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable

import numpy as np

from mosaic_ray import layout

if TYPE_CHECKING:
    import pyarrow as pa

    from mosaic_ray.planner.features import FeatureSpec
    from mosaic_ray.planner.model import PlannerSpec
    from mosaic_ray.storage import Storage

#: largest split (clips) whose training features are memoised (~12 KB a clip)
MAX_TRAIN_ROWS = 50_000
#: largest split (clips) whose evaluation inputs (clips, features, prepared scenes) are memoised
MAX_EVAL_ROWS = 5_000
#: entries kept per process (least recently used dropped first)
MAX_ENTRIES = 8

_LOCK = threading.Lock()
_MEMO: "OrderedDict[tuple, object]" = OrderedDict()
_ROWS: dict[tuple, int] = {}  #: clips per (uri, files): tiny, outside the LRU so they never evict features
_STATS = {"hits": 0, "misses": 0}


def _split_key(storage: "Storage", split: str) -> tuple:
    rel = layout.clips(split)
    return storage.uri(rel), tuple(storage.sizes(rel).items())


def _memo(key: tuple, build):
    with _LOCK:
        if key in _MEMO:
            _MEMO.move_to_end(key)
            _STATS["hits"] += 1
            return _MEMO[key]
    value = build()  # outside the lock: featurising takes seconds
    with _LOCK:
        _STATS["misses"] += 1
        _MEMO[key] = value
        _MEMO.move_to_end(key)
        while len(_MEMO) > MAX_ENTRIES:
            _MEMO.popitem(last=False)
    return value


def clear() -> None:
    """Forget every memoised split (tests; a process that rewrites a split of the same sizes)."""
    with _LOCK:
        _MEMO.clear()
        _ROWS.clear()
        _STATS.update(hits=0, misses=0)


def stats() -> dict[str, int]:
    """``{"hits", "misses", "entries"}`` of this process's memo."""
    with _LOCK:
        return {**_STATS, "entries": len(_MEMO)}


def training_features(storage: "Storage", spec: "PlannerSpec", split: str,
                      featurize: "Callable[[pa.Table, PlannerSpec], dict[str, np.ndarray]]"
                      ) -> dict[str, np.ndarray] | None:
    """Training features of every clip of ``split``: ``featurize(table, spec)`` of the whole
    split (the caller passes :func:`~mosaic_ray.stages.trainer.featurize_batch`: its
    ``FEATURE_KEYS`` arrays (N, ...) float32 / bool, ``clip_id`` (N,) str, ``finite`` (N,)
    bool), in storage order; ``None`` when the split has more than :data:`MAX_TRAIN_ROWS` clips
    (the caller featurises its rows itself). The memo key is the split's files and
    ``spec.features``, so ``featurize`` must depend on nothing else.

    The arrays are shared between callers: index them, never write into them.
    """
    uri, files = _split_key(storage, split)
    if _rows(storage, uri, files) > MAX_TRAIN_ROWS:
        return None
    return _memo(("train", uri, files, spec.features),
                 lambda: featurize(storage.read_table(layout.clips(split)), spec))


def eval_inputs(storage: "Storage", split: str, features: "FeatureSpec"):
    """``(clips, feats, scene_cache)`` of ``split`` for :func:`~mosaic_ray.evaluate.planner_eval.score_planner`:
    the :class:`~mosaic_ray.data.clip.Clip` list in storage order, their features at t0 and
    t0 − 0.5 s (:func:`~mosaic_ray.planner.features.featurize_clips`, ``with_prev=True``) and a
    :class:`~mosaic_ray.evaluate.planner_eval.SceneCache` that keeps the prepared scenes (one
    memo entry); ``None`` when the split has more than :data:`MAX_EVAL_ROWS` clips."""
    from mosaic_ray.data.clip import clips_from_table
    from mosaic_ray.evaluate.planner_eval import SceneCache
    from mosaic_ray.planner.features import featurize_clips

    uri, files = _split_key(storage, split)
    if _rows(storage, uri, files) > MAX_EVAL_ROWS:
        return None

    def build():
        clips = clips_from_table(storage.read_table(layout.clips(split)))
        return clips, featurize_clips(clips, features, with_prev=True), SceneCache()

    return _memo(("eval", uri, files, features), build)


def _rows(storage: "Storage", uri: str, files: tuple) -> int:
    """Clips in the shards ``files`` (from their Parquet footers; counted once per file list)."""
    import pyarrow.parquet as pq

    key = (uri, files)
    with _LOCK:
        if key in _ROWS:
            return _ROWS[key]
    n = 0
    for rel, _ in files:
        if rel.endswith(".parquet"):
            with storage.fs.open_input_file(storage.path(rel)) as f:
                n += pq.ParquetFile(f).metadata.num_rows
    with _LOCK:
        _ROWS[key] = n
    return n
