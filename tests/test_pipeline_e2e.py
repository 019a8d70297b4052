"""A small end-to-end MOSAIC run on real NGSIM clips through Ray Data, Ray Tune and Ray Train."""

import json
import time
from pathlib import Path

import pytest

from mosaic_ray.config import validate_config
from mosaic_ray.pipeline import run_all, run_steps
from mosaic_ray.stages.step import Context

from conftest import copy_run


#: the small experiment every test here runs (tiny planner, one epoch where only plumbing counts)
SMALL = {
    "ray": {"num_cpus": 2},
    "planner": {"vocab_size": 16, "embed_dim": 32, "hidden_dim": 32, "max_agents": 8,
                "max_lanes": 16, "base_epochs": 2},
    "score": {"batch_size": 16},
    "pilot": {"sizes": [5, 10], "seeds": [0], "epochs": 1, "cpus_per_trial": 1.0},
    # one budget: two grid cells (nested selections across budgets: the strategies test below)
    "selection": {"budgets": [15], "methods": ["mosaic", "random"]},
    # the base model trains in the driver (the same loop and weights as a one-worker Ray Train run,
    # tested below and in test_train_resume.py / test_distill.py): no worker-group start-up here
    "train": {"num_workers": 1, "cpus_per_worker": 0.5, "epochs": 1, "seeds": [0], "concurrency": 1,
              "base_backend": "in_process"},
}


@pytest.fixture(scope="module")
def e2e(ingested_run, tmp_path_factory):
    """The small experiment on a copy of the session's ingested run (every later step runs)."""
    cfg, _, _ = copy_run(ingested_run, tmp_path_factory.mktemp("runs"), "e2e", shard_size=128, **SMALL)
    t0 = time.time()
    report = run_all(cfg)
    return cfg, Context.for_config(cfg), report, time.time() - t0


def test_run_writes_summary_report_and_plots(e2e):
    cfg, run, report, _ = e2e
    summary = json.loads(Path(run.storage.path("summary.json")).read_text())
    text = Path(report).read_text()
    for method in ("mosaic", "random"):
        for b in ("15",):
            r = summary["results"][method][b]
            assert 0.0 <= r["epdms_mean"] <= 1.0
            assert set(r["terms"]) == {"NC", "DAC", "DDC", "TLC", "EP", "TTC", "LK", "HC", "EC"}
        assert method in text
    for png in ("scaling_curves.png", "selection_order.png", "composition.png", "epdms_vs_budget.png"):
        assert Path(run.storage.path(f"report/{png}")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["data"]["candidates"] == summary["data"]["clips"] + summary["data"]["quarantined"]
    assert set(summary["domains"]) == set(summary["data"]["pool_by_domain"])
    assert summary["version"] == 2
    # intervals from the stored per-clip scores (issue 12 part 5): Random's BRMR exactly 1
    assert summary["statistics"]["n_clips"] > 0
    assert summary["brmr"]["random"]["15"]["estimate"] == 1.0
    iv = summary["comparisons"]["mosaic"]["15"]
    assert iv["lo"] <= iv["estimate"] <= iv["hi"]
    # every number is keyed by what made it: each step's recorded fingerprint, each cell's
    assert set(summary["fingerprints"]) >= {"ingest", "base", "score", "domains", "pilot", "select", "train"}
    assert summary["stale_steps"] == [] and "stale_results" not in summary
    assert all(len(r["fingerprints"]) == r["n_seeds"] for per_b in summary["results"].values() for r in per_b.values())


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
    assert 0.0 < done["shard_cpu_s"] and 0.0 < done["shard_wall_s"] <= done["wall_time_s"] * done["max_actors"] + 1.0


def test_pilots_cover_domains_and_mosaic_takes_clips_in_rank_order(e2e):
    _, run, _, _ = e2e
    pilots = run.storage.read_table("pilot/pilots.parquet").to_pylist()
    sizes = {d: n for d, n in json.loads(Path(run.storage.path("summary.json")).read_text())["data"]["pool_by_domain"].items()}
    for d, n in sizes.items():
        got = sorted({p["n"] for p in pilots if p["domain"] == d})
        assert got == sorted({min(5, n), min(10, n)})
    man = run.storage.read_table("select/manifest.parquet").to_pylist()
    for method in ("mosaic", "random"):
        assert len({r["clip_id"] for r in man if r["method"] == method and r["budget"] == 15}) == 15
    # within a domain MOSAIC takes clips in rank order (lowest base EPDMS first)
    mos = sorted((r for r in man if r["method"] == "mosaic" and r["budget"] == 15), key=lambda r: r["step"])
    for d in {r["domain"] for r in mos}:
        assert [r["rank"] for r in mos if r["domain"] == d] == list(range(sum(r["domain"] == d for r in mos)))


def test_base_and_cells_train_in_process_and_a_rerun_hands_the_base_back(e2e, tmp_path):
    """The small config trains its base model in the driver and its grid cells inside their Tune
    trials (the same loop as a one-worker Ray Train run, bit for bit:
    tests/test_distill.py::test_ray_train_uses_distillation_targets_and_matches_the_in_process_loop);
    training the base again on a copy of the run hands the finished run back with its weights."""
    import shutil

    import torch

    from mosaic_ray.planner.model import load_checkpoint
    from mosaic_ray.stages.trainer import train_planner_in_process

    cfg, run0, _, _ = e2e
    assert cfg.train.in_trial and cfg.train.base_backend == "in_process"
    base = run0.storage.read_json("planner/base_eval.json")
    assert base["backend"] == "in_process" and base["resumed_from_epoch"] == 0
    for folder in ("ingest", "planner", "train_runs"):
        shutil.copytree(run0.storage.path(folder), tmp_path / cfg.name / folder)
    raw = cfg.model_dump(mode="json")
    raw["output_dir"] = str(tmp_path)
    st = Context.for_config(validate_config(raw)).storage
    st.delete("planner/base.pt")
    again = train_planner_in_process(validate_config(raw), st, name="base", epochs=cfg.planner.base_epochs,
                                     seed=cfg.planner.seed)
    assert again["run_name"] == base["run_name"] and again["resumed_from_epoch"] == cfg.planner.base_epochs
    a = load_checkpoint(run0.storage.path("planner/base.pt")).state_dict()
    b = load_checkpoint(st.path("planner/base.pt")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cells = [json.loads(Path(run0.storage.path(f"train/results/{m}-b15-s0.json")).read_text())
             for m in ("mosaic", "random")]
    assert {c["backend"] for c in cells} == {"in_trial"}


def test_rerun_resumes_from_finished_stages(e2e):
    cfg, run, _, first = e2e
    before = json.loads(Path(run.storage.path("summary.json")).read_text())["results"]
    t0 = time.time()
    run_all(cfg)
    assert time.time() - t0 < 0.5 * first  # nothing retrained
    after = json.loads(Path(run.storage.path("summary.json")).read_text())["results"]
    assert after == before


def test_a_changed_config_redoes_exactly_what_it_changes(e2e, tmp_path, caplog):
    """Finding 3 of issue 15: a config change used to re-run only the report. On a copy of the
    finished run, another budget and one method fewer redo the select step and train only the
    new cell; the stored cell of the dropped method is left out of the summary."""
    import logging
    import shutil

    cfg0, run0, _, _ = e2e
    shutil.copytree(run0.storage.path(), tmp_path / cfg0.name)
    raw = cfg0.model_dump(mode="json")
    raw["output_dir"] = str(tmp_path)
    raw["selection"] = {**raw["selection"], "budgets": [5, 15], "methods": ["mosaic"]}
    cfg = validate_config(raw)
    st = Context.for_config(cfg).storage
    records = ("ingest", "planner/base", "score", "domains", "pilot")
    before = {r: st.done_payload(r) for r in records}
    kept = st.read_bytes("train/results/mosaic-b15-s0.json")
    with caplog.at_level(logging.INFO, logger="mosaic_ray"):
        run_all(cfg)
    assert {r: st.done_payload(r) for r in records} == before  # not redone
    assert "[select] its inputs changed since it ran (selection)" in caplog.text
    assert "[train] its inputs changed since it ran (upstream select)" in caplog.text
    assert "[train] 1 of 2 grid cells to run" in caplog.text
    assert st.read_bytes("train/results/mosaic-b15-s0.json") == kept
    summary = json.loads(Path(st.path("summary.json")).read_text())
    assert set(summary["results"]) == {"mosaic"} and set(summary["results"]["mosaic"]) == {"5", "15"}
    assert summary["stale_results"] == ["train/results/random-b15-s0.json"] and summary["stale_steps"] == []


ALL_METHODS = ["mosaic", "random", "uncertainty", "coreset", "chameleon", "mosaic_no_cluster",
               "mosaic_no_rank", "mosaic@captions", "chameleon@emb"]


def test_every_strategy_and_domain_variant_selects_through_the_pipeline(e2e, tmp_path):
    """Baselines, ablations and domain variants (paper Table 8) on the e2e run's scored pool."""
    import shutil

    cfg0, run0, _, _ = e2e
    raw = cfg0.model_dump(mode="json")
    raw.update(output_dir=str(tmp_path), name="methods")
    raw["domains"] = {"variants": [{"name": "site"}, {"name": "captions", "kind": "captions", "k": 3},
                                   {"name": "emb", "kind": "embedding", "k": 3}]}
    raw["pilot"] = {"sizes": [6], "seeds": [0], "epochs": 1, "cpus_per_trial": 1.0}
    raw["selection"] = {"budgets": [5, 15], "methods": ALL_METHODS}
    cfg = validate_config(raw)
    for part in ("ingest", "planner", "score"):
        shutil.copytree(run0.storage.path(part), tmp_path / "methods" / part)
    for rel in ("ingest/_SUCCESS.json", "planner/base/_SUCCESS.json", "score/_SUCCESS.json"):
        assert (tmp_path / "methods" / rel).exists()
    out = run_steps(cfg, ["score_train", "domains", "pilot", "select"])
    run = Context.for_config(cfg)
    assert out["score_train"]["rows"] == run.storage.done_payload("ingest")["splits"]["train"]
    desc = out["domains"]["variants"]
    assert len(desc["captions"]["clusters"]) == 3 and all(c["top_ngrams"] for c in desc["captions"]["clusters"])
    assert set(out["pilot"]["sets"]) == {"pilots", "pilots-site-unranked", "pilots-captions"}
    # one Tune run for the three sets; the control pilot (planned once per set) trained once
    done = [run.storage.done_payload(f"pilot/{n}") for n in out["pilot"]["sets"]]
    assert len({d["tune_run"] for d in done}) == 1 and sum(d["trials"] for d in done) == 12
    from mosaic_ray.stages.pilot import _trial_key, pilot_orders, plan_trials
    distinct = {_trial_key(t) for order in pilot_orders(cfg, run.storage).values()
                for t in plan_trials(order, [6], [0])}
    assert {d["tune_trials"] for d in done} == {len(distinct)} and len(distinct) <= 10
    controls = {r["delta_u"] for n in out["pilot"]["sets"]
                for r in run.storage.read_table(f"pilot/{n}.parquet").to_pylist() if r["n"] == 0}
    assert len(controls) == 1
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

    cfg0, run0, _, _ = e2e
    raw = cfg0.model_dump(mode="json")
    raw.update(name="s3run", output_dir="s3://mosaic-test/runs",
               storage={"endpoint_url": s3_server, "region": "us-east-1"})
    raw["selection"] = {"budgets": [5], "methods": ["uncertainty"]}
    raw["train"] = {**raw["train"], "epochs": 1, "concurrency": 1}
    cfg = validate_config(raw)
    run = Context.for_config(cfg)
    assert not run.storage.is_local
    for rel in run0.storage.list("ingest/clips", ".parquet", recursive=True) + \
            ["ingest/summary.json", "ingest/_SUCCESS.json", "planner/base.pt", "planner/vocabulary.npy",
             "planner/base_eval.json", "planner/base/_SUCCESS.json"]:
        run.storage.write_bytes(rel, run0.storage.read_bytes(rel))
    out = run_steps(cfg, ["score", "domains", "pilot", "select", "train"])
    assert "pilot" not in out  # no MOSAIC method: no pilot sets, the step is not needed
    assert out["train"]["cells"] == ["uncertainty-b5-s0"]
    pool = run0.storage.read_table("ingest/clips/pool", columns=["clip_id"]).column("clip_id").to_pylist()
    scored = run.storage.read_table("score/scores", columns=["clip_id"]).column("clip_id").to_pylist()
    assert sorted(scored) == sorted(pool)
    fs, root = run.storage.fs, run.storage.root
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))]
    assert any("/train_runs/" in f and f.endswith("planner.pt") for f in files)  # Train checkpoints on S3
    assert run.storage.exists("planner/uncertainty-b5-s0.pt")
    assert not any(str(tmp_path) in f for f in files)


def _numbers(obj, path=""):
    """Every number in a summary, by its path (the run's wall times and config excluded)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if path == "" and k == "run":
                continue
            if k in ("train_time_s", "compute_cpu_s"):  # wall-clock figures
                continue
            out.update(_numbers(v, f"{path}/{k}"))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_numbers(v, f"{path}[{i}]"))
        return out
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {path: obj}
    return {}


def test_same_config_twice_gives_the_same_numbers(e2e, ingested_run, tmp_path):
    """Identical reruns: the small config run again from the shared ingest into another folder
    gives the same summary numbers (base EPDMS, pilot ΔU, laws, selections, final EPDMS).
    (A rerun of the ingest itself gives the same clips: tests/test_ingest.py.)"""
    cfg0, run0, _, _ = e2e
    cfg, _, _ = copy_run(ingested_run, tmp_path, "e2e", shard_size=128, **SMALL)
    assert cfg.model_dump(exclude={"output_dir"}) == cfg0.model_dump(exclude={"output_dir"})
    run_all(cfg)
    a = json.loads(Path(run0.storage.path("summary.json")).read_text())
    b = json.loads(Path(Context.for_config(cfg).storage.path("summary.json")).read_text())
    na, nb = _numbers(a), _numbers(b)
    assert len(na) > 50 and set(na) == set(nb)
    differ = {k: (na[k], nb[k]) for k in na if na[k] != nb[k] and not (na[k] != na[k] and nb[k] != nb[k])}
    assert not differ, f"{len(differ)} of {len(na)} numbers differ, e.g. {list(differ.items())[:5]}"
    assert a["selection"] == b["selection"] and a["selection_order"] == b["selection_order"]
