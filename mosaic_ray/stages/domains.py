"""The domains step: a domain label for every scored pool clip under each domain variant.

Each configured variant (``domains.variants``; the first is the default) is one assigner of
:mod:`mosaic_ray.domains.assigners` — a metadata column, caption clusters or planner-embedding
clusters (MOSAIC §3.2.1, paper Table 8). Outputs per variant: ``domains/<name>.parquet``
(``clip_id``, ``domain``) and ``domains/<name>.json`` (kind, sizes, the assigner's description,
``excluded``).

Only usable clips get a domain: the score table is read through
:func:`~mosaic_ray.stages.score.load_scores`, which leaves out every clip whose score row is not
``ok`` (:mod:`mosaic_ray.selection.usable`); the clips left out are counted by reason in each
variant's description (``"excluded": {"score_error": 2}``) and in the step's payload.

:func:`ranked_pool` reads the scored pool back as a :class:`PoolView` under a variant, with
each domain's clips in MOSAIC's rank order; the pilot and select steps use it, so no rejected
clip can be ranked, piloted or selected.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mosaic_ray import layout
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.clip import clips_from_table
from mosaic_ray.domains.assigners import make_assigner, pool_view_with_domains
from mosaic_ray.domains.metadata import DomainError, assign_domains
from mosaic_ray.selection.strategies import PoolView, rank_within_domains
from mosaic_ray.stages.score import load_scores
from mosaic_ray.stages.step import Context, Step, needs_of
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)


def usable_pool_clips(storage: Storage, clip_ids) -> list:
    """The pool clips with the given ids, one decoded frame each: a clip of several frames is
    represented by its middle frame (by t0; the earlier of two). Rejected clips are never
    decoded, so a clip that failed to decode at scoring time cannot stop a later step."""
    t = storage.read_table("ingest/clips/pool")  # one read: the wanted rows are taken from it
    hit = np.flatnonzero(np.asarray(pc.is_in(t.column("clip_id"),
                                             value_set=pa.array(list(clip_ids), pa.string())).to_numpy(zero_copy_only=False)))
    by_clip: dict[str, list[tuple[int, int]]] = {}
    for i, cid, t0 in zip(hit.tolist(), t.column("clip_id").take(hit).to_pylist(), t.column("t0").take(hit).to_pylist()):
        by_clip.setdefault(cid, []).append((t0, i))
    rows = sorted(sorted(fr)[(len(fr) - 1) // 2][1] for fr in by_clip.values())
    return clips_from_table(t.take(pa.array(rows, pa.int64())))


def run_domains(ctx: Context) -> dict:
    """Assign every variant's domains to the usable scored clips (variants already written are
    kept unless forced); returns ``{"variants": {name: description}, "excluded": {reason: n},
    "scored": n, "usable": n}``."""
    st, cfg = ctx.storage, ctx.cfg
    out = {}
    scored = load_scores(st)
    scores = scored.table
    if scored.excluded:
        log.warning("[domains] %s: they get no domain and can never be selected (first: %s)",
                    scored.describe(), ", ".join(scored.excluded_ids[:5]))
    for v in cfg.domains.all_variants():
        rel, desc_rel = layout.domain_labels(v.name), layout.domain_description(v.name)
        if st.exists(rel) and st.exists(desc_rel) and not ctx.force:
            out[v.name] = st.read_json(desc_rel)
            continue
        kw = {"column": v.column} if v.kind == "metadata" else {"k": v.k, "seed": v.seed}
        assigner = make_assigner(v.kind, **kw)
        clips = usable_pool_clips(st, scores.column("clip_id").to_pylist()) if v.kind == "captions" else None
        labels = assigner.fit_assign(scores=scores, clips=clips)
        st.write_table(rel, pa.table({"clip_id": scores.column("clip_id"),
                                      "domain": pa.array([str(x) for x in labels])}))
        desc = {"kind": v.kind, **assigner.describe(), "sizes": dict(Counter(map(str, labels))),
                "excluded": dict(scored.excluded)}
        st.write_json(desc_rel, desc)
        out[v.name] = desc
        log.info("[domains] %s (%s): %d domains, sizes %s", v.name, v.kind, len(desc["sizes"]),
                 dict(sorted(desc["sizes"].items())))
    return {"variants": out, **scored.accounting()}


def ranked_pool(cfg: ExperimentConfig, storage: Storage, variant: str | None = None
                ) -> tuple[PoolView, dict[str, list[str]]]:
    """The usable scored pool as a :class:`PoolView` under a domain variant (default: the
    first) and, per domain, its clip ids in rank order (lowest base EPDMS first, MOSAIC §3.2.1).

    Clips whose score row is not ``ok`` are not in it (:func:`~mosaic_ray.stages.score.load_scores`).

    Raises:
        DomainError: a metadata variant and clips without a value in its column, or stored
            labels that miss a usable clip (rerun the domains step with ``--force``).
        StorageError: no scores (run the score step) or no labels for a clustered variant.
    """
    v = cfg.domains.variant(variant)
    scores = load_scores(storage).table
    rel = layout.domain_labels(v.name)
    if storage.exists(rel):
        t = storage.read_table(rel)
        lab = dict(zip(t.column("clip_id").to_pylist(), t.column("domain").to_pylist()))
        ids = scores.column("clip_id").to_pylist()
        missing = [c for c in ids if c not in lab]
        if missing:
            raise DomainError(f"{len(missing)} scored clips have no label in {storage.uri(rel)} "
                              f"(e.g. {missing[0]}): the scores changed after the domains step; "
                              "rerun `mosaic-ray domains --force`")
        labels = np.asarray([lab[c] for c in ids], dtype=object)
    else:  # a metadata variant needs no stored labels
        labels = assign_domains(scores, v.column)
    pool = pool_view_with_domains(scores, labels)
    ranked = {str(d): [str(pool.clip_ids[i]) for i in idx] for d, idx in rank_within_domains(pool).items()}
    return pool, ranked


def _describe(p: dict) -> str:
    line = ", ".join(f"{n}: {len(d.get('sizes', {}))} domains" for n, d in p["variants"].items())
    if p.get("excluded"):
        why = ", ".join(f"{k}: {v}" for k, v in p["excluded"].items())
        line += f"; {sum(p['excluded'].values())} scored clips excluded ({why})"
    return line


#: the domains step (needs the scored pool)
STEP = Step("domains", run_domains, needs=needs_of({f"{layout.SCORE}/_SUCCESS.json": "score"}),
            outputs=(layout.DOMAINS,), record=layout.DOMAINS, upstream=("ingest", "score"),
            depends=lambda cfg: {"variants": [v.model_dump(mode="json") for v in cfg.domains.all_variants()]},
            complete=lambda ctx, p: all(ctx.storage.exists(layout.domain_description(v.name))
                                        for v in ctx.cfg.domains.all_variants()),
            describe=_describe)
