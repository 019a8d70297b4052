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
traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

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
        if args.command == "run":
            report = pipeline.run_all(cfg, force=force)
            print(f"\nReport: {report}\nSummary: {pipeline.summary_uri(cfg)}")
        else:
            out = pipeline.run_steps(cfg, [args.command], force=[args.command] if args.force else [])
            if args.command == "report":
                print(f"Report: {out['report']['report']}")
    except Exception as e:  # noqa: BLE001 - every failure becomes one line and an exit code
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
