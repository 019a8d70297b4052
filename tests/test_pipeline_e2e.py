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
        "train": {"num_workers": 2, "cpus_per_worker": 0.5, "epochs": 3, "seeds": [0]},
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
