"""Content deduplication and the split by map segment (validation / D_train / pool).

Several files of one map segment replay the same recorded vehicles (US101-22 files _1, _3
and _4 share 52–54 vehicles), and obstacle ids are reused for different vehicles across
files, so clips are deduplicated by recorded content — t0 and the ego's 56 history and future
positions to 0.1 m (:func:`~mosaic_ray.data.clip.content_key`) — never by obstacle id, file
name or segment: the same XML copied under another segment name is a duplicate too, so one
recording can never sit in two splits (:func:`dedup_clips`). A clip whose id
(:func:`~mosaic_ray.data.clip.make_clip_id`: segment, t0, start position) collides with a kept
clip's is dropped as well, so ids stay unique. On the 130 NGSIM files both keys group the
3,089 windows into the same 1,563 clips, so the content key changed no clip and no count.
The split unit is the map segment (``USA_US101-22``), never the file or the clip, so no road
and no vehicle is shared between validation, D_train and the pool.

Automatic split (when the config names no segments):

1. Validation: for every site with at least two clip-bearing segments, its smallest one
   (never a site's only or largest segment); then further segments in a seeded random order,
   skipping any that would leave its site without a pool segment, until validation holds
   ``validation_fraction`` of the clips.
2. D_train: segments in a seeded random order, with the same rule, until D_train holds
   ``train_fraction`` of the clips (the paper's ~10% random part, at segment granularity);
   a segment that would overshoot the target by more than half is skipped (if none fits,
   the smallest segment that can leave the pool).
3. Pool: the rest.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

SPLITS = ("validation", "train", "pool")


@dataclass
class SplitPlan:
    """Segment -> split assignment with the counts that produced it."""

    assignment: dict[str, str]
    clips_per_segment: dict[str, int]
    site_of_segment: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def segments(self, split: str) -> list[str]:
        return sorted(s for s, sp in self.assignment.items() if sp == split)

    def counts(self) -> dict[str, int]:
        c: Counter = Counter()
        for seg, sp in self.assignment.items():
            c[sp] += self.clips_per_segment[seg]
        return {s: int(c.get(s, 0)) for s in SPLITS}


def dedup_order_key(source_file: str, ego_id: int, t0: int) -> tuple:
    """Which duplicate is kept: the one from the first file in sorted order."""
    return (source_file, int(ego_id), int(t0))


def find_duplicates(keys: list[tuple[str, tuple]]) -> tuple[list[int], dict[int, int]]:
    """Indices to keep and, for each dropped index, the index it duplicates (O(n log n)).

    Args:
        keys: per clip ``(key, order_key)``; equal keys are duplicates, and of each group the
            clip with the smallest ``order_key`` (ties: the first index) is kept.

    Returns:
        ``(keep, dup)``: kept indices in ascending order, and ``{dropped index: kept index}``.
    """
    first: dict[str, int] = {}
    for i in sorted(range(len(keys)), key=lambda i: keys[i][1]):
        first.setdefault(keys[i][0], i)
    keep = sorted(first.values())
    dup = {i: first[cid] for i, (cid, _) in enumerate(keys) if first[cid] != i}
    return keep, dup


def content_keys(table) -> list[str]:
    """:func:`~mosaic_ray.data.clip.content_key` of every row of a clip table.

    Args:
        table: a ``pyarrow.Table`` with the clip schema's ``t0``, ``ego_states`` (binary,
            little-endian float64) and ``ego_states__shape`` columns.

    Returns:
        One 16-hex-character key per row, in row order.

    Raises:
        ValueError: a row's ``ego_states`` is not (T_ALL, 4).
    """
    from mosaic_ray.data.clip import content_key

    t0s = table.column("t0").to_pylist()
    bufs = table.column("ego_states").to_pylist()
    shapes = table.column("ego_states__shape").to_pylist()
    return [content_key(np.frombuffer(b, dtype="<f8").reshape(tuple(sh)), t0)
            for b, sh, t0 in zip(bufs, shapes, t0s)]


def dedup_clips(content: list[str], clip_ids: list[str], order: list[tuple]
                ) -> tuple[list[int], dict[int, tuple[int, str]]]:
    """Content deduplication of the clips of one ingest, then a clip-id uniqueness pass.

    Args:
        content: per clip its :func:`~mosaic_ray.data.clip.content_key`.
        clip_ids: per clip its id.
        order: per clip its :func:`dedup_order_key`; of each group the smallest is kept.

    Returns:
        ``(keep, dup)``: kept indices in ascending order (content keys and clip ids both unique
        among them), and ``{dropped index: (kept index, why)}`` with ``why`` ``"content"`` (same
        recorded ego track and t0) or ``"clip_id"`` (other content, same id).

    Raises:
        ValueError: the three lists differ in length.
    """
    if not (len(content) == len(clip_ids) == len(order)):
        raise ValueError(f"dedup_clips: {len(content)} content keys, {len(clip_ids)} clip ids, "
                         f"{len(order)} order keys")
    keep, dup_c = find_duplicates(list(zip(content, order)))
    keep2, dup_i = find_duplicates([(clip_ids[i], order[i]) for i in keep])
    dup = {i: (j, "content") for i, j in dup_c.items()}
    dup.update({keep[a]: (keep[b], "clip_id") for a, b in dup_i.items()})
    return [keep[a] for a in keep2], dup


def duplicated(values) -> list:
    """Values that occur more than once, sorted (linear counting, :class:`collections.Counter`).

    Args:
        values: any iterable of hashable, mutually comparable values (e.g. clip id strings).

    Returns:
        Each repeated value once, in sorted order (empty when all are distinct).
    """
    return sorted(v for v, n in Counter(values).items() if n > 1)


def plan_split(clips_per_segment: dict[str, int], site_of_segment: dict[str, str], *,
               validation_fraction: float, train_fraction: float, seed: int,
               validation_segments: list[str] | None = None,
               train_segments: list[str] | None = None) -> SplitPlan:
    """Assign every segment to validation, train or pool (see module docstring).

    Raises:
        ValueError: a named segment does not exist or is named for two splits, or a split
            would be empty.
    """
    segs = sorted(s for s, n in clips_per_segment.items() if n > 0)
    total = sum(clips_per_segment[s] for s in segs)
    if total == 0:
        raise ValueError("no clips to split")
    for name, given in (("validation_segments", validation_segments), ("train_segments", train_segments)):
        unknown = sorted(set(given or ()) - set(segs))
        if unknown:
            raise ValueError(f"{name}: unknown or clip-less segments {unknown}; known: {segs}")
    if validation_segments and train_segments and set(validation_segments) & set(train_segments):
        raise ValueError("a segment is named in both validation_segments and train_segments")
    rng = np.random.default_rng(seed)
    assign = {s: "pool" for s in segs}
    notes: list[str] = []
    by_site: dict[str, list[str]] = defaultdict(list)
    for s in segs:
        by_site[site_of_segment[s]].append(s)

    def pool_segments_of(site: str) -> list[str]:
        return [s for s in by_site[site] if assign[s] == "pool"]

    def spare_segments() -> int:
        return sum(max(0, len(pool_segments_of(site)) - 1) for site in by_site)

    if validation_segments:
        for s in validation_segments:
            assign[s] = "validation"
    else:
        target = validation_fraction * total
        for site in sorted(by_site):
            cands = sorted(by_site[site], key=lambda s: (clips_per_segment[s], s))
            if len(cands) < 2:
                notes.append(f"site {site} has one clip-bearing segment ({cands[0]}): "
                             "it stays in the pool, validation does not cover the site")
                continue
            assign[cands[0]] = "validation"
        val = sum(clips_per_segment[s] for s in segs if assign[s] == "validation")
        for s in [segs[i] for i in rng.permutation(len(segs))]:
            if val >= target:
                break
            site = site_of_segment[s]
            if assign[s] != "pool" or len(pool_segments_of(site)) < 2 or spare_segments() < 2:
                continue  # keep every site in the pool and one spare segment for D_train
            if val + clips_per_segment[s] > target * 1.5:
                continue
            assign[s] = "validation"
            val += clips_per_segment[s]
    if train_segments:
        for s in train_segments:
            assign[s] = "train"
    else:
        target = train_fraction * total
        tr = 0
        for s in [segs[i] for i in rng.permutation(len(segs))]:
            if tr >= target:
                break
            site = site_of_segment[s]
            if assign[s] != "pool" or len(pool_segments_of(site)) < 2:
                continue
            if tr + clips_per_segment[s] > target * 1.5:
                continue
            assign[s] = "train"
            tr += clips_per_segment[s]
        if tr == 0:  # nothing fitted the target: the smallest segment that can leave the pool
            eligible = [s for s in segs if assign[s] == "pool" and len(pool_segments_of(site_of_segment[s])) >= 2]
            if eligible:
                assign[min(eligible, key=lambda s: (clips_per_segment[s], s))] = "train"
    plan = SplitPlan(assign, dict(clips_per_segment), dict(site_of_segment), notes)
    empty = [k for k, v in plan.counts().items() if v == 0]
    if empty:
        raise ValueError(f"split leaves {empty} empty; name segments explicitly in the config")
    return plan
