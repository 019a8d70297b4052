"""Graph-RAE, the Graph Regularized AutoEncoder of AutoScale §4.1 (and Appendix A.1), in torch.

Source: AutoScale §4.1 and A.1, Eq. 1/11 (gated graph attention), Eq. 10 (feature encoding),
Eq. 12 (scene vector), Eq. 13 (Huber reconstruction), Eq. 14 (SimCLR), Eq. 15 (SupCon), Eq. 16
(pairwise metric regression), Eq. 2/17 (total loss). The text lost the equation bodies; what
the prose fixes is implemented as stated, the rest is marked **reconstructed** below (as in
``docs/AUTOSCALE.md``). The paper's sizes and weights are lost too, so every default here is
ours, small enough for CPU, and lives in :class:`GraphRAEConfig`.

Model
-----
* Encoding (Eq. 10): every point of a node polyline (x/s, y/s, cos h, sin h, κ/κ_clip, v/v_s
  with ``s = pos_scale_m``, ``v_s = speed_scale_mps``) goes through a shared MLP, plus a learnable
  step (positional) embedding and a node-type embedding; the points are aggregated by a masked
  max-pool and a linear layer (the "sequential aggregation"; **reconstructed**: max-pool).
  Edge attributes (dx/s, dy/s, cos Δh, sin Δh, Δκ/κ_clip per step) go through an identical
  pipeline with edge-type embeddings.
* Propagation (Eq. 1/11): ``L = num_layers`` layers of
  ``h_i ← h_i + σ(W_g LN(h_i)) ⊙ MHA(LN(h_i), {[LN(h_j) ‖ e_ji] : j → i})`` followed by a
  pre-LN feed-forward residual block (**reconstructed**: the FFN and LayerNorms). The attention
  runs over each node's valid incoming edges (map→agent, agent→agent, all→ego), keys and
  values from the neighbour concatenated with the edge embedding.
* Scene vector (Eq. 12): ``z = h_ego / ‖h_ego‖`` after the last layer, ``(d,)`` with
  ``d = hidden_dim``.
* Decoder (Eq. 13): an MLP from each node's final embedding (plus its type embedding) to its
  ``T × 6`` normalised point features; masked Huber loss (``huber_delta``). In training each
  view reconstructs its own (augmented) polylines, so dropped points carry no loss.

Regularisers
------------
* SimCLR (Eq. 14, NT-Xent, temperature ``temperature``): two views of each scene of the batch
  are positives, all other views negatives. **View recipe (reconstructed, our choice):** the
  paper moves "all polylines" by a random rotation + translation; our graph is in the ego's t0
  frame, so a rigid motion of the raw scene leaves it unchanged and such views would be
  identical. A view here (:func:`~mosaic_ray.autoscale.scene_graph.augment_graph`) instead
  (1) drops agent / map nodes (``aug_drop_node_p``) and points (``aug_drop_point_p``), the
  perception dropout and occlusion a scene representation should ignore, (2) adds position
  noise (``aug_noise_m``, m) and heading noise (``aug_heading_noise_rad``), and (3) moves the
  whole ego-frame graph by a small rigid motion (``aug_rot_max_rad``, ``aug_trans_max_m``), an
  ego localisation error: this keeps the paper's "rotation + translation" of all polylines
  while staying meaningful in the ego frame. The exact invariance to rigid motions of the raw
  scene comes from the ego frame itself.
* SupCon (Eq. 15, Khosla et al. L_out) over the 2B views, once with the driving-command label
  (left / straight / right / stop) and once with the geometric-overlap label (agent-path /
  map-element crossings), rules in :mod:`~mosaic_ray.autoscale.scene_graph`; anchors without a
  positive are left out.
* Metric regression (Eq. 16): an MLP on the symmetric pair feature
  ``[|z_i − z_j|, z_i ⊙ z_j]`` (**reconstructed**: the paper says "projected via an MLP and
  compared") predicts ``|m_i − m_j|`` (element-wise, e.g. the nine EPDMS terms) through a
  softplus; MSE over the valid pairs i < j (both metric rows finite).
* Total (Eq. 2/17, as AUTOSCALE.md restates it):
  ``L = L_rec + λ_c (w_s L_SimCLR + w_cmd L_SupCon^cmd + w_ov L_SupCon^ov) + λ_m L_metric``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mosaic_ray.data.clip import Clip

from .scene_graph import (F_CURV, F_HEADING, F_SPEED, F_X, F_Y, NUM_EDGE_TYPES, NUM_NODE_TYPES,
                          GraphSpec, SceneGraph, augment_graph, build_scene_graph, collate)

__all__ = ["GraphRAEConfig", "GraphRAE", "GatedGraphAttention", "point_inputs", "edge_inputs",
           "nt_xent", "supcon", "reconstruction_loss", "metric_pair_targets", "metric_loss",
           "graph_rae_losses", "as_graphs", "fit", "embed", "POINT_INPUTS"]

log = logging.getLogger(__name__)

POINT_INPUTS = 6  #: x/s, y/s, cos h, sin h, κ/κ_clip, v/v_s
EDGE_INPUTS = 5  #: dx/s, dy/s, cos Δh, sin Δh, Δκ/κ_clip


@dataclass(frozen=True)
class GraphRAEConfig:
    """Every size, loss weight and training setting of Graph-RAE (defaults ours: the paper's
    values are lost in the text, AUTOSCALE.md "Graph-RAE")."""

    graph: GraphSpec = field(default_factory=GraphSpec)
    hidden_dim: int = 64  #: d, node width and scene-embedding dimension
    num_layers: int = 2  #: L graph-transformer layers (Eq. 1)
    num_heads: int = 4
    pos_scale_m: float = 50.0  #: positions are divided by this (m)
    speed_scale_mps: float = 20.0  #: speeds are divided by this (m/s)
    # losses (Eq. 2/17)
    huber_delta: float = 0.5  #: Huber δ on the normalised point features (Eq. 13)
    temperature: float = 0.1  #: τ of NT-Xent and SupCon (Eq. 14, 15)
    lambda_c: float = 0.1  #: λ_c, contrastive weight
    lambda_m: float = 1.0  #: λ_m, metric-regression weight
    w_simclr: float = 1.0
    w_supcon_command: float = 1.0
    w_supcon_overlap: float = 1.0
    metric_dim: int = 9  #: length of the metric vectors (the nine EPDMS terms)
    # views (see the module docstring)
    aug_rot_max_rad: float = 0.2
    aug_trans_max_m: float = 2.0
    aug_drop_node_p: float = 0.1
    aug_drop_point_p: float = 0.1
    aug_noise_m: float = 0.1
    aug_heading_noise_rad: float = 0.02
    # training
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0


# ============================================================================ inputs
def point_inputs(node_feat: torch.Tensor, mask: torch.Tensor, cfg: GraphRAEConfig) -> torch.Tensor:
    """(B, N, T, 5) node features -> (B, N, T, 6) normalised point inputs (0 where masked);
    also the reconstruction target."""
    f = node_feat
    x = torch.stack([f[..., F_X] / cfg.pos_scale_m, f[..., F_Y] / cfg.pos_scale_m,
                     torch.cos(f[..., F_HEADING]), torch.sin(f[..., F_HEADING]),
                     f[..., F_CURV] / cfg.graph.curvature_clip, f[..., F_SPEED] / cfg.speed_scale_mps], -1)
    return x * mask[..., None]


def edge_inputs(edge_feat: torch.Tensor, mask: torch.Tensor, cfg: GraphRAEConfig) -> torch.Tensor:
    """(B, E, T, 4) edge features -> (B, E, T, 5) normalised inputs (0 where masked)."""
    e = edge_feat
    x = torch.stack([e[..., 0] / cfg.pos_scale_m, e[..., 1] / cfg.pos_scale_m, torch.cos(e[..., 2]),
                     torch.sin(e[..., 2]), e[..., 3] / cfg.graph.curvature_clip], -1)
    return x * mask[..., None]


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


class _PolylineEncoder(nn.Module):
    """Shared per-step MLP + step and type embeddings, masked max-pool over steps (Eq. 10)."""

    def __init__(self, in_dim: int, d: int, steps: int, types: int):
        super().__init__()
        self.mlp = _mlp(in_dim, d, d)
        self.pos_emb = nn.Embedding(steps, d)
        self.type_emb = nn.Embedding(types, d)
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(d, d), nn.LayerNorm(d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        # x (B, K, T, in), mask (B, K, T), types (B, K) -> (B, K, d), 0 for empty rows
        T = x.shape[2]
        u = self.mlp(x) + self.pos_emb.weight[:T] + self.type_emb(types)[:, :, None]
        u = u.masked_fill(~mask[..., None], float("-inf")).amax(dim=2)
        any_ = mask.any(dim=2, keepdim=True)
        u = torch.where(any_, u, torch.zeros_like(u))
        return self.out(u) * any_


class GatedGraphAttention(nn.Module):
    """One layer of Eq. 1/11: ``h_i ← h_i + σ(W_g LN h_i) ⊙ MHA(LN h_i, [LN h_j ‖ e_ji])``, then
    ``h ← h + FFN(LN h)``; attention over each node's valid incoming edges."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        if d % heads:
            raise ValueError(f"hidden_dim {d} not divisible by num_heads {heads}")
        self.h, self.dh = heads, d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(2 * d, d)
        self.v = nn.Linear(2 * d, d)
        self.o = nn.Linear(d, d)
        self.gate = nn.Linear(d, d)
        self.ffn = _mlp(d, 2 * d, d)

    def forward(self, h: torch.Tensor, e: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                emask: torch.Tensor, nmask: torch.Tensor) -> torch.Tensor:
        """h (B, N, d), e (B, E, d), src / dst (B, E) int64, emask (B, E), nmask (B, N) bool."""
        B, N, d = h.shape
        H, dh = self.h, self.dh
        hn = self.ln1(h)
        hs = torch.gather(hn, 1, src[..., None].expand(-1, -1, d))
        kv = torch.cat([hs, e], dim=-1)
        k = self.k(kv).view(B, -1, H, dh)
        v = self.v(kv).view(B, -1, H, dh)
        q = torch.gather(self.q(hn), 1, dst[..., None].expand(-1, -1, d)).view(B, -1, H, dh)
        logit = (q * k).sum(-1) / math.sqrt(dh)  # (B, E, H)
        logit = logit.masked_fill(~emask[..., None], float("-inf"))
        idx = dst[..., None].expand(-1, -1, H)
        with torch.no_grad():  # per-receiver max, a shift for a stable softmax
            mx = torch.full((B, N, H), float("-inf"), dtype=h.dtype).scatter_reduce(
                1, idx, logit, reduce="amax", include_self=True)
            mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        w = torch.exp(logit - torch.gather(mx, 1, idx))  # 0 on masked edges
        den = torch.zeros((B, N, H), dtype=h.dtype).scatter_add(1, idx, w)
        alpha = w / torch.gather(den, 1, idx).clamp_min(1e-12)
        msg = torch.zeros((B, N, H, dh), dtype=h.dtype).scatter_add(
            1, dst[..., None, None].expand(-1, -1, H, dh), alpha[..., None] * v)
        m = self.o(msg.reshape(B, N, d))
        h = h + torch.sigmoid(self.gate(hn)) * m
        h = h + self.ffn(self.ln2(h))
        return h * nmask[..., None]


class GraphRAE(nn.Module):
    """The Graph-RAE encoder, decoder and metric head (module docstring).

    Args:
        cfg: sizes; ``cfg.graph`` must be the spec the graphs were built with.
        seed: when given, parameters are initialised from ``torch.manual_seed(seed)`` inside a
            forked RNG (the global torch RNG is left untouched).
    """

    def __init__(self, cfg: GraphRAEConfig | None = None, seed: int | None = None):
        super().__init__()
        self.cfg = cfg = cfg or GraphRAEConfig()
        if seed is None:
            self._build(cfg)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                self._build(cfg)

    def _build(self, cfg: GraphRAEConfig) -> None:
        d, T = cfg.hidden_dim, cfg.graph.num_steps
        self.node_enc = _PolylineEncoder(POINT_INPUTS, d, T, NUM_NODE_TYPES)
        self.edge_enc = _PolylineEncoder(EDGE_INPUTS, d, T, NUM_EDGE_TYPES)
        self.layers = nn.ModuleList(GatedGraphAttention(d, cfg.num_heads) for _ in range(cfg.num_layers))
        self.dec_type = nn.Embedding(NUM_NODE_TYPES, d)
        self.decoder = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, T * POINT_INPUTS))
        self.metric_head = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, cfg.metric_dim))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Encode and decode a collated batch.

        Returns:
            ``z`` (B, d) float32 L2-normalised scene vectors (Eq. 12), ``node_h`` (B, N, d),
            ``recon`` (B, N, T, 6) reconstructed normalised points, ``target`` (B, N, T, 6) the
            normalised inputs.
        """
        cfg = self.cfg
        pm, nm = batch["node_point_mask"], batch["node_mask"]
        x = point_inputs(batch["node_feat"], pm, cfg)
        h = self.node_enc(x, pm, batch["node_type"]) * nm[..., None]
        e = self.edge_enc(edge_inputs(batch["edge_feat"], batch["edge_point_mask"], cfg),
                          batch["edge_point_mask"], batch["edge_type"])
        src, dst = batch["edge_index"][..., 0], batch["edge_index"][..., 1]
        for layer in self.layers:
            h = layer(h, e, src, dst, batch["edge_mask"], nm)
        z = F.normalize(h[:, 0], dim=-1)
        B, N, _ = h.shape
        recon = self.decoder(h + self.dec_type(batch["node_type"])).view(B, N, -1, POINT_INPUTS)
        return {"z": z, "node_h": h, "recon": recon, "target": x}

    def pair_metrics(self, z: torch.Tensor) -> torch.Tensor:
        """(n, d) scene vectors -> (n, n, metric_dim) predicted ``|m_i − m_j|`` (Eq. 16), symmetric."""
        zi, zj = z[:, None], z[None, :]
        pair = torch.cat([(zi - zj).abs(), zi * zj], dim=-1)
        return F.softplus(self.metric_head(pair))


# ============================================================================ losses
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR NT-Xent (Eq. 14) of two views (B, d) of B scenes (rows L2-normalised here):
    mean over the 2B anchors of ``−log softmax`` of the positive among the other 2B − 1 views."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    B = z1.shape[0]
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * B, dtype=torch.bool), float("-inf"))
    pos = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)])
    return F.cross_entropy(sim, pos)


def supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Eq. 15, Khosla et al. 2020, L_out) of (n, d) vectors with
    (n,) int labels (negative = unlabelled, left out): for anchor i with positives P(i) (same
    label, not i), ``−1/|P(i)| Σ_p log(exp(s_ip/τ) / Σ_{a≠i} exp(s_ia/τ))``; mean over anchors
    that have a positive, 0 when none has."""
    keep = labels >= 0
    z, labels = F.normalize(z[keep], dim=-1), labels[keep]
    n = z.shape[0]
    if n < 2:
        return z.sum() * 0.0
    eye = torch.eye(n, dtype=torch.bool)
    sim = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    npos = pos.sum(1)
    has = npos > 0
    if not has.any():
        return z.sum() * 0.0
    per = -(logp.masked_fill(~pos, 0.0)).sum(1)[has] / npos[has]
    return per.mean()


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        delta: float) -> torch.Tensor:
    """Masked Huber loss (Eq. 13): mean over valid points (mask (B, N, T)) and the 6 channels."""
    hub = F.huber_loss(recon, target, reduction="none", delta=delta).mean(-1)
    m = mask.to(hub.dtype)
    return (hub * m).sum() / m.sum().clamp_min(1.0)


def metric_pair_targets(metrics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) metric vectors (NaN rows = no metrics) -> targets ``|m_i − m_j|`` (n, n, k) and the
    valid-pair indicator (n, n) bool (i < j, both rows finite) of Eq. 16."""
    ok = torch.isfinite(metrics).all(dim=1)
    m = torch.nan_to_num(metrics)
    tgt = (m[:, None] - m[None, :]).abs()
    valid = ok[:, None] & ok[None, :] & torch.triu(torch.ones(len(m), len(m), dtype=torch.bool), 1)
    return tgt, valid


def metric_loss(pred: torch.Tensor, metrics: torch.Tensor) -> torch.Tensor:
    """MSE (Eq. 16) of predicted pair differences (n, n, k) against ``|m_i − m_j|`` over valid
    pairs; 0 when there is none."""
    tgt, valid = metric_pair_targets(metrics)
    if not valid.any():
        return pred.sum() * 0.0
    return ((pred - tgt) ** 2)[valid].mean()


def graph_rae_losses(model: GraphRAE, view1: dict[str, torch.Tensor], view2: dict[str, torch.Tensor],
                     metrics: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All loss terms of Eq. 2/17 for two collated views of the same B scenes.

    Args:
        metrics: (B, k) float metric vectors (NaN rows unlabelled) or None (no metric term).

    Returns:
        ``rec``, ``simclr``, ``supcon_command``, ``supcon_overlap``, ``metric`` and ``total``
        (scalar tensors); reconstruction and metric terms are averaged over the two views.
    """
    cfg = model.cfg
    o1, o2 = model(view1), model(view2)
    rec = 0.5 * (reconstruction_loss(o1["recon"], o1["target"], view1["node_point_mask"], cfg.huber_delta)
                 + reconstruction_loss(o2["recon"], o2["target"], view2["node_point_mask"], cfg.huber_delta))
    z = torch.cat([o1["z"], o2["z"]])
    simclr = nt_xent(o1["z"], o2["z"], cfg.temperature)
    sc_cmd = supcon(z, torch.cat([view1["command"], view2["command"]]), cfg.temperature)
    sc_ov = supcon(z, torch.cat([view1["overlap"], view2["overlap"]]), cfg.temperature)
    if metrics is None:
        met = rec * 0.0
    else:
        met = 0.5 * (metric_loss(model.pair_metrics(o1["z"]), metrics)
                     + metric_loss(model.pair_metrics(o2["z"]), metrics))
    total = rec + cfg.lambda_c * (cfg.w_simclr * simclr + cfg.w_supcon_command * sc_cmd
                                  + cfg.w_supcon_overlap * sc_ov) + cfg.lambda_m * met
    return {"rec": rec, "simclr": simclr, "supcon_command": sc_cmd, "supcon_overlap": sc_ov,
            "metric": met, "total": total}


# ============================================================================ training
def as_graphs(scenes: Sequence[Clip | SceneGraph], spec: GraphSpec) -> list[SceneGraph]:
    """Graphs of ``scenes``: clips are built with ``spec``, graph dicts passed through."""
    return [build_scene_graph(s, spec) if isinstance(s, Clip) else s for s in scenes]


def _view(g: SceneGraph, rng: np.random.Generator, cfg: GraphRAEConfig) -> SceneGraph:
    return augment_graph(g, rng, rot_max_rad=cfg.aug_rot_max_rad, trans_max_m=cfg.aug_trans_max_m,
                         drop_node_p=cfg.aug_drop_node_p, drop_point_p=cfg.aug_drop_point_p,
                         noise_m=cfg.aug_noise_m, heading_noise_rad=cfg.aug_heading_noise_rad)


def _to(batch: dict, device) -> dict:
    return batch if device.type == "cpu" else {k: v.to(device) for k, v in batch.items()}


def fit(model: GraphRAE, scenes: Sequence[Clip | SceneGraph], cfg: GraphRAEConfig | None = None,
        seed: int = 0, metrics: np.ndarray | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place with AdamW for ``cfg.steps`` steps (plain torch, CPU).

    Each step takes ``cfg.batch_size`` scenes (epochs of a seeded permutation; all scenes when
    fewer), makes two views of each (:func:`augment_graph`) and minimises the total of
    :func:`graph_rae_losses`. Seeded: the batch order and views come from
    ``np.random.default_rng(seed)``, torch's RNG is forked and seeded with ``seed``, so the same
    model init, scenes and seed give the same weights on CPU.

    Args:
        scenes: clips or graphs built with ``cfg.graph``.
        metrics: (n, k) float metric vectors of the scenes (e.g. the nine EPDMS terms in
            ``TERMS`` order; NaN rows have none), or None to skip the metric term.

    Returns:
        one dict per step of the loss terms (floats).
    """
    cfg = cfg or model.cfg
    graphs = as_graphs(scenes, cfg.graph)
    n = len(graphs)
    if n < 2:
        raise ValueError("fit needs at least 2 scenes (contrastive negatives)")
    met = None
    if metrics is not None:
        met = torch.as_tensor(np.asarray(metrics, np.float32))
        if met.shape != (n, cfg.metric_dim):
            raise ValueError(f"metrics: shape {tuple(met.shape)}, expected {(n, cfg.metric_dim)}")
    rng = np.random.default_rng(seed)
    bs = min(cfg.batch_size, n)
    dev = next(model.parameters()).device  # batches follow the model (GPU when it is on one)
    if met is not None:
        met = met.to(dev)
    history: list[dict[str, float]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        model.train()
        order: list[int] = []
        for step in range(cfg.steps):
            while len(order) < bs:
                order += rng.permutation(n).tolist()
            idx, order = order[:bs], order[bs:]
            v1 = _to(collate([_view(graphs[i], rng, cfg) for i in idx]), dev)
            v2 = _to(collate([_view(graphs[i], rng, cfg) for i in idx]), dev)
            losses = graph_rae_losses(model, v1, v2, None if met is None else met[idx])
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            rec = {k: float(v.detach()) for k, v in losses.items()}
            history.append(rec)
            log.debug("graph-rae step %d: %s", step, rec)
    model.eval()
    log.info("graph-rae: %d steps on %d scenes, total loss %.4f -> %.4f", cfg.steps, n,
             history[0]["total"] if history else float("nan"), history[-1]["total"] if history else float("nan"))
    return history


@torch.no_grad()
def embed(model: GraphRAE, scenes: Sequence[Clip | SceneGraph], batch_size: int = 64) -> np.ndarray:
    """Scene vectors (Eq. 12) of clips or graphs: (n, d) float32, rows L2-normalised (no views)."""
    graphs = as_graphs(scenes, model.cfg.graph)
    was = model.training
    model.eval()
    out: list[np.ndarray] = []
    for a in range(0, len(graphs), batch_size):
        dev = next(model.parameters()).device
        out.append(model(_to(collate(graphs[a:a + batch_size]), dev))["z"].cpu().numpy().astype(np.float32))
    model.train(was)
    if not out:
        return np.zeros((0, model.cfg.hidden_dim), np.float32)
    return np.concatenate(out)

