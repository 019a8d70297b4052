"""The method registry: every selection method the experiment can compare, in one table.

A *method* is what a config lists under ``selection.methods``: a strategy name, optionally
with ``@<domain variant>`` for the domain-based ones (``mosaic@captions``, paper Table 8).
Each method has one :class:`MethodSpec` saying which strategy builds it, whether it takes a
domain variant, which pilot runs it needs (ranked for MOSAIC, unranked for the
``mosaic_no_rank`` ablation), and what its selection costs before the final training (the
base model and the scoring pass, D_train's embeddings for coreset) — paper §7.3 and Fig. 11.

:func:`resolve_method` turns a configured name into a :class:`ResolvedMethod` once; the config
validator, the select step and the compute accounting all read that object, so the naming
rule of pilot sets (:func:`pilot_set_name`) and the strategy arguments live here only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from mosaic_ray.selection import baselines as _baselines  # noqa: F401  (registers the baseline strategies)
from mosaic_ray.selection.scaling_law import ScalingLaw
from mosaic_ray.selection.strategies import SelectionStrategy, make_strategy

__all__ = ["MethodSpec", "ResolvedMethod", "METHOD_SPECS", "METHOD_NAMES", "BASELINE_METHODS", "split_method",
           "check_method", "resolve_method", "pilot_set_name", "pilot_sets", "DEFAULT_PILOT_SET"]

#: name of the default domain variant's ranked pilot set (MOSAIC's own laws)
DEFAULT_PILOT_SET = "pilots"


@dataclass(frozen=True)
class MethodSpec:
    """What one selection method is and needs.

    Attributes:
        name: the method's base name (as in configs, before any ``@variant``).
        strategy: the registered strategy that selects for it
            (:func:`mosaic_ray.selection.strategies.make_strategy`).
        description: one line for the README / report.
        domain_based: takes ``@<domain variant>`` (its selection depends on the domains).
        pilots: the pilot runs its laws come from: ``"ranked"`` (top-n clips by base EPDMS),
            ``"unranked"`` (seeded random clips per domain) or None (no laws).
        seeded: its strategy takes ``selection.random_seed``.
        uses_base_model: its selection needs the base planner and the scoring pass (their
            resource-seconds count towards its compute, paper Fig. 11).
        needs_train_embeddings: it needs D_train's planner embeddings (the ``score_train`` step).
    """

    name: str
    strategy: str
    description: str
    domain_based: bool = False
    pilots: Literal["ranked", "unranked"] | None = None
    seeded: bool = False
    uses_base_model: bool = True
    needs_train_embeddings: bool = False


METHOD_SPECS: dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("mosaic", "mosaic", "greedy allocation over domains from the per-domain scaling laws, clips "
               "ranked by base EPDMS (lowest first)", domain_based=True, pilots="ranked"),
    MethodSpec("random", "random", "one fixed shuffle of the pool (selection.random_seed), nested across budgets",
               seeded=True, uses_base_model=False),
    MethodSpec("uncertainty", "uncertainty", "highest mean entropy of the planner's vocabulary softmax"),
    MethodSpec("coreset", "coreset", "k-center greedy in the planner's embedding space, starting from D_train",
               needs_train_embeddings=True),
    MethodSpec("chameleon", "chameleon", "domains weighted by softmax of kernel-ridge leverage scores of the "
               "domain mean embeddings", domain_based=True, seeded=True),
    MethodSpec("mosaic_no_cluster", "mosaic_no_cluster", "ablation: the whole pool ranked by base EPDMS"),
    MethodSpec("mosaic_no_rank", "mosaic_no_rank", "ablation: MOSAIC's allocation with random clips within "
               "domains (laws from unranked pilots)", domain_based=True, pilots="unranked", seeded=True),
)}
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_SPECS)
#: the §7.3 baselines and ablations (every method but MOSAIC and Random)
BASELINE_METHODS: tuple[str, ...] = tuple(n for n in METHOD_NAMES if n not in ("mosaic", "random"))


def split_method(method: str) -> tuple[str, str | None]:
    """``"chameleon@captions"`` -> ("chameleon", "captions"); ``"random"`` -> ("random", None)."""
    base, _, variant = str(method).partition("@")
    return base, (variant or None)


def check_method(method: str) -> MethodSpec:
    """The spec of a configured method name, checked without knowing the domain variants.

    Raises:
        ValueError: unknown base name (the message lists the known ones), or a ``@variant``
            on a method that is not domain-based.
    """
    base, variant = split_method(method)
    spec = METHOD_SPECS.get(base)
    if spec is None:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHOD_NAMES)} "
                         "(optionally with @<domain variant>, e.g. mosaic@captions)")
    if variant is not None and not spec.domain_based:
        domain = ", ".join(n for n, s in METHOD_SPECS.items() if s.domain_based)
        raise ValueError(f"method {method!r}: only domain-based methods ({domain}) take a @variant")
    return spec


def pilot_set_name(variant: str, default_variant: str, ranked: bool = True) -> str:
    """The pilot set of a domain variant: ``pilots`` (ranked, default variant),
    ``pilots-<variant>`` (ranked, another variant), ``pilots-<variant>-unranked``."""
    if not ranked:
        return f"{DEFAULT_PILOT_SET}-{variant}-unranked"
    return DEFAULT_PILOT_SET if variant == default_variant else f"{DEFAULT_PILOT_SET}-{variant}"


@dataclass(frozen=True)
class ResolvedMethod:
    """A configured method with its variant and pilot set resolved.

    Attributes:
        method: the name as configured (e.g. ``"mosaic@captions"``).
        spec: its :class:`MethodSpec`.
        variant: the domain variant its pool view uses (the default one unless ``@variant``).
        pilot_set: the pilot set its laws come from (None for methods without laws).
    """

    method: str
    spec: MethodSpec
    variant: str
    pilot_set: str | None

    def strategy(self, *, laws_by_set: Mapping[str, Mapping[Any, ScalingLaw]] | None = None, seed: int = 42,
                 train_embeddings: np.ndarray | None = None) -> SelectionStrategy:
        """Build the method's strategy.

        Args:
            laws_by_set: pilot set name -> domain -> fitted law (needed when ``pilot_set``).
            seed: ``selection.random_seed`` (for seeded strategies).
            train_embeddings: (m, d) float32 D_train planner embeddings (coreset).

        Raises:
            ValueError: the laws or the embeddings it needs are missing.
        """
        kw: dict[str, Any] = {}
        if self.pilot_set is not None:
            if not laws_by_set or self.pilot_set not in laws_by_set:
                raise ValueError(f"{self.method}: no scaling laws for pilot set {self.pilot_set!r}; "
                                 "run the pilot step")
            kw["laws"] = laws_by_set[self.pilot_set]
        if self.spec.seeded:
            kw["seed"] = seed
        if self.spec.needs_train_embeddings:
            if train_embeddings is None:
                raise ValueError(f"{self.method}: needs D_train's embeddings (the score_train step)")
            kw["train_embeddings"] = train_embeddings
        return make_strategy(self.spec.strategy, **kw)


def resolve_method(method: str, default_variant: str, variants: Sequence[str] | None = None) -> ResolvedMethod:
    """Resolve a configured method name.

    Args:
        method: ``base`` or ``base@variant``.
        default_variant: the first configured domain variant.
        variants: every configured variant (to check ``@variant``); None skips that check.

    Raises:
        ValueError: see :func:`check_method`, or an unknown variant.
    """
    spec = check_method(method)
    _, variant = split_method(method)
    v = variant or default_variant
    if variants is not None and v not in variants:
        raise ValueError(f"method {method!r}: unknown domain variant {v!r}; known: {list(variants)}")
    pilot = pilot_set_name(v, default_variant, ranked=spec.pilots == "ranked") if spec.pilots else None
    return ResolvedMethod(method, spec, v, pilot)


def pilot_sets(methods: Iterable[ResolvedMethod]) -> list[tuple[str, str, bool]]:
    """(pilot set name, domain variant, ranked?) for every set the methods need, first-use order."""
    out = [(m.pilot_set, m.variant, m.spec.pilots == "ranked") for m in methods if m.pilot_set]
    return list(dict.fromkeys(out))
