"""Scale pools for scale tests only: real clips copied under rigid motions and mirroring.

A copy ``k`` of a real clip is the whole scene (ego, agents, lanes, route, stop lines) moved
by a rigid transform — rotation by ``0.37·k`` rad about the origin and a shift of
``(1000·(k mod 97), 1000·(k // 97))`` m — and, for odd ``k``, mirrored (y → −y, headings
negated, left and right lane bounds swapped so lanes keep their driving direction). Every
copy is a valid clip with the same dynamics, a new id (``<clip_id>-s<k>``) and
``dataset = "synthetic-<source>"``; it scores like its source up to floating-point noise.
Nothing here is training data: use it to measure throughput and memory at 10^5–10^6 clips.

    python -m mosaic_ray.data.synthetic SOURCE_RUN DEST_RUN --clips 1000000 [--shard-size 256]

writes ``DEST_RUN/ingest/clips/pool/shard-*.parquet`` (copies of SOURCE_RUN's pool) and
copies the source's train / calibration / test shards and ``planner/`` files, so ``mosaic-ray score``
runs on DEST_RUN. Progress is a tqdm bar (on stderr) and ``logging`` records of this
module's logger; the command line prints the summary dict as JSON on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time

import numpy as np
from tqdm import tqdm

from mosaic_ray.data.clip import Clip

__all__ = ["transform_clip", "expand_pool", "copy_run_inputs"]

log = logging.getLogger(__name__)


def _rigid(xy: np.ndarray, c: float, s: float, t: np.ndarray) -> np.ndarray:
    x, y = xy[..., 0], xy[..., 1]
    return np.stack([c * x - s * y + t[0], s * x + c * y + t[1]], axis=-1)


def transform_clip(clip: Clip, k: int) -> Clip:
    """Copy ``k`` (≥ 1) of ``clip`` under the rigid motion / mirroring described above.

    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"copy index must be >= 1, got {k}")
    mirror = k % 2 == 1
    ang = 0.37 * k
    c, s = math.cos(ang), math.sin(ang)
    t = np.array([1000.0 * (k % 97), 1000.0 * (k // 97)])

    def pts(a: np.ndarray) -> np.ndarray:
        a = np.array(a, dtype=float, copy=True)
        if mirror:
            a[..., 1] = -a[..., 1]
        return _rigid(a, c, s, t)

    def head(h: np.ndarray) -> np.ndarray:
        return (-h if mirror else h) + ang

    ego = clip.ego_states.copy()
    ego[:, :2], ego[:, 2] = pts(ego[:, :2]), head(ego[:, 2])
    ag = clip.agent_states.copy()
    if ag.size:
        ag[..., :2], ag[..., 2] = pts(ag[..., :2]), head(ag[..., 2])
    left, right = pts(clip.lane_left), pts(clip.lane_right)
    if mirror:  # mirroring swaps the sides of every lane
        left, right = right, left
    return dataclasses.replace(
        clip, clip_id=f"{clip.clip_id}-s{k}", frame_id=f"{clip.frame_id}-s{k}", dataset=f"synthetic-{clip.dataset}",
        ego_states=ego, agent_states=ag, lane_left=left, lane_right=right,
        lane_center=pts(clip.lane_center), route_center=pts(clip.route_center),
        stop_lines=pts(clip.stop_lines) if clip.stop_lines.size else clip.stop_lines.copy())


def _expand_shard(src_root: str, dst_root: str, src_shards: list[str], bounds: list[int], index: int,
                  shard_size: int, n_total: int) -> int:
    """Write output shard ``index``: items ``index*shard_size ...`` of the copy sequence, where
    item j is copy ``j // n_src + 1`` of source clip ``j % n_src`` (source clips numbered in
    sorted shard order; ``bounds`` are the cumulative shard sizes)."""
    from mosaic_ray.data.clip import clips_from_table, clips_to_table
    from mosaic_ray.storage import Storage

    src, dst = Storage(src_root), Storage(dst_root)
    out_rel = f"ingest/clips/pool/shard-{index:07d}.parquet"
    stop = min((index + 1) * shard_size, n_total)
    if dst.exists(out_rel):
        return stop - index * shard_size
    n_src = bounds[-1]
    cache: dict[int, list[Clip]] = {}
    out = []
    for j in range(index * shard_size, stop):
        src_i, k = j % n_src, j // n_src + 1
        sh = int(np.searchsorted(bounds, src_i, side="right") - 1)
        if sh not in cache:
            cache[sh] = clips_from_table(src.read_table(src_shards[sh]))
        out.append(transform_clip(cache[sh][src_i - bounds[sh]], k))
    dst.write_table(out_rel, clips_to_table(out))
    return len(out)


def copy_run_inputs(src, dst) -> None:
    """Copy the train / calibration / test clip shards and the ``planner/`` files (``.pt``,
    ``.npy``, ``.json``) of run ``src`` to run ``dst`` (both :class:`~mosaic_ray.storage.Storage`),
    skipping files ``dst`` already has, so stages after ingest can run on ``dst``."""
    from mosaic_ray.data.split import CALIBRATION, TEST, TRAIN

    shards = [r for sp in (TRAIN, CALIBRATION, TEST) if src.exists(f"ingest/clips/{sp}")
              for r in src.list(f"ingest/clips/{sp}", ".parquet")]
    for rel in shards + [p for p in src.list("planner") if p.endswith((".pt", ".npy", ".json"))]:
        if not dst.exists(rel):
            dst.write_bytes(rel, src.read_bytes(rel))


def expand_pool(src_root: str, dst_root: str, n_clips: int, shard_size: int = 256) -> dict:
    """Write ``n_clips`` synthetic pool clips (copies of ``src_root``'s pool) under ``dst_root``
    with Ray tasks, one output shard of ``shard_size`` clips per task (the last one shorter;
    resumable: existing shards are kept), and copy the train / calibration / test shards and
    ``planner/`` files.

    Returns:
        ``{"clips", "shards", "source_clips", "wall_time_s"}``.

    Raises:
        ValueError: ``n_clips < 1`` or the source run has no pool shards.
    """
    import ray

    from mosaic_ray.storage import Storage

    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    src, dst = Storage(src_root), Storage(dst_root)
    src_shards = src.list("ingest/clips/pool", ".parquet")
    if not src_shards:
        raise ValueError(f"{src_root} has no ingest/clips/pool shards: run `mosaic-ray ingest` first")
    sizes = [src.read_table(s, columns=["clip_id"]).num_rows for s in src_shards]
    bounds = [0] + np.cumsum(sizes).tolist()
    n_src = bounds[-1]
    copy_run_inputs(src, dst)
    n_shards = math.ceil(n_clips / shard_size)
    task = ray.remote(num_cpus=1)(_expand_shard)
    t0 = time.time()
    refs = [task.remote(src_root, dst_root, src_shards, bounds, i, shard_size, n_clips) for i in range(n_shards)]
    log.info("writing %d synthetic clips (%d shards) from %d source clips to %s",
             n_clips, n_shards, n_src, dst_root)
    done = 0
    with tqdm(total=n_clips, unit="clip", desc="synthetic", disable=None) as bar:
        while refs:
            ready, refs = ray.wait(refs, num_returns=min(len(refs), 16))
            n = sum(ray.get(ready))
            done += n
            bar.update(n)
            log.debug("%d/%d clips (%.0f s)", done, n_clips, time.time() - t0)
    log.info("wrote %d synthetic clips in %.1f s", done, time.time() - t0)
    return {"clips": done, "shards": n_shards, "source_clips": n_src,
            "wall_time_s": round(time.time() - t0, 1)}


def main() -> None:
    import ray

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source_run")
    ap.add_argument("dest_run")
    ap.add_argument("--clips", type=int, required=True)
    ap.add_argument("--shard-size", type=int, default=256)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ray.init(include_dashboard=False)
    try:
        summary = expand_pool(args.source_run, args.dest_run, args.clips, args.shard_size)
    finally:
        ray.shutdown()
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
