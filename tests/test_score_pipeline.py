"""Issue 14: the two-stage score step (planner actors -> EPDMS actors, streamed through Ray
Data) gives the rows the single-pool step gives, resumes per shard, sizes its pools from the
config and the cluster, and refuses a shard whose rows arrive split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from conftest import TINY_PLANNER, write_untrained_base
from mosaic_ray.config import ConfigError, validate_config


def _cfg(**score):
    return validate_config({"name": "x", "output_dir": "/tmp", "selection": {"budgets": [1]}, "score": score})


# ------------------------------------------------------------------ sizing (no Ray)
def test_pool_sizes_fit_the_cluster_and_the_config():
    from mosaic_ray.errors import UsageError
    from mosaic_ray.stages.runtime import score_pool_sizes

    assert score_pool_sizes(_cfg(), 50, cpus=2, gpus=0) == {"plan": (1, 1), "epdms": (1, 2)}
    assert score_pool_sizes(_cfg(), 500, cpus=64, gpus=0) == {"plan": (1, 8), "epdms": (1, 60)}
    assert score_pool_sizes(_cfg(), 3, cpus=64, gpus=0) == {"plan": (1, 3), "epdms": (1, 3)}  # one per shard
    gpu = _cfg(plan={"num_gpus_per_actor": 0.5, "num_cpus_per_actor": 2}, epdms={"min_actors": 4})
    assert score_pool_sizes(gpu, 500, cpus=32, gpus=4) == {"plan": (1, 8), "epdms": (4, 16)}
    fixed = _cfg(plan={"min_actors": 2, "max_actors": 2}, epdms={"min_actors": 1, "max_actors": 5})
    assert score_pool_sizes(fixed, 500, cpus=2, gpus=0) == {"plan": (2, 2), "epdms": (1, 5)}
    with pytest.raises(UsageError, match="num_gpus_per_actor=1.0 but the Ray cluster has 0 GPUs"):
        score_pool_sizes(_cfg(plan={"num_gpus_per_actor": 1}), 5, cpus=2, gpus=0)
    with pytest.raises(ConfigError, match="min_actors"):
        _cfg(epdms={"min_actors": 3, "max_actors": 2})
    with pytest.raises(ConfigError):
        _cfg(pipeline="three_stage")


# ------------------------------------------------------------------ the stages without Ray
def test_stages_score_a_shard_and_refuse_a_split_one(tmp_path):
    import torch

    from mosaic_ray.data.clip import clip_schema, clip_to_row
    from mosaic_ray.planner.model import PlannerSpec, VocabularyPlanner, build_vocabulary, save_checkpoint
    from mosaic_ray.scoring.epdms import prepare_scene, score_trajectories
    from mosaic_ray.stages.score import PLAN_COLUMNS, EPDMSStage, PlanStage
    from mosaic_ray.storage import Storage
    from scenes import random_scene

    rng = np.random.default_rng(3)
    clips = [random_scene(rng) for _ in range(6)]
    st = Storage(str(tmp_path))
    table = pa.Table.from_pylist([clip_to_row(c) for c in clips], schema=clip_schema())
    st.write_table("in/shard-0.parquet", table)
    spec = PlannerSpec(vocab_size=8, embed_dim=16, hidden_dim=16, max_agents=8, max_lanes=8)
    anchors = build_vocabulary(np.stack([np.column_stack([np.arange(1, 9) * v, np.zeros(8), np.zeros(8)])
                                         for v in np.linspace(0.0, 8.0, 12)]), 8)
    torch.manual_seed(0)
    save_checkpoint(VocabularyPlanner(spec, torch.from_numpy(anchors)), st.path("base.pt"))
    plan = PlanStage(st, "base.pt", batch_size=4, cpus=1, gpus=0)
    plan.setup()
    planned = plan.process_batch(pa.table({"shard": ["in/shard-0.parquet"]}))
    assert planned.num_rows == 6 and set(PLAN_COLUMNS) <= set(planned.column_names)
    epdms = EPDMSStage(st, "out", cpus=1, clip_batch_size=4)
    with pytest.raises(RuntimeError, match="5 of its 6 rows"):
        epdms.process_batch(planned.slice(0, 5))
    rec = epdms.process_batch(planned).to_pylist()
    assert rec[0]["shard"] == "in/shard-0.parquet" and rec[0]["rows"] == 6 and rec[0]["plan_cpu_s"] > 0
    out = st.read_table("out/shard-0.parquet")
    assert out.column("clip_id").to_pylist() == [c.clip_id for c in clips]
    assert out.column("status").to_pylist() == ["ok"] * 6
    # each row is what the clip-by-clip scorer gives the planned trajectories
    traj = planned.column("_traj").to_pylist()
    prev = planned.column("_prev_traj").to_pylist()
    for i, c in enumerate(clips):
        assert (prev[i] is not None) == bool(c.has_prev_frame)
        want = score_trajectories(prepare_scene(c), np.asarray(traj[i], float).reshape(1, 8, 3),
                                  prev_poses=None if prev[i] is None else np.asarray(prev[i], float).reshape(8, 3))
        assert out.column("importance")[i].as_py() == pytest.approx(float(want.epdms[0]), abs=1e-12)


# ------------------------------------------------------------------ on Ray, real clips
@pytest.fixture(scope="module")
def both(ingested_run, tmp_path_factory):
    """The session's ingested NGSIM run scored by both pipelines (tiny untrained planner)."""
    from conftest import copy_run
    from mosaic_ray.stages.ingest import load_clips
    from mosaic_ray.stages.score import run_score

    cfg, st, _ = copy_run(ingested_run, tmp_path_factory.mktemp("runs"), "two_stage", planner={**TINY_PLANNER})
    write_untrained_base(cfg, st, load_clips(st, "train"), load_clips(st, "pool"))
    single = cfg.model_copy(update={"score": cfg.score.model_copy(update={"pipeline": "single"})})
    p1 = run_score(single, st, "planner/base.pt", out="score_single")
    p2 = run_score(cfg, st, "planner/base.pt")
    return cfg, st, p1, p2


def _sorted(st, out):
    t = st.read_table(f"{out}/scores")
    return t.take(pa.compute.sort_indices(t, [("clip_id", "ascending")]))


def _assert_same(a: pa.Table, b: pa.Table) -> None:
    """Same schema and rows (NaN equal to NaN; embeddings within 1e-6)."""
    assert a.schema == b.schema
    for col in a.column_names:
        x, y = a.column(col).to_pylist(), b.column(col).to_pylist()
        if col == "embedding":
            np.testing.assert_allclose(np.array(x), np.array(y), rtol=0, atol=1e-6)
        elif a.schema.field(col).type == pa.float64():
            np.testing.assert_allclose(np.array(x, float), np.array(y, float), rtol=0, atol=1e-9, err_msg=col)
        else:
            assert x == y, col


def test_two_stage_rows_equal_the_single_pool_rows(both):
    cfg, st, p1, p2 = both
    assert p2["pipeline"] == "two_stage" and p1["pipeline"] == "single"
    a, b = _sorted(st, "score_single"), _sorted(st, "score")
    n_pool = st.read_table("ingest/clips/pool", columns=["clip_id"]).num_rows
    assert a.num_rows == b.num_rows == n_pool == p2["rows"]
    _assert_same(a, b)
    assert p2["actors"]["plan"][0] >= 1 and p2["actors"]["epdms"][1] >= 1 and p2["plan_cpu_s"] > 0


def test_two_stage_resumes_per_shard(both):
    from mosaic_ray.stages.score import run_score

    cfg, st, _, _ = both
    before = _sorted(st, "score")
    outs = st.list("score/scores", ".parquet")
    st.delete(outs[0])
    p = run_score(cfg, st, "planner/base.pt")
    assert p["shards_resumed"] == len(outs) - 1 and p["rows"] == before.num_rows
    _assert_same(_sorted(st, "score"), before)
