"""The domains step: a domain label for every scored pool clip under each domain variant.

Each configured variant (``domains.variants``; the first is the default) is one assigner of
:mod:`mosaic_ray.domains.assigners` — a metadata column, caption clusters or planner-embedding
clusters (MOSAIC §3.2.1, paper Table 8). Outputs per variant: ``domains/<name>.parquet``
(``clip_id``, ``domain``) and ``domains/<name>.json`` (kind, sizes, the assigner's description).

:func:`ranked_pool` reads the scored pool back as a :class:`PoolView` under a variant, with
each domain's clips in MOSAIC's rank order; the pilot, select and report code use it.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pyarrow as pa

from mosaic_ray import layout
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.domains.assigners import make_assigner, pool_view_with_domains
from mosaic_ray.domains.metadata import assign_domains
from mosaic_ray.selection.strategies import PoolView, rank_within_domains
from mosaic_ray.stages.ingest import load_clips
from mosaic_ray.stages.score import load_scores
from mosaic_ray.stages.step import Context, Step, needs_of
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)


def run_domains(ctx: Context) -> dict:
    """Assign every variant's domains (variants already written are kept unless forced);
    returns ``{"variants": {name: description}}``."""
    st, cfg = ctx.storage, ctx.cfg
    out = {}
    scores = None
    for v in cfg.domains.all_variants():
        rel, desc_rel = layout.domain_labels(v.name), layout.domain_description(v.name)
        if st.exists(rel) and st.exists(desc_rel) and not ctx.force:
            out[v.name] = st.read_json(desc_rel)
            continue
        scores = scores if scores is not None else load_scores(st)
        kw = {"column": v.column} if v.kind == "metadata" else {"k": v.k, "seed": v.seed}
        assigner = make_assigner(v.kind, **kw)
        clips = load_clips(st, "pool") if v.kind == "captions" else None
        labels = assigner.fit_assign(scores=scores, clips=clips)
        st.write_table(rel, pa.table({"clip_id": scores.column("clip_id"),
                                      "domain": pa.array([str(x) for x in labels])}))
        desc = {"kind": v.kind, **assigner.describe(), "sizes": dict(Counter(map(str, labels)))}
        st.write_json(desc_rel, desc)
        out[v.name] = desc
        log.info("[domains] %s (%s): %d domains, sizes %s", v.name, v.kind, len(desc["sizes"]),
                 dict(sorted(desc["sizes"].items())))
    return {"variants": out}


def ranked_pool(cfg: ExperimentConfig, storage: Storage, variant: str | None = None
                ) -> tuple[PoolView, dict[str, list[str]]]:
    """The scored pool as a :class:`PoolView` under a domain variant (default: the first) and,
    per domain, its clip ids in rank order (lowest base EPDMS first, MOSAIC §3.2.1).

    Raises:
        DomainError: a metadata variant and clips without a value in its column.
        StorageError: no scores (run the score step) or no labels for a clustered variant.
    """
    v = cfg.domains.variant(variant)
    scores = load_scores(storage)
    rel = layout.domain_labels(v.name)
    if storage.exists(rel):
        t = storage.read_table(rel)
        lab = dict(zip(t.column("clip_id").to_pylist(), t.column("domain").to_pylist()))
        labels = np.asarray([lab[c] for c in scores.column("clip_id").to_pylist()], dtype=object)
    else:  # a metadata variant needs no stored labels
        labels = assign_domains(scores, v.column)
    pool = pool_view_with_domains(scores, labels)
    ranked = {str(d): [str(pool.clip_ids[i]) for i in idx] for d, idx in rank_within_domains(pool).items()}
    return pool, ranked


#: the domains step (needs the scored pool)
STEP = Step("domains", run_domains, needs=needs_of({f"{layout.SCORE}/_SUCCESS.json": "score"}),
            outputs=(layout.DOMAINS,), record=layout.DOMAINS,
            complete=lambda ctx, p: all(ctx.storage.exists(layout.domain_description(v.name))
                                        for v in ctx.cfg.domains.all_variants()),
            describe=lambda p: ", ".join(f"{n}: {len(d.get('sizes', {}))} domains" for n, d in p["variants"].items()))
