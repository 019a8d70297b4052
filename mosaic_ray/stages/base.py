"""Pipeline stages and their Ray Data adapter (in the style of NeMo Curator's stages).

A stage is a small class that declares its resources and batch size and implements
``setup()`` (once per worker: load a model, build caches) and ``process_batch()`` (Arrow
table in, Arrow table out). The algorithm lives in plain numpy/torch modules; a stage only
wires it to batches. :func:`map_stage` runs a stage over a Ray dataset in an actor pool
(stateful stages) or as tasks (stateless stages).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Resources:
    """Per-worker resources: CPUs and GPUs (fractions allowed)."""

    cpus: float = 1.0
    gpus: float = 0.0


class ProcessingStage(ABC):
    """One step of the pipeline over batches of rows.

    Subclasses set ``name``, ``resources``, ``batch_size`` and ``stateful`` (True when
    ``setup`` is costly and should run once per actor).
    """

    name: str = "stage"
    resources: Resources = Resources()
    batch_size: int = 32
    stateful: bool = False

    def setup(self) -> None:
        """Prepare per-worker state (called once before the first batch)."""

    @abstractmethod
    def process_batch(self, batch: pa.Table) -> pa.Table:
        """Transform one batch; must return one output row per input row unless documented."""


class _StageActor:
    """Callable class that Ray Data instantiates once per actor."""

    def __init__(self, stage: ProcessingStage):
        self.stage = stage
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage.process_batch(batch)


def _run_stateless(batch: pa.Table, stage: ProcessingStage) -> pa.Table:
    if not getattr(stage, "_ready", False):
        stage.setup()
        stage._ready = True
    return stage.process_batch(batch)


def map_stage(ds, stage: ProcessingStage, num_workers: int = 1):
    """Apply ``stage`` to a Ray dataset.

    Stateful stages run in ``ray.data.ActorPoolStrategy(size=num_workers)`` with the stage's
    CPUs/GPUs per actor; stateless ones run as tasks. Failure handling is Ray Data's: a dead
    actor is restarted and its task retried, a failed task re-run (``DataContext``'s
    ``max_map_retries`` and ``actor_task_retry_on_errors`` tune application-error retries).
    """
    import ray

    if stage.stateful:
        return ds.map_batches(
            _StageActor,
            fn_constructor_kwargs={"stage": stage},
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            batch_size=stage.batch_size,
            batch_format="pyarrow",
            num_cpus=stage.resources.cpus,
            num_gpus=stage.resources.gpus or None,
            zero_copy_batch=False,
        )
    return ds.map_batches(
        _run_stateless,
        fn_kwargs={"stage": stage},
        batch_size=stage.batch_size,
        batch_format="pyarrow",
        num_cpus=stage.resources.cpus,
        num_gpus=stage.resources.gpus or None,
    )
