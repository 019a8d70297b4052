"""``summary.json``: its schema (:class:`Summary`, versioned) and how the report step builds it.

The summary holds every number the report shows, read back from the steps' stored outputs
(:mod:`mosaic_ray.layout`); :func:`mosaic_ray.report.report.render_report` reads it through
this type, so a key the builder writes and the report reads is declared once, here.

All EPDMS values are on the 0..1 scale (the report prints them ×100). Sections are optional
so that a partial run (or a hand-made summary in a test) still renders.

Version history: 1 — first typed schema (the keys the untyped summary had, plus ``version``);
2 — bootstrap intervals (:mod:`mosaic_ray.evaluate.stats`): ``CellStats.epdms_ci``,
``comparisons`` (every method − Random, paired over test clips and seeds), ``brmr`` (isotonic,
with intervals), ``statistics`` (how they were computed); control pilots (``control``), laws with
status, policy and bootstrap bands over pilot seeds, ``estimated`` = control + Σ laws with
``estimated_ci``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from typing import Any, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mosaic_ray import layout
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.split import CALIBRATION, TEST
from mosaic_ray.scoring.epdms import TERMS
from mosaic_ray.selection.methods import DEFAULT_PILOT_SET, pilot_sets
from mosaic_ray.selection.scaling_law import ScalingLaw, bootstrap_laws, pilot_gains
from mosaic_ray.stages.train import grid_cells
from mosaic_ray.storage import Storage

__all__ = ["SUMMARY_VERSION", "Summary", "RunInfo", "DataInfo", "Utility", "DomainLaw",
           "BudgetSelection", "CellStats", "VariantInfo", "IntervalStat", "ControlInfo", "StatisticsInfo", "build_summary",
           "REFERENCE_METHOD"]

#: the method every comparison and BRMR is read against (the paper's Random: one shuffle, seed 42)
REFERENCE_METHOD = "random"

SUMMARY_VERSION = 2


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunInfo(_Section):
    """Where the run lies, how long each step took (s), and the config it ran with."""

    name: str | None = None
    storage: str | None = None
    config_path: str | None = None
    wall_time_s: dict[str, float] | None = None
    total_wall_time_s: float | None = None
    started: str | None = None
    finished: str | None = None
    config: dict[str, Any] | None = None


class DataInfo(_Section):
    """Ingest counts: candidates = frames + quarantined; clips per split / segment / site."""

    candidates: int | None = None
    clips: int | None = None
    frames: int | None = None  #: rows (t0s); candidates = frames + quarantined (None: a frame per clip)
    quarantined: int | None = None
    quarantine_reasons: dict[str, int] | None = None
    splits: dict[str, int] | None = None
    frames_per_split: dict[str, int] | None = None
    segments: dict[str, list[str]] | None = None
    pool_by_domain: dict[str, int] | None = None
    clips_per_site: dict[str, dict[str, int]] | None = None
    split_unit: str | None = None
    split_fill: str | None = None  #: how the split plan filled each split's site targets (ingest.split_fill)
    units: dict[str, list[str]] | None = None
    site_mix: dict[str, float] | None = None  #: the declared mix train, calibration and test follow
    mix_deviation: dict[str, float] | None = None  #: per split: largest |share − declared| (0..1)
    notes: list[str] | None = None


class Utility(_Section):
    """Mean test EPDMS and the nine terms of one planner (or of the logged human)."""

    epdms: float
    terms: dict[str, float] = Field(default_factory=dict)
    n_train: int | None = None


class DomainLaw(_Section):
    """One domain's fitted law ΔU(n) = a (1 − e^(−n/τ)) and its pilot points [n, ΔU, seed]
    (ΔU against the control pilot of the seed). ``policy``/``knots_*``: the degenerate-fit
    policy's curve the selection used instead (:func:`~mosaic_ray.selection.scaling_law.fit_pilot_law`);
    ``band_*``: the 95 % band of ΔU(n) over laws refitted on resampled pilot seeds."""

    size: int | None = None
    a: float
    tau: float
    rmse: float | None = None
    status: str | None = None
    policy: str | None = None
    knots_n: list[float] | None = None
    knots_u: list[float] | None = None
    pilot_points: list[list[float]] = Field(default_factory=list)
    band_n: list[float] | None = None
    band_lo: list[float] | None = None
    band_hi: list[float] | None = None


class ControlInfo(_Section):
    """The control pilots (n = 0: the pilot recipe on D_train alone), calibration EPDMS 0..1 per
    seed, and their gain over the base model on calibration."""

    epdms_per_seed: dict[str, float] = Field(default_factory=dict)
    epdms_mean: float
    gain_over_base: float | None = None


class BudgetSelection(_Section):
    composition: dict[str, int] = Field(default_factory=dict)


class IntervalStat(_Section):
    """A statistic with its bootstrap interval (:class:`mosaic_ray.evaluate.stats.Interval`);
    ``hi`` None = +inf (a BRMR some replicates never reach)."""

    estimate: float | None = None
    lo: float | None = None
    hi: float | None = None
    se: float | None = None
    level: float | None = None
    n_boot: int | None = None


class StatisticsInfo(_Section):
    """How the intervals were computed: replicates, level, the clips they resample, notes."""

    n_boot: int
    level: float
    seed: int = 0
    split: str | None = None
    n_clips: int | None = None
    reference: str = REFERENCE_METHOD
    method: str = ""
    notes: list[str] = Field(default_factory=list)


class CellStats(_Section):
    """One method at one budget, over its training seeds."""

    epdms_mean: float
    epdms_ci: IntervalStat | None = None  #: mean over seeds and the common test clips, with its interval
    epdms_std: float | None = None
    n_seeds: int | None = None
    epdms_per_seed: list[float] | None = None
    terms: dict[str, float] | None = None
    n_train: int | None = None
    train_time_s: float | None = None
    compute_cpu_s: float | None = None
    fingerprints: list[str] | None = None  #: per seed: the cell fingerprint its result was made under


class VariantInfo(_Section):
    """A domain variant: kind, its assigner's description, the laws of its pilot sets."""

    kind: str | None = None
    description: dict[str, Any] = Field(default_factory=dict)
    laws: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)


class Summary(_Section):
    """The whole ``summary.json`` (``version`` = :data:`SUMMARY_VERSION`)."""

    version: int = SUMMARY_VERSION
    run: RunInfo | None = None
    data: DataInfo | None = None
    base: Utility | None = None
    #: split (calibration, test) -> site ("all" too) -> the base model's mean EPDMS over the split's
    #: clips of that site and their count: pilots and laws are measured on calibration, the tables on
    #: test, so a calibration scored far above test has less headroom than test (see the report)
    base_by_site: dict[str, dict[str, dict[str, float]]] | None = None
    human: Utility | None = None
    domains: dict[str, DomainLaw] | None = None
    selection: dict[str, dict[str, BudgetSelection]] | None = None
    selection_order: dict[str, list[str]] | None = None
    results: dict[str, dict[str, CellStats]] | None = None
    estimated: dict[str, float] | None = None
    #: budget -> the estimate (control EPDMS + Σ laws) with its interval over resampled pilot seeds
    estimated_ci: dict[str, IntervalStat] | None = None
    control: ControlInfo | None = None
    #: method -> budget -> mean(method) − mean(Random) with its paired bootstrap interval
    comparisons: dict[str, dict[str, IntervalStat]] | None = None
    #: method -> Random's budget -> BRMR on isotonic curves with its bootstrap interval
    brmr: dict[str, dict[str, IntervalStat]] | None = None
    statistics: StatisticsInfo | None = None
    #: site -> method -> budget -> mean(method) − mean(Random) on that site's test clips, with interval
    comparisons_by_site: dict[str, dict[str, dict[str, IntervalStat]]] | None = None
    #: site -> method -> budget -> mean test EPDMS on that site's clips, with interval
    results_by_site: dict[str, dict[str, dict[str, IntervalStat]]] | None = None
    domain_variants: dict[str, VariantInfo] | None = None
    #: per step: the fingerprint its completion record carries (what made its outputs)
    fingerprints: dict[str, str] | None = None
    #: steps whose recorded fingerprint is not the config's (their numbers are from other inputs)
    stale_steps: list[str] | None = None
    #: stored grid results left out: made under other inputs, or not a cell of this config
    stale_results: list[str] | None = None

    @classmethod
    def coerce(cls, s: "Summary | Mapping[str, Any]") -> "Summary":
        """A :class:`Summary` from itself or a mapping (e.g. ``json.load`` of summary.json).

        Raises:
            pydantic.ValidationError: an unknown key or a value of the wrong type.
        """
        return s if isinstance(s, Summary) else cls.model_validate(dict(s))

    def as_dict(self) -> dict[str, Any]:
        """Plain dict without the unset (None) entries, as written to ``summary.json``."""
        return self.model_dump(exclude_none=True)


def evaluation(result: Mapping[str, Any]) -> dict:
    """A stored evaluation's utility: its ``test`` entry (``validation`` in runs from before the
    four splits)."""
    return result.get(TEST) or result.get("validation") or {}


def _cell_stats(runs: list[dict]) -> CellStats:
    e = np.array([evaluation(x)["epdms"] for x in runs])
    return CellStats(
        epdms_mean=float(e.mean()), epdms_std=float(e.std(ddof=1)) if len(e) > 1 else 0.0,
        n_seeds=len(e), epdms_per_seed=e.tolist(),
        terms={t: float(np.nanmean([evaluation(x)["terms"][t] for x in runs])) for t in TERMS},
        n_train=int(runs[0]["n_train"]), train_time_s=float(np.mean([x["wall_time_s"] for x in runs])),
        compute_cpu_s=float(np.mean([x.get("compute_cpu_s", np.nan) for x in runs])),
        fingerprints=[x["fingerprint"] for x in runs] if all(x.get("fingerprint") for x in runs) else None)


def _site_of_clip(st: Storage, split: str) -> dict[str, str] | None:
    """{clip id: site} of a split's shards (None: the split is not stored)."""
    if not st.exists(layout.clips(split)):
        return None
    t = st.read_table(layout.clips(split), columns=["clip_id", "site"])
    return dict(zip(t.column("clip_id").to_pylist(), t.column("site").to_pylist()))


def _base_by_site(base: Mapping[str, Any], site_of: Mapping[str, Mapping[str, str] | None]
                  ) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {site or "all": {"epdms": mean over clips 0..1, "n_clips": count}}} of the base
    model on calibration and test, from its stored per-clip scores (``planner/base_eval.json``;
    splits without per-clip scores are left out); ``site_of``: {split: {clip id: site}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for split in (CALIBRATION, TEST):
        pc = (base.get(split) or {}).get("per_clip") or {}
        if not pc.get("clip_id"):
            continue
        sites = site_of.get(split) or {}
        by: dict[str, list[float]] = defaultdict(list)
        for cid, e in zip(pc["clip_id"], pc["epdms"]):
            by["all"].append(float(e))
            by[sites.get(cid, "?")].append(float(e))
        out[split] = {k: {"epdms": float(np.mean(v)), "n_clips": len(v)} for k, v in sorted(by.items())}
    return out


def _statistics(runs: Mapping[str, Mapping[str, list[dict]]], base_eval: Mapping[str, Any],
                results: dict[str, dict[str, CellStats]], *, n_boot: int, seed: int = 0,
                split: str = "test", site_of_clip: Mapping[str, str] | None = None
                ) -> tuple[dict, dict, StatisticsInfo | None, dict, dict]:
    """Bootstrap intervals from the stored per-clip scores (fills ``results``' ``epdms_ci``).

    Every result with ``per_clip`` scores takes part; the clips are those every such result and
    the base model scored (:func:`~mosaic_ray.evaluate.stats.align_cells`). Returns
    ``(comparisons, brmr, info, results_by_site, comparisons_by_site)``; empty dicts and None
    when no result has per-clip scores. With ``site_of_clip`` ({clip id: site}) the means and
    the comparisons are also given per site, on that site's clips.
    """
    from mosaic_ray.evaluate import stats

    keyed, per = [], []
    for m, per_b in runs.items():
        for b, rs in per_b.items():
            for i, r in enumerate(rs):
                pc = evaluation(r).get("per_clip")
                if pc:
                    keyed.append((m, b, i))
                    per.append(pc)
    base_pc = evaluation(base_eval).get("per_clip")
    if not per or not base_pc:
        return {}, {}, None, {}, {}
    ids, arrs = stats.align_cells(per + [base_pc])
    notes = []
    n_all = max(len(p["clip_id"]) for p in per + [base_pc])
    if len(ids) < n_all:
        notes.append(f"{n_all - len(ids)} clips are not scored by every result and are left out of the intervals")
    if not ids:
        return {}, {}, StatisticsInfo(n_boot=n_boot, level=stats.DEFAULT_LEVEL, seed=seed, split=split, n_clips=0,
                                      notes=notes + ["no clip is scored by every result: no intervals"]), {}, {}
    cells: dict[str, dict[int, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for (m, b, _), a in zip(keyed, arrs[:-1]):
        cells[m][int(b)].append(a)
    cells_np = {m: {b: np.stack(v) for b, v in per_b.items()} for m, per_b in cells.items()}
    for m, per_b in cells_np.items():
        for b, x in per_b.items():
            iv = stats.mean_interval(x, n_boot=n_boot, seed=seed)
            results[m][str(b)].epdms_ci = IntervalStat(**iv.to_dict())
    comparisons: dict[str, dict[str, IntervalStat]] = {}
    brmr: dict[str, dict[str, IntervalStat]] = {}
    ref = cells_np.get(REFERENCE_METHOD)
    if ref:
        for m, per_b in cells_np.items():
            if m == REFERENCE_METHOD:
                continue
            comp = {str(b): IntervalStat(**stats.paired_bootstrap_diff(x, ref[b], n_boot=n_boot, seed=seed).to_dict())
                    for b, x in sorted(per_b.items()) if b in ref}
            if comp:
                comparisons[m] = comp
        curves = {m: per_b for m, per_b in cells_np.items() if m != "full"}
        brmr = {m: {str(b): IntervalStat(**iv.to_dict()) for b, iv in per_b.items()}
                for m, per_b in stats.brmr_bootstrap(curves, arrs[-1], reference=REFERENCE_METHOD,
                                                     n_boot=n_boot, seed=seed).items()}
    else:
        notes.append(f"no {REFERENCE_METHOD!r} results with per-clip scores: no comparisons or BRMR")
    by_site_res: dict = {}
    by_site_cmp: dict = {}
    if site_of_clip:
        sites = np.array([site_of_clip.get(c, "?") for c in ids])
        for site in sorted(set(sites.tolist())):
            m_ = sites == site
            by_site_res[site] = {m: {str(b): IntervalStat(**stats.mean_interval(x[:, m_], n_boot=n_boot, seed=seed)
                                                          .to_dict()) for b, x in sorted(per_b.items())}
                                 for m, per_b in cells_np.items()}
            if ref:
                cmp_ = {m: {str(b): IntervalStat(**stats.paired_bootstrap_diff(x[:, m_], ref[b][:, m_], n_boot=n_boot,
                                                                               seed=seed).to_dict())
                            for b, x in sorted(per_b.items()) if b in ref}
                        for m, per_b in cells_np.items() if m != REFERENCE_METHOD}
                by_site_cmp[site] = {m: v for m, v in cmp_.items() if v}
    info = StatisticsInfo(
        n_boot=n_boot, level=stats.DEFAULT_LEVEL, seed=seed, split=split, n_clips=len(ids), notes=notes,
        method="bootstrap over the common test clips (shared by every cell of a replicate: paired) and each "
               "cell's training seeds (paired by seed index when the seed counts match), percentile interval "
               "widened by sqrt(S/(S-1)) and t/z at the Welch-Satterthwaite df of the seed and clip parts; BRMR "
               "on isotonic curves with the base model at budget 0 (Random exactly 1)")
    return comparisons, brmr, info, by_site_res, by_site_cmp


def build_summary(cfg: ExperimentConfig, storage: Storage, timings: Mapping[str, float] | None = None,
                  fingerprints: Mapping[str, Any] | None = None,
                  records: Mapping[str, str] | None = None, n_boot: int = 2000,
                  n_boot_laws: int = 200) -> Summary:
    """The summary of a run from its stored outputs (ingest, base, domains, pilot, select, train).

    Args:
        timings: wall seconds per step (``timings.json``); ``run.total_wall_time_s`` is their sum.
        fingerprints: every step's fingerprint under ``cfg`` ({step: Fingerprint},
            :func:`mosaic_ray.stages.fingerprint.fingerprints`). With them, the summary lists
            the steps whose record was made under other inputs (``stale_steps``) and reports
            only the grid results of this config's cells made under their fingerprint (the
            others are named in ``stale_results``).
        records: {step: its completion record folder} (the pipeline's ``Step.record``s); the
            summary's ``fingerprints`` are the fingerprints these records carry.
        n_boot: bootstrap replicates of the intervals (:func:`_statistics`).
        n_boot_laws: replicates of the laws refitted on resampled pilot seeds (law bands,
            the estimate's interval; :func:`~mosaic_ray.selection.scaling_law.bootstrap_laws`).

    Raises:
        StorageError: an output of an earlier step is missing.
    """
    st = storage
    ing = st.read_json(layout.INGEST_SUMMARY)
    base = st.read_json(layout.BASE_EVAL)
    sel = st.read_json(layout.LAWS)
    default = cfg.domains.variant(None).name
    pilots = (st.read_table(layout.pilot_table(DEFAULT_PILOT_SET)).to_pylist()
              if st.exists(layout.pilot_table(DEFAULT_PILOT_SET)) else [])
    manifest = st.read_table(layout.MANIFEST).to_pylist()
    sizes = Counter(st.read_json(layout.domain_description(default)).get("sizes", {}))
    gains, control = pilot_gains(pilots) if pilots else ({}, {})
    boot = bootstrap_laws(pilots, n_boot=n_boot_laws) if pilots else []
    domains = {}
    for d, law in sel["laws"].items():
        band = {}
        if boot:
            top = max(float(sizes.get(d, 0)), max((p[0] for p in gains.get(d, [])), default=0.0), 1.0)
            grid = np.unique(np.round(np.linspace(0.0, top, 41)))
            curves = np.array([rep[d](grid) for _, rep in boot if d in rep])
            if len(curves):
                band = {"band_n": grid.tolist(), "band_lo": np.quantile(curves, 0.025, axis=0).tolist(),
                        "band_hi": np.quantile(curves, 0.975, axis=0).tolist()}
        domains[d] = DomainLaw(size=sizes.get(d, 0), a=law["a"], tau=law["tau"], rmse=law.get("rmse"),
                               status=law.get("status"), policy=law.get("policy") or None,
                               knots_n=law.get("knots_n") or None, knots_u=law.get("knots_u") or None,
                               pilot_points=[[n, du, sd] for n, du, sd in gains.get(d, [])], **band)
    selection: dict[str, dict[str, BudgetSelection]] = defaultdict(dict)
    order: dict[str, list[str]] = {}
    by = defaultdict(list)
    for r in manifest:
        by[(r["method"], r["budget"])].append(r)
    for method in sel["methods"]:
        for b in sel["budgets"]:
            selection[method][str(b)] = BudgetSelection(composition=dict(Counter(r["domain"] for r in by[(method, b)])))
        order[method] = [r["domain"] for r in sorted(by[(method, max(sel["budgets"]))], key=lambda r: r["step"])]
    recorded = {s_: st.done_payload(rec).get("fingerprint") for s_, rec in (records or {}).items() if st.is_done(rec)}
    stale_steps = None
    expected = None
    if fingerprints:
        stale_steps = sorted(s_ for s_, fp in recorded.items() if s_ in fingerprints and fp != fingerprints[s_].digest)
        base_fp = fingerprints["base"].digest if "base" in fingerprints else None
        expected = {c.result_path: c.fingerprint for c in grid_cells(cfg, st, base_fp)}
    runs: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    stale_results = []
    for rel in st.list(layout.TRAIN_RESULTS, ".json"):
        r = st.read_json(rel)
        if expected is not None and (rel not in expected or r.get("fingerprint") != expected[rel]):
            stale_results.append(rel)
            continue
        runs[r["method"]][str(r["budget"])].append(r)
    results = {m: {b: _cell_stats(rs) for b, rs in per_b.items()} for m, per_b in runs.items()}
    site_of = {split: _site_of_clip(st, split) for split in (CALIBRATION, TEST)}
    site_of_clip = site_of[TEST]
    base_by_site = _base_by_site(base, site_of)
    comparisons, brmr, stat_info, res_site, cmp_site = _statistics(runs, base, results, n_boot=n_boot,
                                                                   site_of_clip=site_of_clip)
    laws = {d: ScalingLaw.from_dict(v) for d, v in sel["laws"].items()}
    # estimated EPDMS = the control pilots' gain (the extra training's shared part, counted once)
    # + Σ_i ΔU_i(n_i), on top of the base model's test EPDMS (pilots are scored on calibration)
    base_test = float(evaluation(base)["epdms"])
    base_cal = float((base.get(CALIBRATION) or evaluation(base))["epdms"])
    # on test: the base model's test EPDMS + the control's gain over the base on calibration + Σ laws
    start = base_test + (float(np.mean(list(control.values()))) - base_cal if control else 0.0)
    estimated, estimated_ci = {}, {}
    for b in sel["budgets"]:
        comp = selection.get("mosaic", {}).get(str(b))
        if comp and comp.composition:
            est = float(start + sum(laws[d](n) for d, n in comp.composition.items()))
            estimated[str(b)] = est
            reps = [base_test + c - base_cal + sum(rl[d](n) for d, n in comp.composition.items() if d in rl) for c, rl in boot
                    if control and all(d in rl for d in comp.composition)]
            if reps:
                lo, hi = np.quantile(reps, [0.025, 0.975])
                estimated_ci[str(b)] = IntervalStat(estimate=est, lo=float(lo), hi=float(hi), level=0.95,
                                                    se=float(np.std(reps, ddof=1)), n_boot=len(reps))
    control_info = None
    if control:
        cm = float(np.mean(list(control.values())))
        control_info = ControlInfo(epdms_per_seed={str(k): v for k, v in sorted(control.items())}, epdms_mean=cm,
                                   gain_over_base=cm - base_cal)
    sets = pilot_sets(cfg.resolved_methods())
    variants = {}
    for v in cfg.domains.all_variants():
        desc_rel = layout.domain_description(v.name)
        variants[v.name] = VariantInfo(
            kind=v.kind, description=st.read_json(desc_rel) if st.exists(desc_rel) else {},
            laws={n: ls for n, ls in (sel.get("laws_by_set") or {}).items()
                  for name, variant, _ in sets if name == n and variant == v.name})
    return Summary(
        run=RunInfo(name=cfg.name, storage=st.uri(), wall_time_s=dict(timings or {}),
                    total_wall_time_s=round(sum((timings or {}).values()), 1),
                    finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    config=cfg.model_dump(mode="json")),
        data=DataInfo(candidates=ing["candidates"], clips=ing["clips"], frames=ing.get("frames"),
                      quarantined=ing["quarantined"], quarantine_reasons=ing["quarantine_reasons"],
                      splits=ing["splits"], frames_per_split=ing.get("frames_per_split"),
                      segments=ing["segments"], pool_by_domain=dict(sorted(sizes.items())),
                      clips_per_site=ing.get("clips_per_site"), notes=ing.get("notes", []),
                      split_unit=ing.get("split_unit"), split_fill=ing.get("split_fill"), units=ing.get("units"),
                      site_mix=ing.get("site_mix"),
                      mix_deviation=ing.get("mix_deviation")),
        base=Utility(epdms=evaluation(base)["epdms"], terms=evaluation(base)["terms"], n_train=base["n_train"]),
        base_by_site=base_by_site or None,
        human=Utility(**{k: base["human"][k] for k in ("epdms", "terms")}) if base.get("human") else None,
        domains=domains, selection=dict(selection), selection_order=order, results=results,
        comparisons_by_site=cmp_site or None, results_by_site=res_site or None,
        estimated=estimated, estimated_ci=estimated_ci or None, control=control_info, comparisons=comparisons or None, brmr=brmr or None, statistics=stat_info,
        domain_variants=variants, fingerprints=recorded or None,
        stale_steps=stale_steps, stale_results=stale_results or None)
