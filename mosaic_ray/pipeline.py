"""The MOSAIC experiment, stage by stage: ingest -> base -> score -> pilot -> select -> train -> report.

Every stage writes under the run's storage (``<output_dir>/<name>``) and records completion,
so ``mosaic-ray run`` after an interruption skips what is finished (``--force STAGE`` redoes
one). Stages:

* ``ingest``  CommonRoad files -> clip shards (validation / train / pool), quarantine.
* ``base``    trajectory vocabulary, base planner on D_train (Ray Train), its validation EPDMS.
* ``score``   base planner + EPDMS over the pool (Ray Data actor pool): importance per clip.
* ``pilot``   pilot runs per (domain, size, seed) on Ray Tune: ΔU points.
* ``select``  scaling laws per domain, greedy allocation; nested selections per budget and
              method, written as a manifest.
* ``train``   final planners on D_train ∪ D_sel (Ray Train) per method, budget, seed, and
              their validation EPDMS with the nine terms.
* ``report``  ``summary.json``, ``report.md`` and plots.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa

from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.clip import POSE_STEPS, T0_INDEX
from mosaic_ray.planner.features import to_frame, wrap_angle
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)
STAGES = ("ingest", "base", "score", "domains", "pilot", "select", "train", "report")


class Run:
    """One experiment's storage, timings and cached validation scenes."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.storage = Storage(cfg.run_uri, cfg.storage)
        self.timings: dict[str, float] = (self.storage.read_json("timings.json")
                                          if self.storage.exists("timings.json") else {})
        self._val = None
        self._cache = None

    @contextlib.contextmanager
    def timed(self, stage: str):
        t0 = time.time()
        print(f"[{stage}] start", flush=True)
        yield
        self.timings[stage] = round(time.time() - t0, 1)
        self.storage.write_json("timings.json", self.timings)

    def validation(self):
        """Validation clips and a scene cache shared by every evaluation in this process."""
        from mosaic_ray.evaluate.planner_eval import SceneCache
        from mosaic_ray.stages.ingest import load_clips

        if self._val is None:
            self._val = load_clips(self.storage, "validation")
            self._cache = SceneCache()
        return self._val, self._cache

    def evaluate(self, checkpoint: str) -> dict:
        """Validation utility (mean EPDMS and nine terms) of a stored checkpoint."""
        from mosaic_ray.evaluate.planner_eval import score_planner
        from mosaic_ray.planner.model import load_checkpoint
        from mosaic_ray.stages.trainer import local_copy

        model = load_checkpoint(local_copy(self.storage, checkpoint))
        clips, cache = self.validation()
        return score_planner(model, clips, model.spec.features, cache=cache).utility()


# ------------------------------------------------------------------------------ stages
def stage_ingest(run: Run, force: bool = False) -> dict:
    from mosaic_ray.stages.ingest import STAGE, run_ingest

    if run.storage.is_done(STAGE) and not force:
        return run.storage.read_json(f"{STAGE}/summary.json")
    with run.timed("ingest"):
        return run_ingest(run.cfg, run.storage, force=force)


def expert_futures(clips) -> np.ndarray:
    """(n, 8, 3) logged future poses of clips in their t0 ego frames."""
    out = np.zeros((len(clips), len(POSE_STEPS), 3))
    for i, c in enumerate(clips):
        x0, y0, h0, _ = c.ego_states[T0_INDEX]
        fut = c.ego_states[T0_INDEX + POSE_STEPS]
        out[i, :, :2] = to_frame(fut[:, :2], np.array([x0, y0]), h0)
        out[i, :, 2] = wrap_angle(fut[:, 2] - h0)
    return out


def stage_base(run: Run, force: bool = False) -> dict:
    """Vocabulary (k-means of D_train ∪ pool futures, mirrored too when augmenting), the base
    planner on D_train via Ray Train, and its validation utility."""
    from mosaic_ray.evaluate.planner_eval import score_human
    from mosaic_ray.planner.model import build_vocabulary
    from mosaic_ray.stages.ingest import load_clips
    from mosaic_ray.stages.trainer import train_planner

    st, cfg = run.storage, run.cfg
    if st.is_done("planner/base") and not force:
        return st.done_payload("planner/base")
    with run.timed("base"):
        fut = np.concatenate([expert_futures(load_clips(st, "train")), expert_futures(load_clips(st, "pool"))])
        if cfg.planner.augment_mirror:
            fut = np.concatenate([fut, fut * np.array([1.0, -1.0, -1.0])])
        anchors = build_vocabulary(fut, cfg.planner.vocab_size, seed=cfg.planner.seed)
        import io

        buf = io.BytesIO()
        np.save(buf, anchors)
        st.write_bytes("planner/vocabulary.npy", buf.getvalue())
        print(f"[base] vocabulary of {len(anchors)} anchors from {len(fut)} futures; training on D_train", flush=True)
        info = train_planner(cfg, st, name="base", epochs=cfg.planner.base_epochs, seed=cfg.planner.seed,
                             fresh=force)
        util = run.evaluate(info["checkpoint"])
        clips, cache = run.validation()
        human = score_human(clips, cache)
        payload = {**info, "validation": util, "human": human, "vocab_size": int(len(anchors))}
        st.write_json("planner/base_eval.json", payload)
        st.mark_done("planner/base", payload)
    print(f"[base] validation EPDMS {100 * util['epdms']:.2f} (logged human {100 * human['epdms']:.2f})", flush=True)
    return payload


EXTERNAL_CHECKPOINT = "planner/external.pt"


def import_checkpoint(run: Run, uri: str) -> str:
    """Copy a planner checkpoint from another run (local path or ``s3://`` URI) into this run's
    ``planner/external.pt``; returns that storage-relative path.

    The file is first opened with ``torch.load(weights_only=True)`` (tensors and plain
    containers only), so a checkpoint that would run code when unpickled is refused before it
    reaches :func:`~mosaic_ray.planner.model.load_checkpoint`.

    Raises:
        FileNotFoundError: nothing at ``uri``.
        ValueError: not a planner checkpoint (or not loadable with ``weights_only=True``).
    """
    import io
    import posixpath

    import torch

    from mosaic_ray.storage import Storage, StorageError

    parent, name = posixpath.split(uri.rstrip("/"))
    try:
        data = Storage(parent or ".", run.cfg.storage).read_bytes(name)
    except (StorageError, OSError) as e:
        raise FileNotFoundError(f"score.checkpoint {uri!r}: cannot read it ({e})") from e
    try:
        ck = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(ck, dict) or "spec" not in ck or "anchors" not in ck.get("state_dict", {}):
            raise KeyError("spec / state_dict.anchors")
    except Exception as e:
        raise ValueError(f"score.checkpoint {uri!r} is not a planner checkpoint loadable with "
                         f"weights_only=True: {type(e).__name__}: {str(e)[:200]}") from e
    run.storage.write_bytes(EXTERNAL_CHECKPOINT, data)
    print(f"[score] planner checkpoint {uri} -> {run.storage.uri(EXTERNAL_CHECKPOINT)}", flush=True)
    return EXTERNAL_CHECKPOINT


def stage_score(run: Run, force: bool = False) -> dict:
    """Score the pool with this run's base planner, or with ``score.checkpoint`` (another run's
    planner, copied to ``planner/external.pt``; the base stage is then not needed)."""
    from mosaic_ray.stages.score import STAGE, run_score

    if run.storage.is_done(STAGE) and not force:
        return run.storage.done_payload(STAGE)
    with run.timed("score"):
        ckpt = "planner/base.pt"
        if run.cfg.score.checkpoint:
            ckpt = import_checkpoint(run, run.cfg.score.checkpoint)
        elif not run.storage.exists(ckpt):
            raise FileNotFoundError(f"no {run.storage.uri(ckpt)}: run the base stage first, or set "
                                    "score.checkpoint to a planner checkpoint of another run")
        return run_score(run.cfg, run.storage, ckpt, force=force)


def stage_score_train(run: Run, force: bool = False) -> dict | None:
    """D_train's embeddings (the planner scored on D_train), needed by the coreset baseline."""
    from mosaic_ray.config import split_method
    from mosaic_ray.stages.score import run_score

    if not any(split_method(m)[0] == "coreset" for m in run.cfg.selection.methods):
        return None
    if run.storage.is_done("score_train") and not force:
        return run.storage.done_payload("score_train")
    ckpt = run.storage.done_payload("score").get("checkpoint", "planner/base.pt")
    with run.timed("score_train"):
        return run_score(run.cfg, run.storage, ckpt, split="train", out="score_train", force=force)


def stage_domains(run: Run, force: bool = False) -> dict:
    """Domain labels of every pool clip under each configured variant (``domains/<name>.parquet``)
    with each assigner's description (``domains/<name>.json``: sizes, caption n-grams, …)."""
    from mosaic_ray.domains.assigners import make_assigner
    from mosaic_ray.stages.ingest import load_clips
    from mosaic_ray.stages.score import load_scores

    st, cfg = run.storage, run.cfg
    out = {}
    scores = None
    for v in cfg.domains.all_variants():
        rel = f"domains/{v.name}.parquet"
        if st.exists(rel) and st.exists(f"domains/{v.name}.json") and not force:
            out[v.name] = st.read_json(f"domains/{v.name}.json")
            continue
        with run.timed(f"domains_{v.name}"):
            scores = scores if scores is not None else load_scores(st)
            kw = {"column": v.column} if v.kind == "metadata" else {"k": v.k, "seed": v.seed}
            assigner = make_assigner(v.kind, **kw)
            clips = None
            if v.kind == "captions":
                clips = load_clips(st, "pool")
            labels = assigner.fit_assign(scores=scores, clips=clips)
            table = pa.table({"clip_id": scores.column("clip_id"), "domain": pa.array([str(x) for x in labels])})
            st.write_table(rel, table)
            desc = {"kind": v.kind, **assigner.describe(), "sizes": dict(Counter(map(str, labels)))}
            st.write_json(f"domains/{v.name}.json", desc)
            out[v.name] = desc
            print(f"[domains] {v.name} ({v.kind}): {len(desc['sizes'])} domains, sizes "
                  f"{dict(sorted(desc['sizes'].items()))}", flush=True)
    return out


def ranked_pool(run: Run, variant: str | None = None):
    """The scored pool as a PoolView under a domain variant (default: the first) and, per
    domain, clip ids in rank order (lowest base EPDMS first)."""
    from mosaic_ray.domains.assigners import pool_view_with_domains
    from mosaic_ray.selection.strategies import rank_within_domains
    from mosaic_ray.stages.score import load_scores

    v = run.cfg.domains.variant(variant)
    scores = load_scores(run.storage)
    rel = f"domains/{v.name}.parquet"
    if run.storage.exists(rel):
        lab = dict(zip(*[run.storage.read_table(rel).column(c).to_pylist() for c in ("clip_id", "domain")]))
        labels = np.asarray([lab[c] for c in scores.column("clip_id").to_pylist()], dtype=object)
    else:  # a metadata variant needs no stored labels
        from mosaic_ray.domains.metadata import assign_domains

        labels = assign_domains(scores, v.column)
    pool = pool_view_with_domains(scores, labels)
    ranked = {str(d): [str(pool.clip_ids[i]) for i in idx] for d, idx in rank_within_domains(pool).items()}
    return pool, ranked


def pilot_sets(cfg: ExperimentConfig) -> list[tuple[str, str, bool]]:
    """(pilot set name, domain variant, ranked?) for every set the methods need: ranked pilots
    for MOSAIC per variant, unranked pilots for the ``mosaic_no_rank`` ablation. The default
    variant's ranked set is named ``pilots``."""
    from mosaic_ray.config import split_method

    default = cfg.domains.variant(None).name
    sets = []
    for m in cfg.selection.methods:
        base, variant = split_method(m)
        v = variant or default
        if base == "mosaic":
            sets.append(("pilots" if v == default else f"pilots-{v}", v, True))
        elif base == "mosaic_no_rank":
            sets.append((f"pilots-{v}-unranked", v, False))
    return list(dict.fromkeys(sets))


def stage_pilot(run: Run, force: bool = False) -> dict:
    """Pilot runs for every pilot set (see :func:`pilot_sets`); returns {set: table}."""
    from mosaic_ray.selection.baselines import unranked_order
    from mosaic_ray.stages.pilot import run_pilots

    st, cfg = run.storage, run.cfg
    sets = pilot_sets(cfg)
    todo = [x for x in sets if force or not st.is_done(f"pilot/{x[0]}")]
    out = {}
    if todo:
        base = st.read_json("planner/base_eval.json")
    with (run.timed("pilot") if todo else contextlib.nullcontext()):
        for name, variant, ranked in sets:
            if (name, variant, ranked) not in todo:
                out[name] = st.read_table(f"pilot/{name}.parquet")
                continue
            pool, order = ranked_pool(run, variant)
            if not ranked:
                order = {str(d): [str(pool.clip_ids[i]) for i in idx]
                         for d, idx in unranked_order(pool, cfg.selection.random_seed).items()}
            print(f"[pilot] set {name}: {'ranked' if ranked else 'unranked'} clips, domains of {variant}", flush=True)
            out[name] = run_pilots(cfg, st, order, "planner/base.pt", base["validation"]["epdms"],
                                   name=name, force=force)
    return out


def fit_laws(pilots: pa.Table) -> dict:
    from mosaic_ray.selection.scaling_law import fit_scaling_law

    by_dom = defaultdict(list)
    for r in pilots.to_pylist():
        by_dom[r["domain"]].append((r["n"], r["delta_u"]))
    return {d: fit_scaling_law(np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float))
            for d, pts in sorted(by_dom.items())}


def make_method_strategy(run: Run, method: str, laws_by_set: dict):
    """The selection strategy behind a method name (``base[@variant]``)."""
    from mosaic_ray.config import split_method
    from mosaic_ray.selection.strategies import MosaicStrategy, RandomStrategy, make_strategy

    cfg = run.cfg
    base, variant = split_method(method)
    v = cfg.domains.variant(variant).name
    default = cfg.domains.variant(None).name
    seed = cfg.selection.random_seed
    if base == "mosaic":
        return MosaicStrategy(laws_by_set["pilots" if v == default else f"pilots-{v}"])
    if base == "mosaic_no_rank":
        return make_strategy("mosaic_no_rank", laws=laws_by_set[f"pilots-{v}-unranked"], seed=seed)
    if base == "random":
        return RandomStrategy(seed)
    if base == "coreset":
        from mosaic_ray.domains.embedding import embeddings_from_scores
        from mosaic_ray.stages.score import load_scores

        return make_strategy("coreset", train_embeddings=embeddings_from_scores(load_scores(run.storage, "score_train")))
    if base == "chameleon":
        return make_strategy("chameleon", seed=seed)
    return make_strategy(base)


def stage_select(run: Run, force: bool = False) -> dict:
    """Scaling laws per pilot set, then nested selections per method and budget (manifest)."""
    from mosaic_ray.config import split_method
    from mosaic_ray.selection.strategies import selection_manifest

    st, cfg = run.storage, run.cfg
    if st.is_done("select") and not force:
        return st.done_payload("select")
    with run.timed("select"):
        laws_by_set = {name: fit_laws(st.read_table(f"pilot/{name}.parquet")) for name, _, _ in pilot_sets(cfg)}
        rows, budgets, pool_size = [], None, None
        for method in cfg.selection.methods:
            pool, _ = ranked_pool(run, split_method(method)[1])
            if budgets is None:
                budgets, pool_size = cfg.selection.resolve_budgets(len(pool)), len(pool)
            strat = make_method_strategy(run, method, laws_by_set)
            if hasattr(strat, "laws"):
                missing = sorted(set(map(str, pool.domain_names)) - set(map(str, strat.laws)))
                if missing:
                    raise RuntimeError(f"{method}: no pilot points for domains {missing}; rerun the pilot stage")
            for r in selection_manifest(strat.select(pool, budgets)):
                rows.append({**r, "method": method})
        st.write_table("select/manifest.parquet", pa.Table.from_pylist(rows))
        payload = {"budgets": budgets, "methods": list(cfg.selection.methods), "pool_size": pool_size,
                   "laws": {d: law.to_dict() for d, law in laws_by_set.get("pilots", {}).items()},
                   "laws_by_set": {n: {d: law.to_dict() for d, law in ls.items()} for n, ls in laws_by_set.items()}}
        st.write_json("select/laws.json", payload)
        st.mark_done("select", payload)
    for name, laws in laws_by_set.items():
        for d, law in laws.items():
            print(f"[select] {name} {d}: a = {100 * law.a:.2f} EPDMS points, tau = {law.tau:.0f} clips "
                  f"({law.status})", flush=True)
    return payload


def selection_overhead_cpu_s(run: Run, method: str) -> float:
    """Resource-seconds (CPU·s) a method spends before its final training: the base model and
    the scoring pass for model-based methods, plus the pilot runs for MOSAIC (paper Fig. 11)."""
    st = run.storage
    if method in ("random", "full"):
        return 0.0
    total = 0.0
    if st.is_done("planner/base"):
        b = st.done_payload("planner/base")
        total += b.get("wall_time_s", 0.0) * run.cfg.train.num_workers * run.cfg.train.cpus_per_worker
    if st.is_done("score"):
        sc = st.done_payload("score")
        total += sc.get("wall_time_s", 0.0) * sc.get("actors", 1) * run.cfg.score.num_cpus_per_actor
    if method.startswith("coreset") and st.is_done("score_train"):
        sc = st.done_payload("score_train")
        total += sc.get("wall_time_s", 0.0) * sc.get("actors", 1) * run.cfg.score.num_cpus_per_actor
    for name, variant, ranked in pilot_sets(run.cfg):
        base, v = (method.partition("@")[0], method.partition("@")[2] or run.cfg.domains.variant(None).name)
        if base in ("mosaic", "mosaic_no_rank") and v == variant and ranked == (base == "mosaic") \
                and st.exists(f"pilot/{name}.parquet"):
            times = st.read_table(f"pilot/{name}.parquet").column("trial_time_s").to_pylist()
            total += sum(t for t in times if t == t) * run.cfg.pilot.cpus_per_trial
    return round(total, 1)


def grid_cells(run: Run) -> list:
    """Every (method, budget, seed) cell of the grid, plus the full-pool reference if asked."""
    from mosaic_ray.stages.grid import Cell

    st, cfg = run.storage, run.cfg
    sel = st.read_json("select/laws.json")
    manifest = st.read_table("select/manifest.parquet").to_pylist()
    by = defaultdict(list)
    for r in manifest:
        by[(r["method"], r["budget"])].append(r)
    cells = []
    for m in sel["methods"]:
        extra = selection_overhead_cpu_s(run, m)
        for b in sel["budgets"]:
            ids = [r["clip_id"] for r in sorted(by[(m, b)], key=lambda r: r["step"])]
            cells += [Cell(m, b, s, ids, extra) for s in cfg.train.seeds]
    if cfg.train.full_pool:
        pool_ids = st.read_table("ingest/clips/pool", columns=["clip_id"]).column("clip_id").to_pylist()
        # first: the reference line every method is read against (Fig. 5), even in a cut-short grid
        cells = [Cell("full", len(pool_ids), s, pool_ids, 0.0) for s in cfg.train.seeds] + cells
    return cells


def stage_train(run: Run, force: bool = False) -> dict:
    """Final training per (method, budget, seed) on Ray Train inside concurrent Ray Tune
    trials, and validation evaluation (the grid, :mod:`mosaic_ray.stages.grid`).

    Finished cells are kept in ``train/results/<key>.json`` and skipped on rerun."""
    from mosaic_ray.stages.grid import run_grid

    st = run.storage
    cells = grid_cells(run)
    todo = [c for c in cells if force or not st.exists(c.result_path)]
    with (run.timed("train") if todo else contextlib.nullcontext()):
        results = run_grid(run.cfg, st, cells, force=force)
    st.mark_done("train", {"runs": len(results)})
    return results


def build_summary(run: Run) -> dict:
    """Everything the report needs, from the stages' stored outputs."""
    from mosaic_ray.scoring.epdms import TERMS
    from mosaic_ray.selection.scaling_law import ScalingLaw

    st, cfg = run.storage, run.cfg
    ing = st.read_json("ingest/summary.json")
    base = st.read_json("planner/base_eval.json")
    sel = st.read_json("select/laws.json")
    pilots = st.read_table("pilot/pilots.parquet").to_pylist() if st.exists("pilot/pilots.parquet") else []
    manifest = st.read_table("select/manifest.parquet").to_pylist()
    pool, _ = ranked_pool(run)
    sizes = Counter(map(str, pool.domains))
    domains = {}
    for d, law in sel["laws"].items():
        domains[d] = {"size": sizes.get(d, 0), "a": law["a"], "tau": law["tau"], "rmse": law.get("rmse"),
                      "status": law.get("status"),
                      "pilot_points": [[p["n"], p["delta_u"], p["seed"]] for p in pilots if p["domain"] == d]}
    selection: dict = defaultdict(dict)
    order: dict = {}
    for method in sel["methods"]:
        for b in sel["budgets"]:
            rows = [r for r in manifest if r["method"] == method and r["budget"] == b]
            selection[method][str(b)] = {"composition": dict(Counter(r["domain"] for r in rows))}
        big = max(sel["budgets"])
        rows = sorted((r for r in manifest if r["method"] == method and r["budget"] == big), key=lambda r: r["step"])
        order[method] = [r["domain"] for r in rows]
    results: dict = defaultdict(dict)
    for rel in st.list("train/results", ".json"):
        r = st.read_json(rel)
        results[r["method"]].setdefault(str(r["budget"]), []).append(r)
    res_out: dict = defaultdict(dict)
    for method, per_b in results.items():
        for b, runs in per_b.items():
            e = np.array([x["validation"]["epdms"] for x in runs])
            res_out[method][b] = {
                "epdms_mean": float(e.mean()), "epdms_std": float(e.std(ddof=1)) if len(e) > 1 else 0.0,
                "n_seeds": len(e), "epdms_per_seed": e.tolist(),
                "terms": {t: float(np.nanmean([x["validation"]["terms"][t] for x in runs])) for t in TERMS},
                "n_train": int(runs[0]["n_train"]), "train_time_s": float(np.mean([x["wall_time_s"] for x in runs])),
                "compute_cpu_s": float(np.mean([x.get("compute_cpu_s", np.nan) for x in runs])),
            }
    laws = {d: ScalingLaw.from_dict(v) for d, v in sel["laws"].items()}
    estimated = {}
    for b in sel["budgets"]:
        comp = selection.get("mosaic", {}).get(str(b), {}).get("composition")
        if comp:
            estimated[str(b)] = float(base["validation"]["epdms"] + sum(laws[d](n) for d, n in comp.items()))
    return {
        "run": {"name": cfg.name, "storage": st.uri(), "wall_time_s": dict(run.timings),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "config": cfg.model_dump(mode="json")},
        "data": {"candidates": ing["candidates"], "clips": ing["clips"], "quarantined": ing["quarantined"],
                 "quarantine_reasons": ing["quarantine_reasons"], "splits": ing["splits"],
                 "segments": ing["segments"], "pool_by_domain": dict(sorted(sizes.items())),
                 "clips_per_site": ing.get("clips_per_site"), "notes": ing.get("notes", [])},
        "base": {"epdms": base["validation"]["epdms"], "terms": base["validation"]["terms"],
                 "n_train": base["n_train"]},
        "human": base.get("human"),
        "domains": domains,
        "selection": dict(selection),
        "selection_order": order,
        "results": dict(res_out),
        "estimated": estimated,
        "domain_variants": _variant_summary(run, sel),
    }


def _variant_summary(run: Run, sel: dict) -> dict:
    """Per domain variant: kind, sizes, the assigner's description (caption n-grams…) and the
    laws fitted on its pilot sets."""
    st = run.storage
    out = {}
    for v in run.cfg.domains.all_variants():
        desc = st.read_json(f"domains/{v.name}.json") if st.exists(f"domains/{v.name}.json") else {}
        laws = {n: ls for n, ls in (sel.get("laws_by_set") or {}).items()
                for name, variant, _ in pilot_sets(run.cfg) if name == n and variant == v.name}
        out[v.name] = {"kind": v.kind, "description": desc, "laws": laws}
    return out


def stage_report(run: Run, total_s: float | None = None) -> str:
    """Write ``summary.json``, ``report.md`` and the plots; returns the report's URI.

    Args:
        total_s: wall time of this ``run`` invocation so far (Ray start-up included).
    """
    import tempfile
    from pathlib import Path

    from mosaic_ray.report.report import write_report

    st = run.storage
    with run.timed("report"):
        summary = build_summary(run)
        if total_s is not None:
            summary["run"]["total_wall_time_s"] = round(total_s, 1)
        st.write_json("summary.json", summary)
        with tempfile.TemporaryDirectory() as d:
            path = write_report(summary, d)
            for f in Path(d).iterdir():
                st.write_bytes(f"report/{f.name}", f.read_bytes())
    return st.uri(f"report/{Path(path).name}")


def run_all(cfg: ExperimentConfig, force: tuple[str, ...] = ()) -> str:
    """Every stage in order inside one Ray session; returns the report's URI."""
    from mosaic_ray.stages.runtime import ray_session

    run = Run(cfg)
    t0 = time.time()
    with ray_session(cfg):
        stage_ingest(run, "ingest" in force)
        stage_base(run, "base" in force)
        stage_score(run, "score" in force)
        stage_score_train(run, "score" in force)
        stage_domains(run, "domains" in force)
        stage_pilot(run, "pilot" in force)
        stage_select(run, "select" in force)
        stage_train(run, "train" in force)
        report = stage_report(run, total_s=time.time() - t0)
    return report
