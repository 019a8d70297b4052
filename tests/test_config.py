import pytest
import yaml

from mosaic_ray.config import ConfigError, SelectionConfig, load_config
from mosaic_ray.planner.training import recipe_from_config


def _write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_demo_config_is_valid():
    cfg = load_config("jobs/ngsim_demo.yaml")
    assert cfg.name == "ngsim_demo"
    assert cfg.resolved_data_dir().endswith("commonroad-ngsim")


def test_both_ngsim_configs_use_the_papers_clip_unit_and_autoscale_refuses_it(tmp_path):
    for path in ("jobs/ngsim_demo.yaml", "jobs/ngsim_benchmark.yaml"):
        cfg = load_config(path)
        assert (cfg.ingest.clip_s, cfg.ingest.stride_s) == (10.0, 0.5)
        assert cfg.ingest.split_fill == "random_order"  # splits that span several recordings per site
        assert cfg.planner.base_epochs == cfg.pilot.epochs == cfg.train.epochs == 12  # one recipe ...
        assert cfg.pilot.init == cfg.train.init == "scratch"
        # ... of 600 optimizer steps for every training (chosen on calibration: BENCHMARKS.md)
        assert {recipe_from_config(cfg, k).for_rows(n).steps for k in ("base", "pilot", "final")
                for n in (458, 3_300)} == {600}
    raw = yaml.safe_load(open("jobs/autoscale_demo.yaml"))
    raw.setdefault("ingest", {})["clip_s"] = 10.0
    raw["data_dir"] = str(tmp_path)
    with pytest.raises(ConfigError, match="ingest.clip_s: AutoScale"):
        load_config(_write(tmp_path, raw))


def test_unknown_key_is_reported(tmp_path):
    p = _write(tmp_path, {"name": "x", "selection": {"budgets": [10]}, "planer": {}})
    with pytest.raises(ConfigError, match="planer: unknown key"):
        load_config(p)


def test_bad_budgets_and_methods(tmp_path):
    p = _write(tmp_path, {"name": "x", "selection": {"budgets": [10, -3, 2.5], "methods": ["mosaic", "oracle"]}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "budgets" in str(e.value) and "oracle" in str(e.value)


def test_budget_resolution_against_pool():
    s = SelectionConfig(budgets=[0.1, 50, 50])
    assert s.resolve_budgets(200) == [20, 50]
    with pytest.raises(ConfigError, match="exceeds the pool"):
        SelectionConfig(budgets=[500]).resolve_budgets(200)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MOSAIC_DATA_DIR", str(tmp_path))
    cfg = load_config(_write(tmp_path, {"name": "x", "selection": {"budgets": [10]}}))
    assert cfg.resolved_data_dir() == str(tmp_path)
    monkeypatch.setenv("MOSAIC_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(_write(tmp_path, {"name": "x", "selection": {"budgets": [10]}}))


def test_train_resources_must_fit(tmp_path):
    p = _write(tmp_path, {"name": "x", "selection": {"budgets": [10]}, "ray": {"num_cpus": 2},
                          "train": {"num_workers": 4, "cpus_per_worker": 1}})
    with pytest.raises(ConfigError, match="exceeds the CPUs"):
        load_config(p)


CORE_PACKAGES = ["mosaic_ray.config", "mosaic_ray.storage", "mosaic_ray.scoring", "mosaic_ray.selection",
                 "mosaic_ray.planner", "mosaic_ray.domains", "mosaic_ray.report"]


def test_core_modules_import_without_ray():
    """The algorithm core (every module of these packages) imports without Ray, so
    `make test-core` (-m "not ray and not data") runs where Ray is not installed or not wanted."""
    import subprocess
    import sys

    from conftest import ROOT

    script = (
        "import importlib, pkgutil, sys\n"
        f"names = {CORE_PACKAGES!r}\n"
        "done = []\n"
        "for name in names:\n"
        "    mod = importlib.import_module(name)\n"
        "    done.append(name)\n"
        "    for info in pkgutil.walk_packages(getattr(mod, '__path__', []), name + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "        done.append(info.name)\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "print(len(done))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) > len(CORE_PACKAGES)  # the submodules were imported too
