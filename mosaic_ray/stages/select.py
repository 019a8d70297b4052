"""The select step: scaling laws per pilot set, then nested selections per method and budget.

For every pilot set the methods need (:func:`mosaic_ray.selection.methods.pilot_sets`), one
law ΔU_i(n) = a_i (1 − e^(−n/τ_i)) per domain is fitted to the pilot points (MOSAIC Eq. 4);
every configured method (:class:`~mosaic_ray.selection.methods.ResolvedMethod`) then selects
for all budgets at once (nested: a smaller budget's clips are a prefix of a larger one's).
Outputs: ``select/manifest.parquet`` (method, budget, clip_id, domain, rank, step) and
``select/laws.json`` (budgets, methods, pool size, the laws of every set, and the scored pool
clips left out by reason: ``"pool_scored"``, ``"excluded": {"score_error": 2}``).

Every method selects from the usable pool only (:func:`~mosaic_ray.stages.domains.ranked_pool`:
clips whose score row is ``ok``), so budgets are checked against the usable pool size
(``pool_size``) and no rejected clip can be selected.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from mosaic_ray import layout
from mosaic_ray.config import ConfigError
from mosaic_ray.domains.embedding import embeddings_from_scores
from mosaic_ray.selection.methods import DEFAULT_PILOT_SET, pilot_sets
from mosaic_ray.selection.scaling_law import fit_domain_laws
from mosaic_ray.selection.strategies import selection_manifest
from mosaic_ray.stages.domains import ranked_pool
from mosaic_ray.stages.score import load_scores
from mosaic_ray.stages.step import Context, Step

log = logging.getLogger(__name__)


def run_select(ctx: Context) -> dict:
    """Fit the laws and write the manifest; returns the ``select/laws.json`` payload.

    Raises:
        RuntimeError: a pool domain has no pilot points (rerun the pilot step).
        ConfigError: a budget exceeds the pool.
    """
    st, cfg = ctx.storage, ctx.cfg
    methods = cfg.resolved_methods()
    laws_by_set = {name: fit_domain_laws(st.read_table(layout.pilot_table(name)).to_pylist())
                   for name, _, _ in pilot_sets(methods)}
    train_emb = None
    if any(m.spec.needs_train_embeddings for m in methods):
        train_scores = load_scores(st, layout.SCORE_TRAIN)  # D_train clips that could not be scored left out
        if train_scores.excluded:
            log.warning("[select] D_train embeddings for coreset: %s", train_scores.describe())
        train_emb = embeddings_from_scores(train_scores.table)
    scored = load_scores(st)  # only for the accounting: ranked_pool reads the same filter
    rows, budgets, pool_size = [], None, None
    for m in methods:
        pool, _ = ranked_pool(cfg, st, m.variant)
        if budgets is None:
            try:
                budgets, pool_size = cfg.selection.resolve_budgets(len(pool)), len(pool)
            except ConfigError as e:
                if not scored.excluded:
                    raise
                raise ConfigError(f"{e} (the usable pool: {scored.describe()})") from None
        if m.pilot_set is not None:
            missing = sorted(set(map(str, pool.domain_names)) - set(map(str, laws_by_set[m.pilot_set])))
            if missing:
                raise RuntimeError(f"{m.method}: no pilot points for domains {missing}; rerun the pilot step")
        strat = m.strategy(laws_by_set=laws_by_set, seed=cfg.selection.random_seed, train_embeddings=train_emb)
        rows += [{**r, "method": m.method} for r in selection_manifest(strat.select(pool, budgets))]
    if cfg.selection.shuffle_methods():  # further Random shuffles: Random's own spread (issue 12 part 5)
        from mosaic_ray.selection.strategies import make_strategy

        pool, _ = ranked_pool(cfg, st, cfg.domains.variant(None).name)
        for name, seed in cfg.selection.shuffle_methods().items():
            rows += [{**r, "method": name} for r in selection_manifest(make_strategy("random", seed=seed).select(pool, budgets))]
    leaked = sorted({r["clip_id"] for r in rows} & set(scored.excluded_ids))
    if leaked:  # cannot happen while every pool view comes through load_scores; never write it
        raise RuntimeError(f"{len(leaked)} selected clips were rejected by the score step, e.g. {leaked[0]}")
    st.write_table(layout.MANIFEST, pa.Table.from_pylist(rows))
    for name, laws in laws_by_set.items():
        for d, law in laws.items():
            log.info("[select] %s %s: a = %.2f EPDMS points, tau = %.0f clips (%s)", name, d, 100 * law.a,
                     law.tau, law.status)
    payload = {"budgets": budgets, "methods": list(cfg.selection.methods), "pool_size": pool_size,
               "pool_scored": scored.n_scored, "excluded": dict(scored.excluded),
               "laws": {d: law.to_dict() for d, law in laws_by_set.get(DEFAULT_PILOT_SET, {}).items()},
               "laws_by_set": {n: {d: law.to_dict() for d, law in ls.items()} for n, ls in laws_by_set.items()}}
    st.write_json(layout.LAWS, payload)
    return payload


def _needs(cfg) -> dict[str, str]:
    needs = {f"{layout.DOMAINS}/_SUCCESS.json": "domains"}
    for name, _, _ in pilot_sets(cfg.resolved_methods()):
        needs[layout.pilot_table(name)] = "pilot"
    if any(m.spec.needs_train_embeddings for m in cfg.resolved_methods()):
        needs[f"{layout.SCORE_TRAIN}/_SUCCESS.json"] = "score_train"
    return needs


#: the select step (needs the domains and every pilot set the methods use)
STEP = Step("select", run_select, needs=_needs, outputs=(layout.LAWS, layout.MANIFEST), record=layout.SELECT,
            config_keys=("selection",), upstream=("score", "score_train", "domains", "pilot"),
            describe=lambda p: (f"{len(p['methods'])} methods × budgets {p['budgets']} of a {p['pool_size']}-clip pool"
                                + (f" ({sum(p['excluded'].values())} scored clips excluded: "
                                   + ", ".join(f"{k} {v}" for k, v in p["excluded"].items()) + ")"
                                   if p.get("excluded") else "")))
