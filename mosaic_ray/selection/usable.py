"""The one filter between the score table and everything that ranks, groups or selects clips.

The score stage keeps a row for every pool clip, also for clips it could not score: their
``status`` names the reason (``"score_error: ..."``, ``"decode_error: ..."``) and their scores
are NaN. Such a clip must never be ranked, put in a domain, picked by a selection strategy,
used in a pilot run or trained on. :func:`usable` is the only place that decides which rows
go on: a row is usable when its ``status`` is ``"ok"`` and its importance, entropy and
embedding are finite (an ``ok`` row with a NaN score is rejected as ``non_finite_score``).

The score stage scores frames (one row per t0); selection works on clips. :func:`clip_rows`
turns the frame rows into one row per clip first (importance and entropy averaged over the
clip's frames, MOSAIC §3.2.1 and §7.3), and a clip is usable only when every one of its frames
is.

The rows it drops stay accounted for: :class:`UsableScores` counts them by reason (the part of
``status`` before the first ``:``) and keeps their ids; the domains and select steps write
these counts into their outputs (``domains/<variant>.json`` and ``select/laws.json``:
``"excluded": {"score_error": 2}``) and hence into ``summary.json``.

:func:`mosaic_ray.stages.score.load_scores` reads the score table through this filter; the
domains step (:func:`mosaic_ray.stages.domains.run_domains`), the pool view of the pilot and
select steps (:func:`mosaic_ray.stages.domains.ranked_pool`) and D_train's embeddings for the
coreset baseline all read the table through ``load_scores`` and nothing else.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

__all__ = ["OK", "NON_FINITE_SCORE", "NO_STATUS", "UsableScores", "usable", "rejection_reason", "clip_rows"]

OK = "ok"
#: status "ok" but a NaN / inf importance, entropy or embedding
NON_FINITE_SCORE = "non_finite_score"
#: a row without a status value
NO_STATUS = "no_status"


def rejection_reason(status: str | None) -> str | None:
    """The reason a score row's ``status`` rejects its clip (None for ``"ok"``): the text
    before the first ``:`` (``"score_error: ValueError: ..."`` -> ``"score_error"``)."""
    if status is None or str(status).strip() == "":
        return NO_STATUS
    s = str(status).strip()
    if s == OK:
        return None
    return s.split(":", 1)[0].strip() or NO_STATUS


@dataclass(frozen=True)
class UsableScores:
    """The usable rows of a score table and what was left out.

    Attributes:
        table: the rows that may be ranked, grouped and selected (input row order kept).
        excluded: reason -> number of rows left out (sorted by reason; empty when none).
        excluded_ids: the clip ids left out, in input row order.
        n_scored: rows of the input table (``table.num_rows + sum(excluded.values())``).
    """

    table: pa.Table
    excluded: dict[str, int] = field(default_factory=dict)
    excluded_ids: tuple[str, ...] = ()
    n_scored: int = 0

    @property
    def n_usable(self) -> int:
        return int(self.table.num_rows)

    @property
    def n_excluded(self) -> int:
        return int(sum(self.excluded.values()))

    def accounting(self) -> dict:
        """``{"scored": n, "usable": n, "excluded": {reason: n}}`` (JSON-able, for stage outputs)."""
        return {"scored": int(self.n_scored), "usable": self.n_usable, "excluded": dict(self.excluded)}

    def describe(self) -> str:
        """One line for the log: ``"2 of 120 scored clips excluded (score_error: 2)"``."""
        if not self.excluded:
            return f"all {self.n_scored} scored clips usable"
        why = ", ".join(f"{k}: {v}" for k, v in self.excluded.items())
        return f"{self.n_excluded} of {self.n_scored} scored clips excluded ({why})"


def _finite_rows(scores: pa.Table) -> np.ndarray:
    """(n,) bool: importance, entropy and every embedding value finite (columns that exist)."""
    n = scores.num_rows
    ok = np.ones(n, dtype=bool)
    for col in ("importance", "entropy"):
        if col in scores.column_names:
            v = np.asarray(scores.column(col).to_numpy(zero_copy_only=False), dtype=np.float64)
            ok &= np.isfinite(v)
    if "embedding" in scores.column_names and n:
        emb = scores.column("embedding").combine_chunks()
        flat = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
        if emb.null_count == 0 and flat.size % n == 0:
            ok &= np.isfinite(flat.reshape(n, -1)).all(axis=1)
        else:  # null or ragged rows: row by row (a null embedding is not finite)
            ok &= np.array([v is not None and bool(np.isfinite(np.asarray(v, np.float64)).all())
                            for v in emb.to_pylist()], dtype=bool)
    return ok


def usable(scores: pa.Table) -> UsableScores:
    """Split a score table into its usable rows and the rejected ones, counted by reason.

    A row is usable when ``status == "ok"`` and its ``importance``, ``entropy`` and
    ``embedding`` are finite (where the table has those columns). A table without a
    ``status`` column is taken as all ``ok`` (finiteness is still checked).

    Args:
        scores: a score table (:func:`mosaic_ray.stages.score.scores_schema`), at least
            ``clip_id``.

    Returns:
        :class:`UsableScores` (the usable rows in input order, the counts and ids of the rest).
    """
    n = scores.num_rows
    statuses = scores.column("status").to_pylist() if "status" in scores.column_names else [OK] * n
    reasons = [rejection_reason(s) for s in statuses]
    finite = _finite_rows(scores)
    reasons = [r if r is not None or f else NON_FINITE_SCORE for r, f in zip(reasons, finite)]
    keep = np.array([r is None for r in reasons], dtype=bool)
    if keep.all():
        return UsableScores(scores, {}, (), n)
    ids = scores.column("clip_id").to_pylist()
    dropped = [str(i) for i, k in zip(ids, keep) if not k]
    counts = Counter(r for r in reasons if r is not None)
    return UsableScores(scores.filter(pa.array(keep)), dict(sorted(counts.items())), tuple(dropped), n)


#: per-frame score columns averaged into a clip's row (NaN propagates: a clip is usable only when
#: every frame is); the nine terms are averaged over the frames where they are defined (EC)
_MEAN_COLUMNS = ("importance", "entropy")


def clip_rows(scores: pa.Table) -> pa.Table:
    """One score row per clip from a score table of frames (rows sharing a ``clip_id``).

    A clip's ``importance`` is the mean EPDMS of the base model over its frames and its
    ``entropy`` the mean entropy (MOSAIC §3.2.1, §7.3: scores of a virtual clip are averaged
    over its frames); the nine terms are means over the frames where defined (EC); the
    ``embedding`` is the frames' mean; ``ec_available`` is True when any frame has EC;
    ``choice`` and the metadata are the first frame's; ``status`` is ``"ok"`` when every frame
    is, else the first failing frame's status (so :func:`usable` rejects the whole clip with
    that frame's reason). ``frame_id`` is dropped and ``n_frames`` (int64) added. Clips keep
    the order of their first frame.

    Args:
        scores: a frame score table (:func:`mosaic_ray.stages.score.scores_schema`) with at
            least ``clip_id``. A table without ``frame_id``, or where every clip has one
            frame, is returned unchanged (a clip per frame).

    Returns:
        The clip table: C rows, the input's columns less ``frame_id``, plus ``n_frames``.
    """
    n = scores.num_rows
    if "frame_id" not in scores.column_names or n == 0:
        return scores
    ids = np.asarray(scores.column("clip_id").to_pylist(), dtype=object).astype(str)
    uniq, first, inv = np.unique(ids, return_index=True, return_inverse=True)
    if uniq.size == n:
        return scores
    order = np.argsort(first, kind="stable")  # clips in the order of their first frame
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    g = rank[inv]  # (n,) clip index of every frame, in output order
    C = uniq.size
    counts = np.bincount(g, minlength=C)
    out = scores.take(pa.array(first[order], pa.int64())).drop_columns(["frame_id"])
    cols: dict[str, pa.Array] = {}
    for name in out.column_names:
        if name in _MEAN_COLUMNS:
            v = np.asarray(scores.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
            cols[name] = pa.array(np.bincount(g, weights=v, minlength=C) / counts, pa.float64())
        elif name == "embedding":
            col = scores.column(name).combine_chunks()
            flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
            if col.null_count == 0 and flat.size % n == 0 and flat.size:
                emb = flat.reshape(n, -1)
                mean = np.zeros((C, emb.shape[1]))
                np.add.at(mean, g, emb)
                mean /= counts[:, None]
                cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(mean.astype(np.float32).ravel()),
                                                               emb.shape[1]).cast(out.schema.field(name).type)
        elif name == "ec_available":
            v = np.asarray(scores.column(name).to_numpy(zero_copy_only=False), dtype=bool)
            cols[name] = pa.array(np.bincount(g, weights=v.astype(float), minlength=C) > 0)
        elif name == "status":
            st = scores.column(name).to_pylist()
            worst: list = [OK] * C
            for i in np.flatnonzero([x != OK for x in st]):  # frames not ok: the clip's first one
                if worst[g[i]] == OK:
                    worst[g[i]] = st[i]
            cols[name] = pa.array(worst, pa.string())
        elif pa.types.is_floating(out.schema.field(name).type):  # a term: mean where defined
            v = np.asarray(scores.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
            fin = np.isfinite(v)
            k = np.bincount(g, weights=fin.astype(float), minlength=C)
            tot = np.bincount(g, weights=np.where(fin, v, 0.0), minlength=C)
            with np.errstate(invalid="ignore", divide="ignore"):
                cols[name] = pa.array(np.where(k > 0, tot / np.maximum(k, 1), np.nan), pa.float64())
    for name, arr in cols.items():
        out = out.set_column(out.schema.get_field_index(name), out.schema.field(name), arr)
    return out.append_column("n_frames", pa.array(counts.astype(np.int64)))
