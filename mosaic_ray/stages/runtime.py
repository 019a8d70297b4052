"""Starting and stopping Ray from an experiment config (local instance or a cluster)."""

from __future__ import annotations

import contextlib
import logging
import os

from mosaic_ray.config import ExperimentConfig

log = logging.getLogger(__name__)


def ray_env_defaults(cfg: ExperimentConfig) -> None:
    """Environment settings Ray reads at start-up (set only where the user has not)."""
    if cfg.ray.no_progress_timeout_s:
        os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", str(int(cfg.ray.no_progress_timeout_s)))
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(cfg.ray.train_health_check_interval_s))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@contextlib.contextmanager
def ray_session(cfg: ExperimentConfig):
    """Connect to ``cfg.ray.address`` or start a local Ray; shut down a local one on exit.

    An already initialised Ray (tests, ``ray job submit`` drivers) is reused and left running.
    """
    import ray

    ray_env_defaults(cfg)
    started = False
    if not ray.is_initialized():
        env = {"PYTHONWARNINGS": "ignore::DeprecationWarning",
               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]}
        kwargs = {"include_dashboard": cfg.ray.include_dashboard, "log_to_driver": True,
                  "runtime_env": {"env_vars": env}}
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        if address:  # a cluster (also inside `ray job submit`, which sets RAY_ADDRESS)
            ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, **kwargs)
        started = True
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS", "0") != "1"
        yield ray
    finally:
        if started:
            ray.shutdown()


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def tune_progress_callback(tag: str, total: int, fmt):
    """A Ray Tune callback printing one line per finished trial (``[tag] k/total …``) instead
    of Tune's periodic status tables; ``fmt(result_dict) -> str`` describes a result."""
    from ray import tune

    class _Progress(tune.Callback):
        def __init__(self):
            self.done = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.done += 1
            try:
                text = fmt(result)
            except Exception:  # a progress line must never fail a run
                text = ""
            print(f"[{tag}] {self.done}/{total} {text}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[{tag}] trial {trial.trial_id} failed (it is retried once)", flush=True)

    return _Progress()
