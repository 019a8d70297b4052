"""Shared fixtures: one real local Ray instance per test session, the real NGSIM data, one
ingested run shared by the tests that need one; and the ``ray`` / ``data`` markers.

Markers (registered in pyproject.toml, ``--strict-markers``):

- ``ray``: the test needs a Ray instance (the session's ``ray_local``) or starts one (``ray start``).
- ``data``: the test reads the real data in ``../shared/data`` (``MOSAIC_DATA_DIR``).

:func:`pytest_collection_modifyitems` adds them automatically: ``ray`` to every test whose
fixture closure holds ``ray_local`` (so every fixture built on it, ``ingested_run`` included),
``data`` to every test whose closure holds ``small_data_dir`` / ``ngsim_clips`` or whose code,
the code of one of its fixtures or of a helper function of its module names ``ngsim_file`` /
``DATA_DIR`` or a module global holding a path under ``../shared``; ``ray`` also to every test of
a module that imports Ray at module level. Tests that start Ray themselves (``ray start``) or
read the data in ways that cannot be seen set the marker explicitly (``pytestmark``).

The Ray-free, data-free core is ``-m "not ray and not data"`` (``make test-core``), and that is
checked: a test without the ``ray`` marker that imports Ray fails at teardown, a run where no
selected test is marked ``ray`` but collecting imported Ray fails, and :func:`ngsim_file`
refuses to serve a test without the ``data`` marker.

Shared run: ``ingested_run`` (session) ingests ``small_data_dir`` once; ``make_run`` (function)
/ :func:`copy_run` (for module fixtures) hand each test its own copy of that run folder.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path, PurePath

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = ROOT.parent / "shared"
DATA_DIR = Path(os.environ.get("MOSAIC_DATA_DIR", ROOT.parent / "shared" / "data" / "commonroad-ngsim"))

os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "120")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# fake credentials for moto's S3 server, set before Ray starts so its workers inherit them
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing-key")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # one local node: as ray_env_defaults sets it
# keep idle task workers for reuse instead of killing them after 1 s beyond the CPU count: each
# Ray Data run fans out tasks, and a new worker process costs ~2 CPU-s on this 2-core machine
os.environ.setdefault("RAY_num_workers_soft_limit", "8")
os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", "600000")
# Ray's background processes poll less: the log monitor rescans its log folder every 5 s (not
# every 0.1 s), the dashboard agent collects process metrics every 60 s (not every 5 s)
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
os.environ.setdefault("LOG_NAME_UPDATE_INTERVAL_S", "5")
os.environ.setdefault("REPORTER_UPDATE_INTERVAL_MS", "60000")
# scoring actors record their PIDs here so fault tests can kill a real one (see test_faults.py)
ACTOR_PID_DIR = Path(tempfile.mkdtemp(prefix="mosaic-actor-pids-"))
os.environ["MOSAIC_ACTOR_PID_DIR"] = str(ACTOR_PID_DIR)


# ====================================================================== markers
RAY_FIXTURES = {"ray_local"}  # and, through the closure, every fixture that depends on it
DATA_FIXTURES = {"small_data_dir", "ngsim_clips"}
DATA_NAMES = {"ngsim_file", "DATA_DIR", "SHARED_DIR"}  # names whose use means reading ../shared/data
# folders whose files count as "the data" (the data variables may point outside ../shared)
DATA_ENV = ("MOSAIC_DATA_DIR", "MOSAIC_SCENARIONET_DIR")
DATA_ROOTS = [p.resolve() for p in {SHARED_DIR, DATA_DIR, *(Path(os.environ[k]) for k in DATA_ENV if os.environ.get(k))}]

_CURRENT: dict = {"item": None}  # the test being set up / run / torn down
_RAY_IMPORT: dict = {"where": None, "item": None}  # who imported Ray first in this process


def _is_data_path(v) -> bool:
    if not isinstance(v, (str, PurePath)) or (isinstance(v, str) and os.sep not in v):
        return False
    try:
        p = Path(v).resolve()
    except (OSError, ValueError):
        return False
    return any(p == r or r in p.parents for r in DATA_ROOTS)


def _code_names(code) -> set[str]:
    names = set(code.co_names) | set(code.co_freevars)
    for c in code.co_consts:
        if inspect.iscode(c):
            names |= _code_names(c)
    return names


def _reads_data(fn, seen: set | None = None) -> bool:
    """Whether ``fn`` (a test, a fixture function or a helper of a test module) names the data:
    ``ngsim_file`` / ``DATA_DIR``, a module global holding a path under ``../shared``, or a helper
    function of the same module that does."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return False
    seen = set() if seen is None else seen
    if code in seen:
        return False
    seen.add(code)
    g = getattr(fn, "__globals__", {})
    for name in _code_names(code):
        if name in DATA_NAMES:
            return True
        v = g.get(name)
        if _is_data_path(v):
            return True
        if inspect.isfunction(v) and v.__module__ == fn.__module__ and _reads_data(v, seen):
            return True
    return False


def _imports_ray(module) -> bool:
    """Whether a test module holds the ``ray`` package (or a part of it) at module level."""
    return any(inspect.ismodule(v) and (v.__name__ == "ray" or v.__name__.startswith("ray."))
               for v in vars(module).values())


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(config, items):
    for item in items:
        closure = set(getattr(item, "fixturenames", ()))
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs if info is not None else {}
        funcs = [fd.func for name in closure for fd in defs.get(name, ())]
        fn = getattr(item, "function", None)
        module = getattr(item, "module", None)
        if closure & RAY_FIXTURES or (module is not None and _imports_ray(module)):
            item.add_marker(pytest.mark.ray)
        if closure & DATA_FIXTURES or any(_reads_data(f) for f in [fn, *funcs] if f is not None):
            item.add_marker(pytest.mark.data)


class _RayImportWatch:
    """A meta-path finder that records who imports Ray first (it never finds anything itself)."""

    def find_spec(self, name, path=None, target=None):
        if name == "ray" and _RAY_IMPORT["where"] is None and "ray" not in sys.modules:
            item = _CURRENT["item"]
            stack = [f for f in traceback.extract_stack()[:-1] if "/_pytest/" not in f.filename
                     and "/pluggy/" not in f.filename and "<frozen" not in f.filename]
            _RAY_IMPORT["item"] = item.nodeid if item is not None else None
            _RAY_IMPORT["where"] = "".join(traceback.format_list(stack[-6:]))
        return None


if "ray" not in sys.modules:
    sys.meta_path.insert(0, _RayImportWatch())


def pytest_collection_finish(session):
    """A Ray-free selection (no test marked ``ray``) whose collection imported Ray fails."""
    if "ray" in sys.modules and session.items and not any(i.get_closest_marker("ray") for i in session.items):
        session.config.stash[_COLLECTION_RAY] = _RAY_IMPORT["where"] or "(before the test session)"


_COLLECTION_RAY = pytest.StashKey[str]()


def pytest_runtest_setup(item):
    _CURRENT["item"] = item


@pytest.hookimpl(trylast=True)  # after the fixtures were torn down
def pytest_runtest_teardown(item, nextitem):
    try:
        if _RAY_IMPORT["item"] == item.nodeid and not item.get_closest_marker("ray"):
            raise pytest.fail.Exception(
                f"{item.nodeid} imported Ray but is not marked `ray` (add pytestmark = pytest.mark.ray, "
                f"or use the ray_local fixture); import at:\n{_RAY_IMPORT['where']}", pytrace=False)
    finally:
        _CURRENT["item"] = None


def pytest_sessionfinish(session, exitstatus):
    where = session.config.stash.get(_COLLECTION_RAY, None)
    if where is not None and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    where = config.stash.get(_COLLECTION_RAY, None)
    if where is not None:
        terminalreporter.write_line(
            "FAILED: no selected test is marked `ray`, but collecting the tests imported Ray "
            f"(a module-level import in a test module or in what it imports):\n{where}", red=True)


# ====================================================================== data
def ngsim_file(rel: str) -> Path:
    item = _CURRENT["item"]
    if item is not None and not item.get_closest_marker("data"):
        raise RuntimeError(f"{item.nodeid} reads ../shared/data but is not marked `data`")
    p = DATA_DIR / rel
    if not p.exists():
        raise FileNotFoundError(f"test data {p} missing: CI needs ../shared beside the checkout")
    return p


@pytest.fixture(scope="session")
def ngsim_clips():
    """``ngsim_clips(rel)``: the clips ``cut_file`` cuts from ``DATA_DIR/rel`` with the default
    options, cut once per session and shared (a new list each call; do not modify the clips in
    place, ``dataclasses.replace`` them)."""
    from mosaic_ray.data.commonroad import cut_file

    cache: dict[str, list] = {}

    def clips(rel: str) -> list:
        if rel not in cache:
            cache[rel] = cut_file(str(ngsim_file(rel)))[0]
        return list(cache[rel])
    return clips


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance with 2 CPUs (started once, shut down at the end)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory):
    """A data folder of symlinks to a few real NGSIM files (every site, duplicated files of
    one segment, a map-only file) plus one broken XML file."""
    d = tmp_path_factory.mktemp("ngsim_small")
    files = {
        "US101": ["USA_US101-22_1_T-1.xml", "USA_US101-22_3_T-1.xml", "USA_US101-22_4_T-1.xml",
                  "USA_US101-5_1_T-1.xml", "USA_US101-9_1_T-1.xml", "USA_US101-2_2_S-1.xml"],
        "Lankershim": ["USA_Lanker-1_2_T-1.xml", "USA_Lanker-2_13_T-1.xml"],
        "Peachtree": ["USA_Peach-2_1_T-1.xml", "USA_Peach-4_3_T-1.xml"],
    }
    for site, names in files.items():
        (d / site).mkdir()
        for n in names:
            p = DATA_DIR / site / n
            if not p.exists():
                raise FileNotFoundError(f"test data {p} missing: CI needs ../shared beside the checkout")
            (d / site / n).symlink_to(p)
    (d / "US101" / "USA_US101-99_1_T-1.xml").write_text("<commonRoad><lanelet id='1'><leftBound>")
    return d


# ====================================================================== one shared ingested run
TINY_PLANNER = {"vocab_size": 16, "embed_dim": 32, "hidden_dim": 32, "max_agents": 8, "max_lanes": 16}
INGEST_SHARD_SIZE = 16


@dataclasses.dataclass(frozen=True)
class IngestedRun:
    """``small_data_dir`` ingested once: ``root`` is the run folder (read-only: copy it with
    :func:`copy_run` / the ``make_run`` fixture), ``raw`` the config it was ingested with,
    ``summary`` the ingest summary."""

    root: Path
    raw: dict
    summary: dict


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="session")
def ingested_run(ray_local, small_data_dir, tmp_path_factory) -> IngestedRun:
    """``small_data_dir`` ingested once per session by the ingest step (``run_ingest`` through
    the step runner, so the copies carry its completion record and a pipeline run on a copy skips
    the ingest) on ``ray_local``, shards of 16 clips. Do not write into it; take a copy with
    ``make_run`` / :func:`copy_run`."""
    from mosaic_ray.config import validate_config
    from mosaic_ray.stages import ingest
    from mosaic_ray.storage import Storage

    out = tmp_path_factory.mktemp("ingested")
    # one EPDMS actor per score run unless a test asks for more (each actor is a process that
    # imports the scorer: ~3 CPU-s on this 2-core machine; the pools' sizing is tested on its own)
    raw = {"name": "ingested", "data_dir": str(small_data_dir), "output_dir": str(out),
           "selection": {"budgets": [5]}, "ingest": {"shard_size": INGEST_SHARD_SIZE},
           "score": {"epdms": {"max_actors": 1}}}
    cfg = validate_config(raw)
    st = Storage(cfg.run_uri)
    from mosaic_ray.pipeline import STEPS
    from mosaic_ray.stages.fingerprint import fingerprints
    from mosaic_ray.stages.step import Context, run_step

    run_step(ingest.STEP, Context(cfg, st, fingerprints=fingerprints(cfg, STEPS)))
    return IngestedRun(Path(cfg.run_uri), raw, st.read_json("ingest/summary.json"))


def copy_run(ingested: IngestedRun, output_dir, name: str = "run", shard_size: int | None = None,
             **overrides):
    """A private copy of the shared ingested run at ``output_dir/name``: returns ``(cfg, storage,
    raw)``, the validated config (the ingest config merged with ``overrides``, nested dicts merged
    key by key), its :class:`Storage` and the raw dict. The ingest step is recorded complete in
    the copy. ``shard_size`` rewrites the clip shards at that size (``ingest/summary.json``'s
    ``shards`` and the completion record's file list updated)."""
    from mosaic_ray.config import validate_config
    from mosaic_ray.storage import Storage, write_shards

    raw = _merge(ingested.raw, {"name": name, "output_dir": str(output_dir), **overrides})
    if shard_size is not None:
        raw = _merge(raw, {"ingest": {"shard_size": shard_size}})
    cfg = validate_config(raw)
    dest = Path(cfg.run_uri)
    if dest.exists():
        raise FileExistsError(f"{dest} exists: give each copy its own name")
    shutil.copytree(ingested.root, dest, symlinks=True)
    st = Storage(cfg.run_uri)
    if shard_size is not None and shard_size != ingested.raw["ingest"]["shard_size"]:
        summary = st.read_json("ingest/summary.json")
        from mosaic_ray.data.split import SPLITS
        for split in SPLITS:
            rel = f"ingest/clips/{split}"
            table = st.read_table(rel)
            st.delete(rel)
            summary["shards"][split] = len(write_shards(st, rel, table, shard_size))
        st.write_json("ingest/summary.json", summary)
        from mosaic_ray.pipeline import STEPS
        from mosaic_ray.stages import ingest
        from mosaic_ray.stages.fingerprint import fingerprints
        from mosaic_ray.stages.step import Context, record_outputs

        payload = {k: v for k, v in st.done_payload("ingest").items() if k != "files"}
        record_outputs(ingest.STEP, Context(cfg, st, fingerprints=fingerprints(cfg, STEPS)), payload)
    return cfg, st, raw


@pytest.fixture
def make_run(ingested_run, tmp_path):
    """Factory for private copies of the shared ingested run, one folder per call under this
    test's ``tmp_path``: ``make_run(name="run", shard_size=None, **config_overrides)`` ->
    ``(cfg, storage, raw)`` (see :func:`copy_run`)."""
    def make(name: str = "run", shard_size: int | None = None, **overrides):
        return copy_run(ingested_run, tmp_path / "runs", name, shard_size=shard_size, **overrides)
    return make


def write_untrained_base(cfg, st, train, pool) -> None:
    """Write an untrained planner (``torch.manual_seed(0)``) and its vocabulary, built from the
    expert futures of ``train`` and ``pool`` (lists of Clip), as the run's base model: a stand-in
    where a test checks plumbing, not the base model's quality."""
    import io

    import numpy as np
    import torch

    from mosaic_ray import layout
    from mosaic_ray.planner.futures import expert_futures
    from mosaic_ray.planner.model import PlannerSpec, VocabularyPlanner, build_vocabulary, save_checkpoint

    spec = PlannerSpec.from_config(cfg.planner)
    anchors = build_vocabulary(np.concatenate([expert_futures(train), expert_futures(pool)]), spec.vocab_size)
    buf = io.BytesIO()
    np.save(buf, anchors)
    st.write_bytes(layout.VOCABULARY, buf.getvalue())
    torch.manual_seed(0)
    save_checkpoint(VocabularyPlanner(spec, torch.from_numpy(anchors)), st.path(layout.BASE_CHECKPOINT))


# ====================================================================== S3
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server (real HTTP on 127.0.0.1) with a bucket ``mosaic-test``; yields its URL."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="mosaic-test")
    try:
        yield endpoint
    finally:
        server.stop()
