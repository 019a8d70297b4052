"""Bad input gets a clear error before work starts or a quarantine record with its reason."""

import re

import numpy as np
import pyarrow as pa
import pytest

from conftest import ngsim_file
from mosaic_ray.config import ConfigError, SelectionConfig, validate_config
from mosaic_ray.data.commonroad import cut_file
from mosaic_ray.domains.metadata import DomainError, assign_domains
from mosaic_ray.selection.strategies import MosaicStrategy, PoolView, RandomStrategy, make_strategy
from mosaic_ray.selection.scaling_law import ScalingLaw
from mosaic_ray.stages.pilot import plan_trials


def test_nan_and_inf_coordinates_become_quarantine_records(tmp_path, ngsim_clips):
    src = ngsim_file("US101/USA_US101-22_1_T-1.xml").read_text()
    clean = ngsim_clips("US101/USA_US101-22_1_T-1.xml")
    # corrupt two recorded positions inside vehicles' trajectories: one NaN, one +inf
    spots = [m.span(1) for m in re.finditer(r"<state>\s*<position>\s*<point>\s*<x>([^<]+)</x>", src)]
    (a0, a1), (b0, b1) = spots[30], spots[600]
    bad = src[:a0] + "nan" + src[a1:b0] + "inf" + src[b1:]
    assert bad != src
    p = tmp_path / "USA_US101-22_1_T-1.xml"
    p.write_text(bad)
    clips, quarantine = cut_file(str(p))
    reasons = {q.reason for q in quarantine}
    assert reasons <= {"invalid_clip", "clip_error", "unreadable_xml"} and quarantine
    assert all("non-finite" in q.detail or "nan" in q.detail.lower() or "inf" in q.detail.lower()
               or q.reason == "unreadable_xml" for q in quarantine)
    for c in clips:  # whatever survived is finite
        assert np.isfinite(c.ego_states[c.ego_valid]).all()
    assert len(clips) + len(quarantine) >= 1 and len(clips) < len(clean)


def test_unknown_domain_column_and_strategy_are_config_errors():
    with pytest.raises(ConfigError, match="unknown domain column"):
        validate_config({"name": "x", "selection": {"budgets": [5]}, "domains": {"column": "weather"}})
    with pytest.raises(ConfigError, match="unknown methods"):
        validate_config({"name": "x", "selection": {"budgets": [5], "methods": ["oracle"]}})
    with pytest.raises(ValueError, match="unknown strategy|known"):
        make_strategy("oracle")


def test_budget_larger_than_the_pool():
    with pytest.raises(ConfigError, match="exceeds the pool"):
        SelectionConfig(budgets=[10, 20]).resolve_budgets(15)
    pool = PoolView(np.array(["a", "b", "c"], object), np.array(["x", "x", "y"], object), np.zeros(3))
    with pytest.raises(ValueError, match="exceeds the pool"):
        RandomStrategy().select(pool, [4])


def test_empty_domains_get_no_pilots_and_no_clips():
    trials = plan_trials({"full": ["a", "b", "c"], "empty": []}, sizes=[2, 5], seeds=[0], control=False)
    assert {t["domain"] for t in trials} == {"full"}
    assert sorted(t["n"] for t in trials) == [2, 3]  # 5 capped at the domain's 3 clips
    pool = PoolView(np.array(["a", "b", "c"], object), np.array(["x", "x", "x"], object), np.zeros(3))
    laws = {"x": ScalingLaw(1.0, 10.0), "ghost": ScalingLaw(5.0, 10.0)}  # a law for a domain with no clips
    sel = MosaicStrategy(laws).select(pool, [3])[3]
    assert sorted(sel.clip_ids) == ["a", "b", "c"]


def test_clips_without_a_domain_value_are_an_error():
    t = pa.table({"clip_id": ["a", "b"], "site": ["US101", None]})
    with pytest.raises(DomainError, match="no 'site' value"):
        assign_domains(t, "site")
    with pytest.raises(DomainError, match="not in the score table"):
        assign_domains(t, "segment")


def test_synthetic_copies_are_valid_and_score_like_their_source(ngsim_clips):
    """Scale-pool copies (rigid motion + mirror) keep the clip valid and its EPDMS terms."""
    from mosaic_ray.data.synthetic import transform_clip
    from mosaic_ray.scoring.epdms import score_human

    clips = ngsim_clips("Lankershim/USA_Lanker-2_13_T-1.xml")
    for c in clips[:4]:
        t0, e0 = score_human(c)
        for k in (1, 2, 7):
            s = transform_clip(c, k)
            s.validate()
            assert s.clip_id != c.clip_id and s.clip_id.endswith(f"-s{k}")
            assert not np.allclose(s.ego_states[:, :2], c.ego_states[:, :2])
            np.testing.assert_allclose(s.ego_states[:, 3], c.ego_states[:, 3])  # same speeds
            t1, e1 = score_human(s)
            assert abs(e1 - e0) < 1e-6, (k, e0, e1)
    with pytest.raises(ValueError):
        transform_clip(clips[0], 0)


def test_expand_pool_writes_exactly_n_distinct_copies_and_resumes(ray_local, tmp_path, ngsim_clips):
    """The scale-pool generator writes N clips with distinct new ids (last shard shorter) on
    Ray tasks, and a rerun keeps the finished shards."""
    from mosaic_ray.data.clip import clips_from_table, clips_to_table
    from mosaic_ray.data.synthetic import expand_pool
    from mosaic_ray.storage import Storage, write_shards

    clips = ngsim_clips("Lankershim/USA_Lanker-2_13_T-1.xml")
    src = Storage(str(tmp_path / "src"))
    write_shards(src, "ingest/clips/pool", clips_to_table(clips[:7]), 3)
    out = expand_pool(str(tmp_path / "src"), str(tmp_path / "dst"), 23, shard_size=5)
    assert out["clips"] == 23 and out["shards"] == 5 and out["source_clips"] == 7
    dst = Storage(str(tmp_path / "dst"))
    shards = dst.list("ingest/clips/pool", ".parquet")
    tables = [dst.read_table(s) for s in shards]
    assert [t.num_rows for t in tables] == [5, 5, 5, 5, 3]
    ids = [c.clip_id for t in tables for c in clips_from_table(t)]
    assert len(set(ids)) == 23 and not set(ids) & {c.clip_id for c in clips[:7]}
    first = dst.read_bytes(shards[0])
    assert expand_pool(str(tmp_path / "src"), str(tmp_path / "dst"), 23, shard_size=5)["clips"] == 23
    assert dst.read_bytes(shards[0]) == first
    with pytest.raises(ValueError, match="no ingest/clips/pool"):
        expand_pool(str(tmp_path / "nothing"), str(tmp_path / "dst2"), 5)
