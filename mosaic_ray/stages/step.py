"""Pipeline steps as data, and the one runner that skips, forces, times and logs them.

A :class:`Step` declares its ``name``, the earlier outputs it ``needs``, the ``outputs`` it
writes (paths from :mod:`mosaic_ray.layout`), the completion ``record`` it is judged by, and
``run(ctx) -> payload``. :func:`run_step` is the only code that decides whether a step runs:

1. a disabled step (``enabled(cfg)`` false, e.g. ``score_train`` without coreset) is skipped;
2. a step whose record exists is skipped unless forced, if (a) the record's fingerprint
   (:mod:`mosaic_ray.stages.fingerprint`) is the config's — otherwise the log names the
   changed parts and the step runs again, forced (``rerun="force"``) or resuming its
   partitioned work, which checks its own finer fingerprints (``rerun="resume"``, the train
   grid); (b) every output file the record lists is still there with its recorded size —
   otherwise it runs again unforced, so its resumable work redoes the missing part; and (c)
   its ``complete(ctx)`` check, if it has one, agrees;
3. otherwise its needs are checked (a missing one names the step that writes it), the old
   record is removed *before* any output is touched, ``run`` is called with ``ctx.force`` set,
   and the payload becomes the new record (with the step's wall time, its fingerprint and
   parts, and ``files``: every output file and its size) — so an interrupted or failed step
   never leaves a record that claims completion.

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
from mosaic_ray.stages.fingerprint import Fingerprint
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)


#: written when a step starts (its fingerprint), so a later run under other inputs drops its partial work
STARTED = "_STARTED.json"


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
    #: every step's fingerprint for this config (:func:`mosaic_ray.stages.fingerprint.fingerprints`)
    fingerprints: dict[str, Fingerprint] = field(default_factory=dict)
    #: the pipeline's steps, in order (set by the runner; the report reads their records)
    steps: tuple["Step", ...] = ()

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
        config_keys: config paths whose values the outputs depend on (fingerprint parts).
        depends: ``depends(cfg) -> {part name: JSON value}``: further fingerprint parts.
        upstream: earlier steps whose outputs it builds on (their fingerprints are parts).
        rerun: what a changed fingerprint does: ``"force"`` (redo everything) or ``"resume"``
            (run unforced: the step's partitioned work checks finer fingerprints itself).
    """

    name: str
    run: Callable[[Context], dict]
    needs: Callable[[ExperimentConfig], dict[str, str]] = lambda cfg: {}
    outputs: tuple[str, ...] = ()
    record: str | None = None
    enabled: Callable[[ExperimentConfig], bool] = _always
    complete: Callable[[Context, dict], bool] | None = None
    describe: Callable[[dict], str] | None = None
    config_keys: tuple[str, ...] = ()
    depends: Callable[[ExperimentConfig], dict] | None = None
    upstream: tuple[str, ...] = ()
    rerun: str = "force"


def _recorded_files(st: Storage, step: Step) -> dict[str, int]:
    """{storage-relative path: size in bytes} of every file under the step's ``outputs``
    (names starting with ``_``, such as completion records, left out)."""
    out: dict[str, int] = {}
    for rel in step.outputs:
        out.update(st.sizes(rel))
    return dict(sorted(out.items()))


def _disagreement(st: Storage, step: Step, payload: dict) -> tuple[str | None, list[str]]:
    """Why the step's outputs disagree with its record's ``files`` (None: they agree), and the
    files whose size changed."""
    recorded = payload.get("files")
    if recorded is None:
        return None, []  # a record from before files were listed: nothing to compare
    now = _recorded_files(st, step)
    missing = [f for f in recorded if f not in now]
    resized = [f for f, n in recorded.items() if f in now and now[f] != n]
    if not missing and not resized:
        return None, []
    what = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(resized)} changed size (e.g. {resized[0]})" if resized else ""]
    return " and ".join(w for w in what if w) + f" of {len(recorded)} recorded files", resized


def record_outputs(step: Step, ctx: Context, payload: dict) -> dict:
    """Write the step's completion record: ``payload`` + its fingerprint, parts and output
    files (also for callers that rewrite a step's outputs in place, e.g. test fixtures)."""
    fp = ctx.fingerprints.get(step.name)
    payload = {**payload, "files": _recorded_files(ctx.storage, step)}
    if fp is not None:
        payload.update(fingerprint=fp.digest, fingerprint_parts=fp.parts)
    ctx.storage.mark_done(step.record, payload)
    return payload


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
    fp = ctx.fingerprints.get(step.name)
    if step.record and not force and st.is_done(step.record):
        payload = st.done_payload(step.record)
        changed = fp.changed(payload.get("fingerprint_parts")) if fp is not None else []
        bad, resized = (None, []) if changed else _disagreement(st, step, payload)
        if changed:
            force = step.rerun == "force"
            log.warning("[%s] its inputs changed since it ran (%s): running it again%s", step.name,
                        ", ".join(changed), "" if force else " (finished parts whose own fingerprint agrees are kept)")
        elif bad:
            log.warning("[%s] outputs disagree with its completion record: %s; running it again "
                        "(finished parts are kept, the missing and changed ones redone)", step.name, bad)
            for f in resized:  # not what the record vouched for: redo rather than trust
                st.delete(f)
        elif step.complete is None or step.complete(ctx, payload):
            log.info("[%s] complete (%s), skipped", step.name, st.uri(step.record))
            return payload
        else:
            log.info("[%s] recorded complete but outputs are missing or stale: running it again", step.name)
    missing = {p: w for p, w in step.needs(cfg).items() if not st.exists(p)}
    if missing:
        what = "; ".join(f"{st.uri(p)} (written by `mosaic-ray {w}`)" for p, w in missing.items())
        raise StepError(f"step {step.name} needs {what}: run the earlier step first")
    if step.record and st.is_done(step.record):
        st.delete(f"{step.record}/_SUCCESS.json")  # no record may outlive its outputs
    if step.record and fp is not None:
        # partial work of an interrupted run under another config is dropped, never resumed
        started = f"{step.record}/{STARTED}"
        if not force and step.rerun == "force" and st.exists(started):
            changed = fp.changed(st.read_json(started).get("fingerprint_parts"))
            if changed:
                log.warning("[%s] an interrupted run under other inputs (%s) left partial work: "
                            "starting over", step.name, ", ".join(changed))
                force = True
        st.write_json(started, {"fingerprint": fp.digest, "fingerprint_parts": fp.parts})
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
        payload = record_outputs(step, ctx, {**payload, "step_wall_time_s": wall})
    line = step.describe(payload) if step.describe else ""
    log.info("[%s] done in %.1f s%s", step.name, wall, f": {line}" if line else "")
    return payload


def needs_of(mapping: dict[str, str]) -> Callable[[ExperimentConfig], dict[str, str]]:
    """``needs`` for a fixed {path: writer step} mapping."""
    return lambda cfg: dict(mapping)
