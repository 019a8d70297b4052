"""CPU cost, stage scaling and memory of the score step (issue 14).

    .venv/bin/python benchmarks/bench_score_pipeline.py SOURCE_RUN [--baseline-ref REF]
        [--rounds R] [--scaling-clips N] [--scale-clips N --scale-budget-s S] [--parts cpu scaling scale]
        [--tag TAG]

SOURCE_RUN is a run with ingested clips and ``planner/base.pt``. Three parts:

* ``cpu`` — CPU-seconds per scored clip, old vs new, side by side in this one run: the score
  stage's work on every pool shard in a subprocess without Ray (load the checkpoint, then read,
  score and write each shard; one torch thread), for (1) the code at ``--baseline-ref`` (the
  one-pool :class:`ScoreStage` before issue 14, exported with ``git archive``), (2) today's
  one-pool :class:`ScoreStage` and (3) today's two stages (:class:`PlanStage` then
  :class:`EPDMSStage` in one process). The variants alternate within each of ``--rounds``
  rounds; CPU time is the subprocess's own (``time.process_time``) over the shard loop.
  Each variant first makes one untimed pass over the pool (lazy imports such as
  ``scipy.signal``, lru caches, the allocator's first growth: costs a 10^6-clip run pays
  once, not per clip; its CPU-seconds are recorded as ``warmup_cpu_s``); ``--no-warmup``
  times the first pass instead, as runs before 2026-12-06 did.
* ``scaling`` — 1 → 2 actors of each stage on a local 2-CPU Ray, on a synthetic pool of
  ``--scaling-clips`` clips (:mod:`mosaic_ray.data.synthetic`): the planner stage alone
  (PlanStage pool of k actors, its output dropped), the EPDMS stage alone (k EPDMS actors of
  1 CPU over the planner stage's output, computed once before and held in the object store)
  and the whole step with one planner actor and k EPDMS actors. Clips/s from the step's wall time (actor start-up included), peak RSS
  summed over every process (driver, Ray daemons, workers; sampled every 0.2 s).
* ``scale`` — the whole step (default pools) on a synthetic pool of ``--scale-clips`` clips in
  a subprocess (its own local 2-CPU Ray), stopped after ``--scale-budget-s`` if unfinished:
  wall, clips scored (rows of the finished output shards), clips/s held, peak RSS of all
  processes and its time course.

Results: ``benchmarks/results/score_pipeline_<tag>_<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRATCH = Path("/tmp/mosaic_bench")


# ---------------------------------------------------------------------------- workers (subprocesses)
def _cpu_worker(variant: str, run: str, reps: int, warmup: bool = True) -> dict:
    """One variant's shard loop in this process (no Ray); prints nothing, returns the figures."""
    import pyarrow as pa
    import torch

    torch.set_num_threads(1)
    from mosaic_ray.storage import Storage

    st = Storage(run)
    shards = st.list("ingest/clips/pool", ".parquet")
    out = f"bench_cpu_{variant}_{os.getpid()}"
    t0 = time.perf_counter()
    if variant in ("baseline_single", "single"):
        from mosaic_ray.stages.score import ScoreStage

        stage = ScoreStage(st, "planner/base.pt", 32, 1.0, 0.0, 1, output_dir=out)
        stage.setup()

        def one_pass() -> int:
            st.delete(out)
            rec = stage.process_batch(pa.table({"shard": shards}))
            return int(sum(rec.column("rows").to_pylist()))
    else:
        from mosaic_ray.stages.score import EPDMSStage, PlanStage

        plan = PlanStage(st, "planner/base.pt", 256, 1.0, 0.0, 1)
        plan.setup()
        epdms = EPDMSStage(st, out, 1.0, 64)
        epdms.setup()

        def one_pass() -> int:
            st.delete(out)
            n = 0
            for s in shards:
                rec = epdms.process_batch(plan.process_batch(pa.table({"shard": [s]})))
                n += int(sum(rec.column("rows").to_pylist()))
            return n
    t1, c1 = time.perf_counter(), time.process_time()
    warm = one_pass() if warmup else 0   # first use: lazy imports, caches, allocator growth
    t2, c2 = time.perf_counter(), time.process_time()
    rows = sum(one_pass() for _ in range(reps))
    res = {"variant": variant, "clips": rows, "setup_s": round(t1 - t0, 2),
           "warmup_clips": warm, "warmup_cpu_s": round(c2 - c1, 3),
           "loop_wall_s": round(time.perf_counter() - t2, 3), "loop_cpu_s": round(time.process_time() - c2, 3)}
    res["cpu_ms_per_clip"] = round(1000 * res["loop_cpu_s"] / rows, 3)
    st.delete(out)
    return res


def _scale_worker(run: str, budget_s: float) -> None:
    """The whole two-stage step on ``run`` with its own local 2-CPU Ray (the parent kills it at
    the budget)."""
    import ray

    from mosaic_ray.config import validate_config
    from mosaic_ray.stages.score import run_score
    from mosaic_ray.storage import Storage

    cfg = validate_config({"name": Path(run).name, "output_dir": str(Path(run).parent),
                           "selection": {"budgets": [1]}, "ray": {"num_cpus": 2}})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        p = run_score(cfg, Storage(run), "planner/base.pt", out="bench_scale", force=True)
        print("RESULT " + json.dumps(p), flush=True)
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------- driver parts
def _export_baseline(ref: str) -> Path:
    dest = SCRATCH / f"baseline-{ref}"
    if not (dest / "mosaic_ray").exists():
        dest.mkdir(parents=True, exist_ok=True)
        arch = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "mosaic_ray"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=arch.stdout, check=True)
    return dest


def _run_worker(args: list[str], pythonpath: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", *args], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def part_cpu(source: str, ref: str, rounds: int, reps: int, warmup: bool = True) -> dict:
    base = _export_baseline(ref)
    variants = [("baseline_single", base), ("single", ROOT), ("two_stage", ROOT)]
    runs: dict[str, list] = {v: [] for v, _ in variants}
    for r in range(rounds):
        for v, path in variants:
            res = _run_worker(["cpu", v, source, str(reps), str(int(warmup))], path)
            runs[v].append(res)
            print(f"[cpu] round {r + 1}/{rounds} {v}: {res}", flush=True)
    med = {v: sorted(x["cpu_ms_per_clip"] for x in rs)[len(rs) // 2] for v, rs in runs.items()}
    ratios = {v: [round(b["cpu_ms_per_clip"] / x["cpu_ms_per_clip"], 3) for b, x in zip(runs["baseline_single"], rs)]
              for v, rs in runs.items() if v != "baseline_single"}
    return {"baseline_ref": ref, "reps_per_run": reps, "warmup_pass": warmup, "runs": runs, "median_cpu_ms_per_clip": med,
            "cpu_ratio_baseline_over_variant_per_round": ratios}


def _make_pool(source: str, n: int, shard_size: int) -> str:
    import ray

    from mosaic_ray.data.synthetic import copy_run_inputs, expand_pool
    from mosaic_ray.storage import Storage

    dest = SCRATCH / f"pool{n}"
    if dest.exists():
        shutil.rmtree(dest)
    copy_run_inputs(Storage(source), Storage(str(dest)))
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        expand_pool(source, str(dest), n, shard_size)
    finally:
        ray.shutdown()
    print(f"[pool] {n} clips written in {time.perf_counter() - t0:.1f} s", flush=True)
    return str(dest)


def part_scaling(source: str, n: int, shard_size: int) -> dict:
    import pyarrow as pa
    import ray

    from bench_score_stage import PeakRSS
    from mosaic_ray.config import validate_config
    from mosaic_ray.stages.score import EPDMSStage, PlanStage, run_score
    from mosaic_ray.stages.shards import map_stage
    from mosaic_ray.storage import Storage

    run = _make_pool(source, n, shard_size)
    st = Storage(run)
    shards = st.list("ingest/clips/pool", ".parquet")
    res: dict = {"clips": n, "shard_size": shard_size, "runs": {}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for k in (1, 2):
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                plan = PlanStage(st, "planner/base.pt", 256, 0.5, 0.0, 1)
                ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
                ds = map_stage(ds, plan, pool=(k, k)).map_batches(
                    lambda b: pa.table({"n": [b.num_rows]}), batch_format="pyarrow", batch_size=None)
                rows = sum(r["n"] for r in ds.iter_rows())
                secs = time.perf_counter() - t0
            one = {"seconds": round(secs, 2), "clips": rows, "clips_per_s": round(rows / secs, 1),
                   "peak_rss_mb": round(mem.peak / 2**20), "cpu_s_by_process": mem.cpu_profile()}
            res["runs"][f"plan_stage_{k}_actor"] = one
            print(f"[scaling] plan_stage_{k}_actor: {one}", flush=True)
        # the EPDMS stage alone: its input (the planner stage's output, whole shards as blocks)
        # computed once and held in the object store, then k EPDMS actors over it
        ctx = ray.data.DataContext.get_current()
        old_block = ctx.target_max_block_size
        ctx.target_max_block_size = max(old_block or 0, 1 << 30)
        try:
            ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
            planned = map_stage(ds, PlanStage(st, "planner/base.pt", 256, 1.0, 0.0, 1), pool=(1, 1)).materialize()
            for k in (1, 2):
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    ep = EPDMSStage(st, f"bench_epdms_only_{k}", 1.0, 64)
                    recs = list(map_stage(planned, ep, pool=(k, k)).iter_rows())
                    secs = time.perf_counter() - t0
                rows = sum(r["rows"] for r in recs)
                assert rows == n, (rows, n)
                one = {"seconds": round(secs, 2), "clips": rows, "clips_per_s": round(rows / secs, 1),
                       "epdms_shard_cpu_s": round(sum(r["cpu_s"] for r in recs), 2),
                       "peak_rss_mb": round(mem.peak / 2**20), "cpu_s_by_process": mem.cpu_profile()}
                res["runs"][f"epdms_stage_{k}_actor"] = one
                print(f"[scaling] epdms_stage_{k}_actor: {one}", flush=True)
                st.delete(f"bench_epdms_only_{k}")
        finally:
            ctx.target_max_block_size = old_block
        for k in (1, 2):
            cfg = validate_config({"name": Path(run).name, "output_dir": str(Path(run).parent),
                                   "selection": {"budgets": [1]},
                                   "score": {"plan": {"min_actors": 1, "max_actors": 1},
                                             "epdms": {"min_actors": k, "max_actors": k}}})
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                p = run_score(cfg, st, "planner/base.pt", out=f"bench_scaling_{k}", force=True)
                secs = time.perf_counter() - t0
            one = {"seconds": round(secs, 2), "clips": p["rows"], "clips_per_s": round(p["rows"] / secs, 1),
                   "epdms_shard_cpu_s": p["shard_cpu_s"], "plan_cpu_s": p["plan_cpu_s"],
                   "peak_rss_mb": round(mem.peak / 2**20), "cpu_s_by_process": mem.cpu_profile()}
            assert p["rows"] == n
            res["runs"][f"two_stage_1_plan_{k}_epdms"] = one
            print(f"[scaling] two_stage_1_plan_{k}_epdms: {one}", flush=True)
            st.delete(f"bench_scaling_{k}")
    finally:
        ray.shutdown()
    r = res["runs"]
    res["plan_stage_scaling_1_to_2"] = round(r["plan_stage_2_actor"]["clips_per_s"] / r["plan_stage_1_actor"]["clips_per_s"], 3)
    res["epdms_stage_scaling_1_to_2"] = round(r["two_stage_1_plan_2_epdms"]["clips_per_s"]
                                              / r["two_stage_1_plan_1_epdms"]["clips_per_s"], 3)
    res["epdms_stage_alone_scaling_1_to_2"] = round(r["epdms_stage_2_actor"]["clips_per_s"]
                                                    / r["epdms_stage_1_actor"]["clips_per_s"], 3)
    shutil.rmtree(run, ignore_errors=True)
    return res


def _role(p, driver_pid: int) -> str:
    """A process's role in the scale run: the measured driver, a Ray system process by name, or a
    Ray worker by the actor / task it runs (``ray::MapWorker(...)``: its process title)."""
    if p.pid == driver_pid:
        return "driver"
    try:
        name = p.name()
        cmd = " ".join(p.cmdline()[:3])
    except Exception:
        return "gone"
    for key in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "agent"):
        if key in name or key in cmd:
            return key.replace(".py", "")
    if cmd.startswith("ray::") or name.startswith("ray::"):
        title = cmd if cmd.startswith("ray::") else name
        return title.split(" ")[0][:60]
    return name[:40]


def _memory_by_role(me, driver_pid: int) -> dict[str, dict[str, int]]:
    """``{role: {"n", "rss_mb", "uss_mb"}}`` over this process's descendants (USS: pages only that
    process maps, so the object store's shared pages are not counted once per mapper)."""
    import psutil

    out: dict[str, dict[str, int]] = {}
    for p in me.children(recursive=True):
        try:
            mi = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        r = out.setdefault(_role(p, driver_pid), {"n": 0, "rss_mb": 0, "uss_mb": 0})
        r["n"] += 1
        r["rss_mb"] += round(mi.rss / 2**20)
        r["uss_mb"] += round(mi.uss / 2**20)
    return dict(sorted(out.items()))


def part_scale(source: str, n: int, shard_size: int, budget_s: float) -> dict:
    import psutil

    from mosaic_ray.storage import Storage

    run = _make_pool(source, n, shard_size)
    st = Storage(run)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", "scale", run, str(budget_s)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    me = psutil.Process()
    peak, course, last = 0, [], 0.0
    finished = False
    while True:
        total = 0
        for p in [me] + me.children(recursive=True):
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak = max(peak, total)
        el = time.perf_counter() - t0
        if el - last >= 30:
            done = len(st.list("bench_scale/scores", ".parquet")) if st.exists("bench_scale/scores") else 0
            course.append({"t_s": round(el), "rss_mb": round(total / 2**20), "shards_done": done,
                           "by_role": _memory_by_role(me, proc.pid)})
            print(f"[scale] {course[-1]}", flush=True)
            last = el
        if proc.poll() is not None:
            finished = proc.returncode == 0
            break
        if el > budget_s:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    payload = None
    if finished:
        for line in proc.stdout.read().splitlines():
            if line.startswith("RESULT "):
                payload = json.loads(line[7:])
    outs = st.list("bench_scale/scores", ".parquet") if st.exists("bench_scale/scores") else []
    scored = sum(st.read_table(o, columns=["clip_id"]).num_rows for o in outs)
    # the rate held: clips over the time from the first finished shard on (start-up excluded)
    first = next((c["t_s"] for c in course if c["shards_done"] > 0), None)
    res = {"clips": n, "shard_size": shard_size, "budget_s": budget_s, "finished": finished, "wall_s": round(wall, 1),
           "clips_scored": scored, "clips_per_s_overall": round(scored / wall, 2),
           "peak_rss_mb_all_processes": round(peak / 2**20), "course": course, "payload": payload}
    if first is not None and len(course) >= 2:
        c0 = next(c for c in course if c["t_s"] == first)
        c1 = course[-1]
        if c1["t_s"] > c0["t_s"]:
            res["clips_per_s_held"] = round((c1["shards_done"] - c0["shards_done"]) * shard_size / (c1["t_s"] - c0["t_s"]), 2)
    shutil.rmtree(run, ignore_errors=True)
    print(f"[scale] {res}", flush=True)
    return res


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        kind = sys.argv[2]
        if kind == "cpu":
            print(json.dumps(_cpu_worker(sys.argv[3], sys.argv[4], int(sys.argv[5]), bool(int(sys.argv[6])))), flush=True)
        else:
            _scale_worker(sys.argv[3], float(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("source_run")
    ap.add_argument("--baseline-ref", default="3a71f8b")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=1, help="passes over the source pool per cpu measurement")
    ap.add_argument("--no-warmup", action="store_true",
                    help="cpu: time the first pass too (by default every variant makes one untimed pass first)")
    ap.add_argument("--parts", nargs="+", default=["cpu", "scaling", "scale"])
    ap.add_argument("--scaling-clips", type=int, default=2048)
    ap.add_argument("--scale-clips", type=int, default=100_000)
    ap.add_argument("--scale-budget-s", type=float, default=600.0)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--tag", default="local")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    source = str(Path(args.source_run).resolve())
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    res = {"date": dt.date.today().isoformat(), "machine": f"{os.cpu_count()} cores, {cpu}, no GPU",
           "load_avg_at_start": os.getloadavg(), "source_run": source, "args": vars(args)}
    if "cpu" in args.parts:
        res["cpu"] = part_cpu(source, args.baseline_ref, args.rounds, args.reps, not args.no_warmup)
    if "scaling" in args.parts:
        res["scaling"] = part_scaling(source, args.scaling_clips, args.shard_size)
    if "scale" in args.parts:
        res["scale"] = part_scale(source, args.scale_clips, args.shard_size, args.scale_budget_s)
    res["load_avg_at_end"] = os.getloadavg()
    out = HERE / "results" / f"score_pipeline_{args.tag}_{res['date']}.json"
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k not in ("cpu", "scaling", "scale")}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
