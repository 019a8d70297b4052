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
STAGES = ("ingest", "base", "score", "pilot", "select", "train", "report")


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
        from mosaic_ray.stages.train import local_copy

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
    from mosaic_ray.stages.train import train_planner

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
        info = train_planner(cfg, st, name="base", epochs=cfg.planner.base_epochs, seed=cfg.planner.seed)
        util = run.evaluate(info["checkpoint"])
        clips, cache = run.validation()
        human = score_human(clips, cache)
        payload = {**info, "validation": util, "human": human, "vocab_size": int(len(anchors))}
        st.write_json("planner/base_eval.json", payload)
        st.mark_done("planner/base", payload)
    print(f"[base] validation EPDMS {100 * util['epdms']:.2f} (logged human {100 * human['epdms']:.2f})", flush=True)
    return payload


def stage_score(run: Run, force: bool = False) -> dict:
    from mosaic_ray.stages.score import STAGE, run_score

    if run.storage.is_done(STAGE) and not force:
        return run.storage.done_payload(STAGE)
    with run.timed("score"):
        return run_score(run.cfg, run.storage, "planner/base.pt", force=force)


def ranked_pool(run: Run):
    """The scored pool as a PoolView and, per domain, clip ids in rank order."""
    from mosaic_ray.domains.metadata import pool_view
    from mosaic_ray.selection.strategies import rank_within_domains
    from mosaic_ray.stages.score import load_scores

    pool = pool_view(load_scores(run.storage), run.cfg.domains.column)
    ranked = {str(d): [str(pool.clip_ids[i]) for i in idx] for d, idx in rank_within_domains(pool).items()}
    return pool, ranked


def stage_pilot(run: Run, force: bool = False):
    from mosaic_ray.stages.pilot import run_pilots

    if run.storage.is_done("pilot/pilots") and not force:
        return run.storage.read_table("pilot/pilots.parquet")
    base = run.storage.read_json("planner/base_eval.json")
    _, ranked = ranked_pool(run)
    with run.timed("pilot"):
        return run_pilots(run.cfg, run.storage, ranked, "planner/base.pt", base["validation"]["epdms"], force=force)


def fit_laws(pilots: pa.Table) -> dict:
    from mosaic_ray.selection.scaling_law import fit_scaling_law

    by_dom = defaultdict(list)
    for r in pilots.to_pylist():
        by_dom[r["domain"]].append((r["n"], r["delta_u"]))
    return {d: fit_scaling_law(np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float))
            for d, pts in sorted(by_dom.items())}


def stage_select(run: Run, force: bool = False) -> dict:
    """Scaling laws, then nested selections per method and budget (manifest)."""
    from mosaic_ray.selection.strategies import MosaicStrategy, RandomStrategy, selection_manifest

    st, cfg = run.storage, run.cfg
    if st.is_done("select") and not force:
        return st.done_payload("select")
    with run.timed("select"):
        pool, _ = ranked_pool(run)
        budgets = cfg.selection.resolve_budgets(len(pool))
        laws = fit_laws(st.read_table("pilot/pilots.parquet"))
        missing = sorted(set(map(str, pool.domain_names)) - set(laws))
        if missing:
            raise RuntimeError(f"no pilot points for domains {missing}; rerun the pilot stage")
        rows = []
        for method in cfg.selection.methods:
            strat = MosaicStrategy(laws) if method == "mosaic" else RandomStrategy(cfg.selection.random_seed)
            rows.extend(selection_manifest(strat.select(pool, budgets)))
        st.write_table("select/manifest.parquet", pa.Table.from_pylist(rows))
        payload = {"budgets": budgets, "methods": list(cfg.selection.methods),
                   "laws": {d: law.to_dict() for d, law in laws.items()}, "pool_size": len(pool)}
        st.write_json("select/laws.json", payload)
        st.mark_done("select", payload)
    for d, law in laws.items():
        print(f"[select] {d}: a = {100 * law.a:.2f} EPDMS points, tau = {law.tau:.0f} clips ({law.status})", flush=True)
    return payload


def stage_train(run: Run, force: bool = False) -> dict:
    """Final training per (method, budget, seed) on Ray Train and validation evaluation.

    Finished runs are kept in ``train/results/<key>.json`` and skipped on rerun."""
    from mosaic_ray.stages.train import train_planner

    st, cfg = run.storage, run.cfg
    sel = st.read_json("select/laws.json")
    manifest = st.read_table("select/manifest.parquet").to_pylist()
    jobs = [(m, b, s) for m in sel["methods"] for b in sel["budgets"] for s in cfg.train.seeds]
    results = {}
    todo = [j for j in jobs if force or not st.exists(f"train/results/{j[0]}-b{j[1]}-s{j[2]}.json")]
    with (run.timed("train") if todo else contextlib.nullcontext()):
        for k, (method, budget, seed) in enumerate(jobs, 1):
            key = f"{method}-b{budget}-s{seed}"
            rel = f"train/results/{key}.json"
            if st.exists(rel) and not force:
                results[key] = st.read_json(rel)
                continue
            ids = [r["clip_id"] for r in manifest if r["method"] == method and r["budget"] == budget]
            print(f"[train] {k}/{len(jobs)} {method} budget {budget} seed {seed}: D_train ∪ {len(ids)} clips", flush=True)
            info = train_planner(cfg, st, name=key, epochs=cfg.train.epochs, seed=seed, pool_ids=ids,
                                 init_checkpoint="planner/base.pt" if cfg.train.init == "base" else None)
            util = run.evaluate(info["checkpoint"])
            res = {"method": method, "budget": budget, "seed": seed, **info, "validation": util}
            st.write_json(rel, res)
            results[key] = res
            print(f"[train] {key}: validation EPDMS {100 * util['epdms']:.2f} ({info['wall_time_s']} s)", flush=True)
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
    pilots = st.read_table("pilot/pilots.parquet").to_pylist()
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
    }


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
        stage_pilot(run, "pilot" in force)
        stage_select(run, "select" in force)
        stage_train(run, "train" in force)
        report = stage_report(run, total_s=time.time() - t0)
    return report
