"""One validated experiment configuration for every stage.

An experiment YAML (see ``jobs/ngsim_demo.yaml``) is parsed into :class:`ExperimentConfig`
before Ray starts: unknown keys, bad budgets, impossible resource settings and a missing
data directory are reported as one :class:`ConfigError` listing every problem.

The data directory comes from, in order: the ``data_dir`` key, the ``MOSAIC_DATA_DIR``
environment variable, then ``../shared/data/commonroad-ngsim`` relative to the project root.
Relative paths in a config are resolved against the config file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "commonroad-ngsim"
DATA_DIR_ENV = "MOSAIC_DATA_DIR"
OUTPUT_DIR_ENV = "MOSAIC_OUTPUT_DIR"

KNOWN_METHODS = ("mosaic", "random")
KNOWN_DOMAIN_COLUMNS = ("site", "segment", "scenario_id", "dataset")


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem found."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Strict):
    """Object-storage options for ``s3://`` URIs (credentials come from the AWS chain)."""

    endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:9000 for MinIO/moto")
    region: str | None = None
    scheme: Literal["http", "https"] | None = None


class RayConfig(_Strict):
    """How to reach Ray: ``address=None`` starts a local instance with ``num_cpus``."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)
    include_dashboard: bool = Field(True, description="the dashboard hosts the State API and the job server")
    train_health_check_interval_s: float = Field(
        0.5, gt=0, description="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S: Train's controller poll period "
        "(Ray's default of 2 s adds ~5 s of idle time to every short training run)")
    no_progress_timeout_s: float | None = Field(
        600.0, description="RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S: turns a stall into an error")


class IngestConfig(_Strict):
    """Clip cutting and splitting (NAVSIM-style clips from CommonRoad recordings)."""

    source: Literal["commonroad"] = "commonroad"
    history_s: float = Field(1.5, description="must be 1.5 (NAVSIM) in this version")
    future_s: float = Field(4.0, description="must be 4.0 (NAVSIM) in this version")
    stride_s: float | None = Field(None, gt=0, description="t0 spacing per vehicle; None = non-overlapping (5.5 s)")
    min_speed_mps: float = Field(0.0, ge=0, description="drop clips whose ego never exceeds this speed")
    map_extension_m: float = Field(60.0, ge=0, description="straight extension of lanes that leave the map crop")
    agent_radius_m: float = Field(120.0, gt=0, description="keep agents that come this close to the ego")
    validation_fraction: float = Field(0.12, gt=0, lt=0.5)
    train_fraction: float = Field(0.10, gt=0, lt=0.5)
    validation_segments: list[str] | None = Field(None, description="explicit held-out segments")
    train_segments: list[str] | None = Field(None, description="explicit D_train segments")
    seed: int = 0
    shard_size: int = Field(128, ge=1, description="clips per Parquet shard")
    num_cpus_per_task: float = Field(0.5, gt=0)

    @model_validator(mode="after")
    def _fixed_windows(self) -> "IngestConfig":
        if abs(self.history_s - 1.5) > 1e-9 or abs(self.future_s - 4.0) > 1e-9:
            raise ValueError("history_s must be 1.5 and future_s 4.0 (the NAVSIM clip layout)")
        return self


class PlannerConfig(_Strict):
    """The reference vocabulary planner (Hydra-MDP style) and its training."""

    vocab_size: int = Field(256, ge=2, description="K trajectory anchors (k-means of training futures)")
    embed_dim: int = Field(128, ge=8)
    hidden_dim: int = Field(128, ge=8)
    max_agents: int = Field(24, ge=1)
    max_lanes: int = Field(40, ge=1)
    lane_points: int = Field(10, ge=2)
    route_points: int = Field(16, ge=2)
    temperature_m: float = Field(1.0, gt=0, description="soft imitation target: softmax(-dist/T)")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(64, ge=1)
    base_epochs: int = Field(60, ge=1)
    augment_mirror: bool = Field(True, description="add left-right mirrored copies when training")
    seed: int = 0
    torch_threads: int = Field(1, ge=1)


class ScoreConfig(_Strict):
    """The Ray Data scoring stage (planner + EPDMS over the pool)."""

    batch_size: int = Field(32, ge=1)
    num_actors: int | None = Field(None, ge=1, description="None = fit to the CPUs Ray sees")
    num_cpus_per_actor: float = Field(0.5, gt=0)
    num_gpus_per_actor: float = Field(0.0, ge=0)


class DomainConfig(_Strict):
    column: str = "site"

    @field_validator("column")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in KNOWN_DOMAIN_COLUMNS:
            raise ValueError(f"unknown domain column {v!r}; known: {', '.join(KNOWN_DOMAIN_COLUMNS)}")
        return v


class PilotConfig(_Strict):
    """Pilot runs on Ray Tune: one trial per (domain, size, seed)."""

    sizes: list[int] = Field([50, 100], min_length=1)
    seeds: list[int] = Field([0], min_length=1)
    epochs: int = Field(8, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    max_concurrent_trials: int | None = Field(None, ge=1)

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(s <= 0 for s in v):
            raise ValueError(f"pilot sizes must be positive, got {v}")
        return sorted(set(v))


class SelectionConfig(_Strict):
    """Budgets (clip counts, or fractions of the pool in (0, 1]) and methods to compare."""

    budgets: list[int | float] = Field(..., min_length=1,
                                       description="ints are clip counts, floats in (0, 1] pool fractions")
    methods: list[str] = Field(["mosaic", "random"], min_length=1)
    random_seed: int = 42

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[int | float]) -> list[int | float]:
        bad = [b for b in v if not (b > 0) or (isinstance(b, float) and b > 1)]
        if bad:
            raise ValueError(f"budgets must be positive integers or fractions in (0, 1]; bad: {bad}")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in KNOWN_METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {', '.join(KNOWN_METHODS)}")
        return v

    def resolve_budgets(self, pool_size: int) -> list[int]:
        """Budgets as sorted distinct clip counts for a pool of ``pool_size`` clips.

        Raises:
            ConfigError: a budget exceeds the pool or rounds to 0 clips.
        """
        out = []
        for b in self.budgets:
            n = int(round(b * pool_size)) if isinstance(b, float) else int(b)
            if n < 1:
                raise ConfigError(f"budget {b} is 0 clips for a pool of {pool_size}")
            if n > pool_size:
                raise ConfigError(f"budget {b} ({n} clips) exceeds the pool of {pool_size} clips")
            out.append(n)
        return sorted(set(out))


class TrainConfig(_Strict):
    """Final training on Ray Train (TorchTrainer, DDP over gloo on CPU)."""

    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    epochs: int = Field(40, ge=1)
    seeds: list[int] = Field([0], min_length=1)
    init: Literal["base", "scratch"] = Field("scratch", description="start from the base checkpoint or from scratch")
    cache_shard: bool = Field(True, description="keep each worker's featurised shard in memory after epoch 1")


class ExperimentConfig(_Strict):
    """A whole MOSAIC experiment: data in, score, domains, pilots, selection, train, report."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    data_dir: str | None = None
    output_dir: str = Field("runs", description="local path or s3:// URI; the run goes to <output_dir>/<name>")
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    ingest: IngestConfig = IngestConfig()
    planner: PlannerConfig = PlannerConfig()
    score: ScoreConfig = ScoreConfig()
    domains: DomainConfig = DomainConfig()
    pilot: PilotConfig = PilotConfig()
    selection: SelectionConfig
    train: TrainConfig = TrainConfig()
    eval_batch_size: int = Field(64, ge=1)

    # ------------------------------------------------------------------ derived
    @property
    def run_uri(self) -> str:
        return f"{self.output_dir.rstrip('/')}/{self.name}"

    def resolved_data_dir(self) -> str:
        return self.data_dir or os.environ.get(DATA_DIR_ENV) or str(DEFAULT_DATA_DIR)


def _resolve_path(value: str | None, base: Path) -> str | None:
    if value is None or "://" in value or os.path.isabs(value):
        return value
    return str((base / value).resolve())


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML.

    Args:
        path: YAML file.
        overrides: dotted keys to set after reading, e.g. ``{"train.num_workers": 1}``.

    Raises:
        ConfigError: unreadable file, unknown keys, invalid values or a missing data directory.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {p}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config {p} must be a mapping at the top level")
    for key, value in (overrides or {}).items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    base = p.resolve().parent
    if raw.get("data_dir") is not None:
        raw["data_dir"] = _resolve_path(str(raw["data_dir"]), base)
    if os.environ.get(OUTPUT_DIR_ENV):
        raw["output_dir"] = os.environ[OUTPUT_DIR_ENV]
    elif raw.get("output_dir") is not None:
        raw["output_dir"] = _resolve_path(str(raw["output_dir"]), base)
    else:
        raw["output_dir"] = str(PROJECT_ROOT / "runs")
    return validate_config(raw)


def validate_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a config mapping; see :func:`load_config` for the errors."""
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "<root>"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"  {loc}: {msg}")
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None
    data_dir = cfg.resolved_data_dir()
    if "://" not in data_dir and not Path(data_dir).is_dir():
        raise ConfigError(
            f"data directory {data_dir!r} does not exist; set data_dir in the config or "
            f"{DATA_DIR_ENV} to the folder holding the CommonRoad NGSIM XML files (see README)")
    local = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    if local and cfg.train.num_workers * cfg.train.cpus_per_worker > (cfg.ray.num_cpus or os.cpu_count() or 1):
        raise ConfigError(
            f"train.num_workers × train.cpus_per_worker = "
            f"{cfg.train.num_workers * cfg.train.cpus_per_worker} exceeds the CPUs Ray will have; "
            "lower them (Ray Train waits forever otherwise)")
    return cfg
