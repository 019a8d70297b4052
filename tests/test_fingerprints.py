"""Completion that cannot lie and results keyed by what made them (issue 15 parts 1-2): the step
runner's fingerprints and output records, on toy steps (local and on moto's S3 server) and on the
pipeline's real steps."""

import logging

import pytest

from mosaic_ray.config import validate_config
from mosaic_ray.pipeline import STEPS
from mosaic_ray.stages.fingerprint import NOT_RESULTS, Fingerprint, fingerprints
from mosaic_ray.stages.step import Context, Step, run_step
from mosaic_ray.storage import Storage


def _cfg(tmp_path, **over):
    raw = {"name": "fp", "data_dir": str(tmp_path), "output_dir": str(tmp_path / "runs"),
           "selection": {"budgets": [5]}}
    for k, v in over.items():
        section, _, key = k.partition("__")
        if key:
            raw.setdefault(section, {})[key] = v
        else:
            raw[section] = v
    return validate_config(raw)


def _changed(a, b):
    fa, fb = fingerprints(a, STEPS), fingerprints(b, STEPS)
    return sorted(n for n in fa if fa[n].digest != fb[n].digest)


# ``rounds`` (AutoScale) reads the planner recipe and builds on base: its fingerprint moves with
# them even where a config has no autoscale section (it is a function of the config alone)
DOWNSTREAM_OF_BASE = ["base", "domains", "pilot", "rounds", "score", "score_train", "select", "train"]
AUTOSCALE_AFTER_INGEST = ["cluster", "embed", "synthesize"]


@pytest.mark.parametrize("over, expected", [
    # finding 3 of the issue: these three re-ran only the report before
    ({"planner__lr": 0.05}, DOWNSTREAM_OF_BASE),
    ({"pilot__epochs": 9}, ["pilot", "select", "train"]),
    ({"train__epochs": 30}, ["train"]),
    ({"train__num_workers": 3}, DOWNSTREAM_OF_BASE),  # the DDP world size changes the numbers
    ({"selection__budgets": [5, 9]}, ["select", "train"]),
    ({"ingest__seed": 3}, sorted(["ingest"] + DOWNSTREAM_OF_BASE + AUTOSCALE_AFTER_INGEST)),
    # only where / how big the work runs: nothing redone
    ({"score__num_actors": 2}, []), ({"train__concurrency": 3}, []), ({"ray": {"num_cpus": 1}}, []),
    ({"ingest__shard_size": 7}, []), ({"name": "other"}, []),
])
def test_a_config_change_changes_exactly_the_steps_that_read_it(tmp_path, over, expected):
    assert _changed(_cfg(tmp_path), _cfg(tmp_path, **over)) == expected


def test_the_input_files_are_part_of_the_ingest_fingerprint(tmp_path):
    (tmp_path / "a.xml").write_text("<x/>")
    before = fingerprints(_cfg(tmp_path), STEPS)
    (tmp_path / "a.xml").write_text("<xx/>")  # resized
    after = fingerprints(_cfg(tmp_path), STEPS)
    assert after["ingest"].changed(before["ingest"].parts) == ["input files"]
    assert after["score"].changed(before["score"].parts) == ["upstream base"]


def test_every_not_results_field_exists(tmp_path):
    cfg = _cfg(tmp_path, autoscale={})
    for path in NOT_RESULTS:
        node = cfg.model_dump(mode="json")
        *sections, key = path.split(".")
        for sec in sections:  # nested sections (autoscale.graph_rae.train_num_cpus)
            node = node[sec]
        assert key in node, path


# ------------------------------------------------------------------ the runner on toy steps
class Toy:
    """Two toy steps: ``a`` writes ``a/out-{i}.txt`` (i < 3, resumable per file: existing files
    are kept unless forced), ``b`` (upstream a) writes ``b/out.txt``; calls are counted."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.written, self.fail_after = [], [], fail_after

    def run_a(self, ctx):
        self.calls.append(("a", ctx.force))
        for i in range(3):
            rel = f"a/out-{i}.txt"
            if ctx.force or not ctx.storage.exists(rel):
                if self.fail_after is not None and len(self.written) >= self.fail_after:
                    raise KeyboardInterrupt  # interrupted half-way
                ctx.storage.write_bytes(rel, f"{ctx.cfg.planner.lr} {i}".encode())
                self.written.append(rel)
        return {"n": 3}

    def run_b(self, ctx):
        self.calls.append(("b", ctx.force))
        ctx.storage.write_bytes("b/out.txt", b"b")
        return {}

    def steps(self):
        return (Step("a", self.run_a, outputs=("a",), record="a", config_keys=("planner.lr",)),
                Step("b", self.run_b, outputs=("b",), record="b", upstream=("a",)))


def _run(cfg, st, toy, force=()):
    steps = toy.steps()
    ctx = Context(cfg, st, fingerprints=fingerprints(cfg, steps))
    return [run_step(s, ctx, force=s.name in force) for s in steps]


@pytest.fixture(params=["local", "s3"])
def storage_for(request, tmp_path):
    """``storage_for(name)``: a fresh run storage, on a local folder or on moto's S3 server."""
    if request.param == "local":
        return lambda name: Storage(str(tmp_path / name))
    endpoint = request.getfixturevalue("s3_server")
    from mosaic_ray.config import StorageConfig

    return lambda name: Storage(f"s3://mosaic-test/fp-{request.node.name}-{name}",
                                StorageConfig(endpoint_url=endpoint))


def test_changed_config_reruns_the_step_and_its_downstream_and_says_why(tmp_path, storage_for, caplog):
    st = storage_for("run")
    toy = Toy()
    _run(_cfg(tmp_path), st, toy)
    assert toy.calls == [("a", False), ("b", False)]
    rec = st.done_payload("a")
    assert rec["fingerprint"] and rec["files"] == {f"a/out-{i}.txt": len(f"0.002 {i}") for i in range(3)}
    toy.calls.clear()
    _run(_cfg(tmp_path), st, toy)  # same config: both skipped
    assert toy.calls == []
    with caplog.at_level(logging.WARNING, logger="mosaic_ray.stages.step"):
        _run(_cfg(tmp_path, planner__lr=0.05), st, toy)
    assert toy.calls == [("a", True), ("b", True)]  # forced: the old files are not reused
    assert st.read_bytes("a/out-0.txt") == b"0.05 0"
    text = caplog.text
    assert "[a] its inputs changed since it ran (planner.lr)" in text
    assert "[b] its inputs changed since it ran (upstream a)" in text


def test_outputs_that_disagree_with_the_record_are_redone(tmp_path, storage_for, caplog):
    st = storage_for("run")
    toy = Toy()
    cfg = _cfg(tmp_path)
    _run(cfg, st, toy)
    st.delete("a/out-1.txt")                      # one output lost
    st.write_bytes("a/out-2.txt", b"truncated")   # one output changed behind the record's back
    toy.calls.clear(), toy.written.clear()
    with caplog.at_level(logging.WARNING, logger="mosaic_ray.stages.step"):
        _run(cfg, st, toy)
    assert "1 missing (e.g. a/out-1.txt) and 1 changed size (e.g. a/out-2.txt) of 3 recorded files" in caplog.text
    assert toy.calls[0] == ("a", False) and sorted(toy.written) == ["a/out-1.txt", "a/out-2.txt"]
    assert st.read_bytes("a/out-2.txt") == b"0.002 2" and st.is_done("a")


def test_an_interrupted_forced_step_leaves_no_record(tmp_path, storage_for):
    """Finding 1: ``--force`` interrupted half-way left the old completion record, so the next
    run skipped the step over partial outputs."""
    st = storage_for("run")
    cfg = _cfg(tmp_path)
    _run(cfg, st, Toy())
    toy = Toy(fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, st, toy, force=("a",))
    assert toy.written == ["a/out-0.txt"] and not st.is_done("a") and st.is_done("b")
    again = Toy()
    _run(cfg, st, again)
    assert again.calls[0] == ("a", False) and st.is_done("a")  # the rerun ran it, resuming


def test_partial_work_of_another_config_is_not_resumed(tmp_path, storage_for, caplog):
    st = storage_for("run")
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(tmp_path), st, Toy(fail_after=1))  # interrupted: one file of lr 0.002, no record
    toy = Toy()
    with caplog.at_level(logging.WARNING, logger="mosaic_ray.stages.step"):
        _run(_cfg(tmp_path, planner__lr=0.05), st, toy)
    assert "interrupted run under other inputs (planner.lr)" in caplog.text
    assert toy.calls[0] == ("a", True) and st.read_bytes("a/out-0.txt") == b"0.05 0"


def test_fingerprint_changed_lists_added_and_removed_parts():
    a, b = Fingerprint.of({"x": 1, "y": 2}), Fingerprint.of({"x": 1, "z": 2})
    assert b.changed(a.parts) == ["y", "z"] and a.changed(a.parts) == []
    assert a.changed(None) == ["(no fingerprint recorded)"]
    assert Fingerprint.of({"x": 1}).digest == Fingerprint.of({"x": 1}).digest
