"""A small end-to-end MOSAIC run on real NGSIM clips through Ray Data, Ray Tune and Ray Train."""

import json
import time
from pathlib import Path

import pytest

from mosaic_ray.config import validate_config
from mosaic_ray.pipeline import Run, run_all


@pytest.fixture(scope="module")
def e2e(ray_local, small_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = validate_config({
        "name": "e2e", "data_dir": str(small_data_dir), "output_dir": str(out),
        "ray": {"num_cpus": 2},
        "planner": {"vocab_size": 16, "embed_dim": 32, "hidden_dim": 32, "max_agents": 8,
                    "max_lanes": 16, "base_epochs": 4},
        "score": {"batch_size": 16},
        "pilot": {"sizes": [5, 10], "seeds": [0], "epochs": 2, "cpus_per_trial": 0.5},
        "selection": {"budgets": [5, 15], "methods": ["mosaic", "random"]},
        "train": {"num_workers": 2, "cpus_per_worker": 0.5, "epochs": 3, "seeds": [0], "concurrency": 2},
    })
    t0 = time.time()
    report = run_all(cfg)
    return cfg, Run(cfg), report, time.time() - t0


def test_run_writes_summary_report_and_plots(e2e):
    cfg, run, report, _ = e2e
    summary = json.loads(Path(run.storage.path("summary.json")).read_text())
    text = Path(report).read_text()
    for method in ("mosaic", "random"):
        for b in ("5", "15"):
            r = summary["results"][method][b]
            assert 0.0 <= r["epdms_mean"] <= 1.0
            assert set(r["terms"]) == {"NC", "DAC", "DDC", "TLC", "EP", "TTC", "LK", "HC", "EC"}
        assert method in text
    for png in ("scaling_curves.png", "selection_order.png", "composition.png", "epdms_vs_budget.png"):
        assert Path(run.storage.path(f"report/{png}")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["data"]["candidates"] == summary["data"]["clips"] + summary["data"]["quarantined"]
    assert set(summary["domains"]) == set(summary["data"]["pool_by_domain"])


def test_score_stage_gives_every_pool_clip_one_row(e2e):
    _, run, _, _ = e2e
    pool = run.storage.read_table("ingest/clips/pool", columns=["clip_id"]).column("clip_id").to_pylist()
    scores = run.storage.read_table("score/scores")
    ids = scores.column("clip_id").to_pylist()
    assert sorted(ids) == sorted(pool) and len(set(ids)) == len(ids)
    assert set(scores.column("status").to_pylist()) == {"ok"}
    imp = scores.column("importance").to_pylist()
    assert all(0.0 <= v <= 1.0 for v in imp)
    # the shard records' timings reach the stage's done record (time spent inside shard calls)
    done = run.storage.done_payload("score")
    assert done["rows"] == len(pool) and done["shards_resumed"] == 0
    assert 0.0 < done["shard_cpu_s"] and 0.0 < done["shard_wall_s"] <= done["wall_time_s"] * done["actors"] + 1.0


def test_pilots_cover_domains_and_selections_are_nested(e2e):
    _, run, _, _ = e2e
    pilots = run.storage.read_table("pilot/pilots.parquet").to_pylist()
    sizes = {d: n for d, n in json.loads(Path(run.storage.path("summary.json")).read_text())["data"]["pool_by_domain"].items()}
    for d, n in sizes.items():
        got = sorted({p["n"] for p in pilots if p["domain"] == d})
        assert got == sorted({min(5, n), min(10, n)})
    man = run.storage.read_table("select/manifest.parquet").to_pylist()
    for method in ("mosaic", "random"):
        small = [r["clip_id"] for r in man if r["method"] == method and r["budget"] == 5]
        big = [r["clip_id"] for r in man if r["method"] == method and r["budget"] == 15]
        assert len(small) == 5 and len(set(big)) == 15 and set(small) <= set(big)
    # within a domain MOSAIC takes clips in rank order (lowest base EPDMS first)
    mos = sorted((r for r in man if r["method"] == "mosaic" and r["budget"] == 15), key=lambda r: r["step"])
    for d in {r["domain"] for r in mos}:
        assert [r["rank"] for r in mos if r["domain"] == d] == list(range(sum(r["domain"] == d for r in mos)))


def test_rerun_resumes_from_finished_stages(e2e):
    cfg, run, _, first = e2e
    before = json.loads(Path(run.storage.path("summary.json")).read_text())["results"]
    t0 = time.time()
    run_all(cfg)
    assert time.time() - t0 < 0.5 * first  # nothing retrained
    after = json.loads(Path(run.storage.path("summary.json")).read_text())["results"]
    assert after == before


ALL_METHODS = ["mosaic", "random", "uncertainty", "coreset", "chameleon", "mosaic_no_cluster",
               "mosaic_no_rank", "mosaic@captions", "chameleon@emb"]


def test_every_strategy_and_domain_variant_selects_through_the_pipeline(e2e, tmp_path):
    """Baselines, ablations and domain variants (paper Table 8) on the e2e run's scored pool."""
    import shutil

    from mosaic_ray import pipeline as P

    cfg0, run0, _, _ = e2e
    raw = cfg0.model_dump(mode="json")
    raw.update(output_dir=str(tmp_path), name="methods")
    raw["domains"] = {"variants": [{"name": "site"}, {"name": "captions", "kind": "captions", "k": 3},
                                   {"name": "emb", "kind": "embedding", "k": 3}]}
    raw["pilot"] = {"sizes": [6], "seeds": [0], "epochs": 1, "cpus_per_trial": 0.5}
    raw["selection"] = {"budgets": [5, 15], "methods": ALL_METHODS}
    cfg = validate_config(raw)
    for part in ("ingest", "planner", "score"):
        shutil.copytree(run0.storage.path(part), tmp_path / "methods" / part)
    run = P.Run(cfg)
    P.stage_score_train(run)
    desc = P.stage_domains(run)
    assert len(desc["captions"]["clusters"]) == 3 and all(c["top_ngrams"] for c in desc["captions"]["clusters"])
    sets = P.stage_pilot(run)
    assert set(sets) == {"pilots", "pilots-site-unranked", "pilots-captions"}
    P.stage_select(run)
    man = run.storage.read_table("select/manifest.parquet").to_pylist()
    pool = set(run.storage.read_table("ingest/clips/pool", columns=["clip_id"]).column("clip_id").to_pylist())
    for m in ALL_METHODS:
        small = [r["clip_id"] for r in man if r["method"] == m and r["budget"] == 5]
        big = [r["clip_id"] for r in man if r["method"] == m and r["budget"] == 15]
        assert len(set(small)) == 5 and len(set(big)) == 15 and set(small) <= set(big) <= pool, m
    cap = {r["domain"] for r in man if r["method"] == "mosaic@captions"}
    assert cap <= {c["label"] for c in desc["captions"]["clusters"]}
    scores = run.storage.read_table("score/scores").to_pylist()
    worst = sorted(scores, key=lambda r: (r["importance"], r["clip_id"]))[:5]
    assert {r["clip_id"] for r in man if r["method"] == "mosaic_no_cluster" and r["budget"] == 5} == \
        {r["clip_id"] for r in worst}
    ent = sorted(scores, key=lambda r: -r["entropy"])[:5]
    assert {r["clip_id"] for r in man if r["method"] == "uncertainty" and r["budget"] == 5} == \
        {r["clip_id"] for r in ent}


def test_score_select_train_against_s3(e2e, s3_server, tmp_path):
    """Upload an ingested pool and base planner to S3 (moto), then score -> select -> train
    with every read and write through s3:// URIs (Ray Data, Ray Train checkpoints included)."""
    import pyarrow.fs as pafs

    from mosaic_ray import pipeline as P
    from mosaic_ray.stages.runtime import ray_session

    cfg0, run0, _, _ = e2e
    raw = cfg0.model_dump(mode="json")
    raw.update(name="s3run", output_dir="s3://mosaic-test/runs",
               storage={"endpoint_url": s3_server, "region": "us-east-1"})
    raw["selection"] = {"budgets": [5], "methods": ["uncertainty"]}
    raw["train"] = {**raw["train"], "epochs": 2, "concurrency": 1}
    cfg = validate_config(raw)
    run = P.Run(cfg)
    assert not run.storage.is_local
    for rel in run0.storage.list("ingest/clips", ".parquet", recursive=True) + \
            ["ingest/summary.json", "ingest/_SUCCESS.json", "planner/base.pt", "planner/vocabulary.npy",
             "planner/base_eval.json", "planner/base/_SUCCESS.json"]:
        run.storage.write_bytes(rel, run0.storage.read_bytes(rel))
    with ray_session(cfg):
        P.stage_score(run)
        P.stage_domains(run)
        P.stage_pilot(run)  # no MOSAIC method: no pilot sets
        P.stage_select(run)
        results = P.stage_train(run)
    assert set(results) == {"uncertainty-b5-s0"}
    pool = run0.storage.read_table("ingest/clips/pool", columns=["clip_id"]).column("clip_id").to_pylist()
    scored = run.storage.read_table("score/scores", columns=["clip_id"]).column("clip_id").to_pylist()
    assert sorted(scored) == sorted(pool)
    fs, root = run.storage.fs, run.storage.root
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))]
    assert any("/train_runs/" in f and f.endswith("planner.pt") for f in files)  # Train checkpoints on S3
    assert run.storage.exists("planner/uncertainty-b5-s0.pt")
    assert not any(str(tmp_path) in f for f in files)
