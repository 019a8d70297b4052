"""``mosaic-ray``: the command line.

    mosaic-ray run CONFIG                 # every step, then the report
    mosaic-ray ingest|base|score|score_train|domains|pilot|select|train|report CONFIG
    mosaic-ray validate CONFIG            # check a config and exit

Options: ``--set key=value`` (dotted keys, YAML values) overrides config entries;
``--force`` redoes the named step (``run --force score,pilot`` redoes those steps, a bare
``run --force`` all of them); ``--log-level`` sets the library's logging (default ``info``:
one line per step and per long-running unit of work; ``debug`` adds tracebacks).

Exit codes: 0 done, 1 a step failed, 2 a bad config or command line.
"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml

from mosaic_ray import pipeline
from mosaic_ray.config import ConfigError, load_config
from mosaic_ray.stages.step import StepError

COMMANDS = ("run", *pipeline.STEP_NAMES, "validate")
log = logging.getLogger("mosaic_ray")


def _overrides(items: list[str]) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


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
    except (ConfigError, KeyError) as e:
        print(f"mosaic-ray: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
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
    except (StepError, ConfigError) as e:
        log.debug("traceback", exc_info=True)
        print(f"mosaic-ray: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
