"""Tests for the domain assigners: metadata column, scene captions (TF-IDF + k-means), embeddings."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pyarrow as pa
import pytest

from mosaic_ray.data.clip import TL_GREEN, TL_RED
from mosaic_ray.domains.assigners import (MetadataAssigner, known_assigners, make_assigner,
                                          pool_view_with_domains)
from mosaic_ray.domains.captions import CaptionAssigner, caption_clip, clip_features
from mosaic_ray.domains.embedding import EmbeddingAssigner
from mosaic_ray.domains.metadata import DomainError
from scenes import Agent, braking, const_vel, lateral_path, signal_road, track, two_lane_road


def _turn(direction: int = 1, v: float = 5.0, r: float = 15.0) -> np.ndarray:
    """(61, 4) arc at speed v with radius r; direction +1 = left (counter-clockwise)."""
    w = direction * v / r

    def fn(t):
        h = w * t
        return r * np.sin(np.abs(h)), direction * r * (1 - np.cos(h)), h, v
    return track(fn)


def _clip(cid: str, base, tags=()):
    return dataclasses.replace(base, clip_id=cid, frame_id=cid, tags=list(tags))


# ---------------------------------------------------------------------- captioner
def test_caption_stopped_clip():
    c = two_lane_road(const_vel(0.0, 0.0, 0.0))
    cap = caption_clip(c)
    assert "stopped" in cap and "waits" in cap
    f = clip_features(c)
    assert f["speed"] == "stopped" and f["manoeuvre"] == "wait"


def test_caption_turns():
    left = caption_clip(two_lane_road(_turn(+1)))
    right = caption_clip(two_lane_road(_turn(-1)))
    assert "left turn" in left and "turn" in left
    assert "right turn" in right
    f = clip_features(two_lane_road(_turn(+1)))
    assert f["heading_change"] == pytest.approx(5.0 / 15.0 * 5.5, rel=1e-6)


def test_caption_lane_change_speed_and_accel():
    # smooth 3.5 m move to the left lane during the future
    lc = two_lane_road(lateral_path(0.0, 12.0, lambda t: 3.5 / (1 + np.exp(-3.0 * (t - 1.5)))))
    cap = caption_clip(lc)
    assert "lane change to the left" in cap and "cruising" in cap
    assert clip_features(lc)["lateral"] == pytest.approx(3.5, abs=0.3)
    fast = caption_clip(two_lane_road(const_vel(0.0, 0.0, 25.0)))
    assert "fast" in fast and "steady speed" in fast and "straight" in fast
    stop = caption_clip(two_lane_road(braking(0.0, 10.0, 4.0, t_start=0.5)))
    assert "braking" in stop and "comes to a stop" in stop


def test_caption_density_and_signal():
    agents = [Agent(const_vel(x, y, 10.0)) for x in (-25, -15, -6, 8, 15, 25)
              for y in (0.0, 3.5, 7.0)]  # 18 agents within 30 m
    dense = caption_clip(two_lane_road(agents=agents))
    assert dense.split(". ")[-2].startswith("Dense traffic") and "close lead vehicle" in dense
    sparse = caption_clip(two_lane_road(agents=[Agent(const_vel(200, 3.5, 10.0))]))
    assert "Sparse traffic" in sparse and "open road ahead" in sparse
    assert "Unsignalised" in sparse
    assert "traffic light ahead is red" in caption_clip(signal_road(TL_RED))
    change = np.full(61, TL_RED, np.int8)
    change[40:] = TL_GREEN
    cap = caption_clip(signal_road(change))
    assert "is red and turns green" in cap
    assert "entering the intersection" not in cap  # reaches x = 40 m, the junction is at 50 m
    assert "entering the intersection" in caption_clip(signal_road(TL_GREEN, const_vel(30.0, 0.0, 10.0)))


def test_caption_tags_and_no_digits():
    c = _clip("x", two_lane_road(), ["comfort", "highway", "multi_lane", "no_oncoming_traffic",
                                     "lane_change", "traffic_jam"])
    cap = caption_clip(c)
    assert cap.startswith("Highway scene with")
    assert "multi lane road" in cap and "divided carriageway" in cap and "traffic jam" in cap
    assert "Scenario task lane changing" in cap and "comfort" not in cap
    assert not re.search(r"\d", cap)
    assert caption_clip(c) == cap  # deterministic


def test_caption_real_clips(ngsim_clips):
    """Captions of real NGSIM clips (an urban intersection segment and the freeway)."""
    clips = []
    for f in ("Lankershim/USA_Lanker-2_13_T-1.xml", "US101/USA_US101-22_1_T-1.xml"):
        clips += ngsim_clips(f)[:25]
    assert len(clips) == 50
    seen_stopped = False
    for c in clips:
        cap = caption_clip(c)
        assert cap and not re.search(r"\d", cap)
        f = clip_features(c)
        if f["speed"] == "stopped":
            assert "stopped" in cap
            seen_stopped = True
        if abs(f["heading_change"]) > 0.6:
            assert "turn" in cap
        if "highway" in c.tags:
            assert cap.startswith("Highway")
        if "urban" in c.tags:
            assert cap.startswith("Urban")
    assert seen_stopped  # Lankershim has vehicles waiting at the lights


# ---------------------------------------------------------------------- caption assigner
def _caption_pool() -> list:
    kinds = [
        (two_lane_road(const_vel(0.0, 0.0, 0.0)), ["urban", "intersection"]),
        (two_lane_road(const_vel(0.0, 0.0, 25.0)), ["highway", "multi_lane"]),
        (two_lane_road(_turn(+1)), ["urban", "turn_left"]),
        (signal_road(TL_RED), ["urban", "intersection"]),
    ]
    out = []
    for i in range(24):
        base, tags = kinds[i % 4]
        out.append(_clip(f"c{i:02d}", base, tags))
    return out


def test_caption_assigner_deterministic_k_clusters_and_top_ngrams():
    clips = _caption_pool()
    a = CaptionAssigner(k=3, seed=1)
    lab = a.fit_assign(clips)
    assert lab.shape == (24,) and lab.dtype == object
    assert set(lab.tolist()) == {"cap0", "cap1", "cap2"}
    # identical captions always share a label
    caps = a.captions_
    for i in range(24):
        for j in range(24):
            if caps[i] == caps[j]:
                assert lab[i] == lab[j]
    # deterministic for a seed, whatever the input order
    b = CaptionAssigner(k=3, seed=1)
    rev = b.fit_assign(clips[::-1])
    assert rev[::-1].tolist() == lab.tolist()
    # aligned to requested ids
    ids = [c.clip_id for c in clips][::2]
    sub = CaptionAssigner(k=3, seed=1).fit_assign(clips, clip_ids=ids)
    assert _same_partition(sub, lab[::2])  # names follow the sizes within the assigned ids
    vocab = set(a.vectorizer_.get_feature_names_out().tolist())
    tops = a.top_ngrams(8)
    assert set(tops) == {"cap0", "cap1", "cap2"}
    for terms in tops.values():
        assert terms and all(isinstance(t, str) and t in vocab for t in terms)
        assert len(terms) <= 8
    raw = a.top_ngrams(5, distinctive=False)
    assert all(t in vocab for terms in raw.values() for t in terms)
    d = a.describe()
    assert d["kind"] == "captions" and sum(c["size"] for c in d["clusters"]) == 24
    sizes = [c["size"] for c in d["clusters"]]
    assert sizes == sorted(sizes, reverse=True)  # labels numbered by size
    assert a.vectorizer_.max_features == 1024 and a.vectorizer_.ngram_range == (1, 2)


def test_caption_assigner_fit_clips_and_errors():
    clips = _caption_pool()
    extra = [_clip(f"t{i}", two_lane_road(const_vel(0.0, 0.0, 8.0)), ["rural"]) for i in range(5)]
    lab = CaptionAssigner(k=4, seed=0).fit_assign(clips[:8], fit_clips=extra)
    assert lab.shape == (8,)
    with pytest.raises(ValueError, match="distinct captions"):
        CaptionAssigner(k=6).fit_assign(clips[:4])
    with pytest.raises(ValueError, match="not among"):
        CaptionAssigner(k=2).fit_assign(clips, clip_ids=["nope"])
    with pytest.raises(RuntimeError):
        CaptionAssigner().top_ngrams()


# ---------------------------------------------------------------------- embedding assigner
def _blobs(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0], [20, 0, 0], [0, 20, 0]], np.float32)
    truth = np.repeat([0, 1, 2], [30, 20, 10])
    X = centres[truth] + rng.normal(0, 0.5, (60, 3)).astype(np.float32)
    return X, truth


def _same_partition(a, b) -> bool:
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_embedding_assigner_recovers_blobs(backend):
    X, truth = _blobs()
    e = EmbeddingAssigner(k=3, seed=0, backend=backend)
    lab = e.fit_assign(X)
    assert lab.shape == (60,) and all(isinstance(x, str) for x in lab)
    assert _same_partition(lab, truth)
    assert e.sizes_ == {"emb0": 30, "emb1": 20, "emb2": 10}
    assert e.fit_assign(X).tolist() == lab.tolist()  # deterministic
    assert e.describe()["k"] == 3


def test_embedding_assigner_row_order_and_scores_table():
    X, _ = _blobs(1)
    ids = [f"e{i:02d}" for i in range(60)]
    lab = EmbeddingAssigner(k=4, seed=2).fit_assign(X, clip_ids=ids)
    p = np.random.default_rng(0).permutation(60)
    labp = EmbeddingAssigner(k=4, seed=2).fit_assign(X[p], clip_ids=[ids[i] for i in p])
    assert labp.tolist() == lab[p].tolist()
    table = pa.table({"clip_id": ids, "site": ["s"] * 60, "importance": np.zeros(60),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 3)})
    labt = make_assigner("embedding", k=4, seed=2).fit_assign(scores=table)
    assert labt.tolist() == lab.tolist()
    with pytest.raises(ValueError):
        EmbeddingAssigner(k=100).fit_assign(X)
    with pytest.raises(ValueError):
        EmbeddingAssigner(backend="nope")


# ---------------------------------------------------------------------- metadata + registry
def test_metadata_assigner_and_registry():
    table = pa.table({"clip_id": ["a", "b", "c"], "site": ["US101", "Lank", "US101"],
                      "segment": ["s1", "s2", "s3"], "importance": [0.2, 0.5, 0.1]})
    m = make_assigner("metadata", column="site")
    assert isinstance(m, MetadataAssigner)
    assert m.fit_assign(scores=table).tolist() == ["US101", "Lank", "US101"]
    assert m.describe()["clusters"] == [{"label": "Lank", "size": 1}, {"label": "US101", "size": 2}]
    clips = [_clip(cid, two_lane_road()) for cid in ("a", "b")]
    clips = [dataclasses.replace(c, segment=s) for c, s in zip(clips, ("X", "Y"))]
    assert MetadataAssigner("segment").fit_assign(clips=clips, clip_ids=["b", "a"]).tolist() == ["Y", "X"]
    with pytest.raises(DomainError):
        MetadataAssigner("nope").fit_assign(scores=table)
    assert known_assigners() == ["captions", "embedding", "metadata"]
    with pytest.raises(ValueError, match="unknown domain assigner"):
        make_assigner("vlm")
    pv = pool_view_with_domains(table, np.array(["x", "y", "x"], object))
    assert pv.domains.tolist() == ["x", "y", "x"] and pv.clip_ids.tolist() == ["a", "b", "c"]
    with pytest.raises(DomainError):
        pool_view_with_domains(table, np.array(["x"], object))


def test_caption_assigner_aligns_to_scores_table():
    clips = _caption_pool()
    ids = [c.clip_id for c in clips][::-1]
    table = pa.table({"clip_id": ids, "importance": np.zeros(24)})
    lab = make_assigner("captions", k=3, seed=1).fit_assign(scores=table, clips=clips)
    ref = CaptionAssigner(k=3, seed=1).fit_assign(clips)
    assert lab.tolist() == ref[::-1].tolist()
