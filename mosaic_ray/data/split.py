"""Content deduplication and the four disjoint splits: D_train, pool, calibration, test.

Several files of one map segment replay the same recorded vehicles (US101-22 files _1, _3
and _4 share 52–54 vehicles), and obstacle ids are reused for different vehicles across
files, so clips are deduplicated by recorded content — t0 and the ego's 56 history and future
positions to 0.1 m (:func:`~mosaic_ray.data.clip.content_key`) — never by obstacle id, file
name or segment: the same XML copied under another segment name is a duplicate too
(:func:`dedup_clips`). A clip whose id (:func:`~mosaic_ray.data.clip.make_clip_id`: segment,
t0, start position) collides with a kept clip's is dropped as well, so ids stay unique.

Splits (issue 12 part 2): **train** (D_train, ~10 % of the clips), **pool** (what selection
draws from), **calibration** (what pilot runs and any tuning are scored on) and **test** (what
the final tables report; touched by nothing else). The split unit shares no road recording:
with ``ingest.split_unit = "recording"`` (default) it is a *recording group*, the files of one
map segment linked, transitively, by a shared recorded vehicle (:func:`recording_groups`: a
duplicate clip across the files, or one moving ego trajectory piece — three consecutive
positions to 0.1 m, at least 0.2 m apart end to end — seen in both); with ``"segment"`` the whole map segment. No unit is split, so no
vehicle's recorded positions appear in two splits.

Automatic plan (:func:`plan_split`): each of train, calibration and test is stratified to one
declared site mix (``ingest.site_mix``; default the mix of all clips, which is then also the
pool's, the rest): per site, with the site's units in a seeded random order, each split's
target (fraction × clips × site share) is filled while it is not met and the site keeps a pool
unit. ``fill="best_fit"`` (default) takes each time the free unit that brings the split closest
to its target, which favours one large unit when one fits (and makes the seed matter only for
ties); ``fill="random_order"`` first walks the free units in the seeded order and takes each
one that fits under the target, then tops up by best fit, so a split holds more, smaller units
and spans more recordings (the NGSIM configs use it: with best fit, calibration held one US-101
segment of 27; see BENCHMARKS.md). A split that gets no unit this way takes the spare unit
closest to its clip target (ties: the larger). :meth:`SplitPlan.mix_deviation` gives each split's largest
deviation from the declared mix (share points); the ingest summary records it, and a note
names every split beyond :data:`MIX_TOLERANCE`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

#: split names, defined once (import these instead of spelling the strings)
TRAIN = "train"
POOL = "pool"
CALIBRATION = "calibration"
TEST = "test"
SPLITS = (TRAIN, POOL, CALIBRATION, TEST)
#: the splits stratified to the declared site mix (the pool is the rest)
STRATIFIED = (TEST, CALIBRATION, TRAIN)
#: how :func:`plan_split` fills a split's site target with units
FILLS = ("best_fit", "random_order")
#: largest deviation (share points, 0..1) of a split's site mix from the declared one before a note
MIX_TOLERANCE = 0.05


@dataclass
class SplitPlan:
    """Unit -> split assignment with the counts that produced it.

    Attributes:
        assignment: {unit: split}; a unit is a recording group or a segment.
        clips_per_segment: {unit: clips} (the name is kept from when the unit was the segment).
        site_of_segment: {unit: site}.
        notes: what the plan could not do as asked.
        mix: the declared site mix {site: share}, shares summing to 1 (empty: not stratified).
        segment_of_unit: {unit: map segment} (identity when the unit is the segment).
    """

    assignment: dict[str, str]
    clips_per_segment: dict[str, int]
    site_of_segment: dict[str, str]
    notes: list[str] = field(default_factory=list)
    mix: dict[str, float] = field(default_factory=dict)
    segment_of_unit: dict[str, str] = field(default_factory=dict)

    def units(self, split: str) -> list[str]:
        """The units assigned to ``split``, sorted."""
        return sorted(u for u, sp in self.assignment.items() if sp == split)

    def segments(self, split: str) -> list[str]:
        """The map segments with a unit in ``split``, sorted (a segment split into recording
        groups can appear under several splits)."""
        return sorted({self.segment_of_unit.get(u, u) for u in self.units(split)})

    def counts(self) -> dict[str, int]:
        c: Counter = Counter()
        for seg, sp in self.assignment.items():
            c[sp] += self.clips_per_segment[seg]
        return {s: int(c.get(s, 0)) for s in SPLITS}

    def site_counts(self, split: str) -> dict[str, int]:
        """{site: clips} of one split."""
        c: Counter = Counter()
        for u in self.units(split):
            c[self.site_of_segment[u]] += self.clips_per_segment[u]
        return dict(sorted(c.items()))

    def site_mix(self, split: str) -> dict[str, float]:
        """{site: share of the split's clips} (empty for an empty split)."""
        c = self.site_counts(split)
        n = sum(c.values())
        return {s: v / n for s, v in c.items()} if n else {}

    def mix_deviation(self) -> dict[str, float]:
        """Per split, the largest |share − declared share| over the declared sites (0..1)."""
        if not self.mix:
            return {}
        out = {}
        for sp in SPLITS:
            m = self.site_mix(sp)
            if m:
                out[sp] = max(abs(m.get(s, 0.0) - w) for s, w in self.mix.items())
        return out


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
    """Content deduplication of the rows (frames) of one ingest, then an id uniqueness pass.

    Args:
        content: per row its :func:`~mosaic_ray.data.clip.content_key`.
        clip_ids: per row its unique id (the frame id; with a frame per clip, the clip id).
        order: per row its :func:`dedup_order_key`; of each group the smallest is kept.

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


def recording_groups(files: list[tuple[str, str]], links: list[tuple[str, str]]) -> dict[str, str]:
    """Group the files of each segment that share a recorded vehicle (union-find).

    Args:
        files: ``(source_file, segment)`` of every file with clips.
        links: ``(file, file)`` pairs that share a recorded vehicle (see :func:`shared_track_links`
            and the duplicates of :func:`dedup_clips`); pairs across segments are ignored.

    Returns:
        {source_file: unit}: ``<segment>`` when the whole segment is one group, else
        ``<segment>/<first file of the group>`` (files sorted by name).
    """
    seg = dict(files)
    parent = {f: f for f in seg}

    def find(f: str) -> str:
        while parent[f] != f:
            parent[f] = parent[parent[f]]
            f = parent[f]
        return f

    for a, b in links:
        if a in seg and b in seg and seg[a] == seg[b]:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = defaultdict(list)
    for f in seg:
        groups[find(f)].append(f)
    n_groups = Counter(seg[r] for r in groups)
    out = {}
    for r, fs in groups.items():
        name = seg[r] if n_groups[seg[r]] == 1 else f"{seg[r]}/{min(fs)}"
        out.update({f: name for f in fs})
    return out


def shared_track_links(table, steps: int = 3, resolution_m: float = 0.1,
                       min_move_m: float = 0.2) -> list[tuple[str, str]]:
    """Pairs of files of one segment in which one recorded ego trajectory piece appears.

    A piece is ``steps`` consecutive ego positions rounded to ``resolution_m``; the same vehicle
    recorded in two files at overlapping times gives identical pieces (NGSIM is sampled on one
    0.1 s grid), whatever the clip windows. Pieces that move less than ``min_move_m`` are
    skipped: two different vehicles stopped at the same stop line coincide to 0.1 m often
    (on the 130 NGSIM files, stationary pieces linked 12 Lankershim files into one 683-clip unit;
    with the 0.2 m rule 3 links remain, the same 3 at 0.5 m).

    Args:
        table: clip table with ``source_file``, ``segment``, ``ego_states`` (binary little-endian
            float64, (T, 4): x, y, heading, speed) and ``ego_states__shape``.

    Returns:
        Sorted distinct ``(file_a, file_b)`` pairs with file_a < file_b.
    """
    files = table.column("source_file").to_pylist()
    segs = table.column("segment").to_pylist()
    bufs = table.column("ego_states").to_pylist()
    shapes = table.column("ego_states__shape").to_pylist()
    first: dict[tuple, str] = {}
    pairs: set[tuple[str, str]] = set()
    for f, sg, b, sh in zip(files, segs, bufs, shapes):
        raw = np.frombuffer(b, dtype="<f8").reshape(tuple(sh))[:, :2]
        xy = np.round(raw / resolution_m).astype(np.int64)
        moves = np.hypot(*(raw[steps - 1:] - raw[:len(raw) - steps + 1]).T) >= min_move_m
        for k in np.flatnonzero(moves):
            key = (sg, xy[k:k + steps].tobytes())
            other = first.setdefault(key, f)
            if other != f:
                pairs.add((min(f, other), max(f, other)))
    return sorted(pairs)


def plan_split(clips_per_unit: dict[str, int], site_of_unit: dict[str, str], *, train_fraction: float,
               calibration_fraction: float, test_fraction: float, seed: int,
               site_mix: dict[str, float] | None = None, fixed: dict[str, list[str]] | None = None,
               segment_of_unit: dict[str, str] | None = None, fill: str = "best_fit") -> SplitPlan:
    """Assign every unit to train, pool, calibration or test (see module docstring).

    Args:
        clips_per_unit: {unit: clips}; units with 0 clips are left out.
        site_of_unit: {unit: site}.
        train_fraction, calibration_fraction, test_fraction: shares of all clips (0..1).
        seed: the order in which units are considered.
        site_mix: declared {site: weight} (normalised; sites absent from it get no target);
            None = the mix of all clips.
        fixed: {split: [units]} assigned before anything else.
        segment_of_unit: {unit: segment} (for :meth:`SplitPlan.segments`).
        fill: how a split's site target is filled (see the module docstring): ``"best_fit"``
            (each time the free unit closest to the remaining gap: few, large units) or
            ``"random_order"`` (first the free units in the seeded order that fit under the
            target, then a best-fit top-up: more, smaller units, so the split spans more
            recordings).

    Raises:
        ValueError: an unknown split or unit in ``fixed``, a unit fixed twice, bad fractions or
            mix, an unknown ``fill``, or a split left empty (name units explicitly in the config).
    """
    if fill not in FILLS:
        raise ValueError(f"unknown split fill {fill!r}: one of {FILLS}")
    units = sorted(u for u, n in clips_per_unit.items() if n > 0)
    total = sum(clips_per_unit[u] for u in units)
    if total == 0:
        raise ValueError("no clips to split")
    fr = {TRAIN: train_fraction, CALIBRATION: calibration_fraction, TEST: test_fraction}
    if any(not 0 < v < 1 for v in fr.values()) or sum(fr.values()) >= 1:
        raise ValueError(f"split fractions must be in (0, 1) and sum below 1, got {fr}")
    assign = {u: POOL for u in units}
    seen: set[str] = set()
    for split, given in (fixed or {}).items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits: {SPLITS}")
        unknown = sorted(set(given) - set(units))
        if unknown:
            raise ValueError(f"{split}: unknown or clip-less units {unknown}")
        twice = sorted(set(given) & seen)
        if twice:
            raise ValueError(f"units named for two splits: {twice}")
        seen |= set(given)
        for u in given:
            assign[u] = split
    by_site: dict[str, list[str]] = defaultdict(list)
    for u in units:
        by_site[site_of_unit[u]].append(u)
    if site_mix is None:
        mix = {site: sum(clips_per_unit[u] for u in us) / total for site, us in by_site.items()}
    else:
        if any(w < 0 for w in site_mix.values()) or sum(site_mix.values()) <= 0:
            raise ValueError(f"site_mix weights must be >= 0 with a positive sum, got {site_mix}")
        z = sum(site_mix.values())
        mix = {s_: w / z for s_, w in site_mix.items() if w > 0}
    notes: list[str] = []
    missing = sorted(set(mix) - set(by_site))
    if missing:
        notes.append(f"site_mix names sites without clips: {missing}")
    rng = np.random.default_rng(seed)
    fixed_splits = {sp for sp, g in (fixed or {}).items() if g}
    for site in sorted(by_site):
        order = [by_site[site][i] for i in rng.permutation(len(by_site[site]))]
        for split in STRATIFIED:
            if split in fixed_splits:
                continue
            target = fr[split] * total * mix.get(site, 0.0)
            have = sum(clips_per_unit[u] for u in order if assign[u] == split)
            if fill == "random_order":  # first every unit in the seeded order that fits under the target
                n_free = sum(assign[u] == POOL for u in order)
                for u in order:
                    if n_free < 2:  # the site keeps a pool unit
                        break
                    if assign[u] == POOL and have + clips_per_unit[u] <= target:
                        assign[u] = split
                        have += clips_per_unit[u]
                        n_free -= 1
            while have < target:  # best fit (random_order: the top-up)
                free = [u for u in order if assign[u] == POOL]
                if len(free) < 2:  # the site keeps one pool unit
                    break
                best = min(free, key=lambda u: abs(have + clips_per_unit[u] - target))
                if abs(have + clips_per_unit[best] - target) >= abs(have - target):
                    break
                assign[best] = split
                have += clips_per_unit[best]
    for split in STRATIFIED:
        if not any(sp == split for sp in assign.values()):
            free = [u for u in units if assign[u] == POOL
                    and sum(assign[v] == POOL for v in by_site[site_of_unit[u]]) >= 2]
            if free:  # the spare unit closest to the split's clip target (ties: the larger)
                target = fr[split] * total
                u = min(free, key=lambda u: (abs(clips_per_unit[u] - target), -clips_per_unit[u], u))
                assign[u] = split
                notes.append(f"{split}: no unit fitted its site targets; took the spare unit closest to its "
                             f"{target:.0f}-clip target, {u} ({clips_per_unit[u]} clips)")
    for site, us in sorted(by_site.items()):
        if len(us) == 1:
            notes.append(f"site {site} has one unit ({us[0]}): it stays in the pool and no other split covers it")
    plan = SplitPlan(assign, {u: clips_per_unit[u] for u in units}, {u: site_of_unit[u] for u in units}, notes,
                     mix, {u: (segment_of_unit or {}).get(u, u) for u in units})
    for sp, dev in plan.mix_deviation().items():
        if dev > MIX_TOLERANCE:
            plan.notes.append(f"{sp}: site mix {({k: round(v, 3) for k, v in plan.site_mix(sp).items()})} is "
                              f"{100 * dev:.1f} points from the declared {({k: round(v, 3) for k, v in mix.items()})} "
                              "(units too coarse)")
    empty = [k for k, v in plan.counts().items() if v == 0]
    if empty:
        raise ValueError(f"split leaves {empty} empty; name units explicitly in the config")
    return plan
