"""The MOSAIC experiment as an ordered list of steps, and the runner that walks it.

Each step is one module under :mod:`mosaic_ray.stages` exposing a
:class:`~mosaic_ray.stages.step.Step` (name, needs, outputs, completion record, ``run``);
:func:`~mosaic_ray.stages.step.run_step` alone decides whether a step runs (skip when its
record says complete, ``--force`` to redo), times it and logs it. Steps, in order:

==============  ==============================================================================
``ingest``      CommonRoad / ScenarioNet files -> clip shards (validation / train / pool)
``base``        trajectory vocabulary, base planner on D_train (Ray Train), validation EPDMS
``score``       base planner + EPDMS over the pool (Ray Data actor pool): importance per clip
``score_train`` D_train's embeddings (only for the coreset baseline)
``domains``     domain labels per variant (metadata, captions, embedding clusters)
``pilot``       pilot runs per (domain, size, seed) on Ray Tune: ΔU points
``select``      scaling laws per domain, greedy allocation, nested selections per method/budget
``train``       final planners per method × budget × seed (Ray Train in Tune trials)
``report``      ``summary.json``, ``report.md`` and plots
==============  ==============================================================================

With an ``autoscale:`` section, AutoScale's steps follow (:mod:`mosaic_ray.stages.autoscale`):
``synthesize`` (synthetic scene pool), ``embed`` (Graph-RAE + embeddings), ``cluster`` (PCA +
GMM, RBF matrix), ``rounds`` (the closed loop and the baselines on Ray Tune) and
``autoscale_report``. A config without ``selection:`` (AutoScale only) skips ``score`` ..
``report``; ``ingest`` and ``base`` (the vocabulary) serve both.

Outputs lie where :mod:`mosaic_ray.layout` says, under ``<output_dir>/<name>/``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable

from mosaic_ray import layout
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.preflight import preflight
from mosaic_ray.runlock import RunLock
from mosaic_ray.stages import autoscale, base, domains, ingest, pilot, report, score, select, synthesize, train
from mosaic_ray.stages.fingerprint import fingerprints
from mosaic_ray.stages.runtime import ray_session
from mosaic_ray.stages.step import Context, Step, run_step

log = logging.getLogger(__name__)



def _mosaic_only(step: Step) -> Step:
    """``step`` enabled only when the config has a ``selection`` section (the MOSAIC steps; an
    AutoScale-only config leaves it out)."""
    inner = step.enabled
    return dataclasses.replace(step, enabled=lambda cfg: cfg.runs_mosaic and inner(cfg))


#: the MOSAIC steps after ``base``
MOSAIC_STEPS: tuple[Step, ...] = tuple(_mosaic_only(s) for s in (score.STEP, score.TRAIN_STEP, domains.STEP, pilot.STEP,
                                                                  select.STEP, train.STEP, report.STEP))
#: AutoScale's steps (enabled by an ``autoscale:`` section; :mod:`mosaic_ray.stages.autoscale`)
AUTOSCALE_STEPS: tuple[Step, ...] = (synthesize.STEP, autoscale.EMBED_STEP, autoscale.CLUSTER_STEP,
                                     autoscale.ROUNDS_STEP, autoscale.REPORT_STEP)
#: every step, in the order ``mosaic-ray run`` walks them
STEPS: tuple[Step, ...] = (ingest.STEP, base.STEP) + MOSAIC_STEPS + AUTOSCALE_STEPS
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)
#: ``--force score`` also redoes ``score_train`` (both score with the same planner)
_FORCE_ALSO = {"score": ("score_train",)}


def get_step(name: str) -> Step:
    """The step called ``name``.

    Raises:
        KeyError: no such step (the message lists them)."""
    for s in STEPS:
        if s.name == name:
            return s
    raise KeyError(f"unknown step {name!r}; steps: {', '.join(STEP_NAMES)}")


def expand_force(force: Iterable[str]) -> set[str]:
    """Step names to force, with the steps that go with them; raises KeyError for unknown names."""
    out: set[str] = set()
    for name in force:
        get_step(name)
        out |= {name, *_FORCE_ALSO.get(name, ())}
    return out


def run_steps(cfg: ExperimentConfig, names: Iterable[str] | None = None, force: Iterable[str] = ()) -> dict:
    """Run the named steps (default: all, in order) inside one Ray session.

    Args:
        names: steps to run, in any order (they run in pipeline order); None = every step.
        force: steps to redo even if complete.

    Returns:
        ``{step name: payload}`` for the steps that ran or were complete (disabled ones absent).

    Raises:
        KeyError: an unknown step name.
        StepError: a step's input is missing (run the earlier step first).
        UsageError: a check before work starts failed (:mod:`mosaic_ray.preflight`: before Ray
            starts, the pool checks right after ingest when it runs).
        LockedError: another live process holds the run folder's lock (:mod:`mosaic_ray.runlock`;
            held from after the preflight checks until the Ray session is shut down).
    """
    wanted = set(STEP_NAMES if names is None else names)
    for n in wanted:
        get_step(n)
    forced = expand_force(force)
    ctx = Context.for_config(cfg)
    ctx.fingerprints, ctx.steps = fingerprints(cfg, STEPS), STEPS
    checks = preflight(cfg, ctx.storage, wanted, forced)
    out = {}
    with RunLock(ctx.storage), ray_session(cfg):  # one pipeline at a time per run folder
        for step in STEPS:
            if step.name in wanted:
                payload = run_step(step, ctx, force=step.name in forced)
                checks.after_step(step.name)
                if payload is not None:
                    out[step.name] = payload
    return out


def run_all(cfg: ExperimentConfig, force: Iterable[str] = ()) -> str:
    """Every step in order; returns the report's URI (MOSAIC's, else AutoScale's)."""
    out = run_steps(cfg, force=force)
    return (out.get("report") or out["autoscale_report"])["report"]


def summary_uri(cfg: ExperimentConfig) -> str:
    """Where the run's ``summary.json`` lies."""
    return Context.for_config(cfg).storage.uri(layout.SUMMARY)
