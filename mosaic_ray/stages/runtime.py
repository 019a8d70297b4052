"""Ray plumbing shared by the stages: starting / connecting Ray from a config (local instance
or a cluster), sizing actor pools and trial concurrency from the resources Ray sees, and the
Tune progress bar."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

from mosaic_ray.config import ExperimentConfig

log = logging.getLogger(__name__)


def cluster_address(cfg: ExperimentConfig) -> str | None:
    """The Ray cluster to connect to: ``ray.address``, else ``$RAY_ADDRESS`` (set inside ``ray job
    submit``); None = start a local instance."""
    return cfg.ray.address or os.environ.get("RAY_ADDRESS") or None


def ray_env_defaults(cfg: ExperimentConfig) -> None:
    """Environment settings Ray reads at start-up (set only where the user has not)."""
    if cfg.ray.no_progress_timeout_s:
        os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", str(int(cfg.ray.no_progress_timeout_s)))
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(cfg.ray.train_health_check_interval_s))
    if cluster_address(cfg) is None:
        # a local instance is one node that nobody drains: no preemption-watcher actor (one
        # process less per Ray Train run); clusters keep Ray's default
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@contextlib.contextmanager
def ray_session(cfg: ExperimentConfig):
    """Connect to ``cfg.ray.address`` or start a local Ray; shut down a local one on exit.

    An already initialised Ray (tests, ``ray job submit`` drivers) is reused and left running.
    A Python SIGTERM handler the caller installed (the CLI's) is still in force after ``ray.init``.
    """
    import ray

    ray_env_defaults(cfg)
    started = False
    main = threading.current_thread() is threading.main_thread()
    term_handler = signal.getsignal(signal.SIGTERM) if main else None
    if not ray.is_initialized():
        env = {"PYTHONWARNINGS": "ignore::DeprecationWarning",
               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]}
        kwargs = {"include_dashboard": cfg.ray.include_dashboard, "log_to_driver": True,
                  "runtime_env": {"env_vars": env}}
        address = cluster_address(cfg)
        if address:  # a cluster (also inside `ray job submit`, which sets RAY_ADDRESS)
            ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, **kwargs)
        started = True
        if callable(term_handler):  # ray.init replaces a Python SIGTERM handler (and its core worker
            signal.signal(signal.SIGTERM, term_handler)  # adds a C-level one that aborts): keep the caller's
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS", "0") != "1"
        yield ray
    finally:
        if started:
            ray.shutdown()


def cluster_cpus() -> float:
    """CPUs in the Ray cluster (1 when Ray reports none)."""
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    """GPUs in the Ray cluster."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def default_num_actors(cfg: ExperimentConfig) -> int:
    """Scoring actors (score, score_train, distill): ``score.num_actors`` if set, else as many
    as fit the cluster's GPUs (GPU actors) or CPUs, leaving half a CPU for the read tasks."""
    if cfg.score.num_actors:
        return cfg.score.num_actors
    if cfg.score.num_gpus_per_actor > 0:
        return max(1, int(cluster_gpus() // cfg.score.num_gpus_per_actor))
    cpus = cluster_cpus()
    return max(1, min(int(cpus), int((cpus - 0.5) // cfg.score.num_cpus_per_actor)))


def score_pool_sizes(cfg: ExperimentConfig, n_shards: int, cpus: float | None = None,
                     gpus: float | None = None) -> dict[str, tuple[int, int]]:
    """``{"plan": (min, max), "epdms": (min, max)}`` actors of the two-stage score step.

    Unset maxima fit the cluster Ray sees (``cpus``/``gpus``, default: :func:`cluster_cpus` /
    :func:`cluster_gpus`): planner actors on GPUs take GPUs / ``plan.num_gpus_per_actor``
    of them, CPU planner actors one per 8 CPUs; EPDMS actors one per CPU left after the CPU
    planner actors' CPUs (their ``num_cpus_per_actor`` is what Ray reserves; one actor per
    core keeps the cores busy without oversubscribing them). Every pool keeps at least one actor,
    at most one per shard, and a minimum never above its maximum. On 2 CPUs: 1 planner actor and
    2 EPDMS actors, 1.5 CPUs reserved (the 2-core deadlocks of RAY_NOTES.md need a free half CPU
    only where read tasks run; this step reads inside its actors).

    Raises:
        UsageError: the configured ``num_gpus_per_actor`` asks for GPUs the cluster does not have.
    """
    from mosaic_ray.errors import UsageError

    cpus = cluster_cpus() if cpus is None else float(cpus)
    gpus = cluster_gpus() if gpus is None else float(gpus)
    p, e = cfg.score.plan, cfg.score.epdms
    cap = max(1, n_shards)
    if p.num_gpus_per_actor > 0:
        if gpus < p.num_gpus_per_actor:
            raise UsageError(f"score.plan.num_gpus_per_actor={p.num_gpus_per_actor} but the Ray cluster has "
                             f"{gpus:g} GPUs: set it to 0 (CPU planner) or start Ray with GPUs")
        plan_max = p.max_actors or max(1, int(gpus // p.num_gpus_per_actor))
    else:
        plan_max = p.max_actors or max(1, int(cpus // 8))
    plan_max = min(plan_max, cap)
    plan_cpus = plan_max * p.num_cpus_per_actor
    epdms_max = e.max_actors or max(1, int(cpus - plan_cpus + 0.5))
    epdms_max = min(epdms_max, cap)
    return {"plan": (min(p.min_actors, plan_max), plan_max), "epdms": (min(e.min_actors, epdms_max), epdms_max)}


def pilot_concurrency(cfg: ExperimentConfig) -> int:
    """Pilot trials at a time: ``pilot.max_concurrent_trials`` or the CPUs over ``cpus_per_trial``."""
    return cfg.pilot.max_concurrent_trials or max(1, int(cluster_cpus() // cfg.pilot.cpus_per_trial))


def tune_progress_callback(tag: str, total: int, fmt):
    """A Ray Tune callback showing a progress bar over the ``total`` trials (tqdm, on stderr)
    and logging one line per finished trial (``[tag] k/total …``) instead of Tune's periodic
    status tables; ``fmt(result_dict) -> str`` describes a result."""
    from ray import tune
    from tqdm.auto import tqdm

    class _Progress(tune.Callback):
        def __init__(self):
            self.done = 0
            self.bar = None

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.done += 1
            if self.bar is None:
                self.bar = tqdm(total=total, desc=tag, unit="trial", leave=False,
                                disable=os.environ.get("MOSAIC_PROGRESS", "1") == "0")
            self.bar.update(1)
            try:
                text = fmt(result)
            except Exception:  # a progress line must never fail a run
                text = ""
            log.info("[%s] %d/%d %s", tag, self.done, total, text)

        def on_trial_error(self, iteration, trials, trial, **info):
            log.warning("[%s] trial %s failed (it is retried once)", tag, trial.trial_id)

        def on_experiment_end(self, trials, **info):
            if self.bar is not None:
                self.bar.close()

    return _Progress()
