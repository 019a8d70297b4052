"""Pipeline steps as data, and the one runner that skips, forces, times and logs them.

A :class:`Step` declares its ``name``, the earlier outputs it ``needs``, the ``outputs`` it
writes (paths from :mod:`mosaic_ray.layout`), the completion ``record`` it is judged by, and
``run(ctx) -> payload``. :func:`run_step` is the only code that decides whether a step runs:

1. a disabled step (``enabled(cfg)`` false, e.g. ``score_train`` without coreset) is skipped;
2. a step whose record exists (and, if it has one, whose ``complete(ctx)`` check agrees) is
   skipped unless forced;
3. otherwise its needs are checked (a missing one names the step that writes it), the old
   record is removed *before* any output is touched, ``run`` is called with ``ctx.force`` set,
   and the payload becomes the new record (with the step's wall time) — so an interrupted
   or failed step never leaves a record that claims completion.

Steps resume inside themselves where their work is partitioned (ingest per file, score per
shard, pilot per trial, train per grid cell); ``ctx.force`` tells them to drop that partial
work instead.
"""

from __future__ import annotations

from mosaic_ray.errors import MosaicError
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from mosaic_ray import layout
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)


class StepError(MosaicError, RuntimeError):
    """A step cannot run (a missing input names the step that writes it)."""


@dataclass
class Context:
    """What every step gets: the validated config, the run's storage, whether it is forced,
    and the wall time per step so far (``timings.json``)."""

    cfg: ExperimentConfig
    storage: Storage
    force: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    started: float | None = None  #: time.time() when this invocation began (the report's total)

    @classmethod
    def for_config(cls, cfg: ExperimentConfig) -> "Context":
        st = Storage(cfg.run_uri, cfg.storage)
        timings = st.read_json(layout.TIMINGS) if st.exists(layout.TIMINGS) else {}
        return cls(cfg, st, False, timings, time.time())


def _always(cfg: ExperimentConfig) -> bool:
    return True


@dataclass(frozen=True)
class Step:
    """One pipeline step.

    Attributes:
        name: the CLI name (``mosaic-ray <name> CONFIG``).
        run: ``run(ctx) -> payload`` (a JSON-able dict, stored as the completion record).
        needs: ``needs(cfg) -> {path: step that writes it}``: outputs of earlier steps it reads.
        outputs: paths it writes (documentation and ``--force`` clean-up hints).
        record: its completion record (``<record>/_SUCCESS.json``); None: it always runs.
        enabled: ``enabled(cfg)``; a disabled step is skipped.
        complete: ``complete(ctx, payload)``: an extra check that a recorded step is still
            complete (e.g. the grid covers every configured cell); default: the record suffices.
        describe: ``describe(payload) -> str``: one log line for the finished step.
    """

    name: str
    run: Callable[[Context], dict]
    needs: Callable[[ExperimentConfig], dict[str, str]] = lambda cfg: {}
    outputs: tuple[str, ...] = ()
    record: str | None = None
    enabled: Callable[[ExperimentConfig], bool] = _always
    complete: Callable[[Context, dict], bool] | None = None
    describe: Callable[[dict], str] | None = None


def run_step(step: Step, ctx: Context, force: bool = False) -> dict | None:
    """Run ``step`` unless it is disabled or already complete; returns its payload (None when
    disabled).

    Raises:
        StepError: an input the step needs is missing.
    """
    cfg, st = ctx.cfg, ctx.storage
    if not step.enabled(cfg):
        log.debug("[%s] not needed by this config", step.name)
        return None
    if step.record and not force and st.is_done(step.record):
        payload = st.done_payload(step.record)
        if step.complete is None or step.complete(ctx, payload):
            log.info("[%s] complete (%s), skipped", step.name, st.uri(step.record))
            return payload
        log.info("[%s] recorded complete but outputs are missing or stale: running it again", step.name)
    missing = {p: w for p, w in step.needs(cfg).items() if not st.exists(p)}
    if missing:
        what = "; ".join(f"{st.uri(p)} (written by `mosaic-ray {w}`)" for p, w in missing.items())
        raise StepError(f"step {step.name} needs {what}: run the earlier step first")
    if step.record and st.is_done(step.record):
        st.delete(f"{step.record}/_SUCCESS.json")  # no record may outlive its outputs
    log.info("[%s] start%s", step.name, " (forced)" if force else "")
    t0 = time.time()
    ctx.force = force
    try:
        payload = step.run(ctx) or {}
    finally:
        ctx.force = False
    wall = round(time.time() - t0, 1)
    ctx.timings[step.name] = wall
    st.write_json(layout.TIMINGS, ctx.timings)
    if step.record:
        payload = {**payload, "step_wall_time_s": wall}
        st.mark_done(step.record, payload)
    line = step.describe(payload) if step.describe else ""
    log.info("[%s] done in %.1f s%s", step.name, wall, f": {line}" if line else "")
    return payload


def needs_of(mapping: dict[str, str]) -> Callable[[ExperimentConfig], dict[str, str]]:
    """``needs`` for a fixed {path: writer step} mapping."""
    return lambda cfg: dict(mapping)
