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

Rule distillation (optional, ``PlannerSpec.distill``): as Hydra-MDP, a second head predicts
for every anchor the eight EPDMS sub-scores NC, DAC, DDC, TLC, EP, TTC, LK, HC the rule scorer
gives it (targets from :func:`mosaic_ray.scoring.epdms.score_vocabulary`, trained with a
binary cross-entropy next to the imitation loss), and the trajectory is chosen by

    score_k = w_im * log softmax(imitation logits)_k
            + w_pen * sum_{NC, DAC, DDC, TLC} log sigma(s_k)
            + w_wt  * log((5 sigma(EP_k) + 5 sigma(TTC_k) + 2 sigma(LK_k) + 2 sigma(HC_k)) / 14)

(Hydra-MDP's weighted sum of log-scores: multiplicative terms each as a log, the weighted terms
inside one log, mirroring the EPDMS formula). Weights: ``distill_im_weight``,
``distill_penalty_weight``, ``distill_weighted_weight`` (defaults 1, 1, 1: the log-probability
of imitation and the log of the predicted EPDMS factors count equally). Checkpoints without
the heads (``distill`` absent or False in the stored spec) load unchanged.

Source: Hydra-MDP (Li et al., 2024) imitation and distillation heads; MOSAIC Section 7.1 uses
Hydra-MDP as the planner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

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
    distill: bool = False  #: rule-distillation heads present (older checkpoints: absent = False)
    distill_im_weight: float = 1.0
    distill_penalty_weight: float = 1.0
    distill_weighted_weight: float = 1.0
    #: vocabulary scoring head: "additive" = w·relu(q + a_k) + b (one hidden layer, Bahdanau-style
    #: additive scoring); "mlp" = an extra Linear(H, H) + ReLU on every (clip, anchor) pair
    #: (checkpoints stored before this field existed have "mlp"; see :meth:`from_dict`)
    head: str = "additive"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"unknown planner head {self.head!r}: one of {HEADS}")

    @property
    def features(self) -> FeatureSpec:
        return FeatureSpec(self.max_agents, self.max_lanes, self.lane_points, self.route_points)

    @classmethod
    def from_config(cls, pc) -> "PlannerSpec":
        return cls(pc.vocab_size, pc.embed_dim, pc.hidden_dim, pc.max_agents, pc.max_lanes,
                   pc.lane_points, pc.route_points, pc.temperature_m,
                   bool(getattr(pc, "distill", False)), float(getattr(pc, "distill_im_weight", 1.0)),
                   float(getattr(pc, "distill_penalty_weight", 1.0)),
                   float(getattr(pc, "distill_weighted_weight", 1.0)), str(getattr(pc, "head", "additive")))

    @classmethod
    def from_dict(cls, d: dict) -> "PlannerSpec":
        """From a stored spec dict; keys a newer version added take their defaults, except
        ``head``: a spec stored without it is from before the additive head, i.e. ``"mlp"``."""
        known = {f.name for f in fields(cls)}
        return cls(**{"head": "mlp", **{k: v for k, v in d.items() if k in known}})


#: vocabulary scoring heads (PlannerSpec.head)
HEADS = ("additive", "mlp")
#: sub-scores predicted by the distillation head, in this order (EPDMS terms without EC)
DISTILL_TERMS = ("NC", "DAC", "DDC", "TLC", "EP", "TTC", "LK", "HC")
_WEIGHTED = {"EP": 5.0, "TTC": 5.0, "LK": 2.0, "HC": 2.0}


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
        self.head = self._pair_head(spec, 1)
        if spec.distill:
            self.distill_head = self._pair_head(spec, len(DISTILL_TERMS))

    @staticmethod
    def _pair_head(spec: PlannerSpec, out: int) -> nn.Sequential:
        """The head applied to every (clip, anchor) pair ``q_b + a_k`` (B, K, H) -> (B, K, out).

        ``additive``: ReLU, Linear(H, out) -- one hidden layer over the pair (q and a are already
        learned projections), B·K·H·out multiply-adds. ``mlp``: ReLU, Linear(H, H), ReLU,
        Linear(H, out) -- B·K·H² more, about 4x the training step's cost at K = 256, H = 128
        (BENCHMARKS.md, "The planner's scoring head")."""
        H = spec.hidden_dim
        if spec.head == "mlp":
            return nn.Sequential(nn.ReLU(), nn.Linear(H, H), nn.ReLU(), nn.Linear(H, out))
        return nn.Sequential(nn.ReLU(), nn.Linear(H, out))

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

    def forward(self, batch: dict[str, torch.Tensor], with_subscores: bool = False):
        """Returns (logits (B, K), embedding (B, E)), plus the sub-score logits (B, K, 8) (or
        None without heads) when ``with_subscores`` (a keyword so that DDP passes it on)."""
        logits, emb, sub = self.forward_all(batch)
        return (logits, emb, sub) if with_subscores else (logits, emb)

    def forward_all(self, batch: dict[str, torch.Tensor]):
        """Returns (imitation logits (B, K), embedding (B, E), sub-score logits (B, K, 8) or
        None without distillation heads)."""
        emb = self.embed(batch)
        q = self.query(emb)  # (B, H)
        a = self._anchor_features()  # (K, H)
        joint = q[:, None, :] + a[None, :, :]
        logits = self.head(joint).squeeze(-1)
        sub = self.distill_head(joint) if self.spec.distill else None
        return logits, emb, sub

    @staticmethod
    def distill_loss(sub_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy between predicted sub-score logits and rule-scorer targets.

        Args:
            sub_logits: (B, K, 8). targets: (B, K, 8) in [0, 1] (NaN = unknown, ignored).

        Returns:
            scalar mean over the known entries (0 when there are none).
        """
        known = torch.isfinite(targets)
        if not bool(known.any()):
            return sub_logits.sum() * 0.0
        t = torch.where(known, targets, torch.zeros_like(targets)).clamp(0.0, 1.0)
        bce = nn.functional.binary_cross_entropy_with_logits(sub_logits, t, reduction="none")
        return (bce * known).sum() / known.sum()

    def selection_scores(self, logits: torch.Tensor, sub_logits: torch.Tensor | None) -> torch.Tensor:
        """(B, K) scores the plan is chosen by: the imitation logits without distillation
        heads, else the weighted log-score combination of the module docstring."""
        if sub_logits is None:
            return logits
        sp = self.spec
        logp = nn.functional.logsigmoid(sub_logits)                       # (B, K, 8)
        pen = logp[..., :4].sum(-1)                                        # NC, DAC, DDC, TLC
        prob = torch.sigmoid(sub_logits)
        w = torch.tensor([_WEIGHTED[k] for k in DISTILL_TERMS[4:]], device=prob.device, dtype=prob.dtype)
        weighted = torch.log((prob[..., 4:] * w).sum(-1) / w.sum() + 1e-6)
        return (sp.distill_im_weight * torch.log_softmax(logits, -1) + sp.distill_penalty_weight * pen
                + sp.distill_weighted_weight * weighted)

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
        """Inference: chosen trajectory (B, 8, 3), imitation logits (B, K), entropy (B,) (nats)
        of the imitation softmax, embedding (B, E), choice (B,) int64, all numpy (float32);
        with distillation heads also ``subscores`` (B, K, 8) predicted sub-scores in [0, 1]
        and ``imitation_choice`` (B,) (the argmax of the imitation logits alone)."""
        logits, emb, sub = self.forward_all(batch)
        p = torch.softmax(logits, -1)
        ent = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
        best = self.selection_scores(logits, sub).argmax(-1)
        out = {"trajectory": self.anchors[best].cpu().numpy(), "logits": logits.cpu().numpy(),
               "entropy": ent.cpu().numpy(), "embedding": emb.cpu().numpy(), "choice": best.cpu().numpy()}
        if sub is not None:
            out["subscores"] = torch.sigmoid(sub).cpu().numpy()
            out["imitation_choice"] = logits.argmax(-1).cpu().numpy()
        return out


def build_vocabulary(futures: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """K trajectory anchors by k-means over expert futures.

    Args:
        futures: (N, 8, 3) float poses (x, y m; heading rad) in the ego frame.
        k: vocabulary size; reduced to the number of distinct futures when larger.

    Returns:
        (K, 8, 3) float32 anchors, sorted by final x for readability.

    The result does not depend on the order of ``futures``: the rows are sorted
    lexicographically before k-means (k-means++ seeding with ``random_state=seed``, Lloyd
    iterations), so the same set of futures always gives the same anchors on one machine.

    Raises:
        ValueError: no finite futures.
    """
    from sklearn.cluster import KMeans

    f = futures[np.isfinite(futures).all(axis=(1, 2))]
    if len(f) == 0:
        raise ValueError("no finite futures to build the vocabulary from")
    X = np.concatenate([f[..., :2].reshape(len(f), -1), 5.0 * f[..., 2]], axis=1)  # heading ~ 5 m/rad
    X = X[np.lexsort(X.T[::-1])]  # canonical row order: independent of the read order
    uniq = np.unique(np.round(X, 3), axis=0)
    k = int(min(k, len(uniq)))
    km = KMeans(n_clusters=k, n_init=2, random_state=seed, algorithm="lloyd").fit(X)
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
    spec = PlannerSpec.from_dict(ck["spec"])
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

