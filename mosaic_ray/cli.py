"""``mosaic-ray``: the command line.

    mosaic-ray run CONFIG                 # every step, then the report
    mosaic-ray ingest|base|score|score_train|domains|pilot|select|train|report CONFIG
    mosaic-ray validate CONFIG            # check a config and exit

Options: ``--set key=value`` (dotted keys, YAML values) overrides config entries;
``--force`` redoes the named step (``run --force score,pilot`` redoes those steps, a bare
``run --force`` all of them); ``--log-level`` sets the library's logging (default ``info``:
one line per step and per long-running unit of work; ``debug`` adds tracebacks).

Exit codes: 0 done; 1 a step failed at run time (a missing input names the step to run first,
a storage or credentials failure names the URI, a domain error names the column); 2 a bad config,
command line or input found before work starts (unknown or misplaced ``--set`` keys, budgets
larger than the pool, unknown methods or domain variants, k-means ``k`` above the pool size, clip
shards missing a column, a missing ``score.checkpoint``: see :mod:`mosaic_ray.preflight`).
Every error is one line ``mosaic-ray: <message>`` on stderr; ``--log-level debug`` adds the
traceback. A run folder in use by another ``mosaic-ray`` process is a usage error (exit 2,
:class:`~mosaic_ray.runlock.LockedError` names the holder); ``MOSAIC_LOCK_WAIT_S=<s>`` waits for
it instead.

Signals: SIGINT (Ctrl-C) and SIGTERM stop a command within seconds with exit 130 (SIGINT) or
143 (SIGTERM), ``128 + signal number``. Either raises :class:`Interrupted` (a
``KeyboardInterrupt``) in the main thread, also when the shell started the command with SIGINT
ignored (``cmd &`` in a script); Ray's own handlers (Tune's graceful stop, Train's abort,
``ray.init``'s SIGTERM exit) are kept out while a command runs. The step that was running
writes no completion record (rerunning resumes its finished shards / trials / cells); the Ray
session is shut down and the run lock released. A second signal, or cleanup taking longer than
``MOSAIC_INTERRUPT_GRACE_S`` (default 15 s), ends the process at once with the same code (a
lock left behind is then taken over as stale by the next run on this host).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading

import yaml

from mosaic_ray import pipeline
from mosaic_ray.config import ConfigError, load_config
from mosaic_ray.errors import MosaicError, UsageError

COMMANDS = ("run", *pipeline.STEP_NAMES, "validate")
log = logging.getLogger("mosaic_ray")


def _overrides(items: list[str]) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {k.strip()}: the value {v!r} is not valid YAML "
                              f"({' '.join(str(e).split())[:120]})") from None
    return out


def _project_error(e: BaseException) -> MosaicError | None:
    """The project error behind ``e``: itself, or one it was raised from / wraps (Ray's task
    errors keep it as ``cause``), so a failure inside a Ray worker reads the same."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MosaicError) and not hasattr(e, "cause"):
            return e
        nxt = getattr(e, "cause", None)
        e = nxt if isinstance(nxt, BaseException) else (e.__cause__ or e.__context__)
    return None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def report_error(e: BaseException) -> int:
    """Print ``e`` as one ``mosaic-ray: ...`` line on stderr (the traceback at debug level);
    returns the exit code: 2 for a usage error, 1 otherwise."""
    log.debug("traceback", exc_info=e)
    err = _project_error(e)
    if err is not None:
        print(f"mosaic-ray: {_one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1
    while isinstance(getattr(e, "cause", None), BaseException):  # a Ray task error: what the task raised
        e = e.cause
    debug = "" if log.isEnabledFor(logging.DEBUG) else " (rerun with --log-level debug for the traceback)"
    text = _one_line(e)
    text = text if len(text) <= 500 else text[:497] + "..."
    print(f"mosaic-ray: {type(e).__name__}: {text}{debug}", file=sys.stderr)
    return 1


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a command ran (``signum``; exit code ``128 + signum``)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: the signals a command stops on
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupt_handlers():
    """While the block runs (main thread only), SIGINT and SIGTERM raise :class:`Interrupted`
    in the main thread, and ``signal.signal`` refuses other handlers for them (Ray Tune and
    Train install their own "graceful" SIGINT handlers, which end a step early as if it had
    finished, or exit 0; ``ray.init`` installs a SIGTERM handler): re-installing the block's own
    handler is let through (``ray_session`` does that to undo the C-level handler Ray's core
    worker adds). After the first signal, a watchdog ends the process with ``os._exit(128 +
    signum)`` if cleanup has not finished within ``MOSAIC_INTERRUPT_GRACE_S`` seconds; a second
    signal ends it at once. Everything is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        code = 128 + signum
        if fired:  # second signal: no more cleanup
            print(f"mosaic-ray: {signal.Signals(signum).name} again: exiting now", file=sys.stderr, flush=True)
            os._exit(code)
        fired.append(signum)
        grace = float(os.environ.get("MOSAIC_INTERRUPT_GRACE_S", "15") or 15)
        timer = threading.Timer(grace, lambda: (print(f"mosaic-ray: cleanup after {signal.Signals(signum).name} "
                                                      f"took over {grace:g} s: exiting now", file=sys.stderr,
                                                      flush=True), os._exit(code)))
        timer.daemon = True
        timer.start()
        raise Interrupted(signum)

    real_signal = signal.signal

    def guarded_signal(signum, h):
        if signum in STOP_SIGNALS and h is not handler and threading.current_thread() is threading.main_thread():
            log.debug("kept the mosaic-ray handler for %s (refused %r)", signal.Signals(signum).name, h)
            return handler
        return real_signal(signum, h)

    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    tune_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    for s in STOP_SIGNALS:
        real_signal(s, handler)
    signal.signal = guarded_signal
    try:
        yield
    finally:
        signal.signal = real_signal
        for s, h in previous.items():
            real_signal(s, h if h is not None else signal.SIG_DFL)
        if tune_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mosaic-ray", description="MOSAIC data selection for driving planners on Ray")
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("config", help="experiment YAML (see jobs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.num_workers=1")
    p.add_argument("--force", nargs="?", const="__this__", default="",
                   help="redo the step (for run: a comma-separated list of steps; bare: all)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="logging level of mosaic_ray (default: info)")
    return p


def configure_logging(level: str) -> None:
    """One stream handler on the ``mosaic_ray`` logger (time, level, message) at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("mosaic_ray")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        cfg = load_config(args.config, _overrides(args.overrides))
        if args.command == "run":
            force = [s for s in args.force.split(",") if s and s != "__this__"]
            if args.force == "__this__":
                force = list(pipeline.STEP_NAMES)
            pipeline.expand_force(force)
    except KeyError as e:  # an unknown step in --force (the message lists the steps)
        print(f"mosaic-ray: {_one_line(e.args[0] if e.args else e)}", file=sys.stderr)
        return 2
    except MosaicError as e:
        return report_error(e)
    if args.command == "validate":
        print(f"config OK: {cfg.name} -> {cfg.run_uri}")
        return 0
    try:
        with interrupt_handlers():
            return _run(args, cfg, force if args.command == "run" else [])
    except KeyboardInterrupt as e:  # Interrupted, or a KeyboardInterrupt from elsewhere
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"mosaic-ray: interrupted ({signal.Signals(signum).name}): the running step wrote no "
              "completion record; rerun the command to resume", file=sys.stderr)
        return 128 + signum


def _run(args, cfg, force: list[str]) -> int:
    """The command's work (``main`` after parsing); returns the exit code."""
    try:
        if args.command == "run":
            report = pipeline.run_all(cfg, force=force)
            print(f"\nReport: {report}\nSummary: {pipeline.summary_uri(cfg)}")
        else:
            out = pipeline.run_steps(cfg, [args.command], force=[args.command] if args.force else [])
            if args.command == "report":
                print(f"Report: {out['report']['report']}")
    except Exception as e:  # noqa: BLE001 - every failure becomes one line and an exit code
        cause, seen = e.__context__, set()
        while cause is not None and id(cause) not in seen:  # cleanup failing after a signal: still the signal
            if isinstance(cause, Interrupted):
                raise cause from None
            seen.add(id(cause))
            cause = cause.__context__
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
