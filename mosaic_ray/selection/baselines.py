"""Baseline and ablation selection strategies (MOSAIC paper §7.3; ``shared/docs/METHOD.md``).

Every strategy here follows the :class:`~mosaic_ray.selection.strategies.SelectionStrategy`
interface: ``select(pool, budgets) -> {B: Selection}`` with exactly B distinct pool clips per
budget, nested across budgets (the selection for a smaller budget is a prefix of the one for a
larger budget), and a ``ValueError`` when a budget exceeds the pool
(:func:`~mosaic_ray.selection.strategies.validate_budgets`).

==================== =====================================================================
name                 rule
==================== =====================================================================
``uncertainty``      top-B by mean Shannon entropy of the planner's vocabulary softmax
``coreset``          k-center greedy in embedding space, seeded with the training set
``chameleon``        domain weights from kernel-ridge leverage scores (Chameleon Alg. 4),
                     nested sequential sampling of domains by weight
``mosaic_no_cluster`` MOSAIC ablation "w/o clustering": the B lowest-importance pool clips
``mosaic_no_rank``   MOSAIC ablation "w/o ranking": greedy allocation from laws fitted on
                     unranked pilots, clips taken in a seeded random order within each domain
==================== =====================================================================

Determinism: every order depends only on the *set* of clip ids (and the seed), never on the
pool's row order; ties are broken by clip id (as strings, ascending).

The ``ranks`` column of each returned :class:`Selection` keeps its meaning from
:mod:`mosaic_ray.selection.strategies`: the clip's importance rank within its domain (lowest
base-model EPDMS first), whatever rule picked the clip.

Importing this module registers the strategies in the strategy registry
(:func:`~mosaic_ray.selection.strategies.make_strategy`); ``mosaic_ray.selection`` imports it.
No Ray imports; torch is imported lazily by :class:`CoresetStrategy`.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from mosaic_ray.selection.allocator import within_domain_ranks
from mosaic_ray.selection.scaling_law import ScalingLaw
from mosaic_ray.selection.strategies import (MosaicStrategy, PoolView, Selection, _selection,
                                             domain_ranks, register_strategy, validate_budgets)

__all__ = [
    "UncertaintyStrategy", "CoresetStrategy", "ChameleonStrategy", "MosaicNoClusterStrategy",
    "MosaicNoRankStrategy", "k_center_greedy", "chameleon_weights", "leverage_scores",
    "domain_mean_embeddings", "unranked_order", "id_rank",
]

#: names registered by this module


# ---------------------------------------------------------------------- helpers
def _str_ids(pool: PoolView) -> np.ndarray:
    return np.asarray([str(c) for c in pool.clip_ids.tolist()], dtype=str)


def id_rank(pool: PoolView) -> np.ndarray:
    """(n,) int64: each clip's position when the pool's clip ids are sorted as strings.

    The universal tie-breaker of this module (lower id rank wins a tie).
    """
    order = np.argsort(_str_ids(pool), kind="stable")
    rank = np.empty(len(pool), dtype=np.int64)
    rank[order] = np.arange(len(pool), dtype=np.int64)
    return rank


def _domain_seed(seed: int, domain: Any) -> np.random.Generator:
    """Generator for one domain: depends on ``seed`` and the domain's name only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(str(domain).encode("utf-8"))])


def unranked_order(pool: PoolView, seed: int = 42) -> dict[Any, np.ndarray]:
    """Domain → (n_d,) int64 pool indices in a seeded random order (MOSAIC "w/o ranking").

    Within each domain the clips are sorted by clip id and then permuted by a generator seeded
    with ``(seed, crc32(domain name))``, so a domain's order depends only on its own clip ids,
    its name and the seed — not on the pool's row order or on the other domains. Keys are in
    :attr:`PoolView.domain_names` order.

    The pipeline uses this both for the unranked pilots (top-n of each domain's order) and for
    :class:`MosaicNoRankStrategy`, so the pilots and the final selection see the same clips.
    """
    ids = _str_ids(pool)
    out: dict[Any, np.ndarray] = {}
    for dom in pool.domain_names:
        idx = np.flatnonzero(pool.domains == dom)
        idx = idx[np.argsort(ids[idx], kind="stable")]
        out[dom] = idx[_domain_seed(seed, dom).permutation(idx.size)].astype(np.int64)
    return out


def _as_selections(name: str, pool: PoolView, order: np.ndarray, budgets: Sequence[int]
                   ) -> dict[int, Selection]:
    rank_of = domain_ranks(pool)
    return {b: _selection(name, pool, order[:b], rank_of) for b in budgets}


# ---------------------------------------------------------------------- uncertainty
class UncertaintyStrategy:
    """Uncertainty baseline (§7.3): the B clips with the highest planner entropy.

    Uses :attr:`PoolView.entropy` — the Shannon entropy (nats) of the planner's softmax over its
    trajectory vocabulary, averaged over the clip's frames. Order: entropy descending, ties by
    clip id ascending, NaN entropy last; budget B takes the first B (nested by construction).

    Raises
    ------
    ValueError
        If the pool has no entropy, or a budget is invalid / exceeds the pool.
    """

    name = "uncertainty"

    def order(self, pool: PoolView) -> np.ndarray:
        """(n,) int64 pool indices, most uncertain first."""
        if pool.entropy is None:
            raise ValueError("uncertainty strategy needs PoolView.entropy (planner softmax entropy)")
        # lexsort: last key primary; -NaN is NaN and sorts last.
        return np.lexsort((id_rank(pool), -pool.entropy)).astype(np.int64)

    def select(self, pool: PoolView, budgets: Sequence[int]) -> dict[int, Selection]:
        """Nested top-entropy selections for each budget."""
        bs = validate_budgets(budgets, len(pool))
        return _as_selections(self.name, pool, self.order(pool), bs)


# ---------------------------------------------------------------------- coreset
def _torch_device(device: str | None):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_BLOCK_ELEMS = 1 << 25  # float32 elements of one pool × train distance block (128 MiB)


def k_center_greedy(embeddings: np.ndarray, budget: int, train_embeddings: np.ndarray | None = None,
                    *, tie_rank: np.ndarray | None = None, seed: int = 42, device: str | None = "cpu",
                    chunk_size: int = 262_144, train_chunk_size: int = 4096,
                    return_distances: bool = False):
    """k-center greedy (Sener & Savarese 2018) — the Coreset baseline of MOSAIC §7.3.

    Starting from the training set, repeatedly add the pool point farthest (Euclidean) from
    every point chosen so far (training points included).

    Parameters
    ----------
    embeddings : np.ndarray, shape (n, d), float32
        Pool embeddings (planner features). Converted to float32 (no copy when already
        float32 and C-contiguous).
    budget : int
        Number of points B to pick, 0 ≤ B ≤ n.
    train_embeddings : np.ndarray, shape (m, d), optional
        The training set's embeddings. When None or empty the first centre is a seeded
        uniform draw from the pool (by ``tie_rank`` order, so independent of row order).
    tie_rank : np.ndarray, shape (n,), int64, optional
        Tie-breaker: among points at exactly the same max distance the lowest tie rank is
        taken (default: row index).
    seed : int
        Only used when there is no training set.
    device : str
        torch device for the distance passes ("cpu", "cuda", or "auto"/None = cuda if
        available).
    chunk_size, train_chunk_size : int
        Rows per block. The initial distances to the training set are computed in
        blocks of at most ``train_chunk_size`` training points × 2^25 / ``train_chunk_size``
        pool rows (≤ 128 MiB float32), so peak extra memory is O(n) + 128 MiB, never O(n · m)
        or O(n · B).
    return_distances : bool
        Also return the min-distance of each pick at the time it was picked.

    Returns
    -------
    order : np.ndarray, shape (B,), int64
        Picked pool rows in pick order (nested: ``order[:b]`` is the answer for budget b).
    dists : np.ndarray, shape (B,), float32
        Only with ``return_distances``: Euclidean distance of each pick to the nearest
        previously chosen point (inf for a seeded first pick without training set).

    Notes
    -----
    Memory is O(n): a running min squared-distance vector (float32), the squared norms and one
    distance buffer. Each step is one matrix-vector product over the pool (O(n·d)), so
    B = 10^4 over 10^6 × 128 costs ~1.3·10^12 flops (memory-bound on CPU: ~0.5 TB read;
    minutes on a GPU). Squared distances use ‖x‖² + ‖c‖² − 2 x·c clamped at 0; picked points are
    masked with −inf so a pick is never repeated even under rounding.

    Raises
    ------
    ValueError
        Non-2-D or non-finite embeddings, mismatched dimensions, budget outside [0, n].
    """
    import torch

    X = np.ascontiguousarray(embeddings, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, d), got shape {X.shape}")
    n, d = X.shape
    b = int(budget)
    if b < 0 or b > n:
        raise ValueError(f"budget {b} outside [0, {n}] (pool size {n})")
    if not np.isfinite(X).all():
        raise ValueError("embeddings contain non-finite values")
    T = None
    if train_embeddings is not None:
        T = np.ascontiguousarray(train_embeddings, dtype=np.float32)
        if T.ndim != 2 or (T.size and T.shape[1] != d):
            raise ValueError(f"train_embeddings must have shape (m, {d}), got {T.shape}")
        if not np.isfinite(T).all():
            raise ValueError("train_embeddings contain non-finite values")
        if T.shape[0] == 0:
            T = None
    rank = np.arange(n, dtype=np.int64) if tie_rank is None else np.asarray(tie_rank, np.int64)
    if rank.shape != (n,):
        raise ValueError(f"tie_rank must have shape ({n},), got {rank.shape}")
    order = np.empty(b, dtype=np.int64)
    picked_d = np.empty(b, dtype=np.float32)
    if b == 0:
        return (order, picked_d) if return_distances else order

    dev = _torch_device(device)
    if not X.flags.writeable:  # read-only views (e.g. PoolView arrays): torch warns, never writes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            Xt = torch.from_numpy(X).to(dev)
    else:
        Xt = torch.from_numpy(X).to(dev)
    rank_t = torch.from_numpy(rank).to(dev)
    cs = max(1, int(chunk_size))
    sq = torch.empty(n, dtype=torch.float32, device=dev)
    for a in range(0, n, cs):
        blk = Xt[a:a + cs]
        sq[a:a + cs] = (blk * blk).sum(dim=1)
    min_d = torch.full((n,), float("inf"), dtype=torch.float32, device=dev)
    if T is not None:
        tcs = max(1, int(train_chunk_size))
        rows = max(1, min(cs, _BLOCK_ELEMS // tcs))  # (rows × tcs) float32 block ≤ 128 MiB
        for t0 in range(0, T.shape[0], tcs):
            Tt = torch.from_numpy(np.array(T[t0:t0 + tcs])).to(dev)
            tsq = (Tt * Tt).sum(dim=1)
            for a in range(0, n, rows):
                # (rows, tchunk) block of squared distances, reduced at once
                blk = torch.addmm(tsq.unsqueeze(0), Xt[a:a + rows], Tt.T, beta=1.0, alpha=-2.0)
                blk.add_(sq[a:a + rows].unsqueeze(1))
                torch.minimum(min_d[a:a + rows], blk.min(dim=1).values.clamp_(min=0.0),
                              out=min_d[a:a + rows])
                del blk
    buf = torch.empty(n, dtype=torch.float32, device=dev)
    step = 0
    if T is None:
        # seeded first centre, uniform over the pool in tie-rank order
        by_rank = np.argsort(rank, kind="stable")
        first = int(by_rank[np.random.default_rng(seed).integers(n)])
        order[0], picked_d[0] = first, np.inf
        step = 1
        _update(Xt, sq, min_d, buf, first)
    while step < b:
        m = torch.max(min_d)
        ties = torch.nonzero(min_d == m).flatten()
        if ties.numel() == 1:
            j = int(ties[0])
        else:
            j = int(ties[torch.argmin(rank_t[ties])])
        order[step] = j
        picked_d[step] = float(m)
        step += 1
        if step < b:
            _update(Xt, sq, min_d, buf, j)
        else:
            min_d[j] = float("-inf")
    picked_d = np.sqrt(np.maximum(picked_d, 0.0)).astype(np.float32)
    return (order, picked_d) if return_distances else order


def _update(Xt, sq, min_d, buf, j: int) -> None:
    """min_d ← min(min_d, ‖x − x_j‖²) over the pool; mask j with −inf.

    Three fused whole-pool passes (addmv, add, minimum) into preallocated buffers: no
    temporaries, and few parallel regions (small element-wise ops are slow on an
    oversubscribed CPU). Values may dip slightly below 0 for duplicates of x_j (rounding of
    the norm expansion); picked distances are clamped at 0 when reported.
    """
    import torch

    c = Xt[j].clone()
    torch.addmv(sq, Xt, c, beta=1.0, alpha=-2.0, out=buf)
    buf.add_(float(sq[j]))
    torch.minimum(min_d, buf, out=min_d)
    min_d[j] = float("-inf")


class CoresetStrategy:
    """Coreset baseline (§7.3): k-center greedy in the planner's embedding space.

    Parameters
    ----------
    train_embeddings : np.ndarray, shape (m, d), float32, optional
        The training set's planner embeddings: the greedy starts from them (a pool clip close
        to the training data is picked late). Without them the first pick is a seeded draw.
    seed : int
        Seed for the first pick when there is no training set.
    device : str
        torch device of the distance passes ("cpu" default; "cuda"; "auto").
    chunk_size : int
        Pool rows per distance block.

    ``select`` runs :func:`k_center_greedy` once to the largest budget; budget B takes the
    first B picks (nested by construction). Exact distance ties go to the lowest clip id.

    Raises
    ------
    ValueError
        The pool has no embeddings, dimensions differ, or a budget is invalid / exceeds the pool.
    """

    name = "coreset"

    def __init__(self, train_embeddings: np.ndarray | None = None, seed: int = 42,
                 device: str | None = "cpu", chunk_size: int = 262_144):
        self.train_embeddings = train_embeddings
        self.seed = int(seed)
        self.device = device
        self.chunk_size = int(chunk_size)
        self.pick_distances: np.ndarray | None = None  #: (B_max,) float32, set by select

    def select(self, pool: PoolView, budgets: Sequence[int]) -> dict[int, Selection]:
        """Nested k-center greedy selections for each budget."""
        bs = validate_budgets(budgets, len(pool))
        if pool.embeddings is None:
            raise ValueError("coreset strategy needs PoolView.embeddings (planner features)")
        order, dists = k_center_greedy(pool.embeddings, bs[-1], self.train_embeddings,
                                       tie_rank=id_rank(pool), seed=self.seed, device=self.device,
                                       chunk_size=self.chunk_size, return_distances=True)
        self.pick_distances = dists
        return _as_selections(self.name, pool, order, bs)


# ---------------------------------------------------------------------- chameleon
def domain_mean_embeddings(pool: PoolView) -> tuple[list[Any], np.ndarray]:
    """(domain names (M,) in :attr:`PoolView.domain_names` order, X (M, d) float64 means).

    Raises ValueError if the pool has no embeddings.
    """
    if pool.embeddings is None:
        raise ValueError("chameleon strategy needs PoolView.embeddings (planner features)")
    names = pool.domain_names
    X = np.stack([pool.embeddings[pool.domains == dom].astype(np.float64).mean(axis=0)
                  for dom in names])
    return names, X


def leverage_scores(X: np.ndarray, lam: float = 1.0) -> np.ndarray:
    """Kernel ridge leverage scores S_i = [K (K + λI)⁻¹]_ii with K = X Xᵀ (Chameleon Alg. 4).

    Parameters
    ----------
    X : np.ndarray, shape (M, d)
        Domain embeddings (one row per domain).
    lam : float
        Ridge λ > 0 (MOSAIC's setup: 1).

    Returns
    -------
    np.ndarray, shape (M,), float64, each in [0, 1).

    Notes
    -----
    Computed from the eigendecomposition K = V diag(w) Vᵀ as S_i = Σ_k V_ik² w_k / (w_k + λ),
    which equals the diagonal of K (K + λI)⁻¹ and is numerically stable.

    Raises ValueError for λ ≤ 0 or a non-2-D X.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (M, d), got shape {X.shape}")
    if not lam > 0:
        raise ValueError(f"lambda must be > 0, got {lam}")
    K = X @ X.T
    w, V = np.linalg.eigh(K)
    w = np.clip(w, 0.0, None)
    return (V ** 2) @ (w / (w + lam))


def chameleon_weights(X: np.ndarray, lam: float = 1.0, weighting: str = "softmax") -> np.ndarray:
    """Domain weights α from leverage scores (Chameleon Algorithm 4 as used by MOSAIC).

    ``weighting="softmax"``: α = softmax(S) (MOSAIC's Algorithm 4, the default).
    ``weighting="inverse"``: α = softmax(1/S), the Chameleon reference code's pretraining
    variant (favours low-leverage, i.e. typical, domains); S is floored at 1e-12.

    Returns (M,) float64 summing to 1. Raises ValueError for an unknown weighting.
    """
    S = leverage_scores(X, lam)
    if weighting == "softmax":
        z = S
    elif weighting == "inverse":
        z = 1.0 / np.maximum(S, 1e-12)
    else:
        raise ValueError(f"unknown chameleon weighting {weighting!r}; use 'softmax' or 'inverse'")
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


class ChameleonStrategy:
    """Chameleon baseline (§7.3; Chameleon Algorithm 4): sample clips from domains by α.

    Domain embedding x_i = mean planner embedding of domain i's pool clips; K = X Xᵀ;
    S_i = [K (K + λI)⁻¹]_ii; α = softmax(S) (or softmax(1/S) with ``weighting="inverse"``).

    Nested sampling (our definition; the paper only says "sample B clips from domains by α"):

    1. within each domain, clips are taken in the seeded random order of
       :func:`unranked_order` (``seed``);
    2. one seeded sequence of draws (``np.random.default_rng(seed)``, one uniform per step)
       picks a domain with probability α restricted to the domains that still have clips
       (renormalised); the step takes that domain's next clip.

    The sequence does not depend on B, so budget B takes the first B steps: nested, exactly B
    distinct clips, and composition ≈ α·B while no domain is exhausted.

    Parameters
    ----------
    lam : float
        Ridge λ (default 1).
    weighting : {"softmax", "inverse"}
    seed : int

    Attributes set by ``select``: ``weights_`` (dict domain → α_i), ``leverage_`` (domain → S_i).

    Raises
    ------
    ValueError
        No embeddings in the pool, a bad weighting, or an invalid budget.
    """

    name = "chameleon"

    def __init__(self, lam: float = 1.0, weighting: str = "softmax", seed: int = 42):
        if weighting not in ("softmax", "inverse"):
            raise ValueError(f"unknown chameleon weighting {weighting!r}; use 'softmax' or 'inverse'")
        self.lam = float(lam)
        self.weighting = weighting
        self.seed = int(seed)
        self.weights_: dict[Any, float] = {}
        self.leverage_: dict[Any, float] = {}

    def weights(self, pool: PoolView) -> dict[Any, float]:
        """Domain → α_i (sorted domain order)."""
        names, X = domain_mean_embeddings(pool)
        S = leverage_scores(X, self.lam)
        alpha = chameleon_weights(X, self.lam, self.weighting)
        self.leverage_ = dict(zip(names, S.tolist()))
        self.weights_ = dict(zip(names, alpha.tolist()))
        return dict(self.weights_)

    def order(self, pool: PoolView, budget: int | None = None) -> np.ndarray:
        """(budget,) int64 pool indices in sampling order (default: the whole pool)."""
        alpha = self.weights(pool)
        within = unranked_order(pool, self.seed)
        names = list(within)
        w = np.array([alpha[d] for d in names], dtype=np.float64)
        left = np.array([within[d].size for d in names], dtype=np.int64)
        taken = np.zeros(len(names), dtype=np.int64)
        n_steps = len(pool) if budget is None else int(budget)
        rng = np.random.default_rng(self.seed)
        out = np.empty(n_steps, dtype=np.int64)
        active = left > 0

        def cumulative() -> np.ndarray:
            # α restricted to domains with clips left (renormalised implicitly by the draw);
            # uniform over them if every remaining weight underflowed to 0
            cw = np.cumsum(np.where(active, w, 0.0))
            return cw if cw[-1] > 0 else np.cumsum(active.astype(np.float64))

        cum = cumulative()
        for s in range(n_steps):
            u = rng.random() * cum[-1]
            # first slot with cum > u: never a zero-width (exhausted) slot
            i = min(int(np.searchsorted(cum, u, side="right")), len(names) - 1)
            while not active[i]:  # float-rounding guard only
                i = (i + 1) % len(names)
            out[s] = within[names[i]][taken[i]]
            taken[i] += 1
            if taken[i] == left[i]:
                active[i] = False
                if active.any():
                    cum = cumulative()
        return out

    def select(self, pool: PoolView, budgets: Sequence[int]) -> dict[int, Selection]:
        """Nested Chameleon selections for each budget."""
        bs = validate_budgets(budgets, len(pool))
        return _as_selections(self.name, pool, self.order(pool, bs[-1]), bs)


# ---------------------------------------------------------------------- ablations
class MosaicNoClusterStrategy:
    """MOSAIC ablation "w/o clustering" (§7.3): rank the whole pool by importance.

    Order: importance (base-model EPDMS on the clip) ascending, ties by clip id, NaN last;
    budget B takes the B lowest-importance clips (nested by construction).
    """

    name = "mosaic_no_cluster"

    def order(self, pool: PoolView) -> np.ndarray:
        """(n,) int64 pool indices, lowest importance first."""
        return np.lexsort((id_rank(pool), pool.importance)).astype(np.int64)

    def select(self, pool: PoolView, budgets: Sequence[int]) -> dict[int, Selection]:
        """Nested lowest-importance selections for each budget."""
        bs = validate_budgets(budgets, len(pool))
        return _as_selections(self.name, pool, self.order(pool), bs)


class MosaicNoRankStrategy(MosaicStrategy):
    """MOSAIC ablation "w/o ranking" (§7.3): greedy allocation, random clips within domains.

    Parameters
    ----------
    laws : mapping domain → :class:`ScalingLaw`
        Fitted by the caller on *unranked* pilots: for each pilot size n, the first n clips of
        the domain's :func:`unranked_order` (same ``seed``).
    seed : int
        Seed of :func:`unranked_order`.

    The allocation is MOSAIC's greedy first-difference order (:meth:`MosaicStrategy.allocation`);
    each step takes the next clip of the chosen domain in :func:`unranked_order`. Nested.

    Raises
    ------
    ValueError
        A pool domain has no law, or a budget is invalid / exceeds the pool.
    """

    name = "mosaic_no_rank"

    def __init__(self, laws: Mapping[Any, ScalingLaw], seed: int = 42):
        super().__init__(laws)
        self.seed = int(seed)

    def select(self, pool: PoolView, budgets: Sequence[int]) -> dict[int, Selection]:
        """Nested MOSAIC-allocation selections with unranked within-domain order."""
        bs = validate_budgets(budgets, len(pool))
        within = unranked_order(pool, self.seed)
        names, _, order = self.allocation(pool, bs[-1])
        steps_rank = within_domain_ranks(order, len(names))
        idx = np.array([within[names[d]][r] for d, r in zip(order.tolist(), steps_rank.tolist())],
                       dtype=np.int64)
        return _as_selections(self.name, pool, idx, bs)


register_strategy("uncertainty", UncertaintyStrategy)
register_strategy("coreset", CoresetStrategy)
register_strategy("chameleon", ChameleonStrategy)
register_strategy("mosaic_no_cluster", MosaicNoClusterStrategy)
register_strategy("mosaic_no_rank", MosaicNoRankStrategy)
