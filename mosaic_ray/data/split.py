"""Content deduplication and the split by map segment (validation / D_train / pool).

Several files of one map segment replay the same recorded vehicles (US101-22 files _1, _3
and _4 share 52–54 vehicles), and obstacle ids are reused for different vehicles across
files, so clips are deduplicated by content — (segment, t0, start position), which is what
:func:`~mosaic_ray.data.clip.make_clip_id` hashes — never by obstacle id. The split unit is
the map segment (``USA_US101-22``), never the file or the clip, so no road and no vehicle is
shared between validation, D_train and the pool.

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
    """Indices to keep and, for each dropped index, the index it duplicates.

    Args:
        keys: per clip ``(clip_id, order_key)``; equal clip ids are duplicates.
    """
    first: dict[str, int] = {}
    for i in sorted(range(len(keys)), key=lambda i: keys[i][1]):
        first.setdefault(keys[i][0], i)
    keep = sorted(first.values())
    dup = {i: first[cid] for i, (cid, _) in enumerate(keys) if first[cid] != i}
    return keep, dup


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
