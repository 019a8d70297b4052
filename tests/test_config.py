import pytest
import yaml

from mosaic_ray.config import ConfigError, SelectionConfig, load_config


def _write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_demo_config_is_valid():
    cfg = load_config("jobs/ngsim_demo.yaml")
    assert cfg.name == "ngsim_demo"
    assert cfg.resolved_data_dir().endswith("commonroad-ngsim")


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
