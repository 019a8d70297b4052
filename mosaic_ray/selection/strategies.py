"""Selection strategies: MOSAIC and the baselines behind one small interface (paper §3.2, §7.3).

A strategy maps a :class:`PoolView` (numpy arrays describing the candidate pool) and a list of
budgets to one :class:`Selection` per budget. Every strategy here is *nested*: the selection
for a smaller budget is a prefix of the selection for a larger one.

Ranking convention (MOSAIC §3.2.1): within a domain, clips are ranked by the base model's
EPDMS on the clip, lowest first (the planner struggles most there), ties broken by clip id;
NaN importance ranks last. Domains are ordered by sorted name, so the allocator's
"lowest domain index" tie-break means "alphabetically first domain".

New baselines register with :func:`register_strategy` and are built with
:func:`make_strategy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from mosaic_ray.selection.allocator import greedy_allocate, within_domain_ranks
from mosaic_ray.selection.budgets import resolve_budgets
from mosaic_ray.selection.scaling_law import ScalingLaw

__all__ = [
    "PoolView", "Selection", "SelectionStrategy", "MosaicStrategy", "RandomStrategy",
    "rank_within_domains", "domain_ranks", "validate_budgets", "make_strategy",
    "register_strategy", "known_strategies", "selection_manifest", "sorted_domains",
]


def sorted_domains(values: Iterable[Any]) -> list[Any]:
    """Distinct domain names in a deterministic order (natural sort, else by ``str``)."""
    uniq = set(values)
    try:
        return sorted(uniq)
    except TypeError:
        return sorted(uniq, key=str)


@dataclass(frozen=True)
class PoolView:
    """Read-only view of the candidate pool as parallel numpy arrays.

    Attributes
    ----------
    clip_ids : np.ndarray, shape (n,), object (str)
        Unique clip identifiers.
    domains : np.ndarray, shape (n,), object (str)
        Domain (cluster) name of each clip.
    importance : np.ndarray, shape (n,), float64
        Base model's EPDMS on the clip, 0..1; lower = more important (MOSAIC §3.2.1).
    embeddings : np.ndarray, shape (n, d), float32, optional
        Planner features (for coreset / chameleon baselines).
    entropy : np.ndarray, shape (n,), float64, optional
        Mean trajectory-softmax entropy in nats (for the uncertainty baseline).

    Raises
    ------
    ValueError
        On mismatched lengths, non-1-D arrays, duplicate clip ids, or a non-2-D ``embeddings``.
    """

    clip_ids: np.ndarray
    domains: np.ndarray
    importance: np.ndarray
    embeddings: np.ndarray | None = None
    entropy: np.ndarray | None = None

    def __post_init__(self) -> None:
        ids = np.asarray(self.clip_ids, dtype=object)
        doms = np.asarray(self.domains, dtype=object)
        imp = np.asarray(self.importance, dtype=np.float64)
        for name, arr in (("clip_ids", ids), ("domains", doms), ("importance", imp)):
            if arr.ndim != 1:
                raise ValueError(f"PoolView.{name} must be 1-D, got shape {arr.shape}")
        n = ids.shape[0]
        if doms.shape[0] != n or imp.shape[0] != n:
            raise ValueError(f"PoolView arrays differ in length: clip_ids {n}, domains "
                             f"{doms.shape[0]}, importance {imp.shape[0]}")
        if len(set(ids.tolist())) != n:
            raise ValueError("PoolView.clip_ids must be unique")
        object.__setattr__(self, "clip_ids", ids)
        object.__setattr__(self, "domains", doms)
        object.__setattr__(self, "importance", imp)
        if self.embeddings is not None:
            emb = np.asarray(self.embeddings, dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != n:
                raise ValueError(f"PoolView.embeddings must have shape ({n}, d), got {emb.shape}")
            object.__setattr__(self, "embeddings", emb)
        if self.entropy is not None:
            ent = np.asarray(self.entropy, dtype=np.float64)
            if ent.shape != (n,):
                raise ValueError(f"PoolView.entropy must have shape ({n},), got {ent.shape}")
            object.__setattr__(self, "entropy", ent)

    def __len__(self) -> int:
        return int(self.clip_ids.shape[0])

    @property
    def domain_names(self) -> list[Any]:
        """Distinct domains, sorted (the domain index order used by the allocator)."""
        return sorted_domains(self.domains.tolist())


@dataclass(frozen=True)
class Selection:
    """One budget's selection, in selection order (step 0 first).

    Attributes
    ----------
    method : str
        Strategy name.
    budget : int
        B, equal to ``len(self)``.
    clip_ids, domains : np.ndarray, shape (B,), object
        Selected clips and their domains.
    ranks : np.ndarray, shape (B,), int64
        0-based rank of the clip within its domain (lowest base EPDMS first, ties by clip id).
    steps : np.ndarray, shape (B,), int64
        0-based selection step (``arange(B)``).
    pool_indices : np.ndarray, shape (B,), int64
        Row of each clip in the :class:`PoolView` it was selected from.
    """

    method: str
    budget: int
    clip_ids: np.ndarray
    domains: np.ndarray
    ranks: np.ndarray
    steps: np.ndarray
    pool_indices: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.clip_ids.shape[0])

    @property
    def composition(self) -> dict[Any, int]:
        """Domain → number of selected clips (domains sorted; only domains present)."""
        names, counts = np.unique(self.domains.astype(str), return_counts=True)
        by_str = dict(zip(names.tolist(), counts.tolist()))
        return {d: int(by_str[str(d)]) for d in sorted_domains(self.domains.tolist())}

    def rows(self) -> list[dict[str, Any]]:
        """Manifest rows ``{method, budget, clip_id, domain, rank, step}`` (Python scalars)."""
        return [
            {"method": self.method, "budget": int(self.budget), "clip_id": cid, "domain": dom,
             "rank": int(r), "step": int(s)}
            for cid, dom, r, s in zip(self.clip_ids.tolist(), self.domains.tolist(),
                                      self.ranks.tolist(), self.steps.tolist())
        ]


@runtime_checkable
class SelectionStrategy(Protocol):
    """Interface of a data-selection strategy (MOSAIC or a §7.3 baseline).

    ``select(pool, budgets)`` returns ``{B: Selection}`` for each distinct budget (sorted); it
    raises ValueError for an invalid budget (see :func:`validate_budgets`).
    """

    name: str

    def select(self, pool: PoolView, budgets: Sequence[int]) -> dict[int, Selection]: ...


# ---------------------------------------------------------------------- helpers
def validate_budgets(budgets: Iterable[Any], pool_size: int) -> list[int]:
    """Clip-count budgets checked against the pool, de-duplicated and sorted ascending
    (:func:`mosaic_ray.selection.budgets.resolve_budgets` without pool fractions).

    Raises
    ------
    ValueError
        (:class:`~mosaic_ray.selection.budgets.BudgetError`) no budgets, a budget that is not
        a positive integer, or one that exceeds ``pool_size`` (the message names both).
    """
    return resolve_budgets(budgets, pool_size, fractions=False)


def rank_within_domains(pool: PoolView) -> dict[Any, np.ndarray]:
    """Domain → (n_d,) int64 pool indices sorted by importance ascending, ties by clip id.

    Lowest base-model EPDMS first (the most important clip, MOSAIC §3.2.1); NaN importance
    ranks last. Keys are in :func:`sorted_domains` order.
    """
    ids = np.asarray([str(c) for c in pool.clip_ids.tolist()], dtype=str)
    imp = pool.importance
    out: dict[Any, np.ndarray] = {}
    for dom in pool.domain_names:
        idx = np.flatnonzero(pool.domains == dom)
        # lexsort: last key is primary. NaN importance sorts last in numpy.
        order = np.lexsort((ids[idx], imp[idx]))
        out[dom] = idx[order].astype(np.int64)
    return out


def domain_ranks(pool: PoolView, ranked: Mapping[Any, np.ndarray] | None = None) -> np.ndarray:
    """(n,) int64: each pool clip's 0-based rank within its domain (see :func:`rank_within_domains`)."""
    ranked = rank_within_domains(pool) if ranked is None else ranked
    rank_of = np.empty(len(pool), dtype=np.int64)
    for idx in ranked.values():
        rank_of[idx] = np.arange(idx.size)
    return rank_of


def _selection(method: str, pool: PoolView, indices: np.ndarray, rank_of: np.ndarray) -> Selection:
    idx = np.asarray(indices, dtype=np.int64)
    return Selection(method=method, budget=int(idx.size), clip_ids=pool.clip_ids[idx].copy(),
                     domains=pool.domains[idx].copy(), ranks=rank_of[idx].copy(),
                     steps=np.arange(idx.size, dtype=np.int64), pool_indices=idx.copy())


# ---------------------------------------------------------------------- strategies
class MosaicStrategy:
    """MOSAIC (Algorithm 1): greedy first-difference allocation over ranked domains.

    Parameters
    ----------
    laws : mapping domain → :class:`ScalingLaw`
        One fitted law per domain of the pool (extra domains are ignored).

    ``select`` runs :func:`greedy_allocate` once at the largest budget (capacities = domain
    sizes) and returns prefixes of that order, each step taking the next-ranked clip of the
    chosen domain, so selections are nested. Raises ValueError if a pool domain has no law.
    """

    name = "mosaic"

    def __init__(self, laws: Mapping[Any, ScalingLaw]):
        self.laws = dict(laws)
        for d, law in self.laws.items():
            if not isinstance(law, ScalingLaw):
                raise ValueError(f"law for domain {d!r} is not a ScalingLaw: {law!r}")

    def allocation(self, pool: PoolView, budget: int) -> tuple[list[Any], np.ndarray, np.ndarray]:
        """(domain names (M,), counts (M,) int64, order (B,) int32) of the greedy at ``budget``.

        Raises ValueError for a pool domain without a law or a budget above the pool size.
        """
        ranked = rank_within_domains(pool)
        names = list(ranked)
        missing = [d for d in names if d not in self.laws]
        if missing:
            raise ValueError(f"MosaicStrategy has no scaling law for domain(s) {missing}; "
                             f"laws given for {sorted_domains(self.laws)}")
        laws = [self.laws[d] for d in names]
        caps = np.array([ranked[d].size for d in names], dtype=np.int64)
        counts, order = greedy_allocate(laws, caps, budget)
        return names, counts, order

    def select(self, pool: PoolView, budgets: Sequence[int]) -> dict[int, Selection]:
        """Nested MOSAIC selections for each budget (see class docstring)."""
        bs = validate_budgets(budgets, len(pool))
        ranked = rank_within_domains(pool)
        rank_of = domain_ranks(pool, ranked)
        names, _, order = self.allocation(pool, bs[-1])
        steps_rank = within_domain_ranks(order, len(names))
        idx = np.array([ranked[names[d]][r] for d, r in zip(order.tolist(), steps_rank.tolist())],
                       dtype=np.int64)
        return {b: _selection(self.name, pool, idx[:b], rank_of) for b in bs}


class RandomStrategy:
    """Random baseline (§7.3): one fixed shuffle of the pool, budget B takes the first B.

    The shuffle is ``np.random.default_rng(seed).permutation`` applied to the clip ids sorted
    as strings, so it depends only on the set of clip ids and the seed, not on the pool's row
    order. Nested across budgets.
    """

    name = "random"

    def __init__(self, seed: int = 42):
        self.seed = int(seed)

    def shuffle(self, pool: PoolView) -> np.ndarray:
        """(n,) int64 pool indices in shuffled order."""
        ids = np.asarray([str(c) for c in pool.clip_ids.tolist()], dtype=str)
        by_id = np.argsort(ids, kind="stable")
        perm = np.random.default_rng(self.seed).permutation(len(pool))
        return by_id[perm].astype(np.int64)

    def select(self, pool: PoolView, budgets: Sequence[int]) -> dict[int, Selection]:
        """Nested random selections for each budget."""
        bs = validate_budgets(budgets, len(pool))
        rank_of = domain_ranks(pool)
        idx = self.shuffle(pool)
        return {b: _selection(self.name, pool, idx[:b], rank_of) for b in bs}


# ---------------------------------------------------------------------- registry
_REGISTRY: dict[str, Callable[..., SelectionStrategy]] = {
    "mosaic": MosaicStrategy,
    "random": RandomStrategy,
}


def register_strategy(name: str, factory: Callable[..., SelectionStrategy]) -> None:
    """Register a strategy factory under ``name`` (lower-cased). Replaces an existing entry."""
    _REGISTRY[name.lower()] = factory


def known_strategies() -> list[str]:
    """Sorted names accepted by :func:`make_strategy`."""
    return sorted(_REGISTRY)


def make_strategy(name: str, **kw: Any) -> SelectionStrategy:
    """Build a registered strategy by name (case-insensitive), passing ``kw`` to its factory.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known ones.
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown selection strategy {name!r}; known: {', '.join(known_strategies())}")
    return _REGISTRY[key](**kw)


def selection_manifest(selections: Mapping[int, Selection] | Iterable[Selection]) -> list[dict[str, Any]]:
    """Flatten selections into Parquet-ready rows ``{method, budget, clip_id, domain, rank, step}``.

    Accepts ``{B: Selection}`` (from ``select``) or any iterable of selections (e.g. several
    methods' values chained). Rows are ordered by input order, then step.
    """
    sels = selections.values() if isinstance(selections, Mapping) else selections
    rows: list[dict[str, Any]] = []
    for sel in sels:
        rows.extend(sel.rows())
    return rows
