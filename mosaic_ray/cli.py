"""``mosaic-ray``: the command line.

    mosaic-ray run CONFIG                 # every stage, then the report
    mosaic-ray ingest|base|score|domains|pilot|select|train|report CONFIG
    mosaic-ray validate CONFIG            # check a config and exit

Options: ``--set key=value`` (dotted keys, YAML values) overrides config entries;
``--force`` redoes the named stage (``run --force score,pilot`` redoes those stages).
"""

from __future__ import annotations

import argparse
import sys

import yaml

from mosaic_ray.config import ConfigError, load_config

COMMANDS = ("run", "ingest", "base", "score", "domains", "pilot", "select", "train", "report", "validate")


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
                   help="redo the stage (for run: a comma-separated list of stages)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, _overrides(args.overrides))
    except ConfigError as e:
        print(f"mosaic-ray: {e}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"config OK: {cfg.name} -> {cfg.run_uri}")
        return 0
    from mosaic_ray import pipeline
    from mosaic_ray.stages.runtime import ray_session

    if args.command == "run":
        force = tuple(s for s in args.force.split(",") if s and s != "__this__")
        if args.force == "__this__":
            force = pipeline.STAGES
        report = pipeline.run_all(cfg, force=force)
        print(f"\nReport: {report}\nSummary: {pipeline.Run(cfg).storage.uri('summary.json')}")
        return 0
    run = pipeline.Run(cfg)
    force = bool(args.force)
    with ray_session(cfg):
        if args.command == "report":
            print(f"Report: {pipeline.stage_report(run)}")
        else:
            getattr(pipeline, f"stage_{args.command}")(run, force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
