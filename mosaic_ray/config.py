"""One validated experiment configuration for every stage.

An experiment YAML (see ``jobs/ngsim_demo.yaml``) is parsed into :class:`ExperimentConfig`
before Ray starts: unknown keys, bad budgets, impossible resource settings and a missing
data directory are reported as one :class:`ConfigError` listing every problem.

The data directory comes from, in order: the ``data_dir`` key, the ``MOSAIC_DATA_DIR``
environment variable, then ``../shared/data/commonroad-ngsim`` relative to the project root.
Relative paths in a config are resolved against the config file's folder.
"""

from __future__ import annotations

from mosaic_ray.errors import UsageError
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mosaic_ray.autoscale.synth_config import SynthesizeConfig
from mosaic_ray.selection.budgets import BudgetError, check_budget_spec, resolve_budgets
from mosaic_ray.selection.methods import METHOD_NAMES, ResolvedMethod, check_method, resolve_method, split_method

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "commonroad-ngsim"
DATA_DIR_ENV = "MOSAIC_DATA_DIR"
OUTPUT_DIR_ENV = "MOSAIC_OUTPUT_DIR"

#: every selection method (the registry in :mod:`mosaic_ray.selection.methods`)
KNOWN_METHODS = METHOD_NAMES
KNOWN_DOMAIN_COLUMNS = ("site", "segment", "scenario_id", "dataset")


def _check_budgets(v: list[int | float]) -> list[int | float]:
    """Validator of a ``budgets`` list (selection and AutoScale): every entry a positive clip
    count or a pool fraction in (0, 1] (:func:`check_budget_spec`); raises ValueError naming the
    bad ones."""
    bad = []
    for b in v:
        try:
            check_budget_spec(b)
        except BudgetError:
            bad.append(b)
    if bad:
        raise ValueError(f"budgets must be positive integers or fractions in (0, 1]; bad: {bad}")
    return v


class ConfigError(UsageError, ValueError):
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
    """Clip cutting and splitting (NAVSIM-style clips from CommonRoad or ScenarioNet recordings)."""

    source: Literal["commonroad", "scenarionet"] = Field(
        "commonroad", description="commonroad: CommonRoad XML files (NGSIM); scenarionet: ScenarioNet "
        "*.pkl scenarios (Waymo, nuScenes, nuPlan, Argoverse 2, ... converted by ScenarioNet)")
    data_dirs: list[str] | None = Field(
        None, description="several input folders read as one (relative to the config file); "
        "None = the experiment's data_dir")
    other_egos: bool = Field(False, description="scenarionet: moving vehicles other than the sdc are egos too")
    segment_by: Literal["scenario", "map"] = Field(
        "scenario", description="scenarionet: the split unit (segment) is the scenario or the map/location")
    split_mode: Literal["auto", "pool", "calibration", "test"] = Field(
        "auto", description="auto: train / pool / calibration / test by recording unit; pool, calibration or "
        "test: every clip goes to that split (a dataset too small to split, e.g. to score it with another run's "
        "planner)")
    split_unit: Literal["recording", "segment"] = Field(
        "recording", description="the unit no split shares: recording = files of a segment linked by a shared "
        "recorded vehicle; segment = the whole map segment")
    history_s: float = Field(1.5, description="must be 1.5 (NAVSIM) in this version")
    future_s: float = Field(4.0, description="must be 4.0 (NAVSIM) in this version")
    stride_s: float | None = Field(None, gt=0, description="frame (t0) spacing per vehicle; None = non-overlapping "
                                   "windows (5.6 s); the paper's unit: 0.5")
    clip_s: float | None = Field(None, gt=0, description="clip length: a vehicle's track is split into consecutive "
                                 "clips of this many seconds whose frames are selected together (MOSAIC §7.1: 10); "
                                 "None = every frame is its own clip")
    min_speed_mps: float = Field(0.0, ge=0, description="drop clips whose ego never exceeds this speed")
    map_extension_m: float = Field(60.0, ge=0, description="straight extension of lanes that leave the map crop")
    agent_radius_m: float = Field(120.0, gt=0, description="keep agents that come this close to the ego")
    train_fraction: float = Field(0.10, gt=0, lt=0.5, description="D_train's share of the clips")
    calibration_fraction: float = Field(0.10, gt=0, lt=0.5, description="the calibration split's share "
                                        "(pilot runs and any tuning are scored on it)")
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="the test split's share (the final tables)")
    site_mix: dict[str, float] | None = Field(None, description="declared site mix {site: weight} train, "
                                              "calibration and test are stratified to; None = the mix of all "
                                              "clips (then also the pool's)")
    split_fill: Literal["best_fit", "random_order"] = Field(
        "best_fit", description="how a split's site target is filled with units: best_fit = each time the unit "
        "closest to the remaining gap (few, large units); random_order = units in the seeded order, each taken "
        "when it brings the split closer to its target (more, smaller units: a split spans more recordings)")
    calibration_segments: list[str] | None = Field(None, description="explicit calibration segments or units")
    test_segments: list[str] | None = Field(None, description="explicit test segments or units")
    train_segments: list[str] | None = Field(None, description="explicit D_train segments or units")
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
    head: Literal["additive", "mlp"] = Field("additive", description="vocabulary scoring head: additive = "
                                             "w·relu(q + a_k) (the default); mlp adds a Linear(H, H) per "
                                             "(clip, anchor) pair, ~2x the training step's cost")
    # the training recipe (mosaic_ray.planner.training.TrainRecipe) of the base model; pilot runs
    # and final trainings use it too, except where pilot.* / train.* set a value explicitly
    lr: float = Field(2e-3, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    batch_size: int = Field(64, ge=1, description="global batch (split over Ray Train workers)")
    warmup_steps: int = Field(20, ge=0, description="linear LR warm-up steps before the cosine decay")
    min_lr_ratio: float = Field(0.02, ge=0, le=1, description="LR floor of the cosine schedule, × lr")
    grad_clip: float | None = Field(5.0, gt=0, description="max global gradient norm (None: no clipping)")
    base_epochs: int = Field(60, ge=1)
    steps: int | None = Field(None, ge=1, description="a fixed number of optimizer steps for the base model, pilots "
                              "and final trainings whatever their data size (each training's epochs = ceil(steps "
                              "/ steps per epoch)); None = the configured epochs, so steps grow with the data")
    augment_mirror: bool = Field(True, description="add left-right mirrored copies when training")
    seed: int = 0
    torch_threads: int = Field(1, ge=1)
    distill: bool = Field(False, description="rule-distillation heads (Hydra-MDP): learn every anchor's EPDMS "
                          "sub-scores from <run>/distill/targets and choose the plan by imitation + predicted scores")
    distill_loss_weight: float = Field(1.0, ge=0, description="weight of the distillation BCE next to the imitation loss")
    distill_im_weight: float = Field(1.0, ge=0, description="plan choice: weight of log softmax(imitation)")
    distill_penalty_weight: float = Field(1.0, ge=0, description="plan choice: weight of sum log NC, DAC, DDC, TLC")
    distill_weighted_weight: float = Field(1.0, ge=0, description="plan choice: weight of log of the weighted "
                                           "EP/TTC/LK/HC average")


class _PoolSize(_Strict):
    """An autoscaling actor pool: between ``min_actors`` and ``max_actors`` actors."""

    min_actors: int = Field(1, ge=1)
    max_actors: int | None = Field(None, ge=1, description="None = fit to the cluster Ray sees")

    @model_validator(mode="after")
    def _min_le_max(self):
        if self.max_actors is not None and self.min_actors > self.max_actors:
            raise ValueError(f"min_actors ({self.min_actors}) > max_actors ({self.max_actors})")
        return self


class PlanPoolConfig(_PoolSize):
    """Planner inference actors of the two-stage score step (featurise, forward, embedding,
    logits, chosen trajectory). ``max_actors`` None: GPUs / ``num_gpus_per_actor`` when the
    actors take GPUs, else one actor per 8 CPUs (at least one); the planner costs ~1/10 of EPDMS."""

    num_cpus_per_actor: float = Field(0.5, gt=0)
    num_gpus_per_actor: float = Field(0.0, ge=0, description="> 0: the planner runs on CUDA (fractions allowed)")
    batch_size: int = Field(256, ge=1, description="clips per planner forward (size it for the device)")


class EpdmsPoolConfig(_PoolSize):
    """EPDMS actors of the two-stage score step (CPU). ``max_actors`` None: one actor per CPU
    left after the planner actors' CPUs (at least one)."""

    num_cpus_per_actor: float = Field(0.5, gt=0)
    batch_size: int = Field(64, ge=1, description="clips per batched tracker / IDM roll-out call")


class ScoreConfig(_Strict):
    """The Ray Data scoring step (planner + EPDMS over the pool).

    ``pipeline: two_stage`` (default) streams the shards through a planner actor pool
    (``plan``) into an EPDMS actor pool (``epdms``), each sized on its own; ``single`` runs
    both in one pool of ``num_actors`` actors (``batch_size``, ``num_cpus_per_actor``,
    ``num_gpus_per_actor``), as before issue 14."""

    pipeline: Literal["two_stage", "single"] = "two_stage"
    plan: PlanPoolConfig = Field(default_factory=PlanPoolConfig)
    epdms: EpdmsPoolConfig = Field(default_factory=EpdmsPoolConfig)
    batch_size: int = Field(32, ge=1, description="single: clips per planner forward")
    num_actors: int | None = Field(None, ge=1, description="single (and distill): None = fit to the CPUs Ray sees")
    num_cpus_per_actor: float = Field(0.5, gt=0, description="single (and distill)")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="single: GPUs per actor")
    checkpoint: str | None = Field(
        None, description="score with this planner checkpoint (local path or s3:// URI of a planner/*.pt, "
        "e.g. from another run) instead of this run's base model; copied to planner/external.pt")


class DomainVariant(_Strict):
    """One way to split the pool into domains (paper §3.2.1 and Table 8)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_]+$")
    kind: Literal["metadata", "captions", "embedding"] = "metadata"
    column: str = Field("site", description="metadata: the column (site, segment, scenario_id, dataset)")
    k: int = Field(6, ge=2, description="captions / embedding: number of k-means clusters (paper: 6)")
    seed: int = 0

    @field_validator("column")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in KNOWN_DOMAIN_COLUMNS:
            raise ValueError(f"unknown domain column {v!r}; known: {', '.join(KNOWN_DOMAIN_COLUMNS)}")
        return v


class DomainConfig(_Strict):
    """Domains: ``column`` alone (a metadata column), or several ``variants``; the first variant
    is the default one, used by methods named without ``@variant``."""

    column: str = "site"
    variants: list[DomainVariant] = Field(default_factory=list)

    @field_validator("column")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in KNOWN_DOMAIN_COLUMNS:
            raise ValueError(f"unknown domain column {v!r}; known: {', '.join(KNOWN_DOMAIN_COLUMNS)}")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "DomainConfig":
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"domain variant names must be unique, got {names}")
        return self

    def all_variants(self) -> list[DomainVariant]:
        return list(self.variants) or [DomainVariant(name=self.column, kind="metadata", column=self.column)]

    def variant(self, name: str | None) -> DomainVariant:
        """The named variant (the default one for None).

        Raises:
            ValueError: no such variant."""
        vs = self.all_variants()
        if name is None:
            return vs[0]
        for v in vs:
            if v.name == name:
                return v
        raise ValueError(f"unknown domain variant {name!r}; known: {[v.name for v in vs]}")


class PilotConfig(_Strict):
    """Pilot runs on Ray Tune: one trial per (domain, size, seed)."""

    sizes: list[int] = Field([10, 30, 100, 300], min_length=1,
                             description="pilot sizes in clips, each capped at the domain's size")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="pilot seeds, averaged per point (>= 3 "
                             "to see the points' spread; the laws are weighted by it)")
    control: bool = Field(True, description="one control pilot per seed (n = 0: the same recipe on D_train "
                          "alone); ΔU is measured against it")
    epochs: int = Field(8, ge=1)
    init: Literal["base", "scratch"] = Field(
        "base", description="continue planner/base.pt or train from scratch (as train.init: set both alike for "
        "one recipe); ΔU is measured against the control pilot, which trains with the same recipe")
    cpus_per_trial: float = Field(1.0, gt=0)
    max_concurrent_trials: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0, description="None = planner.lr (the shared recipe)")
    weight_decay: float | None = Field(None, ge=0, description="None = planner.weight_decay")
    batch_size: int | None = Field(None, ge=1, description="None = planner.batch_size")
    warmup_steps: int | None = Field(None, ge=0, description="None = planner.warmup_steps")

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
    random_shuffles: list[int] = Field(
        [], description="further Random shuffle seeds (besides random_seed, the paper's Random) to measure "
        "Random's own spread; each is a grid method random_shuffle<seed>, compared with Random like any method")

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[int | float]) -> list[int | float]:
        return _check_budgets(v)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if split_method(m)[0] not in METHOD_NAMES]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHOD_NAMES)} "
                             "(optionally with @<domain variant>, e.g. mosaic@captions)")
        problems = []
        for m in v:
            try:
                check_method(m)
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise ValueError("; ".join(problems))
        if len(set(v)) != len(v):
            raise ValueError(f"methods listed twice: {v}")
        return v

    @field_validator("random_shuffles")
    @classmethod
    def _shuffles(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"random_shuffles listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _shuffle_not_reference(self) -> "SelectionConfig":
        if self.random_seed in self.random_shuffles:
            raise ValueError(f"random_shuffles holds random_seed {self.random_seed} (that shuffle is Random itself)")
        return self

    def shuffle_methods(self) -> dict[str, int]:
        """{grid method name: shuffle seed} of the further Random shuffles (only when ``random``
        is a configured method)."""
        if "random" not in self.methods:
            return {}
        return {f"random_shuffle{s}": int(s) for s in self.random_shuffles}

    def resolve_budgets(self, pool_size: int) -> list[int]:
        """Budgets as sorted distinct clip counts for a pool of ``pool_size`` clips
        (:func:`mosaic_ray.selection.budgets.resolve_budgets`).

        Raises:
            ConfigError: a budget exceeds the pool or rounds to 0 clips.
        """
        try:
            return resolve_budgets(self.budgets, pool_size)
        except BudgetError as e:
            raise ConfigError(f"selection.budgets: {e}") from None


class TrainConfig(_Strict):
    """Final trainings (the grid cells): Ray Train (TorchTrainer, DDP over gloo on CPU), or the
    same loop inside each cell's Tune trial for one-worker cells (``backend``)."""

    @model_validator(mode="after")
    def _backend(self) -> "TrainConfig":
        if self.backend == "in_trial" and not self.one_cpu_worker:
            raise ValueError("train.backend: in_trial trains one CPU worker per cell: set train.num_workers: 1 "
                             "and train.gpus_per_worker: 0, or use backend ray_train")
        if self.base_backend == "in_process" and not self.one_cpu_worker:
            raise ValueError("train.base_backend: in_process trains the base model in one CPU process: set "
                             "train.num_workers: 1 and train.gpus_per_worker: 0, or use base_backend ray_train")
        return self

    @property
    def one_cpu_worker(self) -> bool:
        """One worker without a GPU: what training in a single process (in-trial, in-process) needs."""
        return self.num_workers == 1 and self.gpus_per_worker == 0

    @property
    def in_trial(self) -> bool:
        """Whether grid cells train inside their Tune trial (see ``backend``)."""
        return self.backend == "in_trial" or (self.backend == "auto" and self.one_cpu_worker)

    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    epochs: int = Field(60, ge=1)
    seeds: list[int] = Field([0], min_length=1)
    init: Literal["base", "scratch"] = Field("scratch", description="start from the base checkpoint or from scratch")
    cache_shard: bool = Field(True, description="no effect (kept so that older configs load): every worker "
                              "now holds its featurised rows in memory for the whole run")
    concurrency: int = Field(1, ge=1, description="grid cells (final trainings) run at the same time")
    checkpoint_every: int = Field(10, ge=1, description="epochs between Train checkpoints (resume points)")
    full_pool: bool = Field(False, description="also train on D_train ∪ the whole pool (a reference line)")
    backend: Literal["auto", "ray_train", "in_trial"] = Field(
        "auto", description="how a grid cell trains: ray_train (a TorchTrainer of num_workers workers), "
        "in_trial (the same loop inside the cell's Tune trial, one worker, no worker-group start-up; "
        "needs num_workers 1 and no GPU), auto (in_trial where num_workers is 1 and gpus_per_worker 0)")
    base_backend: Literal["ray_train", "in_process"] = Field(
        "ray_train", description="how the base model trains: ray_train (a TorchTrainer of num_workers workers), "
        "in_process (the same loop in the driver: one worker, no worker-group start-up, the same weights as a "
        "one-worker Ray Train run; needs num_workers 1 and no GPU; small runs and tests)")
    lr: float | None = Field(None, gt=0, description="None = planner.lr (the shared recipe)")
    weight_decay: float | None = Field(None, ge=0, description="None = planner.weight_decay")
    batch_size: int | None = Field(None, ge=1, description="None = planner.batch_size")
    warmup_steps: int | None = Field(None, ge=0, description="None = planner.warmup_steps")


#: AutoScale's selection methods (``autoscale.methods``): the closed loop, its ablations and the
#: baselines on the same Graph-RAE space (:mod:`mosaic_ray.autoscale.methods`)
AUTOSCALE_METHODS = ("autoscale", "autoscale_no_ga", "autoscale_no_retrieval", "uniform", "chameleon", "iwr",
                     "all_synthetic", "mosaic_clusters")


class GraphRAESettings(_Strict):
    """Graph-RAE sizes, loss weights and training (:class:`~mosaic_ray.autoscale.graph_rae.GraphRAEConfig`;
    the paper's values are lost: defaults ours). ``lambda_c = 0`` / ``lambda_m = 0`` are the
    ablations without the contrastive / the metric regularisers (AutoScale Table 4)."""

    hidden_dim: int = Field(64, ge=4, description="d, the scene-embedding dimension")
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    max_agents: int = Field(16, ge=1, description="agent node slots of the scene graph")
    max_map: int = Field(24, ge=1, description="map-element node slots of the scene graph")
    lambda_c: float = Field(0.1, ge=0, description="λ_c: weight of SimCLR + SupCon (Eq. 2); 0 = ablation")
    lambda_m: float = Field(1.0, ge=0, description="λ_m: weight of the pairwise metric regression; 0 = ablation")
    w_simclr: float = Field(1.0, ge=0)
    w_supcon_command: float = Field(1.0, ge=0)
    w_supcon_overlap: float = Field(1.0, ge=0)
    temperature: float = Field(0.1, gt=0)
    huber_delta: float = Field(0.5, gt=0)
    steps: int = Field(200, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    train_num_cpus: float = Field(1.0, gt=0, description="CPUs of the Ray task that trains it")
    train_num_gpus: float = Field(0.0, ge=0, description="GPUs of that task (0: CPU)")

    @model_validator(mode="after")
    def _heads(self) -> "GraphRAESettings":
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} must be a multiple of num_heads {self.num_heads}")
        return self

    def to_graph_rae_config(self):
        """The :class:`~mosaic_ray.autoscale.graph_rae.GraphRAEConfig` these settings make."""
        from mosaic_ray.autoscale.graph_rae import GraphRAEConfig
        from mosaic_ray.autoscale.scene_graph import GraphSpec

        keys = ("hidden_dim", "num_layers", "num_heads", "lambda_c", "lambda_m", "w_simclr", "w_supcon_command",
                "w_supcon_overlap", "temperature", "huber_delta", "steps", "batch_size", "lr", "weight_decay")
        return GraphRAEConfig(graph=GraphSpec(max_agents=self.max_agents, max_map=self.max_map),
                              **{k: getattr(self, k) for k in keys})


class AutoScaleConfig(_Strict):
    """AutoScale (``../shared/docs/AUTOSCALE.md``): the synthetic pool, Graph-RAE, clusters and the
    closed loop of rounds (Cluster-GA, Eq. 3-7; retrieval, Eq. 8), with its baselines. Budgets
    count synthetic scenes added to the whole real training split."""

    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig)
    graph_rae: GraphRAESettings = GraphRAESettings()
    # the embedding stage (Ray Data actor pool)
    embed_batch_size: int = Field(64, ge=1)
    embed_num_actors: int | None = Field(None, ge=1, description="None = fit to the CPUs Ray sees")
    embed_cpus_per_actor: float = Field(0.5, gt=0)
    embed_gpus_per_actor: float = Field(0.0, ge=0)
    # clusters (§4.2)
    n_clusters: int = Field(16, ge=1, description="K of the GMM on the real scenes (paper: 64 of 32/64/128)")
    pca_dims: int | None = Field(16, ge=1, description="PCA size before the GMM (None: none)")
    covariance_type: Literal["full", "diag", "spherical", "tied"] = "diag"
    rbf_bandwidth: float | None = Field(None, gt=0, description="σ of the RBF matrix; None = median heuristic")
    cluster_seed: int = 0
    # the loop
    budgets: list[int | float] = Field([0.25], min_length=1, description="synthetic scenes per training: ints "
                                       "are counts, floats in (0, 1] fractions of the synthetic pool")
    methods: list[str] = Field(["autoscale", "uniform"], min_length=1)
    rounds: int = Field(3, ge=1, description="closed-loop rounds after the real-only round 0")
    seeds: list[int] = Field([0], min_length=1)
    epochs: int = Field(40, ge=1, description="epochs of every training (the planner recipe otherwise); "
                        "NGSIM demo: 8 epochs of 167 clips left the real-only planner untrained")
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs per training trial (the project's training loop "
                                  "trains in-process on CPU, as the pilot runs do)")
    max_concurrent_trials: int | None = Field(None, ge=1)
    test_max_clips: int | None = Field(None, ge=1, description="evaluate on a fixed seeded subset of this many "
                                       "test clips (the same for every training); None = all")
    synthetic_calibration: int | float = Field(
        0, ge=0, description="held-out synthetic calibration split (the paper's D_cal, drawn cluster-stratified "
        "from the synthetic pool): scenes kept out of every selection and scored by every training next to "
        "calibration and test; an int counts scenes, a float in (0, 1) is a fraction of the pool; 0 = none")
    # Cluster-GA (Eq. 3-7)
    ridge_alpha: float = Field(1e-3, ge=0, description="λ of the weighted ridge (Eq. 4)")
    recency_decay: float = Field(1.0, gt=0, le=1, description="pair weight decay per round (Eq. 4's W)")
    eta0: float = Field(1.0, gt=0, description="η_0 of the half-cosine EG schedule (Eq. 6)")
    eg_steps: int | None = Field(None, ge=1, description="T of the schedule; None = rounds - 1")
    eg_inner_steps: int = Field(1, ge=1)
    gradient_scaling: Literal["max_abs", "none"] = "max_abs"
    repair_candidates: int = Field(16, ge=0, description="perturbed candidates of the feasibility repair")
    repair_scale: float = Field(0.1, ge=0)
    # retrieval (Eq. 8)
    anchor_quantile: float = Field(0.2, gt=0, le=1, description="share of each cluster's calibration scenes "
                                   "(lowest scores) used as anchors")
    anchors_per_cluster: int | None = Field(None, ge=1, description="fixed anchors per cluster (overrides the quantile)")
    n_neighbors: int = Field(256, ge=1)
    gain_offset: float = Field(1.0, ge=0, description="Eq. 8's (gain_offset + ĝ) factor")
    score_ceiling: float = Field(1.0, gt=0, description="Eq. 8's (score_ceiling − s_a) factor")
    # baselines
    iwr_pca_dims: int = Field(8, ge=1)
    iwr_bandwidth: str | float = "scott"
    chameleon_lambda: float = Field(1.0, gt=0)
    mosaic_pilot_sizes: list[int] = Field([25, 75], min_length=1, description="mosaic_clusters: pilot sizes "
                                          "per cluster (capped at its capacity)")
    selection_seed: int = 42

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[int | float]) -> list[int | float]:
        return _check_budgets(v)

    @field_validator("synthetic_calibration")
    @classmethod
    def _synthetic_calibration(cls, v: int | float) -> int | float:
        if isinstance(v, float) and not (0.0 <= v < 1.0):
            raise ValueError(f"autoscale.synthetic_calibration: a fraction must lie in [0, 1), got {v}")
        return v

    def synthetic_calibration_size(self, pool_size: int) -> int:
        """Scenes held out of a synthetic pool of ``pool_size`` (at most all but one).

        Raises:
            ValueError: the count leaves no selectable scene.
        """
        v = self.synthetic_calibration
        n = int(round(v * pool_size)) if isinstance(v, float) else int(v)
        if n and n >= pool_size:
            raise ValueError(f"autoscale.synthetic_calibration={v} holds out {n} of {pool_size} synthetic scenes: "
                             "none would be left to select")
        return n

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in AUTOSCALE_METHODS]
        if unknown:
            raise ValueError(f"unknown AutoScale methods {unknown}; known: {', '.join(AUTOSCALE_METHODS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"methods listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _dims(self) -> "AutoScaleConfig":
        if self.pca_dims is not None and self.pca_dims > self.graph_rae.hidden_dim:
            raise ValueError(f"pca_dims {self.pca_dims} exceeds graph_rae.hidden_dim {self.graph_rae.hidden_dim}")
        if self.iwr_pca_dims > self.graph_rae.hidden_dim:
            raise ValueError(f"iwr_pca_dims {self.iwr_pca_dims} exceeds graph_rae.hidden_dim")
        return self

    def resolve_budgets(self, pool_size: int) -> list[int]:
        """Budgets as sorted distinct synthetic-scene counts for a pool of ``pool_size`` scenes.

        Raises:
            ConfigError: a budget exceeds the pool or rounds to 0 scenes."""
        try:
            return resolve_budgets(self.budgets, pool_size)
        except BudgetError as e:
            raise ConfigError(f"autoscale.budgets: {e}") from None


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
    selection: SelectionConfig | None = Field(
        None, description="MOSAIC's budgets and methods; may be left out only when autoscale is set (then "
        "the MOSAIC steps score .. train do not run)")
    train: TrainConfig = TrainConfig()
    eval_batch_size: int = Field(64, ge=1)
    autoscale: AutoScaleConfig | None = Field(
        None, description="AutoScale's steps (synthesize .. autoscale_report) run only when this is set")

    @model_validator(mode="after")
    def _method_variants(self) -> "ExperimentConfig":
        if self.selection is None and self.autoscale is None:
            raise ValueError("selection: Field required (it may be left out only when an autoscale section is set)")
        try:
            self.resolved_methods()  # raises for an unknown @variant
        except ValueError as e:
            raise ValueError(f"selection.methods: {e}") from None
        if self.autoscale is not None and self.ingest.clip_s is not None:
            raise ValueError("ingest.clip_s: AutoScale takes every frame as a scene of its own; leave clip_s "
                             "unset in a config with an autoscale section (clips of several frames are "
                             "MOSAIC's selection unit)")
        return self

    def resolved_methods(self) -> list[ResolvedMethod]:
        """``selection.methods`` resolved against the domain variants, in config order.

        Raises:
            ValueError: a method names an unknown domain variant.
        """
        if self.selection is None:  # an AutoScale-only config: no MOSAIC method
            return []
        names = [v.name for v in self.domains.all_variants()]
        return [resolve_method(m, names[0], names) for m in self.selection.methods]

    @property
    def runs_mosaic(self) -> bool:
        """Whether the MOSAIC steps (score .. train, report) run: a ``selection`` section is set."""
        return self.selection is not None

    # ------------------------------------------------------------------ derived
    @property
    def run_uri(self) -> str:
        return f"{self.output_dir.rstrip('/')}/{self.name}"

    def resolved_data_dir(self) -> str:
        return self.data_dir or os.environ.get(DATA_DIR_ENV) or str(DEFAULT_DATA_DIR)

    def resolved_data_dirs(self) -> list[str]:
        """Input folders of the ingest: ``ingest.data_dirs`` if set, else ``[resolved_data_dir()]``."""
        return list(self.ingest.data_dirs) if self.ingest.data_dirs else [self.resolved_data_dir()]


def _section_model(annotation: Any, lists: bool = False) -> type[BaseModel] | None:
    """The config section (a model) a field holds: the annotation itself, the model of an
    ``Optional[...]``, or with ``lists`` the item model of a ``list[...]``; None for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) or (lists and origin is list):
        for a in typing.get_args(annotation):
            if isinstance(a, type) and issubclass(a, BaseModel):
                return a
    return None


def _level(parts: list[str] | tuple) -> str:
    return ".".join(str(p) for p in parts) if parts else "the top level"


def _section_at(loc: tuple) -> type[BaseModel] | None:
    """The config section model at a pydantic error location (list indices skipped)."""
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        sub = _section_model(field.annotation, lists=True) if field is not None else None
        if sub is None:
            return None
        model = sub
    return model


def _describe_error(err: dict) -> str:
    """One pydantic error as ``key: problem`` (unknown keys with the valid keys at their level)."""
    loc = tuple(err["loc"])
    where = ".".join(str(x) for x in loc)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        section = _section_at(loc[:-1])
        valid = f" (valid keys at {_level(loc[:-1])}: {', '.join(section.model_fields)})" if section else ""
        return f"{where}: unknown key{valid}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif err["type"] != "missing" and "input" in err:
        shown = repr(err["input"])
        msg += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    msg = " ".join(msg.split())
    return f"{where}: {msg}" if where else msg


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Set dotted keys (``--set train.epochs=5``) in a raw config mapping, in place.

    Every part of a key is checked against the schema before anything is set: a part that is
    not a key of its section, or a key below a plain value (``train.epochs.x``) or a list
    (``domains.variants.k``: set the whole list), is refused.

    Raises:
        ConfigError: one line naming the key and the valid keys at that level.
    """
    for key, value in overrides.items():
        parts = str(key).split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(f"--set {key}: empty key part; use dotted keys such as train.epochs")
        model: type[BaseModel] = ExperimentConfig
        node = raw
        for i, part in enumerate(parts):
            if part not in model.model_fields:
                raise ConfigError(f"--set {key}: unknown key {part!r} at {_level(parts[:i])}; "
                                  f"valid keys there: {', '.join(model.model_fields)}")
            if i == len(parts) - 1:
                node[part] = value
                break
            here = ".".join(parts[:i + 1])
            ann = model.model_fields[part].annotation
            sub = _section_model(ann)
            if sub is None:
                what = "a list" if typing.get_origin(ann) is list else "a value"
                raise ConfigError(f"--set {key}: {here} is {what}, not a section with keys; "
                                  f"set it as a whole: --set {here}=VALUE")
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {here} in the config file is {child!r}, not a mapping; "
                                  f"fix the file or set {here} as a whole")
            model, node = sub, child


def _resolve_path(value: str | None, base: Path) -> str | None:
    if value is None or "://" in value or os.path.isabs(value):
        return value
    return str((base / value).resolve())


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML.

    Args:
        path: YAML file.
        overrides: dotted keys to set after reading, e.g. ``{"train.num_workers": 1}``
            (checked against the schema by :func:`apply_overrides`).

    Raises:
        ConfigError: unreadable file, unknown keys, invalid values or a missing data directory
            (one line naming each bad key).
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {p}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config {p} must be a mapping at the top level")
    apply_overrides(raw, overrides or {})
    base = p.resolve().parent
    if raw.get("data_dir") is not None:
        raw["data_dir"] = _resolve_path(str(raw["data_dir"]), base)
    ing = raw.get("ingest")
    if isinstance(ing, dict) and isinstance(ing.get("data_dirs"), list):
        ing["data_dirs"] = [_resolve_path(str(d), base) for d in ing["data_dirs"]]
    sc = raw.get("score")
    if isinstance(sc, dict) and sc.get("checkpoint") is not None:
        sc["checkpoint"] = _resolve_path(str(sc["checkpoint"]), Path.cwd())
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
        raise ConfigError("invalid config: " + "; ".join(_describe_error(err) for err in e.errors())) from None
    for data_dir in cfg.resolved_data_dirs():
        if "://" not in data_dir and not Path(data_dir).is_dir():
            what = ("the ScenarioNet *.pkl scenarios" if cfg.ingest.source == "scenarionet"
                    else "the CommonRoad NGSIM XML files")
            raise ConfigError(
                f"data directory {data_dir!r} does not exist; set data_dir (or ingest.data_dirs) in the "
                f"config or {DATA_DIR_ENV} to the folder holding {what} (see README)")
    local = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    if local and cfg.train.num_workers * cfg.train.cpus_per_worker > (cfg.ray.num_cpus or os.cpu_count() or 1):
        raise ConfigError(
            f"train.num_workers × train.cpus_per_worker = "
            f"{cfg.train.num_workers * cfg.train.cpus_per_worker} exceeds the CPUs Ray will have; "
            "lower them (Ray Train waits forever otherwise)")
    return cfg
