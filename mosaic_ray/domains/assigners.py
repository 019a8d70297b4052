"""Domain assigners behind one interface, and a small registry (MOSAIC §3.2.1, paper Table 8).

Three ways to partition the pool into domains:

============= ==================================== =========================================
kind          class                                data it needs
============= ==================================== =========================================
``metadata``  :class:`MetadataAssigner` (column)   score table (or clips) with the column
``captions``  :class:`~mosaic_ray.domains.captions.CaptionAssigner`   the pool clips
``embedding`` :class:`~mosaic_ray.domains.embedding.EmbeddingAssigner` planner embeddings
============= ==================================== =========================================

Every assigner has ``kind``, ``fit_assign(...) -> (n,) object labels`` and ``describe()``
(JSON-able, for the report). ``fit_assign`` accepts the same keywords for every kind, so the
pipeline can call them uniformly::

    labels = assigner.fit_assign(scores=scores, clips=pool_clips,
                                 fit_clips=train_clips, fit_embeddings=train_embeddings)
    pool = pool_view_with_domains(scores, labels)

With ``scores`` given, labels are aligned to the score table's rows. Each assigner ignores
keywords it does not use.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from mosaic_ray.domains.captions import CaptionAssigner
from mosaic_ray.domains.embedding import EmbeddingAssigner
from mosaic_ray.domains.metadata import DomainError, assign_domains, pool_view
from mosaic_ray.selection.strategies import PoolView

__all__ = ["DomainAssigner", "MetadataAssigner", "CaptionAssigner", "EmbeddingAssigner",
           "make_assigner", "register_assigner", "known_assigners", "pool_view_with_domains"]


@runtime_checkable
class DomainAssigner(Protocol):
    """Interface of a domain assigner: ``fit_assign(**data) -> (n,) object`` and ``describe()``."""

    kind: str

    def fit_assign(self, *args: Any, **kw: Any) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


class MetadataAssigner:
    """Domains = values of one metadata column (``site``, ``segment``, ``scenario_id``,
    ``dataset``): MOSAIC's geolocation clustering. Wraps
    :func:`mosaic_ray.domains.metadata.assign_domains`.

    Parameters
    ----------
    column : str
        Column of the score table (or attribute of a clip).
    """

    kind = "metadata"

    def __init__(self, column: str = "site"):
        self.column = str(column)
        self.labels_: np.ndarray | None = None

    def fit_assign(self, scores: Any = None, *, clips: Sequence[Any] | None = None,
                   clip_ids: Sequence[str] | None = None, **_: Any) -> np.ndarray:
        """(n,) object labels from ``scores[column]`` (preferred) or ``clip.<column>``.

        With ``clips`` and ``clip_ids`` the output follows ``clip_ids``.

        Raises
        ------
        DomainError
            Missing column/attribute, a clip without a value, or no data given.
        """
        if scores is not None:
            labels = assign_domains(scores, self.column)
        elif clips is not None:
            if clips and not hasattr(clips[0], self.column):
                raise DomainError(f"clips have no attribute {self.column!r}")
            by_id = {str(c.clip_id): getattr(c, self.column) for c in clips}
            ids = [str(c.clip_id) for c in clips] if clip_ids is None else [str(i) for i in clip_ids]
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise DomainError(f"{len(missing)} clip ids not among the clips, e.g. {missing[0]}")
            vals = [by_id[i] for i in ids]
            empty = [i for i, v in zip(ids, vals) if v is None or v == ""]
            if empty:
                raise DomainError(f"{len(empty)} clips have no {self.column!r} value, e.g. {empty[0]}")
            labels = np.asarray(vals, dtype=object)
        else:
            raise DomainError("metadata domains need a score table or clips")
        self.labels_ = labels
        return labels

    def describe(self) -> dict[str, Any]:
        """``{kind, column, clusters: [{label, size}]}`` (labels sorted). RuntimeError before fit."""
        if self.labels_ is None:
            raise RuntimeError("MetadataAssigner is not fitted; call fit_assign first")
        cnt = Counter(self.labels_.tolist())
        return {"kind": self.kind, "column": self.column,
                "clusters": [{"label": k, "size": int(cnt[k])} for k in sorted(cnt, key=str)]}


_REGISTRY: dict[str, Callable[..., Any]] = {
    "metadata": MetadataAssigner,
    "captions": CaptionAssigner,
    "embedding": EmbeddingAssigner,
}


def register_assigner(kind: str, factory: Callable[..., Any]) -> None:
    """Register an assigner factory under ``kind`` (lower-cased); replaces an existing entry."""
    _REGISTRY[kind.lower()] = factory


def known_assigners() -> list[str]:
    """Sorted kinds accepted by :func:`make_assigner`."""
    return sorted(_REGISTRY)


def make_assigner(kind: str, **kw: Any) -> Any:
    """Build a domain assigner: ``metadata`` (column=...), ``captions`` (k, seed, max_features,
    n_init, thresholds), ``embedding`` (k, seed, backend, n_init, niter).

    Raises ValueError for an unknown kind (the message lists the known ones).
    """
    key = str(kind).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown domain assigner {kind!r}; known: {', '.join(known_assigners())}")
    return _REGISTRY[key](**kw)


def pool_view_with_domains(scores: Any, labels: np.ndarray) -> PoolView:
    """:class:`PoolView` of the score table (ids, importance, embeddings, entropy — see
    :func:`mosaic_ray.domains.metadata.pool_view`) with ``labels`` (n,) as the domains.

    Raises DomainError for an empty pool or labels of the wrong length / with missing values.
    """
    labels = np.asarray(labels, dtype=object)
    if labels.shape != (scores.num_rows,):
        raise DomainError(f"{labels.shape[0] if labels.ndim else 0} labels for "
                          f"{scores.num_rows} scored clips")
    if any(v is None or v == "" for v in labels.tolist()):
        raise DomainError("some clips have no domain label")
    base = pool_view(scores, "clip_id")
    return dataclasses.replace(base, domains=labels)
