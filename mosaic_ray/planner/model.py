"""A small vocabulary planner in the spirit of Hydra-MDP (torch).

The encoder turns the ego history, the nearest agents and the nearest lane centre-lines
(PointNet-style shared MLPs with masked max-pooling) and the route into one scene embedding;
a scoring head rates each of K trajectory anchors (the vocabulary: k-means of training
futures) against it. Training imitates the logged future with Hydra-MDP's soft target
``softmax(-||anchor - expert||² / T)`` over the vocabulary. Per clip the planner exposes:

* the chosen trajectory (8, 3): the anchor with the highest logit, x, y (m), heading (rad),
  ego frame, at +0.5 .. +4.0 s;
* the vocabulary logits (K,) (entropy of their softmax is the uncertainty baseline's score);
* the scene embedding (E,) (clustering and coreset use it).

Source: Hydra-MDP (Li et al., 2024) imitation head; MOSAIC Section 7.1 uses Hydra-MDP as
the planner. The rule-distillation heads of Hydra-MDP are not part of this version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from mosaic_ray.planner.features import AGENT_FEATS, LANE_ATTRS, POS_SCALE, FeatureSpec


@dataclass(frozen=True)
class PlannerSpec:
    """Architecture hyper-parameters (stored in checkpoints)."""

    vocab_size: int = 256
    embed_dim: int = 128
    hidden_dim: int = 128
    max_agents: int = 24
    max_lanes: int = 40
    lane_points: int = 10
    route_points: int = 16
    temperature_m: float = 1.0

    @property
    def features(self) -> FeatureSpec:
        return FeatureSpec(self.max_agents, self.max_lanes, self.lane_points, self.route_points)

    @classmethod
    def from_config(cls, pc) -> "PlannerSpec":
        return cls(pc.vocab_size, pc.embed_dim, pc.hidden_dim, pc.max_agents, pc.max_lanes,
                   pc.lane_points, pc.route_points, pc.temperature_m)


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.LayerNorm(h), nn.ReLU(), nn.Linear(h, o))


def _masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = x.masked_fill(~mask.unsqueeze(-1), -1e4)
    out = x.max(dim=-2).values
    return torch.where(mask.any(-1, keepdim=True), out, torch.zeros_like(out))


class VocabularyPlanner(nn.Module):
    """Scene encoder + vocabulary scoring head.

    Args:
        spec: sizes.
        anchors: (K, 8, 3) float tensor, the trajectory vocabulary (m, m, rad, ego frame).
    """

    def __init__(self, spec: PlannerSpec, anchors: torch.Tensor):
        super().__init__()
        if anchors.ndim != 3 or anchors.shape[1:] != (8, 3):
            raise ValueError(f"anchors must be (K, 8, 3), got {tuple(anchors.shape)}")
        self.spec = spec
        H, E = spec.hidden_dim, spec.embed_dim
        self.register_buffer("anchors", anchors.float().clone())
        self.ego_enc = _mlp(16 * 5, H, H)
        self.agent_enc = _mlp(AGENT_FEATS, H, H)
        self.lane_enc = _mlp(spec.lane_points * 2 + LANE_ATTRS, H, H)
        self.route_enc = _mlp(spec.route_points * 2, H, H)
        self.fuse = nn.Sequential(nn.Linear(4 * H, H), nn.LayerNorm(H), nn.ReLU(), nn.Linear(H, E))
        self.anchor_enc = _mlp(8 * 4, H, H)
        self.query = nn.Linear(E, H)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(H, H), nn.ReLU(), nn.Linear(H, 1))

    @property
    def vocab_size(self) -> int:
        return int(self.anchors.shape[0])

    def _anchor_features(self) -> torch.Tensor:
        a = self.anchors
        f = torch.cat([a[..., :2] / POS_SCALE, torch.cos(a[..., 2:]), torch.sin(a[..., 2:])], -1)
        return self.anchor_enc(f.flatten(1))

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scene embedding (B, E) float32 from a feature batch (see :mod:`features`)."""
        B = batch["ego"].shape[0]
        ego = self.ego_enc(batch["ego"].reshape(B, -1))
        ag = _masked_max(self.agent_enc(batch["agents"]), batch["agents_mask"].bool())
        lanes = torch.cat([batch["lanes"].flatten(2), batch["lanes_attr"]], -1)
        ln = _masked_max(self.lane_enc(lanes), batch["lanes_mask"].bool())
        rt = self.route_enc(batch["route"].reshape(B, -1))
        return self.fuse(torch.cat([ego, ag, ln, rt], -1))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits (B, K), embedding (B, E))."""
        emb = self.embed(batch)
        q = self.query(emb)  # (B, H)
        a = self._anchor_features()  # (K, H)
        logits = self.head(q[:, None, :] + a[None, :, :]).squeeze(-1)
        return logits, emb

    def imitation_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Hydra-MDP imitation loss: cross-entropy to softmax(-d²/T) over the vocabulary.

        Args:
            logits: (B, K). target: (B, 8, 3) expert poses (m, m, rad).
        """
        d2 = ((self.anchors[None, :, :, :2] - target[:, None, :, :2]) ** 2).sum(-1).mean(-1)  # (B, K)
        soft = torch.softmax(-d2 / self.spec.temperature_m, dim=-1)
        return -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()

    @torch.no_grad()
    def plan(self, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Inference: chosen trajectory (B, 8, 3), logits (B, K), entropy (B,) (nats),
        embedding (B, E), all float32 numpy."""
        logits, emb = self(batch)
        p = torch.softmax(logits, -1)
        ent = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
        best = logits.argmax(-1)
        return {"trajectory": self.anchors[best].cpu().numpy(), "logits": logits.cpu().numpy(),
                "entropy": ent.cpu().numpy(), "embedding": emb.cpu().numpy(), "choice": best.cpu().numpy()}


def build_vocabulary(futures: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """K trajectory anchors by k-means over expert futures.

    Args:
        futures: (N, 8, 3) float poses (x, y m; heading rad) in the ego frame.
        k: vocabulary size; reduced to the number of distinct futures when larger.

    Returns:
        (K, 8, 3) float32 anchors, sorted by final x for readability.

    Raises:
        ValueError: no finite futures.
    """
    from sklearn.cluster import KMeans

    f = futures[np.isfinite(futures).all(axis=(1, 2))]
    if len(f) == 0:
        raise ValueError("no finite futures to build the vocabulary from")
    X = np.concatenate([f[..., :2].reshape(len(f), -1), 5.0 * f[..., 2]], axis=1)  # heading ~ 5 m/rad
    uniq = np.unique(np.round(X, 3), axis=0)
    k = int(min(k, len(uniq)))
    km = KMeans(n_clusters=k, n_init=2, random_state=seed).fit(X)
    centres = km.cluster_centers_
    anchors = np.concatenate([centres[:, :16].reshape(k, 8, 2), centres[:, 16:, None] / 5.0], axis=-1)
    # a stationary anchor is always present (stopping must be expressible)
    anchors[np.argmin(np.abs(anchors[:, -1, 0]))] = 0.0
    return anchors[np.argsort(anchors[:, -1, 0])].astype(np.float32)


def save_checkpoint(model: VocabularyPlanner, path: str, extra: dict | None = None) -> None:
    torch.save({"spec": asdict(model.spec), "state_dict": model.state_dict(), "extra": extra or {}}, path)


def load_checkpoint(path: str, map_location: str = "cpu") -> VocabularyPlanner:
    """Rebuild a planner from :func:`save_checkpoint` output.

    Raises:
        FileNotFoundError: missing file. KeyError: not a planner checkpoint.
    """
    ck = torch.load(path, map_location=map_location, weights_only=False)
    spec = PlannerSpec(**ck["spec"])
    model = VocabularyPlanner(spec, ck["state_dict"]["anchors"])
    model.load_state_dict(ck["state_dict"])
    return model


def entropy_from_logits(logits: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of softmax(logits) along the last axis."""
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

