"""The planner's training loop (plain torch; Ray Train and Ray Tune call into it).

One loop serves the base training on D_train, the pilot runs (continue the base checkpoint
on D_train ∪ top-n clips of a domain) and the final training on D_train ∪ D_sel. It is
deterministic for a given seed on CPU.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from mosaic_ray.planner.features import INPUT_KEYS, mirror_batch
from mosaic_ray.planner.model import VocabularyPlanner

TRAIN_KEYS = INPUT_KEYS + ("target",)


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
                keys: Iterable[str] = TRAIN_KEYS) -> Iterator[dict[str, np.ndarray]]:
    """Shuffled minibatches of a feature dict (arrays indexed along axis 0)."""
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
               mirror: bool) -> float:
    """One optimisation step on ``batch`` (plus its mirror image when ``mirror``)."""
    if mirror:
        m = mirror_batch(batch, xp=torch)
        batch = {k: torch.cat([batch[k], m[k]]) for k in batch}
    logits, _ = model(batch)
    core = model.module if hasattr(model, "module") else model
    loss = core.imitation_loss(logits, batch["target"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return float(loss.detach())


def fit(model: VocabularyPlanner, data: dict[str, np.ndarray], *, epochs: int, lr: float,
        weight_decay: float, batch_size: int, seed: int, mirror: bool = True,
        on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``model`` in place on a feature dict; returns the mean loss per epoch.

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
            losses.append(train_step(model, opt, to_tensors(mb), mirror))
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
