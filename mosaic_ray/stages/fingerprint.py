"""Fingerprints: what made a step's outputs, so that a changed config redoes exactly what it changes.

A step's fingerprint is a SHA-1 over named *parts* (:class:`Fingerprint`): the config values it
reads (``planner``, ``pilot.epochs``... — the whole section where a section is named, minus the
fields in :data:`NOT_RESULTS`, which only place or size the work), what its ``depends(cfg)``
adds (e.g. the pilot sets the methods need, the data files' names and sizes for ingest), and
the fingerprints of the steps it builds on (``upstream``). It is a pure function of the config
(and, for ingest, the input file listing): :func:`fingerprints` computes every step's before
anything runs.

The step runner (:func:`mosaic_ray.stages.step.run_step`) stores the fingerprint and its parts
in the completion record; a recorded step whose fingerprint differs from the config's runs
again and the log names the parts that changed (``planner.lr``, ``upstream base``). A grid
cell's result carries its own fingerprint (:func:`cell_fingerprint`: the final-training
recipe, the base model's fingerprint, the cell and its exact clip ids), so adding a budget
redoes no existing cell. The summary lists every step's recorded fingerprint and every
result's cell fingerprint.

Not in a fingerprint (changing them reuses results): where the run lies (``name``,
``output_dir``, ``storage``), how Ray is reached and sized (``ray``), actor / worker / trial
CPU and GPU shares, concurrency, score and evaluation batch sizes, clip shard size, checkpoint
interval, where the base model trains (``train.base_backend``: a one-worker Ray Train run and the
in-process loop give the same weights, tested). ``train.num_workers`` *is* in (the DDP world size changes the numbers), and so is
``planner.torch_threads`` (see :mod:`mosaic_ray.planner.training`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from mosaic_ray.config import ExperimentConfig

#: config fields that place or size the work but do not change any number
NOT_RESULTS = frozenset({
    "name", "output_dir", "storage", "ray",
    "ingest.num_cpus_per_task", "ingest.shard_size",
    "score.batch_size", "score.num_actors", "score.num_cpus_per_actor", "score.num_gpus_per_actor",
    "score.pipeline", "score.plan", "score.epdms",
    "pilot.cpus_per_trial", "pilot.max_concurrent_trials",
    "train.cpus_per_worker", "train.gpus_per_worker", "train.concurrency", "train.checkpoint_every",
    "train.cache_shard", "train.base_backend", "eval_batch_size",
    "autoscale.embed_batch_size", "autoscale.embed_num_actors", "autoscale.embed_cpus_per_actor",
    "autoscale.embed_gpus_per_actor", "autoscale.cpus_per_trial",
    "autoscale.max_concurrent_trials", "autoscale.graph_rae.train_num_cpus", "autoscale.graph_rae.train_num_gpus",
    "autoscale.synthesize.num_cpus_per_actor", "autoscale.synthesize.num_actors",
})


def _digest(obj: Any, n: int = 12) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def config_value(cfg: ExperimentConfig, path: str) -> Any:
    """The JSON value of a dotted config path (``"planner"``, ``"pilot.epochs"``), without the
    :data:`NOT_RESULTS` fields below it.

    Raises:
        KeyError: no such config path."""
    value: Any = cfg.model_dump(mode="json")
    for key in path.split("."):
        if value is None:  # below a section the config leaves out (e.g. no selection: AutoScale only)
            return None
        if not isinstance(value, dict) or key not in value:
            raise KeyError(f"no config key {path!r}")
        value = value[key]
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if f"{path}.{k}" not in NOT_RESULTS}
    return value


@dataclass(frozen=True)
class Fingerprint:
    """A step's fingerprint: ``digest`` (12 hex chars) over ``parts`` ({part name: 12-hex digest
    of its value}); part names are config paths, ``upstream <step>`` or names a step's
    ``depends`` gives."""

    digest: str
    parts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, parts: dict[str, Any]) -> "Fingerprint":
        hashed = {k: _digest(v) for k, v in sorted(parts.items())}
        return cls(_digest(hashed), hashed)

    def changed(self, recorded_parts: dict[str, str] | None) -> list[str]:
        """Part names whose digest differs from ``recorded_parts`` (a record's
        ``fingerprint_parts``), added or removed ones included; ``["(no fingerprint recorded)"]``
        for a record without one."""
        if not recorded_parts:
            return ["(no fingerprint recorded)"]
        keys = sorted(set(self.parts) | set(recorded_parts))
        return [k for k in keys if self.parts.get(k) != recorded_parts.get(k)]


def fingerprints(cfg: ExperimentConfig, steps: Iterable) -> dict[str, Fingerprint]:
    """Every step's fingerprint for ``cfg`` ({step name: Fingerprint}), upstream first.

    ``steps`` are :class:`~mosaic_ray.stages.step.Step` objects in pipeline order; a step's
    ``upstream`` names must come earlier (a disabled upstream step still contributes its
    fingerprint: it is a function of the config alone).

    Raises:
        KeyError: a step names an unknown config path or an upstream step that is not earlier.
    """
    out: dict[str, Fingerprint] = {}
    for step in steps:
        parts: dict[str, Any] = {p: config_value(cfg, p) for p in step.config_keys}
        if step.depends is not None:
            parts.update(step.depends(cfg))
        for up in step.upstream:
            if up not in out:
                raise KeyError(f"step {step.name}: upstream step {up!r} is not an earlier step")
            parts[f"upstream {up}"] = out[up].digest
        out[step.name] = Fingerprint.of(parts)
    return out


def cell_fingerprint(train_parts: dict[str, Any], method: str, budget: int, seed: int,
                     pool_ids: list[str]) -> str:
    """A grid cell's fingerprint (12 hex chars): ``train_parts`` (the final-training recipe and
    the base model's fingerprint, :func:`mosaic_ray.stages.train.cell_parts`), the cell's
    method, budget and seed, and its clip ids in selection order."""
    return _digest({"train": train_parts, "method": method, "budget": int(budget), "seed": int(seed),
                    "pool_ids": list(pool_ids)})


def file_listing(dirs: Iterable[str]) -> list[tuple[str, int]]:
    """``(path relative to its folder, size in bytes)`` of every file under the local folders
    ``dirs`` (symlinks followed; missing folders give nothing), sorted: the ingest step's input
    part. A renamed, added, removed or resized input file changes it."""
    out = []
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for root, _, files in os.walk(d, followlinks=True):
            for f in files:
                p = os.path.join(root, f)
                try:
                    size = os.stat(p).st_size
                except OSError:  # a dangling symlink: its name still counts
                    size = -1
                out.append((os.path.relpath(p, d), size))
    return sorted(out)
