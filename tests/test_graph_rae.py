"""Graph-RAE (AutoScale §4.1): the scene graph of real NGSIM clips, the losses, invariance to a
rigid motion of the raw scene, label rules on hand-made scenes, seeded training."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mosaic_ray.autoscale.graph_rae import (GraphRAE, GraphRAEConfig, embed, fit, metric_loss,
                                            metric_pair_targets, nt_xent, reconstruction_loss, supcon)
from mosaic_ray.autoscale.scene_graph import (CMD_LEFT, CMD_RIGHT, CMD_STOP, CMD_STRAIGHT,
                                              EDGE_AGENT_TO_AGENT, EDGE_MAP_TO_AGENT, EDGE_TO_EGO,
                                              MAP_NODE_TYPES, NODE_EGO, NODE_PAD, GraphSpec, augment_graph,
                                              build_scene_graph, collate, graph_steps)
from scenes import Agent, const_vel, kinematic_track, lateral_path, two_lane_road

NGSIM = "US101/USA_US101-22_1_T-1.xml"
SPEC = GraphSpec(max_agents=8, max_map=12)
CFG = GraphRAEConfig(graph=SPEC, hidden_dim=32, num_heads=4, steps=30, batch_size=16, lr=3e-3)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny ops: one thread avoids OpenMP spinning on the shared CI cores (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def clips(ngsim_clips):
    return ngsim_clips(NGSIM)[::4][:16]


@pytest.fixture(scope="module")
def graphs(clips):
    return [build_scene_graph(c, SPEC) for c in clips]


def rigid(clip, angle: float, t=(1234.5, -987.0)):
    """The clip with every world coordinate rotated by ``angle`` about the origin and moved by t."""
    c, s = math.cos(angle), math.sin(angle)

    def pts(a):
        a = np.asarray(a, float)
        return np.stack([c * a[..., 0] - s * a[..., 1] + t[0], s * a[..., 0] + c * a[..., 1] + t[1]], -1)

    ego = clip.ego_states.copy()
    ego[:, :2], ego[:, 2] = pts(ego[:, :2]), ego[:, 2] + angle
    ag = clip.agent_states.copy()
    if ag.size:
        ag[..., :2], ag[..., 2] = pts(ag[..., :2]), ag[..., 2] + angle
    return dataclasses.replace(
        clip, ego_states=ego, agent_states=ag, lane_left=pts(clip.lane_left), lane_right=pts(clip.lane_right),
        lane_center=pts(clip.lane_center), route_center=pts(clip.route_center),
        stop_lines=pts(clip.stop_lines) if clip.stop_lines.size else clip.stop_lines.copy())


def test_graph_of_real_clip_has_documented_shapes_and_masks(clips, graphs):
    T, N, E = SPEC.num_steps, SPEC.num_nodes, SPEC.num_edges
    steps, t0 = graph_steps(SPEC)
    assert T == 12 and N == 21 and E == 12 * 8 + 8 * 7 + 8 + 12 and t0 == 3
    assert steps.tolist() == list(range(5, 61, 5))
    for clip, g in zip(clips, graphs):
        shapes = {"node_feat": ((N, T, 5), np.float32), "node_point_mask": ((N, T), np.bool_),
                  "node_mask": ((N,), np.bool_), "node_type": ((N,), np.int64), "node_ref": ((N,), np.int64),
                  "edge_index": ((E, 2), np.int64), "edge_type": ((E,), np.int64),
                  "edge_feat": ((E, T, 4), np.float32), "edge_point_mask": ((E, T), np.bool_),
                  "edge_mask": ((E,), np.bool_), "t0_pos": ((), np.int64), "command": ((), np.int64),
                  "overlap": ((), np.int64)}
        for k, (shape, dtype) in shapes.items():
            assert g[k].shape == shape and g[k].dtype == dtype, k
        # ego at the origin of its own t0 frame, heading 0, the recorded speed
        assert g["node_type"][0] == NODE_EGO and g["node_point_mask"][0].all()
        np.testing.assert_allclose(g["node_feat"][0, t0, :3], 0.0, atol=1e-5)
        assert g["node_feat"][0, t0, 4] == pytest.approx(clip.ego_states[20, 3], rel=1e-5)
        # padding: empty slots carry no features, the pad type and no edges
        nm, pm = g["node_mask"], g["node_point_mask"]
        assert (nm == pm.any(1)).all() and ((g["node_type"] == NODE_PAD) == ~nm).all()
        assert not g["node_feat"][~pm].any() and not g["edge_feat"][~g["edge_point_mask"]].any()
        src, dst = g["edge_index"].T
        assert (g["edge_mask"] <= (nm[src] & nm[dst])).all()
        # agents fill their slots first; map slots hold lane centre-lines / stop lines
        n_agents = int(nm[1:1 + SPEC.max_agents].sum())
        assert nm[1:1 + n_agents].all() and n_agents == min(SPEC.max_agents, clip.num_agents)
        assert np.isin(g["node_type"][1 + SPEC.max_agents:][nm[1 + SPEC.max_agents:]], MAP_NODE_TYPES).all()
        assert nm[1 + SPEC.max_agents:].any()
        # edge template: map->agent, agent->agent, all->ego
        typ = g["edge_type"]
        aa = typ == EDGE_AGENT_TO_AGENT
        assert (dst[typ == EDGE_TO_EGO] == 0).all() and (src[aa] != dst[aa]).all()
        assert (src[typ == EDGE_MAP_TO_AGENT] > SPEC.max_agents).all()
        assert np.abs(g["node_feat"][..., 3]).max() <= SPEC.curvature_clip
    b = collate(graphs[:3])
    assert b["node_feat"].shape == (3, N, T, 5) and b["node_feat"].dtype == torch.float32
    assert b["edge_mask"].dtype == torch.bool and b["command"].shape == (3,)


def test_rigid_motion_of_raw_scene_leaves_graph_and_embedding_unchanged(clips):
    model = GraphRAE(CFG, seed=1)
    moved = [rigid(c, a) for c, a in zip(clips[:4], (0.7, -2.1, 3.0, 1.3))]
    ga = [build_scene_graph(c, SPEC) for c in clips[:4]]
    gb = [build_scene_graph(c, SPEC) for c in moved]
    for a, b in zip(ga, gb):
        assert (a["node_point_mask"] == b["node_point_mask"]).all() and (a["node_ref"] == b["node_ref"]).all()
        np.testing.assert_allclose(a["node_feat"], b["node_feat"], atol=2e-3)
        assert a["command"] == b["command"] and a["overlap"] == b["overlap"]
    np.testing.assert_allclose(embed(model, ga), embed(model, gb), atol=1e-4)


def test_losses_decrease_on_real_clips(graphs):
    met = np.random.default_rng(0).random((len(graphs), 9)).astype(np.float32)
    hist = fit(GraphRAE(CFG, seed=0), graphs, CFG, seed=0, metrics=met)
    assert len(hist) == CFG.steps

    def mean(k, sl):
        return float(np.mean([h[k] for h in hist[sl]]))

    for k in ("total", "rec", "metric", "simclr"):
        assert mean(k, slice(-5, None)) < mean(k, slice(0, 5)), k
    assert all(np.isfinite(h["total"]) for h in hist)


def test_loss_terms_on_hand_made_cases():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1)
    perm = torch.tensor([1, 2, 3, 4, 5, 6, 7, 0])
    same, shuffled = nt_xent(z, z, 0.1), nt_xent(z, z[perm], 0.1)
    assert 0 < same < shuffled
    # SupCon: 0 without positives, lower when same-label scenes coincide
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert supcon(z, torch.arange(8), 0.1) == 0
    assert supcon(z, torch.full((8,), -1), 0.1) == 0  # unlabelled
    clustered = z[torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])]
    assert 0 < supcon(clustered, labels, 0.1) < supcon(z, labels, 0.1)
    # reconstruction: 0 at the target, positive elsewhere, masked points ignored
    tgt = torch.randn(2, 3, 4, 6, generator=g)
    mask = torch.rand(2, 3, 4, generator=g) > 0.3
    assert reconstruction_loss(tgt, tgt, mask, 0.5) == 0
    off = tgt + 1.0
    assert reconstruction_loss(off, tgt, mask, 0.5) > 0
    assert reconstruction_loss(torch.where(mask[..., None], tgt, off), tgt, mask, 0.5) == 0
    # metric: targets |m_i - m_j| over i < j with finite rows
    m = torch.tensor([[1.0] * 9, [0.5] * 9, [float("nan")] * 9, [0.0] * 9])
    tgt_m, valid = metric_pair_targets(m)
    assert valid.tolist() == [[False, True, False, True], [False, False, False, True],
                              [False] * 4, [False] * 4]
    assert torch.allclose(tgt_m[0, 1], torch.full((9,), 0.5)) and torch.allclose(tgt_m, tgt_m.transpose(0, 1))
    assert metric_loss(tgt_m, m) == 0 and metric_loss(tgt_m + 0.1, m) > 0
    assert metric_loss(tgt_m, torch.full((4, 9), float("nan"))) == 0


def test_label_rules_on_hand_made_scenes():
    spec = GraphSpec(max_agents=4, max_map=6)

    def labels(clip):
        g = build_scene_graph(clip, spec)
        return int(g["command"]), int(g["overlap"])

    assert labels(two_lane_road()) == (CMD_STRAIGHT, 0)
    assert labels(two_lane_road(const_vel(0.0, 0.0, 0.0)))[0] == CMD_STOP
    left = kinematic_track(lambda t: 8.0 + 0 * t, lambda t: np.where(t > 0, 0.3, 0.0))
    cmd, ov = labels(two_lane_road(left))
    assert cmd == CMD_LEFT and ov & 2  # turns across lane 1's centre-line: map bit
    change = lateral_path(0.0, 10.0, lambda t: -3.5 * np.clip((t - 0.5) / 3.0, 0, 1))  # from t0 + 0.5 s
    assert labels(two_lane_road(change))[0] == CMD_RIGHT
    crossing = Agent(const_vel(22.0, -17.0, 10.0, heading=math.pi / 2))  # crosses the ego path near x = 22 m
    follower = Agent(const_vel(15.0, 0.0, 10.0))
    assert labels(two_lane_road(agents=[follower])) == (CMD_STRAIGHT, 0)
    assert labels(two_lane_road(agents=[follower, crossing])) == (CMD_STRAIGHT, 1)


def test_views_differ_but_keep_layout(graphs):
    g = graphs[0]
    v = augment_graph(g, np.random.default_rng(0))
    assert all(v[k].shape == g[k].shape and v[k].dtype == g[k].dtype for k in g)
    assert v["node_point_mask"][0, int(g["t0_pos"])] and not np.allclose(v["node_feat"], g["node_feat"])
    assert (v["node_point_mask"] <= g["node_point_mask"]).all() and (v["edge_mask"] <= g["edge_mask"]).all()
    assert v["command"] == g["command"] and v["overlap"] == g["overlap"]


def test_same_seed_gives_same_embedding(graphs):
    cfg = dataclasses.replace(CFG, steps=5)
    runs = []
    for seed in (3, 3, 4):
        model = GraphRAE(cfg, seed=seed)
        fit(model, graphs[:8], cfg, seed=seed)
        runs.append(embed(model, graphs[:8]))
    assert runs[0].shape == (8, cfg.hidden_dim) and runs[0].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(runs[0], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])
