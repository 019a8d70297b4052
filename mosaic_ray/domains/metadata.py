"""Domains from a metadata column (site by default): MOSAIC §3.2.1's geolocation clustering.

The pool is partitioned by the value of one column of the score table (``site``,
``segment``, ``scenario_id`` or ``dataset``); clips are then ranked within each domain by
importance, lowest EPDMS first (:func:`mosaic_ray.selection.strategies.rank_within_domains`).
"""

from __future__ import annotations

from mosaic_ray.errors import MosaicError
import numpy as np
import pyarrow as pa

from mosaic_ray.selection.strategies import PoolView


class DomainError(MosaicError, ValueError):
    """Domains cannot be formed (missing column, null labels, empty pool); the message is one
    line naming the column and the fix (the CLI exits 1)."""


def assign_domains(table: pa.Table, column: str) -> np.ndarray:
    """Domain label per row of ``table``: (n,) object array of str.

    Raises:
        DomainError: the column is missing or a row has no value.
    """
    if column not in table.column_names:
        raise DomainError(f"domain column {column!r} not in the score table "
                          f"(columns: {', '.join(table.column_names)}); set domains.column (or the variant's "
                          "column) to one of them")
    vals = table.column(column).to_pylist()
    missing = [i for i, v in enumerate(vals) if v is None or v == ""]
    if missing:
        ids = table.column("clip_id").to_pylist()
        raise DomainError(f"{len(missing)} clips have no {column!r} value, e.g. {ids[missing[0]]}: choose "
                          "another domain column (domains.column) or re-ingest the clips")
    return np.asarray(vals, dtype=object)


def pool_view(scores: pa.Table, column: str) -> PoolView:
    """A :class:`PoolView` of the scored pool: ids, domains, importance (NaN for clips that
    could not be scored: they rank last), embeddings and entropy.

    Raises:
        DomainError: empty pool or see :func:`assign_domains`.
    """
    if scores.num_rows == 0:
        raise DomainError("the pool is empty (no usable scored clip): check ingest/summary.json and the "
                          "score step's errors")
    ids = np.asarray(scores.column("clip_id").to_pylist(), dtype=object)
    imp = np.asarray(scores.column("importance").to_numpy(zero_copy_only=False), dtype=np.float64)
    emb = None
    if "embedding" in scores.column_names:
        flat = scores.column("embedding").combine_chunks()
        emb = np.asarray(flat.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(ids), -1)
    ent = np.asarray(scores.column("entropy").to_numpy(zero_copy_only=False), np.float64) \
        if "entropy" in scores.column_names else None
    return PoolView(ids, assign_domains(scores, column), imp, emb, ent)
