"""Pipeline stages and their Ray Data adapter (in the style of NeMo Curator's stages).

A stage is a small class that declares its resources and batch size and implements
``setup()`` (once per worker: load a model, build caches) and ``process_batch()`` (Arrow
table in, Arrow table out). The algorithm lives in plain numpy/torch modules; a stage only
wires it to batches. :func:`map_stage` runs a stage over a Ray dataset in an actor pool
(stateful stages) or as tasks (stateless stages).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import pyarrow as pa

from mosaic_ray.errors import UsageError


@dataclass(frozen=True)
class Resources:
    """Per-worker resources: CPUs and GPUs (fractions allowed)."""

    cpus: float = 1.0
    gpus: float = 0.0


def record_actor_pid(stage: str) -> None:
    """Write this worker's PID to ``$MOSAIC_ACTOR_PID_DIR/<stage>-<pid>`` when that variable is
    set (fault-injection tests kill a real actor by PID); does nothing otherwise."""
    d = os.environ.get("MOSAIC_ACTOR_PID_DIR")
    if d:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{stage}-{os.getpid()}"), "w") as f:
            f.write(str(os.getpid()))


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


def map_stage(ds, stage: ProcessingStage, num_workers: int = 1, pool: tuple[int, int] | None = None):
    """Apply ``stage`` to a Ray dataset.

    Stateful stages run in ``ray.data.ActorPoolStrategy(size=num_workers)`` with the stage's
    CPUs/GPUs per actor, or, with ``pool=(min, max)``, in an autoscaling pool of ``min`` to
    ``max`` actors (Ray Data adds actors while inputs queue); stateless ones run as tasks. A
    stage ``batch_size`` of None hands each block to the stage whole. Failure handling is Ray
    Data's: a dead actor is restarted and its task retried, a failed task re-run
    (``DataContext``'s ``max_map_retries`` and ``actor_task_retry_on_errors`` tune
    application-error retries).
    """
    import ray

    if stage.stateful:
        compute = (ray.data.ActorPoolStrategy(min_size=pool[0], max_size=pool[1]) if pool is not None
                   else ray.data.ActorPoolStrategy(size=num_workers))
        # one actor class per stage, named after it (Ray's actor lists and Data's operator
        # names then tell the pools apart: ``MapWorker(MapBatches(score_plan))``)
        actor_cls = type(stage.name, (_StageActor,), {"__module__": __name__})
        return ds.map_batches(
            actor_cls,
            fn_constructor_kwargs={"stage": stage},
            compute=compute,
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


SHARD_RECORDS = pa.schema([("shard", pa.string()), ("rows", pa.int64()), ("skipped", pa.bool_()),
                           ("wall_s", pa.float64()), ("cpu_s", pa.float64())])
"""One completion record per shard, as :meth:`ShardStage.process_batch` returns them."""


class ShardStage(ProcessingStage):
    """A stage that maps whole input shards to output shards, exactly once per shard.

    Each call reads one input shard (a storage-relative Parquet path), produces one output
    table and writes it atomically under ``output_dir`` with the input shard's file name.
    A shard whose output already exists is skipped, so a rerun after an interruption, or a
    retry after an actor died mid-shard, never duplicates or loses rows (completion is
    tracked per shard, as NeMo Curator tracks tasks).

    Subclasses set ``self.store`` (the run's :class:`~mosaic_ray.storage.Storage`, pickled
    to the actors as it is) and ``output_dir``, and implement :meth:`process_shard`.
    """

    batch_size = 1
    output_dir: str = ""
    store = None  #: the run's Storage (set by the subclass constructor)

    def storage(self):
        """The run's :class:`~mosaic_ray.storage.Storage`.

        Raises:
            RuntimeError: the subclass did not set ``store``.
        """
        if self.store is None:
            raise RuntimeError(f"{type(self).__name__} has no storage: set self.store in its constructor")
        return self.store

    def output_path(self, shard: str) -> str:
        return f"{self.output_dir}/{shard.rsplit('/', 1)[-1]}"

    @abstractmethod
    def process_shard(self, table: pa.Table) -> pa.Table:
        """Transform one whole input shard (one output row per input row unless documented)."""

    def process_batch(self, batch: pa.Table) -> pa.Table:
        """Process each shard named in ``batch["shard"]``; returns one record per shard
        (:data:`SHARD_RECORDS`): ``shard``, ``rows`` written, ``skipped`` (output existed),
        ``wall_s`` and ``cpu_s`` (this process's CPU seconds) spent on it, read and write included."""
        import time

        st = self.storage()
        recs: list[dict] = []
        for shard in batch.column("shard").to_pylist():
            t0, c0 = time.perf_counter(), time.process_time()
            out = self.output_path(shard)
            if st.exists(out):  # finished earlier (rerun or retried task)
                n, skipped = st.read_table(out, columns=[self.key_column]).num_rows, True
            else:
                result = self.process_shard(st.read_table(shard))
                st.write_table(out, result)
                n, skipped = result.num_rows, False
            recs.append({"shard": shard, "rows": n, "skipped": skipped,
                         "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0})
        return pa.Table.from_pylist(recs, schema=SHARD_RECORDS)

    key_column: str = "clip_id"


class ShardInputError(UsageError, ValueError):
    """Input shards a stage cannot read: unreadable Parquet, missing columns, duplicated ids
    (found before any work starts; the message is one line naming the shards and the fix)."""


def preflight_shards(storage, shards: list[str], required) -> None:
    """Check every input shard before work starts: readable Parquet footer and every column
    the stage reads (only footers are read, in parallel threads for remote storage).

    Raises:
        ShardInputError: naming each unreadable or incomplete shard (the first five, with a count of
            the rest), the missing columns and the fix, on one line.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    required = list(required)

    def problem(s: str) -> str | None:
        try:
            with storage.fs.open_input_file(storage.path(s)) as f:
                schema = pq.ParquetFile(f).schema_arrow
        except Exception as e:  # truncated / not Parquet / unreadable
            text = " ".join(str(e).split())[:160]
            return f"{storage.uri(s)}: unreadable Parquet ({type(e).__name__}: {text})"
        missing = [c for c in required if c not in schema.names]
        return f"{storage.uri(s)}: missing columns {missing}" if missing else None

    workers = 1 if storage.is_local or len(shards) < 4 else 16
    with ThreadPoolExecutor(workers) as pool:
        problems = [p for p in pool.map(problem, shards) if p]
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ShardInputError(f"bad input shards: {'; '.join(problems[:5])}{more} — rewrite them with "
                              "`mosaic-ray ingest CONFIG --force` (or remove them), then rerun")


def run_shard_stage(stage: ShardStage, shards: list[str], num_workers: int) -> pa.Table:
    """Run a :class:`ShardStage` over ``shards`` in an actor pool; returns one record per shard
    (:data:`SHARD_RECORDS`)."""
    import ray

    ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=max(1, len(shards)))
    out = map_stage(ds, stage, num_workers=num_workers)
    return pa.Table.from_pylist(list(out.iter_rows()) if shards else [], schema=SHARD_RECORDS)
