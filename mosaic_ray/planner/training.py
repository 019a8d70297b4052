"""The planner's one training loop (plain torch; Ray Train's DDP workers and Ray Tune's pilot
trials both call :func:`train_loop`).

One loop serves the base training on D_train, the pilot runs (continue the base checkpoint
on D_train ∪ top-n clips of a domain) and the final trainings on D_train ∪ D_sel, with one
:class:`TrainRecipe` built from the config by :func:`recipe_from_config`: AdamW, peak ``lr``,
``weight_decay``, global ``batch_size``, linear warm-up over ``warmup_steps`` then cosine decay
to ``min_lr_ratio * lr``, left-right mirror augmentation, distillation loss weight, gradient-norm
clipping. The recipe is ``planner.*``; ``pilot.*`` and ``train.*`` replace single values only
where they are set (``null`` = the planner's value).

Rule distillation: when the model has distillation heads and the feature batch carries
``distill_targets`` ((B, K, 8) float32 sub-scores of every anchor, NaN where unknown; see
:mod:`mosaic_ray.stages.distill`), the loss is ``imitation + distill_weight * BCE``. The
targets belong to the vocabulary as it is, so mirrored copies (the augmentation) get no
distillation target.

Reproducibility
---------------
Guaranteed: two runs with the same config, seed, data, worker count (``world``), torch /
numpy / Ray versions, on the same machine and CPU, give bit-identical weights and hence
identical evaluation numbers. What makes it so:

* rows are put in a canonical order before training: every DDP worker receives the whole
  featurised dataset, sorts it by ``frame_id`` and keeps rows ``rank::world``
  (:func:`shard_rows`); in-process trainings (pilots) sort the same way; so neither the
  Parquet read order nor Ray Data's ``map_batches`` output order nor its split of blocks
  among workers matters;
* the minibatch order of epoch ``e`` on rank ``r`` comes from
  ``numpy.random.default_rng([seed, r, e])`` (the same whether the run was resumed or not);
* ``torch.manual_seed(seed)`` before the model is built and before training, and
  ``torch.use_deterministic_algorithms(True, warn_only=True)``; ``torch_threads`` is fixed by
  the config (intra-op reductions are deterministic for a fixed thread count);
* the vocabulary's k-means sees its input in a canonical (sorted) order with a fixed seed
  (:func:`mosaic_ray.planner.model.build_vocabulary`), and evaluation iterates the clips in
  storage order (shards sorted by name, rows by ``clip_id``).

Not guaranteed: equality across different worker counts (a different ``world`` changes which
rows share a minibatch and the per-worker batch size), across different ``torch_threads``,
machines/CPU instruction sets, library versions, or on GPUs (CUDA kernels such as
scatter/index-add atomics and cuDNN autotuning are not bit-reproducible even with the flag).
A resumed run matches an uninterrupted one bit for bit (the model and optimizer state are
restored and the data order is the same; tests/test_train_resume.py kills a DDP worker and
compares), and a one-worker Ray Train run matches the in-process loop of
:func:`mosaic_ray.stages.trainer.train_planner_in_process` bit for bit.

Errors: the loop stops with :class:`NonFiniteTrainingError` (a ``RuntimeError``) naming the
run, epoch and step as soon as the loss or any weight is NaN/inf (both are checked after every
optimisation step, so no epoch callback, hence no checkpoint, ever sees non-finite weights;
a non-finite loss names the batch rows with non-finite features). Rows with non-finite features
are meant never to get there: the training datasets drop them with a logged count
(:func:`drop_nonfinite_rows`), and :func:`require_finite_weights` refuses a model before it is
evaluated or reported.
"""

from __future__ import annotations

from mosaic_ray.errors import MosaicError
import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch

from mosaic_ray.planner.features import INPUT_KEYS, mirror_batch
from mosaic_ray.planner.model import VocabularyPlanner

log = logging.getLogger(__name__)
TRAIN_KEYS = INPUT_KEYS + ("target",)
DISTILL_KEY = "distill_targets"  #: optional (B, K, 8) rule-distillation targets in a feature batch


class NonFiniteTrainingError(MosaicError, RuntimeError):
    """The loss or the weights became NaN/inf; the message names the run, epoch and step."""


@dataclass(frozen=True)
class TrainRecipe:
    """How a planner is optimised (one recipe for base, pilot and final trainings).

    Attributes:
        lr: AdamW peak learning rate.
        weight_decay: AdamW (decoupled) weight decay.
        batch_size: global minibatch in clips (``batch_size // world`` per DDP worker, at least 1),
            before the mirror augmentation doubles it.
        epochs: passes over the rows.
        warmup_steps: linear warm-up steps; then cosine decay over all steps.
        min_lr_ratio: LR floor as a fraction of ``lr``.
        mirror: add the left-right mirrored copy of every minibatch.
        distill_weight: weight of the distillation BCE next to the imitation loss.
        grad_clip: max global L2 norm of the gradients (None: no clipping).
        optimizer: only ``"adamw"``.
        steps: a fixed number of optimizer steps whatever the data size (``planner.steps``):
            :meth:`for_rows` turns it into the epochs that reach it for a given number of rows
            and :func:`train_loop` stops after exactly ``steps`` (the cosine schedule spans
            them); None = ``epochs`` passes, steps growing with the data.
    """

    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    epochs: int = 1
    warmup_steps: int = 20
    min_lr_ratio: float = 0.02
    mirror: bool = True
    distill_weight: float = 1.0
    grad_clip: float | None = 5.0
    optimizer: Literal["adamw"] = "adamw"
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer != "adamw":
            raise ValueError(f"unknown optimizer {self.optimizer!r}: only 'adamw'")
        if (self.lr <= 0 or self.batch_size < 1 or self.epochs < 1 or self.warmup_steps < 0
                or (self.steps is not None and self.steps < 1)):
            raise ValueError(f"invalid recipe {self}")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a dict (without ``steps`` when it is None, so recipes stored before the
        field existed keep their run names and fingerprints)."""
        d = asdict(self)
        if d["steps"] is None:
            del d["steps"]
        return d

    def for_rows(self, n_rows: int) -> "TrainRecipe":
        """The recipe for a training on ``n_rows`` rows: with ``steps`` set, ``epochs`` =
        ceil(steps / ceil(n_rows / batch_size)), of which :func:`train_loop` runs exactly
        ``steps`` optimizer steps (the last epoch stops part-way); without it, unchanged."""
        if self.steps is None:
            return self
        return replace(self, epochs=max(1, math.ceil(self.steps / self.steps_per_epoch(n_rows))))

    def steps_per_epoch(self, n_rows: int, world: int = 1) -> int:
        """Optimizer steps of one epoch over ``n_rows`` rows on ``world`` ranks (each rank takes
        ``batch_size // world`` rows a step; at least 1)."""
        bs = max(1, self.batch_size // world)
        return max(1, math.ceil(int(n_rows) / (world * bs)))

    def total_steps(self, n_rows: int, world: int = 1) -> int:
        """Optimizer steps of a whole training on ``n_rows`` rows: ``epochs`` epochs, capped at
        ``steps`` when set (what :func:`train_loop` runs)."""
        total = self.epochs * self.steps_per_epoch(n_rows, world)
        return total if self.steps is None else min(total, self.steps)

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate of optimisation step ``step`` (0-based) of ``total``."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        cos = 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
        return max(self.lr * warm * cos, self.lr * self.min_lr_ratio)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


def recipe_from_config(cfg, kind: Literal["base", "pilot", "final"] = "base",
                       epochs: int | None = None) -> TrainRecipe:
    """The training recipe of a run from an :class:`~mosaic_ray.config.ExperimentConfig`.

    ``planner.{lr, weight_decay, batch_size, warmup_steps, min_lr_ratio, grad_clip,
    augment_mirror, distill_loss_weight}`` is the recipe; for ``kind="pilot"`` the values of
    ``pilot.{lr, weight_decay, batch_size, warmup_steps}`` that are not None replace them, for
    ``kind="final"`` those of ``train.*``. ``epochs`` defaults to ``planner.base_epochs``,
    ``pilot.epochs`` or ``train.epochs``.

    Raises:
        ValueError: unknown ``kind``.
    """
    pc = cfg.planner
    base = TrainRecipe(lr=pc.lr, weight_decay=pc.weight_decay, batch_size=pc.batch_size, epochs=pc.base_epochs,
                       warmup_steps=pc.warmup_steps, min_lr_ratio=pc.min_lr_ratio, mirror=pc.augment_mirror,
                       distill_weight=pc.distill_loss_weight, grad_clip=pc.grad_clip,
                       steps=pc.steps)
    if kind == "base":
        over = {}
    elif kind in ("pilot", "final"):
        sec = cfg.pilot if kind == "pilot" else cfg.train
        over = {k: getattr(sec, k) for k in ("lr", "weight_decay", "batch_size", "warmup_steps")
                if getattr(sec, k, None) is not None}
        over["epochs"] = sec.epochs
    else:
        raise ValueError(f"unknown recipe kind {kind!r}: base, pilot or final")
    if epochs is not None:
        over["epochs"] = int(epochs)
    return replace(base, **over)


def batch_keys(data: dict) -> tuple[str, ...]:
    """Training keys present in ``data`` (:data:`TRAIN_KEYS` plus the distillation targets)."""
    return TRAIN_KEYS + ((DISTILL_KEY,) if DISTILL_KEY in data else ())


def to_tensors(batch: dict[str, np.ndarray], keys: Iterable[str] = TRAIN_KEYS,
               device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """numpy feature batch -> torch tensors (copies; masks stay bool)."""
    out = {}
    for k in keys:
        v = np.asarray(batch[k])
        t = torch.from_numpy(np.array(v, copy=True))
        out[k] = t.to(device)
    return out


def shard_rows(data: dict[str, np.ndarray], rank: int = 0, world: int = 1) -> dict[str, np.ndarray]:
    """Canonical rows of one worker: all rows sorted by ``frame_id`` (unique; ``clip_id`` where
    the rows have no ``frame_id``: then a frame per clip), then rows ``rank::world``. Every array
    of ``data`` is indexed along axis 0 (same length N). A clip's frames share its ``clip_id``,
    so sorting by it alone would leave their order to the order the rows arrived in.

    Raises:
        KeyError: ``data`` has neither ``frame_id`` nor ``clip_id``.
    """
    ids = np.asarray(data["frame_id"] if "frame_id" in data else data["clip_id"]).astype(str)
    order = np.argsort(ids, kind="stable")[rank::world]
    return {k: np.asarray(v)[order] for k, v in data.items()}


def epoch_order(n_local: int, steps: int, per_rank_batch: int, seed: int, rank: int, epoch: int) -> np.ndarray:
    """Row indices of one epoch on one rank: ``steps * per_rank_batch`` indices made of
    concatenated permutations of ``range(n_local)`` from ``default_rng([seed, rank, epoch])``
    (full minibatches on every rank, the same order whether the run was resumed or not)."""
    rng = np.random.default_rng([seed, rank, epoch])
    reps = math.ceil(steps * per_rank_batch / max(n_local, 1))
    return np.concatenate([rng.permutation(n_local) for _ in range(reps)])[:steps * per_rank_batch]


def train_step(model, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor], mirror: bool,
               distill_weight: float = 1.0, grad_clip: float | None = 5.0) -> float:
    """One optimisation step on ``batch`` (plus its mirror image when ``mirror``).

    ``model`` is a :class:`VocabularyPlanner` or a DDP wrapper of one (its backward all-reduces
    the gradients). With distillation heads the loss adds ``distill_weight`` times the BCE.
    When the loss is not finite the gradients are computed (so that DDP peers are not left
    waiting) but the optimizer does not step; the caller raises.

    Returns:
        the loss (float; NaN/inf when it was not finite).
    """
    core = model.module if hasattr(model, "module") else model
    distill = bool(getattr(core.spec, "distill", False))
    targets = batch.get(DISTILL_KEY)
    batch = {k: v for k, v in batch.items() if k != DISTILL_KEY}
    if mirror:
        m = mirror_batch(batch, xp=torch)
        batch = {k: torch.cat([batch[k], m[k]]) for k in batch}
        if targets is not None:  # the mirrored scenes have no targets for this vocabulary
            targets = torch.cat([targets, torch.full_like(targets, float("nan"))])
    if distill:
        logits, _, sub = model(batch, with_subscores=True)
        if targets is None:
            targets = torch.full_like(sub, float("nan"))
    else:
        logits, _ = model(batch)
    loss = core.imitation_loss(logits, batch["target"])
    if distill:
        loss = loss + distill_weight * core.distill_loss(sub, targets.to(sub.dtype))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    value = float(loss.detach())
    if not math.isfinite(value):
        return value
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return value


@dataclass
class EpochState:
    """What the per-epoch callback of :func:`train_loop` sees (after epoch ``epoch``)."""

    epoch: int  #: 0-based epoch just finished
    step: int  #: optimisation steps done so far (over the whole run)
    loss: float  #: mean loss of the epoch on this rank
    model: VocabularyPlanner  #: the unwrapped model
    optimizer: torch.optim.Optimizer

    def state_dict(self) -> dict[str, Any]:
        """A resume state for :func:`train_loop` (model, optimizer, epoch, step)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "step": self.step}


def seed_torch(seed: int) -> None:
    """Seed torch's generators and ask for deterministic kernels (warn-only: an op without a
    deterministic implementation warns instead of failing)."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _check_finite_weights(core: torch.nn.Module) -> str | None:
    for name, p in core.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return name
    return None


def non_finite_weights(model) -> list[str]:
    """Names of the parameters of ``model`` (or of a DDP wrapper's ``.module``) holding a NaN/inf."""
    core = model.module if hasattr(model, "module") else model
    return [name for name, p in core.named_parameters() if not bool(torch.isfinite(p).all())]


def require_finite_weights(model, what: str) -> None:
    """Refuse a model with non-finite weights (before it is evaluated, saved or reported).

    Raises:
        NonFiniteTrainingError: naming ``what`` (e.g. the checkpoint) and the first bad tensors.
    """
    bad = non_finite_weights(model)
    if bad:
        total = sum(1 for _ in (model.module if hasattr(model, "module") else model).parameters())
        raise NonFiniteTrainingError(f"{what}: {len(bad)} of {total} weight tensors are NaN/inf "
                                     f"(e.g. {', '.join(bad[:3])}); no result is reported for it")


def finite_rows(data: dict[str, np.ndarray], keys: Iterable[str] = TRAIN_KEYS) -> np.ndarray:
    """(N,) bool: rows whose float training arrays (``keys`` present in ``data``: the inputs and
    the imitation target; masks and ``distill_targets``, NaN where unknown, are not checked)
    are all finite."""
    n = len(data["target"]) if "target" in data else len(next(iter(data.values())))
    ok = np.ones(n, dtype=bool)
    for k in keys:
        if k not in data:
            continue
        v = np.asarray(data[k])
        if v.dtype.kind == "f" and v.size:
            ok &= np.isfinite(v.reshape(n, -1)).all(axis=1)
    return ok


def drop_nonfinite_rows(data: dict[str, np.ndarray], name: str = "training"
                        ) -> tuple[dict[str, np.ndarray], list[str]]:
    """``data`` without the rows :func:`finite_rows` rejects, and those rows' clip ids (logged
    as a warning with their count), so no NaN/inf feature reaches a training batch.

    Every array of ``data`` is indexed along axis 0; ``clip_id`` names the rows."""
    ok = finite_rows(data)
    if ok.all():
        return data, []
    ids = [str(c) for c in np.asarray(data.get("clip_id", np.arange(len(ok))))[~ok]]
    log.warning("%s: %d of %d training rows dropped for non-finite features (e.g. %s)",
                name, len(ids), len(ok), ", ".join(ids[:5]))
    return {k: np.asarray(v)[ok] for k, v in data.items()}, ids


def train_loop(model, data: dict[str, np.ndarray], recipe: TrainRecipe, *, seed: int, rank: int = 0,
               world: int = 1, n_total: int | None = None, resume: dict[str, Any] | None = None,
               on_epoch: Callable[[EpochState], None] | None = None, name: str = "training") -> list[float]:
    """Train ``model`` in place on this rank's rows; returns the mean loss of each epoch run.

    Args:
        model: a :class:`VocabularyPlanner`, or a DDP wrapper of one (``.module``).
        data: this rank's feature arrays, axis 0 = rows: the :data:`TRAIN_KEYS` (see
            :mod:`mosaic_ray.planner.features`: e.g. ``target`` (N, 8, 3) float32 m / rad) and
            optionally ``distill_targets`` (N, K, 8) float32; other keys (``clip_id``) are ignored.
            Put them in canonical order first (:func:`shard_rows`).
        recipe: optimiser, schedule, batch size, epochs, augmentation.
        seed: shuffling seed (the order of epoch e on rank r is :func:`epoch_order`).
        rank, world: this worker's rank and the number of workers (1: no DDP).
        n_total: rows over all ranks (default ``len(data["target"])``; required when world > 1);
            every rank runs ``ceil(n_total / (world * per_rank_batch))`` steps per epoch.
        resume: a state from :meth:`EpochState.state_dict` (``model`` optional, ``optimizer``,
            ``epoch`` last finished, ``step``): training goes on with the next epoch.
        on_epoch: called after every epoch with an :class:`EpochState` (checkpointing, reporting).
        name: the run's name for error messages.

    Raises:
        ValueError: no rows on this rank, non-finite imitation targets, or ``n_total`` missing
            with ``world > 1``.
        NonFiniteTrainingError: the loss or a weight became NaN/inf (names run, epoch, step).
    """
    core = model.module if hasattr(model, "module") else model
    n_local = len(data["target"])
    if n_local == 0:
        raise ValueError(f"{name}: no training rows on rank {rank} of {world}")
    if not np.isfinite(data["target"]).all():
        raise ValueError(f"{name}: non-finite imitation targets in the training data")
    if n_total is None:
        if world > 1:
            raise ValueError(f"{name}: n_total (rows over all ranks) is required with world={world}")
        n_total = n_local
    keys = batch_keys(data)
    bs = max(1, recipe.batch_size // world)
    steps_per_epoch = recipe.steps_per_epoch(n_total, world)
    total = recipe.total_steps(n_total, world)  # with recipe.steps the last epoch stops part-way
    seed_torch(seed)
    opt = recipe.make_optimizer(model.parameters())
    start_epoch, step = 0, 0
    if resume is not None:
        if "model" in resume:
            core.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        start_epoch, step = int(resume["epoch"]) + 1, int(resume["step"])
    history = []
    model.train()
    for epoch in range(start_epoch, recipe.epochs):
        order = epoch_order(n_local, steps_per_epoch, bs, seed, rank, epoch)
        losses = []
        for i in range(steps_per_epoch):  # the same count on every rank (DDP all-reduces each step)
            if step >= total:
                break
            idx = order[i * bs:(i + 1) * bs]
            lr = recipe.lr_at(step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = train_step(model, opt, to_tensors({k: data[k][idx] for k in keys}, keys), recipe.mirror,
                              recipe.distill_weight, recipe.grad_clip)
            if not math.isfinite(loss):
                bad_rows = ~finite_rows({k: data[k][idx] for k in keys})
                why = "lower the learning rate or check the data"
                if bad_rows.any():  # name each row once (a small dataset repeats rows in a batch)
                    ids = list(dict.fromkeys((np.asarray(data["clip_id"])[idx] if "clip_id" in data
                                              else idx)[bad_rows].tolist()))
                    why = (f"{len(ids)} row(s) of the batch have non-finite features "
                           f"(e.g. {', '.join(map(str, ids[:3]))})")
                raise NonFiniteTrainingError(f"{name}: loss became {loss} at epoch {epoch}, step {step} "
                                             f"(rank {rank}, lr {lr:.3g}); {why}")
            bad = _check_finite_weights(core)
            if bad is not None:
                raise NonFiniteTrainingError(f"{name}: weight {bad!r} became non-finite at epoch {epoch}, "
                                             f"step {step} (rank {rank}, lr {lr:.3g})")
            losses.append(loss)
            step += 1
        history.append(float(np.mean(losses)))
        if on_epoch is not None:
            on_epoch(EpochState(epoch, step, history[-1], core, opt))
    model.eval()
    return history


def fit(model: VocabularyPlanner, data: dict[str, np.ndarray], *, epochs: int | None = None,
        lr: float | None = None, weight_decay: float | None = None, batch_size: int | None = None,
        seed: int, mirror: bool | None = None, on_epoch: Callable[[int, float], None] | None = None,
        distill_weight: float | None = None, recipe: TrainRecipe | None = None,
        name: str = "fit") -> list[float]:
    """In-process training (one rank) with :func:`train_loop`; returns the mean loss per epoch.

    Either pass ``recipe`` or the single values (``epochs``, ``lr``, ``weight_decay``,
    ``batch_size`` required then; the others take :class:`TrainRecipe`'s defaults); single
    values given next to a recipe replace the recipe's. Rows are used in the order given (sort
    them with :func:`shard_rows` for order-independent results). ``on_epoch(epoch, loss)``.

    Raises:
        ValueError: empty data, non-finite targets, or neither a recipe nor the four values.
        NonFiniteTrainingError: see :func:`train_loop`.
    """
    given = {k: v for k, v in dict(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                                   mirror=mirror, distill_weight=distill_weight).items() if v is not None}
    if recipe is None:
        missing = [k for k in ("epochs", "lr", "weight_decay", "batch_size") if k not in given]
        if missing:
            raise ValueError(f"fit: pass a recipe or {missing}")
        recipe = TrainRecipe(**given)
    elif given:
        recipe = replace(recipe, **given)
    if len(data["target"]) == 0:
        raise ValueError("no training clips")
    cb = (lambda s: on_epoch(s.epoch, s.loss)) if on_epoch is not None else None
    return train_loop(model, data, recipe, seed=seed, on_epoch=cb, name=name)


@torch.no_grad()
def plan_batches(model: VocabularyPlanner, data: dict[str, np.ndarray], batch_size: int = 256,
                 prefix: str = "") -> dict[str, np.ndarray]:
    """Run the planner over a feature dict (keys ``prefix + INPUT_KEYS``); concatenated outputs
    in row order (see :meth:`VocabularyPlanner.plan` for the keys and shapes)."""
    model.eval()
    n = len(data[prefix + "ego"])
    outs: dict[str, list] = {}
    for i in range(0, n, batch_size):
        mb = {k: data[prefix + k][i:i + batch_size] for k in INPUT_KEYS}
        res = model.plan(to_tensors(mb, INPUT_KEYS, next(model.parameters()).device))
        for k, v in res.items():
            outs.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}
