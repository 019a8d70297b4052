"""Domains from scene captions: a deterministic captioner, TF-IDF and k-means (MOSAIC §3.2.1).

MOSAIC's second clustering describes each clip in words and groups clips whose descriptions
share n-grams (paper Table 3 lists each cluster's top n-grams). The paper captions camera
frames with a VLM; here :func:`caption_clip` writes the description from the clip's own data
(:mod:`mosaic_ray.data.clip`), so it is deterministic and needs no model:

* **road** — road type and the scenario's CommonRoad XML tags (``clip.tags``);
* **speed profile** over the 5.5 s window (history + future, steps 5..60): stopped / slow /
  cruising / fast from the mean ego speed;
* **acceleration profile**: accelerating / braking / steady from the change of speed between
  the window's first and last second;
* **manoeuvre**: left / right turn from the heading change, lane change from the lateral
  displacement relative to the lane direction, comes to a stop / pulls away, else straight;
* **traffic density**: valid agents within 30 m at t0 (sparse / moderate / dense) and the lead
  vehicle in the ego's path;
* **signal state**: the traffic light governing the next signalised route lane at t0.

:class:`CaptionAssigner` vectorises the captions with
``TfidfVectorizer(ngram_range=(1, 2), max_features=1024, stop_words="english")`` and clusters
them with seeded k-means (default k = 6, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mosaic_ray.data.clip import (N_PRE, T0_INDEX, T_ALL, TL_GREEN, TL_INACTIVE, TL_NONE, TL_RED,
                                  TL_RED_YELLOW, TL_YELLOW, Clip)

__all__ = ["CaptionThresholds", "clip_features", "caption_clip", "caption_clips",
           "CaptionAssigner", "TAG_PHRASES"]

WINDOW = slice(N_PRE, T_ALL)  #: the 5.5 s window (steps 5..60: history + future)
_WINDOW_S = (T_ALL - 1 - N_PRE) * 0.1  # 5.5 s between the window's first and last state

#: readable phrases for CommonRoad scenario tags (others: underscores become spaces)
TAG_PHRASES: dict[str, str] = {
    "highway": "highway",
    "interstate": "interstate highway",
    "urban": "urban street",
    "rural": "rural road",
    "intersection": "intersection",
    "multi_lane": "multi lane road",
    "single_lane": "single lane road",
    "two_lane": "two lane road",
    "parallel_lanes": "parallel lanes",
    "slip_road": "slip road",
    "oncoming_traffic": "oncoming traffic",
    "no_oncoming_traffic": "divided carriageway",  # "no" is an English stop word
    "speed_limit": "speed limit",
    "traffic_jam": "traffic jam",
    "roundabout": "roundabout",
    "race_track": "race track",
    "merging_lanes": "merging lanes",
    "traffic_sign": "traffic signs",
}
#: scenario-task tags, phrased apart from the observed manoeuvre ("turning left" vs "left turn")
TASK_PHRASES: dict[str, str] = {
    "lane_following": "lane following",
    "lane_change": "lane changing",
    "turn_left": "turning left",
    "turn_right": "turning right",
    "evasive": "evasive driving",
    "emergency_braking": "emergency braking",
}
_SKIP_TAGS = {"comfort", "critical"}  # goal-type tags: no scene content

_TL_WORDS = {TL_GREEN: "green", TL_YELLOW: "yellow", TL_RED: "red",
             TL_RED_YELLOW: "red and yellow", TL_INACTIVE: "inactive"}


@dataclass(frozen=True)
class CaptionThresholds:
    """Thresholds of the captioner (SI units).

    speeds (m/s, on the window's mean ego speed): stopped < ``stopped``, slow < ``slow``,
    cruising < ``cruising``, else fast. Acceleration (m/s², mean over the window):
    braking < −``accel``, accelerating > ``accel``; "hard" beyond ``hard_accel``.
    Turns: |heading change| > ``turn`` rad; curve > ``curve`` rad. Lane change: |lateral
    displacement relative to the lanes| > ``lane_change`` m. Density: valid agents within
    ``radius`` m at t0 — sparse ≤ ``sparse``, dense ≥ ``dense``, else moderate. Lead vehicle:
    in the ego's path (|lateral| < ``lead_lateral`` m, 0 < ahead ≤ ``lead_range`` m); "close"
    below ``lead_close`` m.
    """

    stopped: float = 0.5
    slow: float = 5.0
    cruising: float = 15.0
    accel: float = 0.5
    hard_accel: float = 2.0
    turn: float = 0.6
    curve: float = 0.2
    lane_change: float = 2.0
    radius: float = 30.0
    sparse: int = 5
    dense: int = 16
    lead_lateral: float = 1.8
    lead_range: float = 40.0
    lead_close: float = 10.0
    lane_match: float = 6.0  # m: farthest lane centre-line still counted as "the ego's lane"


# ---------------------------------------------------------------------- geometry
def _segments(clip: Clip) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lane centre-line segments: start (S, 2), unit direction (S, 2), length (S,), lane (S,)."""
    starts, dirs, lens, lane = [], [], [], []
    off = clip.lane_offsets
    for i in range(clip.num_lanes):
        c = clip.lane_center[int(off[i]):int(off[i + 1])]
        if c.shape[0] < 2:
            continue
        d = np.diff(c, axis=0)
        ln = np.linalg.norm(d, axis=1)
        ok = ln > 1e-6
        starts.append(c[:-1][ok])
        dirs.append(d[ok] / ln[ok, None])
        lens.append(ln[ok])
        lane.append(np.full(int(ok.sum()), i, dtype=np.int64))
    if not starts:
        z = np.zeros((0, 2))
        return z, z, np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(starts), np.concatenate(dirs), np.concatenate(lens), np.concatenate(lane)


def _nearest_lane(pos: np.ndarray, heading: np.ndarray, seg: tuple, max_dist: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per position: (lane index or −1, lane direction (T, 2)) of the nearest centre-line segment
    whose direction is within 60° of the heading and lies within ``max_dist`` m."""
    p0, u, ln, lane = seg
    T = pos.shape[0]
    out_lane = np.full(T, -1, dtype=np.int64)
    out_dir = np.stack([np.cos(heading), np.sin(heading)], axis=1)
    if p0.shape[0] == 0:
        return out_lane, out_dir
    rel = pos[:, None, :] - p0[None, :, :]                          # (T, S, 2)
    t = np.clip(np.einsum("tsk,sk->ts", rel, u), 0.0, ln[None, :])  # (T, S)
    foot = p0[None] + t[..., None] * u[None]
    dist = np.linalg.norm(pos[:, None, :] - foot, axis=2)
    cos = out_dir @ u.T                                              # (T, S)
    dist = np.where(cos > 0.5, dist, np.inf)
    j = np.argmin(dist, axis=1)
    ok = dist[np.arange(T), j] <= max_dist
    out_lane[ok] = lane[j[ok]]
    out_dir[ok] = u[j[ok]]
    return out_lane, out_dir


# ---------------------------------------------------------------------- features
def clip_features(clip: Clip, th: CaptionThresholds = CaptionThresholds()) -> dict[str, Any]:
    """Numbers and categories the caption is written from.

    Returns a dict of Python scalars/strings:
    ``mean_speed``, ``v_start``, ``v_end`` (m/s; first/last second of the 5.5 s window),
    ``accel`` (m/s², (v_end − v_start)/4.5 s), ``heading_change`` (rad, unwrapped, + = left),
    ``lateral`` (m, displacement across the lane direction, + = left), ``n_near`` (valid
    agents within ``th.radius`` at t0), ``lead_gap`` (m to the lead vehicle's centre, or None),
    ``signal`` (TL_* state of the next signalised route lane at t0), ``signal_end`` (its state
    at t0 + 4 s), ``in_intersection`` / ``enters_intersection`` (bool), and the categories
    ``speed`` (stopped/slow/cruising/fast), ``accel_class`` (accelerating/braking/steady/
    stationary), ``manoeuvre`` (left_turn/right_turn/curve_left/curve_right/lane_change_left/
    lane_change_right/stop/pull_away/straight/wait), ``density`` (sparse/moderate/dense).
    """
    ego = clip.ego_states[WINDOW]
    pos, hd, v = ego[:, :2], ego[:, 2], np.abs(ego[:, 3])
    mean_v = float(v.mean())
    v_start, v_end = float(v[:10].mean()), float(v[-10:].mean())
    accel = (v_end - v_start) / (_WINDOW_S - 1.0)
    moving = v > th.stopped
    # heading change over the window; a standing vehicle's heading carries no information
    dpsi = float(np.unwrap(hd)[-1] - np.unwrap(hd)[0]) if v.max() > 1.0 else 0.0

    seg = _segments(clip)
    lane_idx, lane_dir = _nearest_lane(pos, hd, seg, th.lane_match)
    step = np.diff(pos, axis=0)
    lateral = float(np.sum(lane_dir[:-1, 0] * step[:, 1] - lane_dir[:-1, 1] * step[:, 0]))
    k0 = T0_INDEX - N_PRE
    in_int = bool(lane_idx[k0] >= 0 and clip.lane_in_intersection[lane_idx[k0]])
    fut = lane_idx[k0:]
    enters = bool(not in_int and np.any(clip.lane_in_intersection[fut[fut >= 0]]))

    # traffic around the ego at t0
    e0 = clip.ego_states[T0_INDEX]
    n_near, lead_gap = 0, None
    if clip.num_agents:
        valid = clip.agent_valid[:, T0_INDEX]
        a = clip.agent_states[valid, T0_INDEX, :2]
        rel = a - e0[:2]
        n_near = int(np.sum(np.linalg.norm(rel, axis=1) <= th.radius))
        c, s = np.cos(e0[2]), np.sin(e0[2])
        lon = rel[:, 0] * c + rel[:, 1] * s
        lat = -rel[:, 0] * s + rel[:, 1] * c
        ahead = (lon > 0) & (lon <= th.lead_range) & (np.abs(lat) < th.lead_lateral)
        if ahead.any():
            lead_gap = float(lon[ahead].min())

    signal, signal_end = _signal(clip, e0)

    if mean_v < th.stopped:
        speed = "stopped"
    elif mean_v < th.slow:
        speed = "slow"
    elif mean_v < th.cruising:
        speed = "cruising"
    else:
        speed = "fast"
    if speed == "stopped":
        accel_class = "stationary"
    elif accel > th.accel:
        accel_class = "accelerating"
    elif accel < -th.accel:
        accel_class = "braking"
    else:
        accel_class = "steady"

    if abs(dpsi) > th.turn:
        man = "left_turn" if dpsi > 0 else "right_turn"
    elif abs(lateral) > th.lane_change:
        man = "lane_change_left" if lateral > 0 else "lane_change_right"
    elif speed == "stopped":
        man = "wait"
    elif v_start >= 2.0 and v_end < th.stopped:
        man = "stop"
    elif v_start < th.stopped and v_end >= 2.0:
        man = "pull_away"
    elif abs(dpsi) > th.curve:
        man = "curve_left" if dpsi > 0 else "curve_right"
    else:
        man = "straight"

    density = "sparse" if n_near <= th.sparse else ("dense" if n_near >= th.dense else "moderate")
    return {"mean_speed": mean_v, "v_start": v_start, "v_end": v_end, "accel": float(accel),
            "heading_change": dpsi, "lateral": lateral, "n_near": n_near, "lead_gap": lead_gap,
            "signal": int(signal), "signal_end": int(signal_end), "in_intersection": in_int,
            "enters_intersection": enters, "moving_fraction": float(moving.mean()),
            "speed": speed, "accel_class": accel_class, "manoeuvre": man, "density": density}


def _signal(clip: Clip, e0: np.ndarray) -> tuple[int, int]:
    """(state at t0, state at t0 + 4 s) of the light governing the next signalised route lane.

    Candidates: the lanes the logged future drives through (``route_lane_ids``) with a light
    at t0; if none, the on-route lanes (``lane_on_route``) with one. Among them the lane whose
    entry point is nearest ahead of the ego (or nearest at all if none is ahead).
    """
    if clip.num_lanes == 0:
        return TL_NONE, TL_NONE
    s0 = clip.lane_tl_state[:, T0_INDEX]
    driven = np.isin(clip.lane_ids, clip.route_lane_ids)
    cand = np.flatnonzero(driven & (s0 != TL_NONE))
    if cand.size == 0:
        cand = np.flatnonzero(clip.lane_on_route & (s0 != TL_NONE))
    if cand.size == 0:
        return TL_NONE, TL_NONE
    entry = clip.lane_center[clip.lane_offsets[cand].astype(np.int64)]
    rel = entry - e0[:2]
    lon = rel[:, 0] * np.cos(e0[2]) + rel[:, 1] * np.sin(e0[2])
    dist = np.linalg.norm(rel, axis=1)
    key = np.where(lon > -5.0, dist, dist + 1e6)
    i = int(cand[np.lexsort((cand, key))[0]])
    return int(clip.lane_tl_state[i, T0_INDEX]), int(clip.lane_tl_state[i, -1])


# ---------------------------------------------------------------------- caption
def _road_sentence(tags: Sequence[str]) -> str:
    tags = [str(t) for t in tags]
    if "highway" in tags or "interstate" in tags:
        kind = "Highway"
    elif "urban" in tags:
        kind = "Urban"
    elif "rural" in tags:
        kind = "Rural"
    else:
        kind = "Road"
    words = []
    for t in sorted(set(tags)):
        if t in _SKIP_TAGS or t in TASK_PHRASES or t in ("highway", "urban", "rural"):
            continue
        words.append(TAG_PHRASES.get(t, t.replace("_", " ")))
    out = f"{kind} scene" + (f" with {', '.join(words)}." if words else ".")
    tasks = [TASK_PHRASES[t] for t in sorted(set(tags)) if t in TASK_PHRASES]
    if tasks:
        out += f" Scenario task {' and '.join(tasks)}."
    return out


_MANOEUVRE_TEXT = {
    "left_turn": "It makes a left turn.",
    "right_turn": "It makes a right turn.",
    "lane_change_left": "It performs a lane change to the left.",
    "lane_change_right": "It performs a lane change to the right.",
    "curve_left": "It follows a curve to the left.",
    "curve_right": "It follows a curve to the right.",
    "stop": "It comes to a stop.",
    "pull_away": "It pulls away after a stop.",
    "straight": "It goes straight along its lane.",
    "wait": "It waits in place.",
}


def caption_clip(clip: Clip, th: CaptionThresholds = CaptionThresholds()) -> str:
    """A deterministic English description of one clip, from its data (no model).

    Example: ``"Urban scene with intersection, multi lane road, oncoming traffic, speed limit.
    Scenario task lane following. The ego vehicle is slow and braking. It comes to a stop.
    It is entering the intersection. Dense traffic nearby, close lead vehicle ahead. The
    traffic light ahead is red."``

    Sentences: road type and tags (``clip.tags``), speed and acceleration profile over the
    5.5 s window, manoeuvre, intersection position, traffic density within 30 m at t0 and the
    lead vehicle, signal state (see :func:`clip_features`; thresholds in
    :class:`CaptionThresholds`). No digits, so TF-IDF tokens are words only.
    """
    f = clip_features(clip, th)
    parts = [_road_sentence(clip.tags)]
    if f["accel_class"] == "stationary":
        parts.append("The ego vehicle is stopped.")
    else:
        hard = abs(f["accel"]) > th.hard_accel
        word = {"accelerating": "and strongly accelerating" if hard else "and accelerating",
                "braking": "and hard braking" if hard else "and braking",
                "steady": "at steady speed"}[f["accel_class"]]
        parts.append(f"The ego vehicle is {f['speed']} {word}.")
    parts.append(_MANOEUVRE_TEXT[f["manoeuvre"]])
    if f["in_intersection"]:
        parts.append("It is inside the intersection.")
    elif f["enters_intersection"]:
        parts.append("It is entering the intersection.")
    lead = ("open road ahead" if f["lead_gap"] is None else
            "close lead vehicle ahead" if f["lead_gap"] < th.lead_close else "lead vehicle ahead")
    parts.append(f"{f['density'].capitalize()} traffic nearby, {lead}.")
    if f["signal"] == TL_NONE:
        parts.append("Unsignalised road.")
    else:
        s = f"The traffic light ahead is {_TL_WORDS.get(f['signal'], 'unknown')}"
        if f["signal_end"] != f["signal"] and f["signal_end"] != TL_NONE:
            s += f" and turns {_TL_WORDS.get(f['signal_end'], 'unknown')}"
        parts.append(s + ".")
    return " ".join(parts)


def caption_clips(clips: Sequence[Clip], th: CaptionThresholds = CaptionThresholds()) -> list[str]:
    """:func:`caption_clip` over a sequence, in order."""
    return [caption_clip(c, th) for c in clips]


# ---------------------------------------------------------------------- assigner
def _cluster_names(k: int, prefix: str) -> list[str]:
    w = len(str(max(k - 1, 0)))
    return [f"{prefix}{j:0{w}d}" for j in range(k)]


def _relabel_by_size(raw: np.ndarray, k: int, prefix: str, raw_fit: np.ndarray | None = None
                     ) -> tuple[np.ndarray, list[int]]:
    """Rename k-means ids to ``prefix``+j with j by decreasing size of the assigned set (ties:
    earlier first occurrence). Returns (labels (n,) object, old id for each new j)."""
    sizes = np.bincount(raw, minlength=k)
    first = np.full(k, raw.size, dtype=np.int64)
    for i in range(raw.size - 1, -1, -1):
        first[raw[i]] = i
    fit_sizes = np.bincount(raw_fit, minlength=k) if raw_fit is not None else np.zeros(k, int)
    old_order = sorted(range(k), key=lambda c: (-sizes[c], first[c], -fit_sizes[c], c))
    names = _cluster_names(k, prefix)
    new_of = {old: names[j] for j, old in enumerate(old_order)}
    return np.asarray([new_of[int(c)] for c in raw], dtype=object), old_order


class CaptionAssigner:
    """Caption domains (MOSAIC §3.2.1, Table 3): captions → TF-IDF → seeded k-means.

    Parameters
    ----------
    k : int
        Number of clusters (paper: 6).
    seed : int
        k-means ``random_state``.
    max_features : int
        TF-IDF vocabulary size (top terms by corpus frequency; paper: 1,024).
    n_init : int
        k-means restarts.
    thresholds : CaptionThresholds
        Captioner thresholds.
    prefix : str
        Domain label prefix; labels are ``cap0..cap{k-1}`` numbered by decreasing cluster
        size in the assigned pool (zero-padded for k > 10).

    After :meth:`fit_assign`: ``captions_`` (list[str], assigned clips in input order),
    ``labels_`` (n,) object, ``vectorizer_``, ``kmeans_``, ``names_`` (k labels).
    """

    kind = "captions"

    def __init__(self, k: int = 6, seed: int = 0, max_features: int = 1024, n_init: int = 10,
                 thresholds: CaptionThresholds = CaptionThresholds(), prefix: str = "cap"):
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)
        self.seed = int(seed)
        self.max_features = int(max_features)
        self.n_init = int(n_init)
        self.thresholds = thresholds
        self.prefix = prefix
        self.captions_: list[str] = []
        self.labels_: np.ndarray | None = None
        self.vectorizer_ = None
        self.kmeans_ = None
        self.names_: list[str] = []
        self._old_order: list[int] = []

    def fit_assign(self, clips: Sequence[Clip] | None = None, *, scores: Any = None,
                   clip_ids: Sequence[str] | None = None, fit_clips: Sequence[Clip] | None = None,
                   captions: Sequence[str] | None = None, **_: Any) -> np.ndarray:
        """Caption, fit TF-IDF + k-means on ``clips`` ∪ ``fit_clips``, label ``clips``.

        Parameters
        ----------
        clips : sequence of Clip
            The pool clips to label.
        scores : pyarrow.Table, optional
            If given (and ``clip_ids`` is not), the output is aligned to its ``clip_id`` column.
        clip_ids : sequence of str, optional
            Output order: one label per id (each id must be among ``clips``).
        fit_clips : sequence of Clip, optional
            Extra clips (e.g. the training set) used only for fitting TF-IDF and k-means.
        captions : sequence of str, optional
            Precomputed captions of ``clips`` (skips the captioner; for tests and re-runs).

        The fit set is de-duplicated by clip id and sorted by id before fitting, so the result
        does not depend on input order. Returns (n,) object array of labels.

        Raises
        ------
        ValueError
            No clips, fewer distinct fit documents than k, or a requested id is missing.
        """
        from sklearn.cluster import KMeans
        from sklearn.feature_extraction.text import TfidfVectorizer

        if clips is None or len(clips) == 0:
            raise ValueError("caption domains need the pool clips")
        ids = [str(c.clip_id) for c in clips]
        caps = list(captions) if captions is not None else caption_clips(clips, self.thresholds)
        if len(caps) != len(ids):
            raise ValueError(f"{len(caps)} captions for {len(ids)} clips")
        docs: dict[str, str] = dict(zip(ids, caps))
        for c in fit_clips or ():
            cid = str(c.clip_id)
            if cid not in docs:
                docs[cid] = caption_clip(c, self.thresholds)
        fit_ids = sorted(docs)
        fit_docs = [docs[i] for i in fit_ids]
        if len(set(fit_docs)) < self.k:
            raise ValueError(f"only {len(set(fit_docs))} distinct captions for k={self.k} clusters")
        vec = TfidfVectorizer(ngram_range=(1, 2), max_features=self.max_features,
                              stop_words="english")
        Xfit = vec.fit_transform(fit_docs)
        km = KMeans(n_clusters=self.k, random_state=self.seed, n_init=self.n_init)
        raw_fit = km.fit_predict(Xfit)
        if clip_ids is None and scores is not None:
            clip_ids = [str(x) for x in scores.column("clip_id").to_pylist()]
        out_ids = ids if clip_ids is None else [str(x) for x in clip_ids]
        pos = {cid: i for i, cid in enumerate(fit_ids)}
        own = set(ids)
        missing = [cid for cid in out_ids if cid not in own]
        if missing:
            raise ValueError(f"{len(missing)} requested clip ids are not among the clips, "
                             f"e.g. {missing[0]}")
        raw = raw_fit[[pos[c] for c in out_ids]]
        by_id = np.argsort(np.asarray(out_ids, dtype=str), kind="stable")
        lab_sorted, old_order = _relabel_by_size(raw[by_id], self.k, self.prefix, raw_fit)
        labels = np.empty(len(out_ids), dtype=object)
        labels[by_id] = lab_sorted
        self.vectorizer_, self.kmeans_ = vec, km
        self._old_order = old_order
        self.names_ = _cluster_names(self.k, self.prefix)
        self.captions_ = [docs[c] for c in out_ids]
        self.labels_ = labels
        return labels

    def _check_fitted(self) -> None:
        if self.kmeans_ is None:
            raise RuntimeError("CaptionAssigner is not fitted; call fit_assign first")

    def top_ngrams(self, n: int = 8, distinctive: bool = True) -> dict[str, list[str]]:
        """Label → the cluster's n top terms (unigrams/bigrams; paper Table 3), ties by term.

        ``distinctive=True`` (default) ranks terms by centroid weight minus the weight-weighted
        mean over all clusters' centroids (size-weighted: the fit corpus's mean TF-IDF vector),
        i.e. the terms over-represented in the cluster — words every caption shares ("ego",
        "traffic") drop out. ``distinctive=False`` ranks by the raw k-means centroid weight.
        Only terms with a positive score are listed. Raises RuntimeError before fitting.
        """
        self._check_fitted()
        terms = self.vectorizer_.get_feature_names_out()
        C = self.kmeans_.cluster_centers_
        sizes = np.bincount(self.kmeans_.labels_, minlength=self.k).astype(np.float64)
        mean = (sizes[:, None] * C).sum(0) / max(sizes.sum(), 1.0)
        out: dict[str, list[str]] = {}
        for j, old in enumerate(self._old_order):
            w = C[old] - mean if distinctive else C[old]
            order = np.lexsort((terms, -w))
            out[self.names_[j]] = [str(terms[i]) for i in order[:n] if w[i] > 1e-12]
        return out

    def describe(self, n: int = 8) -> dict[str, Any]:
        """JSON-able summary for the report: kind, k, seed, vocabulary size and per cluster
        ``{label, size, top_ngrams, example}`` (example = most common caption in the cluster)."""
        self._check_fitted()
        tops = self.top_ngrams(n)
        clusters = []
        for name in self.names_:
            members = [c for c, lab in zip(self.captions_, self.labels_) if lab == name]
            ex = max(sorted(set(members)), key=members.count) if members else ""
            clusters.append({"label": name, "size": len(members), "top_ngrams": tops[name],
                             "example": ex})
        return {"kind": self.kind, "k": self.k, "seed": self.seed,
                "vocabulary": int(len(self.vectorizer_.vocabulary_)), "clusters": clusters}
