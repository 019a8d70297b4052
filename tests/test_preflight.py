"""Checks before work starts (issue 15, part 4; findings 4 and 5) and one-line CLI errors.

Every case goes through ``cli.main`` as a user would and checks the exit code, that stderr ends
in exactly one ``mosaic-ray: ...`` line naming the key, that no traceback is printed at the
default log level, and that no later step's output was written.
"""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest
import yaml

from mosaic_ray import cli
from mosaic_ray.config import ConfigError, load_config
from mosaic_ray.errors import UsageError
from mosaic_ray.storage import StorageError, storage_error


def _yaml(path, raw: dict):
    p = path / "config.yaml"
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def _run_cli(capsys, *argv) -> tuple[int, list[str], str]:
    """``cli.main(argv)``: (exit code, the ``mosaic-ray:`` lines of stderr, all of stderr)."""
    capsys.readouterr()
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.startswith("mosaic-ray:")], err


def _one_error_line(lines: list[str], err: str, *needles: str) -> str:
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _bare_config(tmp_path, **over) -> dict:
    return {"name": "pf", "data_dir": str(tmp_path), "output_dir": str(tmp_path / "runs"),
            "selection": {"budgets": [5]}, **over}


# ---------------------------------------------------------------------------- finding 4
def test_budget_larger_than_the_pool_fails_before_any_step(make_run, capsys, tmp_path):
    cfg, st, raw = make_run("budget", selection={"budgets": [10, 100_000]})
    t0 = time.time()
    code, lines, err = _run_cli(capsys, "run", _yaml(tmp_path, raw))
    wall = time.time() - t0
    assert code == 2, err[-3000:]
    line = _one_error_line(lines, err, "selection.budgets", "100000", "exceeds the pool")
    assert "lower the budgets" in line
    assert wall < 30, wall  # before Ray work: seconds, not the minutes of base + score + pilot
    assert not st.exists("planner") and not st.exists("score")  # nothing after ingest ran


def test_budget_larger_than_a_fresh_pool_fails_right_after_ingest(ray_local, small_data_dir, capsys, tmp_path):
    raw = {"name": "fresh", "data_dir": str(small_data_dir), "output_dir": str(tmp_path / "runs"),
           "selection": {"budgets": [100_000]}, "ingest": {"shard_size": 64}}
    code, lines, err = _run_cli(capsys, "run", _yaml(tmp_path, raw))
    assert code == 2, err[-3000:]
    _one_error_line(lines, err, "selection.budgets", "exceeds the pool")
    run = tmp_path / "runs" / "fresh"
    assert (run / "ingest" / "_SUCCESS.json").exists()  # ingest ran and is complete ...
    assert not (run / "planner").exists() and not (run / "score").exists()  # ... base never started


# ---------------------------------------------------------------------------- finding 5
def _drop_column(st, rel: str, column: str) -> None:
    path = st.path(rel)
    pq.write_table(pq.read_table(path).drop_columns([column]), path)


def test_shard_without_agent_states_fails_before_scoring(make_run, capsys, tmp_path):
    cfg, st, raw = make_run("nocol")
    victim = st.list("ingest/clips/pool", ".parquet")[1]
    _drop_column(st, victim, "agent_states")
    code, lines, err = _run_cli(capsys, "run", _yaml(tmp_path, raw))
    assert code == 2, err[-3000:]
    _one_error_line(lines, err, "agent_states", victim.rsplit("/", 1)[-1], "ingest CONFIG --force")
    assert not st.exists("planner") and not st.exists("score")


def test_score_stage_checks_every_column_it_decodes(make_run):
    """The score stage's own pre-check (also reached without the pipeline's preflight)."""
    from mosaic_ray.stages.score import run_score
    from mosaic_ray.stages.shards import ShardInputError

    cfg, st, _ = make_run("nocol_score")
    victim = st.list("ingest/clips/pool", ".parquet")[0]
    _drop_column(st, victim, "agent_states")
    with pytest.raises(ShardInputError, match=r"missing columns \['agent_states'\]") as e:
        run_score(cfg, st, "planner/base.pt")  # fails before the checkpoint is ever loaded
    assert isinstance(e.value, UsageError) and "\n" not in str(e.value) and victim in str(e.value)
    assert not st.exists("score/scores")  # not one decode_error row


# ---------------------------------------------------------------------------- --set paths
@pytest.mark.parametrize("override, needles", [
    ("train.epochs.x=5", ["train.epochs.x", "train.epochs is a value", "--set train.epochs=VALUE"]),
    ("nosuch.key=1", ["nosuch", "top level", "selection", "train"]),
    ("train.nosuch=1", ["train.nosuch", "num_workers", "epochs"]),
    ("domains.variants.k=3", ["domains.variants is a list"]),
    ("train.epochs=[1,", ["train.epochs", "not valid YAML"]),
    ("train.epochs=abc", ["train.epochs", "valid integer", "'abc'"]),
])
def test_bad_set_paths_exit_2_with_one_line(capsys, tmp_path, override, needles):
    code, lines, err = _run_cli(capsys, "validate", _yaml(tmp_path, _bare_config(tmp_path)), "--set", override)
    assert code == 2, err[-3000:]
    _one_error_line(lines, err, *needles)


def test_unknown_yaml_keys_name_the_valid_keys(tmp_path):
    p = _yaml(tmp_path, _bare_config(tmp_path, planer={}, train={"epoch": 3}))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert "planer: unknown key (valid keys at the top level:" in msg and "planner" in msg
    assert "train.epoch: unknown key (valid keys at train:" in msg and "epochs" in msg


# ---------------------------------------------------------------------------- methods, variants, k, checkpoint
@pytest.mark.parametrize("selection, needles", [
    ({"budgets": [5], "methods": ["mosaic", "oracle"]}, ["selection.methods", "oracle", "known: mosaic"]),
    ({"budgets": [5], "methods": ["mosaic@nosuch"]}, ["selection.methods", "nosuch", "unknown domain variant"]),
    ({"budgets": [5], "methods": ["random@site"]}, ["selection.methods", "only domain-based methods"]),
])
def test_unknown_methods_and_variants_exit_2(capsys, tmp_path, selection, needles):
    code, lines, err = _run_cli(capsys, "run", _yaml(tmp_path, _bare_config(tmp_path, selection=selection)))
    assert code == 2, err[-3000:]
    _one_error_line(lines, err, *needles)
    assert not (tmp_path / "runs").exists()


def test_kmeans_k_larger_than_the_pool_exits_2(make_run, ingested_run, capsys, tmp_path):
    pool = ingested_run.summary["splits"]["pool"]
    variants = [{"name": "site", "kind": "metadata", "column": "site"},
                {"name": "captions", "kind": "captions", "k": pool + 1}]
    cfg, st, raw = make_run("bigk", domains={"variants": variants},
                            selection={"budgets": [5], "methods": ["mosaic", "mosaic@captions"]})
    code, lines, err = _run_cli(capsys, "run", _yaml(tmp_path, raw))
    assert code == 2, err[-3000:]
    _one_error_line(lines, err, "domains.variants[1].k", f"{pool + 1} clusters", f"at most {pool}")
    assert not st.exists("planner")


def test_missing_external_checkpoint_exits_2(make_run, capsys, tmp_path):
    cfg, st, raw = make_run("ckpt")
    code, lines, err = _run_cli(capsys, "score", _yaml(tmp_path, raw),
                                "--set", f"score.checkpoint={tmp_path / 'nowhere' / 'base.pt'}")
    assert code == 2, err[-3000:]
    _one_error_line(lines, err, "score.checkpoint", "does not exist")
    assert not st.exists("score") and not st.exists("planner/external.pt")


# ---------------------------------------------------------------------------- storage failures
def test_missing_bucket_exits_1_with_one_line(s3_server, capsys, tmp_path):
    raw = _bare_config(tmp_path, output_dir="s3://no-such-bucket/runs", storage={"endpoint_url": s3_server})
    p = _yaml(tmp_path, raw)
    code, lines, err = _run_cli(capsys, "run", p)
    assert code == 1, err[-3000:]
    line = _one_error_line(lines, err, "s3://no-such-bucket/runs/pf", "bucket does not exist")
    assert "testing-key" not in err and "testing-secret" not in err  # never the credentials
    code, _, err = _run_cli(capsys, "run", p, "--log-level", "debug")  # the traceback behind debug
    assert code == 1 and "Traceback" in err and line.split(" (")[0] in err


def test_storage_errors_are_one_line_with_a_hint():
    raw = OSError("When getting information for key 'r/x' in bucket 'b': AWS Error ACCESS_DENIED during\n"
                  "HeadObject operation: Access Denied")
    e = storage_error("read", "s3://b/r/x", raw)
    assert isinstance(e, StorageError) and "\n" not in str(e)
    assert str(e).startswith("cannot read s3://b/r/x: access denied: check the credentials")
    e = storage_error("write", "s3://b/r/x", OSError("AWS Error INVALID_ACCESS_KEY_ID during PutObject"))
    assert "credentials were refused" in str(e)


def test_errors_raised_inside_ray_workers_are_unwrapped(capsys):
    """Ray's task errors keep the original as ``cause``; the CLI reports that one."""
    class FakeRayTaskError(StorageError):
        def __init__(self, cause):
            super().__init__("ray.exceptions.RayTaskError(StorageError): ray::task()\n  File ...\nlong traceback")
            self.cause = cause

    cli.configure_logging("info")  # the default level, on this test's stderr
    code = cli.report_error(FakeRayTaskError(StorageError("cannot write s3://b/x: access denied")))
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == "mosaic-ray: cannot write s3://b/x: access denied"
    code = cli.report_error(RuntimeError("boom\nsecond line"))
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("mosaic-ray: RuntimeError: boom second line") and "\n" not in err
