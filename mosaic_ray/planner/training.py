"""The planner's training loop (plain torch; Ray Train and Ray Tune call into it).

One loop serves the base training on D_train, the pilot runs (continue the base checkpoint
on D_train ∪ top-n clips of a domain) and the final training on D_train ∪ D_sel. It is
deterministic for a given seed on CPU.

Rule distillation: when the model has distillation heads and the feature batch carries
``distill_targets`` ((B, K, 8) float32 sub-scores of every anchor, NaN where unknown; see
:mod:`mosaic_ray.stages.distill`), the loss is ``imitation + distill_weight * BCE``. The
targets belong to the vocabulary as it is, so mirrored copies (the augmentation) get no
distillation target.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from mosaic_ray.planner.features import INPUT_KEYS, mirror_batch
from mosaic_ray.planner.model import VocabularyPlanner

TRAIN_KEYS = INPUT_KEYS + ("target",)
DISTILL_KEY = "distill_targets"  #: optional (B, K, 8) rule-distillation targets in a feature batch


def batch_keys(data: dict) -> tuple[str, ...]:
    """Training keys present in ``data`` (:data:`TRAIN_KEYS` plus the distillation targets)."""
    return TRAIN_KEYS + ((DISTILL_KEY,) if DISTILL_KEY in data else ())


def to_tensors(batch: dict[str, np.ndarray], keys: Iterable[str] = TRAIN_KEYS,
               device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """numpy feature batch -> torch tensors (copies; masks become bool)."""
    out = {}
    for k in keys:
        v = np.asarray(batch[k])
        t = torch.from_numpy(np.array(v, copy=True))
        out[k] = t.to(device)
    return out


def minibatches(data: dict[str, np.ndarray], batch_size: int, rng: np.random.Generator,
                keys: Iterable[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Shuffled minibatches of a feature dict (arrays indexed along axis 0); ``keys`` default:
    :func:`batch_keys`."""
    keys = batch_keys(data) if keys is None else keys
    n = len(data["target"])
    order = rng.permutation(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield {k: data[k][idx] for k in keys}


def cosine_lr(opt: torch.optim.Optimizer, base_lr: float, step: int, total: int, warmup: int = 20) -> None:
    lr = base_lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    for g in opt.param_groups:
        g["lr"] = max(lr, base_lr * 0.02)


def train_step(model: VocabularyPlanner, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               mirror: bool, distill_weight: float = 1.0) -> float:
    """One optimisation step on ``batch`` (plus its mirror image when ``mirror``); with
    distillation heads the loss adds ``distill_weight`` times the distillation BCE."""
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
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return float(loss.detach())


def fit(model: VocabularyPlanner, data: dict[str, np.ndarray], *, epochs: int, lr: float,
        weight_decay: float, batch_size: int, seed: int, mirror: bool = True,
        on_epoch: Callable[[int, float], None] | None = None, distill_weight: float = 1.0) -> list[float]:
    """Train ``model`` in place on a feature dict; returns the mean loss per epoch.

    ``data`` may carry ``distill_targets`` (N, K, 8) for a model with distillation heads
    (loss: imitation + ``distill_weight`` * BCE).

    Raises:
        ValueError: empty data or non-finite targets.
    """
    n = len(data["target"])
    if n == 0:
        raise ValueError("no training clips")
    if not np.isfinite(data["target"]).all():
        raise ValueError("non-finite imitation targets in the training data")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    history = []
    step = 0
    model.train()
    for ep in range(epochs):
        losses = []
        for mb in minibatches(data, batch_size, rng):
            cosine_lr(opt, lr, step, total)
            losses.append(train_step(model, opt, to_tensors(mb, tuple(mb)), mirror, distill_weight))
            step += 1
        history.append(float(np.mean(losses)))
        if on_epoch:
            on_epoch(ep, history[-1])
    model.eval()
    return history


@torch.no_grad()
def plan_batches(model: VocabularyPlanner, data: dict[str, np.ndarray], batch_size: int = 256,
                 prefix: str = "") -> dict[str, np.ndarray]:
    """Run the planner over a feature dict (keys ``prefix + INPUT_KEYS``); concatenated outputs."""
    model.eval()
    n = len(data[prefix + "ego"])
    outs: dict[str, list] = {}
    for i in range(0, n, batch_size):
        mb = {k: data[prefix + k][i:i + batch_size] for k in INPUT_KEYS}
        res = model.plan(to_tensors(mb, INPUT_KEYS, next(model.parameters()).device))
        for k, v in res.items():
            outs.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}
