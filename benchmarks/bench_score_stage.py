"""Throughput and memory of the score stage (issue 5).

    .venv/bin/python benchmarks/bench_score_stage.py SOURCE_RUN [--clips N] [--shard-size 32]
        [--actors 1 2] [--no-loop] [--no-two-loops] [--repeats R] [--tag TAG]

SOURCE_RUN is a finished run with ingested clips and ``planner/base.pt`` (e.g.
``runs/ngsim_demo`` after ``make demo``). The benchmark builds a scratch run under
``/tmp/mosaic_bench/<tag>`` whose pool is SOURCE_RUN's pool re-sharded to ``--shard-size``, or,
with ``--clips N``, N synthetic copies of it (:mod:`mosaic_ray.data.synthetic`). Then:

* plain loop: one process, no Ray, the same :class:`ScoreStage` work shard by shard — load
  the checkpoint, read, score, write each output shard (1 torch thread) — the baseline;
* Ray Data: ``run_score`` with 1 and 2 actors (0.5 CPU each) on a local 2-CPU Ray;
* two plain loops: two such processes side by side on every other shard, no Ray — what two
  cores give two independent scoring processes here, the ceiling for the stage's scaling.

``--repeats R`` runs R rounds, every variant once per round (interleaved, so that drift in the
shared machine's load hits every variant alike), and reports medians and per-round ratios.

It reports clips/s of each, the stage overhead (1 actor vs the loop), the scaling from one
to two actors, the peak resident memory summed over all processes of the run (sampled
every 0.2 s with psutil; the driver included) and the CPU seconds each group of processes
spent (scoring actors, raylet, GCS, driver, ...), which explains where two cores go. Results: benchmarks/results/score_stage_*.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


class PeakRSS:
    """Peak of the summed RSS of this process and its descendants (Ray workers included), and
    the CPU seconds each of them spent while sampled (a per-process-group profile: scoring
    actors, Ray's own daemons, the driver, read tasks)."""

    def __init__(self, period: float = 0.2):
        import psutil

        self.psutil, self.period, self.peak, self._stop = psutil, period, 0, threading.Event()
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (label, cpu seconds at last sample)
        self.cpu0: dict[int, float] = {}  # pid -> cpu seconds when first seen at __enter__

    @staticmethod
    def _label(p) -> str:
        """Worker processes carry ``ray::…`` as their title (their full command line would also
        name ``--raylet-name``); Ray's daemons are told apart by executable or script name."""
        try:
            cmd, name = " ".join(p.cmdline()), p.name()
        except Exception:  # noqa: BLE001 - a process that just exited
            cmd, name = "", ""
        if cmd.startswith("ray::") or "default_worker.py" in cmd:
            return "Ray workers (scoring actors, read tasks)"
        if "multiprocessing" in cmd:
            return "plain loop processes"
        if name in ("raylet", "gcs_server"):
            return name
        for script in ("dashboard", "log_monitor", "monitor.py"):
            if script in cmd:
                return script.removesuffix(".py")
        return "driver" if p.pid == os.getpid() else (name or "other")

    def _sample(self, first: bool = False) -> int:
        me = self.psutil.Process()
        total = 0
        for p in [me] + me.children(recursive=True):
            try:
                total += p.memory_info().rss
                t = p.cpu_times()
                secs = t.user + t.system
                if first:
                    self.cpu0[p.pid] = secs
                # labelled at every sample: a new worker takes its ray:: title after start-up
                self.cpu[p.pid] = (self._label(p), secs)
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                pass
        return total

    def cpu_profile(self) -> dict[str, float]:
        """CPU seconds per process group while sampled (processes alive at a sample)."""
        out: dict[str, float] = {}
        for pid, (label, secs) in self.cpu.items():
            out[label] = round(out.get(label, 0.0) + secs - self.cpu0.get(pid, 0.0), 1)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def __enter__(self):
        self.base = self._sample(first=True)
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self.th.join()


def make_scratch_run(source: str, dest: str, shard_size: int, clips: int | None) -> int:
    from mosaic_ray.storage import Storage, write_shards

    from mosaic_ray.data.synthetic import copy_run_inputs

    src, dst = Storage(source), Storage(dest)
    copy_run_inputs(src, dst)
    if clips:
        import ray

        from mosaic_ray.data.synthetic import expand_pool

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            expand_pool(source, dest, clips, shard_size)
        finally:
            ray.shutdown()
    elif not dst.list("ingest/clips/pool", ".parquet"):
        write_shards(dst, "ingest/clips/pool", src.read_table("ingest/clips/pool"), shard_size)
    return sum(dst.read_table(s, columns=["clip_id"]).num_rows for s in dst.list("ingest/clips/pool", ".parquet"))


def plain_loop(dest: str, checkpoint: str, shards: list[str] | None = None,
               out_dir: str = "bench_loop/scores") -> dict:
    """The same work as one scoring actor, without Ray: load the checkpoint, then per shard
    read it, score it and write its output shard (``ShardStage.process_batch``). Returns the
    wall seconds of the whole loop (set-up included, as the stage's time includes its actors'
    start-up), the set-up seconds and the rows written."""
    import pyarrow as pa

    t0 = time.perf_counter()
    from mosaic_ray.stages.score import ScoreStage
    from mosaic_ray.storage import Storage

    st = Storage(dest)
    shards = shards if shards is not None else st.list("ingest/clips/pool", ".parquet")
    stage = ScoreStage(st, checkpoint, 32, 1.0, 0.0, 1, output_dir=out_dir)
    stage.setup()
    t_setup = time.perf_counter() - t0
    rec = stage.process_batch(pa.table({"shard": shards}))
    return {"seconds": time.perf_counter() - t0, "setup_s": t_setup, "rows": int(sum(rec.column("rows").to_pylist())),
            "shard_wall_s": float(sum(rec.column("wall_s").to_pylist())),
            "shard_cpu_s": float(sum(rec.column("cpu_s").to_pylist()))}


def two_loops(dest: str, checkpoint: str) -> dict:
    """Two plain loops in two processes (no Ray), each on every other shard: what two cores
    give two independent scoring processes on this machine, i.e. the ceiling for the
    two-actor stage's scaling. Wall time from before the processes start (imports included)."""
    import multiprocessing as mp

    from mosaic_ray.storage import Storage

    shards = Storage(dest).list("ingest/clips/pool", ".parquet")
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(2) as pool:
        # spawned children re-import this module, so its OMP_NUM_THREADS=1 default holds there too
        parts = pool.starmap(plain_loop, [(dest, checkpoint, shards[i::2], "bench_loop2/scores") for i in range(2)])
    return {"seconds": time.perf_counter() - t0, "rows": sum(p["rows"] for p in parts),
            "per_process_s": [round(p["seconds"], 2) for p in parts]}


def ray_stage(dest: str, actors: int) -> tuple[float, dict]:
    import ray

    from mosaic_ray.config import validate_config
    from mosaic_ray.stages.score import run_score
    from mosaic_ray.storage import Storage

    cfg = validate_config({"name": Path(dest).name, "output_dir": str(Path(dest).parent),
                           "selection": {"budgets": [1]}, "ray": {"num_cpus": 2},
                           "score": {"num_actors": actors, "num_cpus_per_actor": 0.5, "batch_size": 32}})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        payload = run_score(cfg, Storage(dest), "planner/base.pt", out=f"bench_ray{actors}", force=True)
        return time.perf_counter() - t0, payload
    finally:
        ray.shutdown()


def main() -> None:
    from mosaic_ray.storage import Storage

    ap = argparse.ArgumentParser()
    ap.add_argument("source_run")
    ap.add_argument("--clips", type=int, default=None, help="synthetic pool size (default: the real pool)")
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-loop", action="store_true")
    ap.add_argument("--no-two-loops", action="store_true", help="skip the two-process plain loop (hardware ceiling)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds; each round runs every variant once, interleaved")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    tag = args.tag or (f"synthetic{args.clips}" if args.clips else "real")
    dest = f"/tmp/mosaic_bench/{tag}"
    n = make_scratch_run(args.source_run, dest, args.shard_size, args.clips)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    res = {"date": dt.date.today().isoformat(), "machine": f"{os.cpu_count()} cores, {cpu}, no GPU",
           "source_run": args.source_run, "clips": n, "shard_size": args.shard_size, "repeats": args.repeats,
           "runs": {}}
    variants = ([] if args.no_loop else ["plain_loop"]) + [f"ray_{k}_actor" for k in args.actors] \
        + ([] if (args.no_loop or args.no_two_loops) else ["two_plain_loops"])
    for rnd in range(args.repeats):
        for v in variants:
            with PeakRSS() as mem:
                if v == "plain_loop":
                    Storage(dest).delete("bench_loop")
                    r = plain_loop(dest, "planner/base.pt")
                    secs, rows = r["seconds"], r["rows"]
                    extra = {"setup_s": round(r["setup_s"], 2), "shard_wall_s": round(r["shard_wall_s"], 2),
                             "shard_cpu_s": round(r["shard_cpu_s"], 2)}
                elif v == "two_plain_loops":
                    Storage(dest).delete("bench_loop2")
                    r = two_loops(dest, "planner/base.pt")
                    secs, rows, extra = r["seconds"], r["rows"], {"per_process_s": r["per_process_s"]}
                else:
                    secs, payload = ray_stage(dest, int(v.split("_")[1]))
                    rows = payload["rows"]
                    extra = {"stage_wall_s": payload["wall_time_s"], "shard_wall_s": payload["shard_wall_s"],
                             "shard_cpu_s": payload["shard_cpu_s"]}
            one = {"seconds": round(secs, 2), "clips_per_s": round(rows / secs, 2), **extra,
                   "peak_rss_mb": round(mem.peak / 2**20), "cpu_s_by_process": mem.cpu_profile()}
            assert rows == n, f"{v}: {rows} rows for {n} clips"
            res["runs"].setdefault(v, []).append(one)
            print(f"round {rnd + 1}/{args.repeats} {v}: {one}", flush=True)
    med = {v: statistics.median([r["clips_per_s"] for r in runs]) for v, runs in res["runs"].items()}
    res["median_clips_per_s"] = med
    if "plain_loop" in med and "ray_1_actor" in med:
        res["overhead_1_actor_vs_loop"] = round(med["plain_loop"] / med["ray_1_actor"] - 1, 3)
        # per round, as the machine's load drifts between rounds
        res["overhead_per_round"] = [round(a["clips_per_s"] / b["clips_per_s"] - 1, 3)
                                     for a, b in zip(res["runs"]["plain_loop"], res["runs"]["ray_1_actor"])]
    if "ray_1_actor" in med and "ray_2_actor" in med:
        res["scaling_1_to_2_actors"] = round(med["ray_2_actor"] / med["ray_1_actor"], 3)
        res["scaling_per_round"] = [round(b["clips_per_s"] / a["clips_per_s"], 3)
                                    for a, b in zip(res["runs"]["ray_1_actor"], res["runs"]["ray_2_actor"])]
    if "plain_loop" in med and "two_plain_loops" in med:
        res["scaling_two_plain_loops"] = round(med["two_plain_loops"] / med["plain_loop"], 3)
    out = Path(__file__).parent / "results" / f"score_stage_{tag}_{res['date']}.json"
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))
    print(f"written {out}")
    if args.clips:
        shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    main()
