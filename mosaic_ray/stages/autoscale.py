"""AutoScale's steps after ``synthesize``: ``embed``, ``cluster``, ``rounds``, ``autoscale_report``
(issue 13; the method: ``../shared/docs/AUTOSCALE.md``, the algorithm core:
:mod:`mosaic_ray.autoscale`). They run only when the config has an ``autoscale:`` section.

==================== ==========================================================================
``embed``            Graph-RAE (§4.1) trained in one Ray task (GPU when
                     ``autoscale.graph_rae.train_num_gpus`` > 0) on the real scenes of
                     :func:`graph_rae_splits`, metric targets = the nine EPDMS terms of each
                     scene's logged future; then a Ray Data actor pool embeds the real training,
                     calibration and test scenes and the synthetic pool (GPU actors with
                     ``autoscale.embed_gpus_per_actor`` > 0).
``cluster``          PCA + GMM on the real training scenes (§4.2), calibration and synthetic
                     scenes assigned to the clusters, the RBF matrix between the centres.
``rounds``           the closed loop: round 0 trains on the real split alone (one per seed);
                     round r ≥ 1 trains every (method, budget, seed) loop on real + its selected
                     synthetic scenes (:func:`mosaic_ray.autoscale.methods.select_round`), all of
                     a round's trainings as concurrent Ray Tune trials, each with the project's
                     training loop and recipe (:func:`mosaic_ray.planner.training.train_loop`,
                     ``planner.*`` with ``autoscale.epochs``) from scratch, then evaluated on the
                     calibration split (the loop's feedback) and the test split (the report only).
                     Resumable per trial: a stored result of the same fingerprint is kept.
``autoscale_report`` ``autoscale/summary.json`` and ``report/autoscale.md``: test EPDMS and the
                     nine terms per method × budget with 95% intervals over seeds, paired
                     differences against ``uniform``, the calibration score per round.
==================== ==========================================================================

Splits (one function each, so that the four-split layout of issue 12 changes one line):
:func:`calibration_split` (the loop's feedback), :func:`test_split` (final numbers only; nothing
else reads it), :func:`real_split` (the real training set, kept whole).

Outputs::

    autoscale/graph_rae.pt              the Graph-RAE weights and its settings        (embed)
    autoscale/graph_rae.json            loss history (first / last steps), scene counts (embed)
    autoscale/embed_parts/<role>__<shard>  one input shard's embeddings (resume points)  (embed)
    autoscale/embeddings.parquet        clip_id, role, embedding (d float32)           (embed)
    autoscale/clusters.json             K, centres, RBF matrix, n_k, π, capacity       (cluster)
    autoscale/cluster_labels.parquet    clip_id, role, cluster                          (cluster)
    autoscale/rounds/<key>.json         one training's selection, calibration and test (rounds)
    autoscale/summary.json              every number the AutoScale report shows        (autoscale_report)
    report/autoscale.md                 the AutoScale report                            (autoscale_report)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa

from mosaic_ray import layout
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.data.split import CALIBRATION, TEST
from mosaic_ray.stages.fingerprint import config_value
from mosaic_ray.stages.shards import Resources, ShardStage, record_actor_pid, run_shard_stage
from mosaic_ray.stages.step import Context, Step, needs_of
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)

ROOT = "autoscale"
GRAPH_RAE = f"{ROOT}/graph_rae.pt"
GRAPH_RAE_INFO = f"{ROOT}/graph_rae.json"
EMBEDDINGS = f"{ROOT}/embeddings.parquet"
EMBED_PARTS = f"{ROOT}/embed_parts"
EMBED_RECORD = f"{ROOT}/embed"
CLUSTERS = f"{ROOT}/clusters.json"
CLUSTER_LABELS = f"{ROOT}/cluster_labels.parquet"
CLUSTER_RECORD = f"{ROOT}/cluster"
ROUNDS = f"{ROOT}/rounds"
ROUNDS_RECORD = f"{ROOT}/rounds_step"
SUMMARY = f"{ROOT}/summary.json"
REPORT = "report/autoscale.md"
SYNTH_SCENES = "synthesize/scenes"
SYNTH_RECORD = "synthesize"

ROLES = ("real", "calibration", "test", "synthetic")
SYNTH_CAL = "synthetic_calibration"  #: role (cluster labels) and result key of the held-out synthetic scenes


# ============================================================================ splits
def calibration_split(cfg: ExperimentConfig) -> str:
    """The split the rounds are evaluated on (closed-loop feedback; AUTOSCALE.md D_cal)."""
    return CALIBRATION


def test_split(cfg: ExperimentConfig) -> str:
    """The split only the final numbers read (issue 12's test split; nothing else reads it)."""
    return TEST


def real_split(cfg: ExperimentConfig) -> str:
    """D_real, kept whole in every training: the split the synthetic scenes are made from."""
    return cfg.autoscale.synthesize.split if cfg.autoscale is not None else "train"


def graph_rae_splits(cfg: ExperimentConfig) -> list[str]:
    """Real splits Graph-RAE trains on: train and pool, less the test and calibration splits."""
    held = {test_split(cfg), calibration_split(cfg)}
    return [s for s in ("train", "pool") if s not in held]


def role_sources(cfg: ExperimentConfig) -> dict[str, str]:
    """Role -> storage folder of its clip shards."""
    return {"real": layout.clips(real_split(cfg)), "calibration": layout.clips(calibration_split(cfg)),
            "test": layout.clips(test_split(cfg)), "synthetic": SYNTH_SCENES}


def enabled(cfg: ExperimentConfig) -> bool:
    return cfg.autoscale is not None


def _digest(obj, n: int = 12) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


# ============================================================================ embed
def _human_terms(clips) -> np.ndarray:
    """(n, 9) float32 EPDMS terms of each clip's logged future (TERMS order); EC where missing
    is filled with the column mean (1 if none), so every metric row is valid."""
    from mosaic_ray.scoring.epdms import TERMS, score_human

    m = np.array([[t[k] for k in TERMS] for t, _ in (score_human(c) for c in clips)], dtype=np.float64)
    for j in range(m.shape[1]):
        col = m[:, j]
        bad = ~np.isfinite(col)
        if bad.any():
            col[bad] = np.nanmean(col) if (~bad).any() else 1.0
    return m.astype(np.float32)


def _train_graph_rae(storage: Storage, splits: list[str], settings: dict, threads: int) -> dict:
    """Ray task body: fit Graph-RAE on the real scenes of ``splits`` and store it."""
    import io

    import torch

    from mosaic_ray.autoscale.graph_rae import GraphRAE, as_graphs, fit
    from mosaic_ray.config import GraphRAESettings
    from mosaic_ray.data.clip import clips_from_table

    torch.set_num_threads(threads)
    t0 = time.time()
    gs = GraphRAESettings.model_validate(settings)
    gcfg = gs.to_graph_rae_config()
    clips = [c for s in splits for c in clips_from_table(storage.read_table(layout.clips(s)))]
    if len(clips) < 2:
        raise ValueError(f"Graph-RAE needs at least 2 real scenes in {splits}, got {len(clips)}")
    metrics = _human_terms(clips) if gcfg.lambda_m > 0 else None
    graphs = as_graphs(clips, gcfg.graph)
    t_prep = time.time() - t0
    model = GraphRAE(gcfg, seed=gs.seed)
    device = "cuda" if torch.cuda.is_available() and settings.get("train_num_gpus", 0) > 0 else "cpu"
    model = model.to(device)  # fit() moves each batch to the model's device
    hist = fit(model, graphs, gcfg, seed=gs.seed, metrics=metrics)
    model = model.to("cpu")
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "settings": settings}, buf)
    storage.write_bytes(GRAPH_RAE, buf.getvalue())
    first, last = hist[0], hist[-1]
    k = max(1, len(hist) // 10)
    mean = lambda rows: {key: round(float(np.mean([r[key] for r in rows])), 5) for key in rows[0]}  # noqa: E731
    info = {"scenes": len(clips), "splits": splits, "device": device, "steps": len(hist), "first_step": first, "last_step": last,
            "first_tenth_mean": mean(hist[:k]), "last_tenth_mean": mean(hist[-k:]),
            "prep_s": round(t_prep, 1), "wall_time_s": round(time.time() - t0, 1)}
    storage.write_json(GRAPH_RAE_INFO, info)
    return info


def load_graph_rae(storage: Storage):
    """The stored Graph-RAE (eval mode, CPU)."""
    import torch

    from mosaic_ray.autoscale.graph_rae import GraphRAE
    from mosaic_ray.config import GraphRAESettings

    blob = torch.load(storage.local_copy(GRAPH_RAE), map_location="cpu", weights_only=False)
    gs = GraphRAESettings.model_validate(blob["settings"])
    model = GraphRAE(gs.to_graph_rae_config())
    model.load_state_dict(blob["state_dict"])
    return model.eval()


class EmbedStage(ShardStage):
    """Ray Data actor stage: one clip shard of a role (real / calibration / test / synthetic) ->
    ``clip_id`` (str) and ``embedding`` (d float32, Eq. 12 scene vectors) per scene, written to
    ``autoscale/embed_parts/<role>__<shard>``; the model on the GPU when the actor has one.
    Resumable per shard (:class:`~mosaic_ray.stages.shards.ShardStage`)."""

    name = "embed"
    stateful = True
    key_column = "clip_id"

    def __init__(self, storage: Storage, roles: dict[str, str], cpus: float, gpus: float, batch_size: int):
        self.store, self.roles, self.chunk = storage, roles, batch_size
        self.output_dir = EMBED_PARTS
        self.resources = Resources(cpus=cpus, gpus=gpus)

    def setup(self) -> None:
        import torch

        record_actor_pid(self.name)
        torch.set_num_threads(1)
        self.model = load_graph_rae(self.storage())
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)

    def role_of(self, shard: str) -> str:
        folder = shard.rsplit("/", 1)[0]
        for role, f in self.roles.items():
            if f == folder:
                return role
        raise ValueError(f"shard {shard} is in no role's folder")

    def output_path(self, shard: str) -> str:
        return f"{self.output_dir}/{self.role_of(shard)}__{shard.rsplit('/', 1)[-1]}"

    def process_shard(self, table: pa.Table) -> pa.Table:
        import torch

        from mosaic_ray.autoscale.graph_rae import as_graphs
        from mosaic_ray.autoscale.scene_graph import collate
        from mosaic_ray.data.clip import clips_from_table

        table = table.select([c for c in table.column_names if c in _clip_columns()])
        clips = clips_from_table(table)
        d = self.model.cfg.hidden_dim
        zs = []
        with torch.no_grad():
            for a in range(0, len(clips), self.chunk):
                b = collate(as_graphs(clips[a:a + self.chunk], self.model.cfg.graph))
                b = {k: v.to(self.device) for k, v in b.items()}
                zs.append(self.model(b)["z"].float().cpu().numpy().astype(np.float32))
        z = np.concatenate(zs) if zs else np.zeros((0, d), np.float32)
        return pa.table({"clip_id": pa.array([c.clip_id for c in clips], pa.string()),
                         "embedding": pa.FixedSizeListArray.from_arrays(pa.array(z.ravel(), pa.float32()), d)})


def run_embed(ctx: Context) -> dict:
    """Train Graph-RAE (kept from an interrupted run of the same inputs unless forced), embed
    every role's scenes in one actor pool; accounts for every input scene (a missing or
    duplicated embedding raises RuntimeError)."""
    import ray

    from mosaic_ray.stages.runtime import cluster_cpus

    cfg, st = ctx.cfg, ctx.storage
    a = cfg.autoscale
    t0 = time.time()
    if ctx.force:
        for rel in (GRAPH_RAE, GRAPH_RAE_INFO, EMBED_PARTS, EMBEDDINGS):
            st.delete(rel)
    splits = graph_rae_splits(cfg)
    if st.exists(GRAPH_RAE) and st.exists(GRAPH_RAE_INFO):
        info = st.read_json(GRAPH_RAE_INFO)
        log.info("[embed] Graph-RAE of an interrupted run of the same inputs kept")
    else:
        task = ray.remote(_train_graph_rae).options(num_cpus=a.graph_rae.train_num_cpus,
                                                    num_gpus=a.graph_rae.train_num_gpus)
        info = ray.get(task.remote(st, splits, a.graph_rae.model_dump(mode="json"),
                                   max(1, int(a.graph_rae.train_num_cpus))))
    log.info("[embed] Graph-RAE: %d scenes, %d steps, total loss %.4f -> %.4f (first/last tenth means)",
             info["scenes"], info["steps"], info["first_tenth_mean"]["total"], info["last_tenth_mean"]["total"])
    t1 = time.time()
    roles = role_sources(cfg)
    shards = [f for folder in roles.values() for f in st.list(folder, ".parquet")]
    cpus = cluster_cpus()
    n_actors = a.embed_num_actors or max(1, min(len(shards), int(cpus), int((cpus - 0.5) // a.embed_cpus_per_actor)))
    stage = EmbedStage(st, roles, a.embed_cpus_per_actor, a.embed_gpus_per_actor, a.embed_batch_size)
    recs = run_shard_stage(stage, shards, n_actors)
    rows_ids, rows_role, rows_z = [], [], []
    counts = {}
    for role, folder in roles.items():
        expect = st.read_table(folder, columns=["clip_id"]).column("clip_id").to_pylist()
        parts = [f"{EMBED_PARTS}/{role}__{f.rsplit('/', 1)[-1]}" for f in st.list(folder, ".parquet")]
        t = pa.concat_tables([st.read_table(p) for p in parts]) if parts else None
        ids = t.column("clip_id").to_pylist() if t is not None else []
        if sorted(ids) != sorted(expect):
            raise RuntimeError(f"[embed] {role}: {len(ids)} embeddings for {len(expect)} scenes "
                               f"({len(set(expect) - set(ids))} missing, {len(ids) - len(set(ids))} duplicated)")
        d = a.graph_rae.hidden_dim
        z = (t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
             .astype(np.float32).reshape(-1, d) if t is not None else np.zeros((0, d), np.float32))
        if not np.all(np.isfinite(z)):
            raise RuntimeError(f"[embed] {role}: non-finite embeddings")
        order = np.argsort(np.asarray(ids, dtype=object).astype(str), kind="stable")
        rows_ids += [ids[i] for i in order]
        rows_role += [role] * len(ids)
        rows_z.append(z[order])
        counts[role] = len(ids)
    d = a.graph_rae.hidden_dim
    z = np.concatenate(rows_z) if rows_z else np.zeros((0, d), np.float32)
    st.write_table(EMBEDDINGS, pa.table({"clip_id": pa.array(rows_ids, pa.string()),
                                         "role": pa.array(rows_role, pa.string()),
                                         "embedding": pa.FixedSizeListArray.from_arrays(pa.array(z.ravel(), pa.float32()), d)}))
    embed_s = time.time() - t1
    shard_wall = float(sum(recs.column("wall_s").to_pylist()))
    skipped = int(sum(recs.column("skipped").to_pylist()))
    n = sum(counts.values())
    return {"graph_rae": info, "counts": counts, "dim": d, "actors": n_actors, "shards": len(shards),
            "shards_resumed": skipped, "embed_s": round(embed_s, 1), "shard_wall_s": round(shard_wall, 2),
            "shard_cpu_s": round(float(sum(recs.column("cpu_s").to_pylist())), 2),
            # scenes per second of actor time (graph building + encoder); None when shards were resumed
            "scenes_per_actor_s": round(n / shard_wall, 1) if shard_wall > 0 and not skipped else None,
            "wall_time_s": round(time.time() - t0, 1)}


def load_embeddings(storage: Storage) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Role -> (clip ids (n,) object, embeddings (n, d) float32), rows sorted by clip id."""
    t = storage.read_table(EMBEDDINGS)
    ids = np.asarray(t.column("clip_id").to_pylist(), dtype=object)
    roles = np.asarray(t.column("role").to_pylist(), dtype=object)
    col = t.column("embedding").combine_chunks()
    d = col.type.list_size
    z = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d)
    return {r: (ids[roles == r], z[roles == r]) for r in ROLES}


# ============================================================================ cluster
def run_cluster(ctx: Context) -> dict:
    """PCA + GMM on the real scenes; labels for every role; the RBF matrix; with
    ``autoscale.synthetic_calibration``, the held-out synthetic calibration split drawn
    cluster-stratified from the synthetic scenes (role ``synthetic_calibration`` in the labels,
    ``synthetic_calibration_ids`` in ``clusters.json``; ``capacity`` counts only the rest). Like
    the paper's D_cal, a held-out scene shares its source real clip with other synthetic scenes and
    with D_real: it measures the fit to the synthetic distribution, not to new roads."""
    from mosaic_ray.autoscale.clusters import SceneClusters, stratified_holdout

    cfg, st = ctx.cfg, ctx.storage
    a = cfg.autoscale
    emb = load_embeddings(st)
    real_ids, real_z = emb["real"]
    if len(real_ids) < a.n_clusters:
        raise ValueError(f"autoscale.n_clusters: {a.n_clusters} clusters but {len(real_ids)} real scenes")
    pca = None if a.pca_dims is None else min(a.pca_dims, len(real_ids))
    sc = SceneClusters(n_clusters=a.n_clusters, n_components=pca, covariance_type=a.covariance_type,
                       bandwidth=a.rbf_bandwidth, random_state=a.cluster_seed).fit(real_z)
    labels = {"clip_id": [], "role": [], "cluster": []}
    per_role = {}
    held: list[str] = []
    for role in ROLES:
        ids, z = emb[role]
        lab = sc.labels_ if role == "real" else (sc.predict(z) if len(ids) else np.zeros(0, np.int64))
        roles = [role] * len(ids)
        if role == "synthetic":  # the held-out synthetic calibration split: out of every selection
            out = stratified_holdout(lab, a.synthetic_calibration_size(len(ids)), a.n_clusters, a.selection_seed)
            for i in out:
                roles[i] = SYNTH_CAL
            held = [str(ids[i]) for i in out]
            keep = np.ones(len(ids), bool)
            keep[out] = False
            per_role[SYNTH_CAL] = np.bincount(lab[out], minlength=a.n_clusters).astype(int).tolist()
            lab_sel = lab[keep]
        else:
            lab_sel = lab
        labels["clip_id"] += list(ids)
        labels["role"] += roles
        labels["cluster"] += [int(x) for x in lab]
        per_role[role] = np.bincount(lab_sel, minlength=a.n_clusters).astype(int).tolist()
    st.write_table(CLUSTER_LABELS, pa.table({"clip_id": pa.array(labels["clip_id"], pa.string()),
                                             "role": pa.array(labels["role"], pa.string()),
                                             "cluster": pa.array(labels["cluster"], pa.int64())}))
    cal = np.asarray(per_role["calibration"], float)
    info = {"n_clusters": a.n_clusters, "pca_dims": pca, "bandwidth": float(sc.bandwidth_),
            "means": sc.means_.tolist(), "similarity": sc.similarity_.tolist(),
            "real_counts": per_role["real"], "calibration_counts": per_role["calibration"],
            "test_counts": per_role["test"], "capacity": per_role["synthetic"],
            "calibration_mixture": (cal / cal.sum()).tolist() if cal.sum() > 0 else None,
            "empty_real_clusters": int(sum(1 for c in per_role["real"] if c == 0)),
            "synthetic_calibration_counts": per_role[SYNTH_CAL], "synthetic_calibration_ids": sorted(held)}
    st.write_json(CLUSTERS, info)
    return {k: info[k] for k in ("n_clusters", "pca_dims", "bandwidth", "real_counts", "calibration_counts",
                                 "capacity", "empty_real_clusters", "synthetic_calibration_counts")}


def held_out_synthetic_ids(storage: Storage) -> set[str]:
    """Clip ids of the held-out synthetic calibration split recorded by the cluster step (empty
    without one)."""
    return set(storage.read_json(CLUSTERS).get("synthetic_calibration_ids", ()))


def cluster_space(storage: Storage):
    """The :class:`~mosaic_ray.autoscale.methods.ClusterSpace` of the stored embed / cluster
    outputs, and the synthetic and calibration clip ids (row order of the space)."""
    from mosaic_ray.autoscale.methods import ClusterSpace

    emb = load_embeddings(storage)
    info = storage.read_json(CLUSTERS)
    lab = storage.read_table(CLUSTER_LABELS).to_pylist()
    by = {(r["role"], r["clip_id"]): r["cluster"] for r in lab}
    held = held_out_synthetic_ids(storage)
    syn_ids, syn_z = emb["synthetic"]
    if held:  # the held-out synthetic calibration split is not selectable
        keep = np.array([i not in held for i in syn_ids], bool)
        syn_ids, syn_z = [i for i, k in zip(syn_ids, keep) if k], syn_z[keep]
    cal_ids, cal_z = emb["calibration"]
    pi = info["calibration_mixture"]
    space = ClusterSpace(synthetic_emb=syn_z, calibration_emb=cal_z,
                         synthetic_clusters=np.array([by[("synthetic", i)] for i in syn_ids], np.int64),
                         calibration_clusters=np.array([by[("calibration", i)] for i in cal_ids], np.int64),
                         real_counts=np.asarray(info["real_counts"], np.float64),
                         similarity=np.asarray(info["similarity"], np.float64),
                         calibration_mixture=np.asarray(pi, np.float64))
    return space, list(syn_ids), list(cal_ids)


# ============================================================================ rounds
def trial_key(method: str | None, budget: int | None, seed: int, round_: int) -> str:
    """``r0-s<seed>`` for the real-only round, ``<method>-b<budget>-s<seed>-r<round>`` otherwise."""
    return f"r0-s{seed}" if round_ == 0 else f"{method}-b{budget}-s{seed}-r{round_}"


def trial_parts(cfg: ExperimentConfig, fps: dict) -> dict:
    """What every trial's fingerprint shares: the planner recipe, the epochs, the splits, the
    vocabulary's (base step's) and the clusters' fingerprints."""
    a = cfg.autoscale
    up = {k: (fps[k].digest if k in fps else None) for k in ("base", "cluster")}
    return {"planner": config_value(cfg, "planner"), "epochs": a.epochs, "test_max_clips": a.test_max_clips,
            "splits": [real_split(cfg), calibration_split(cfg), test_split(cfg)], "upstream": up}


def _t_interval(x: np.ndarray) -> tuple[float, float]:
    """Mean and 95% t-interval half-width of ``x`` (NaN half-width for one value)."""
    from scipy import stats

    x = np.asarray(x, float)
    if x.size < 2:
        return float(x.mean()) if x.size else float("nan"), float("nan")
    return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def _round_trial(config: dict, trials: dict | None = None, shared: dict | None = None,
                 storage: Storage | None = None) -> None:
    """Tune trainable: train one planner from scratch on real + the trial's synthetic scenes with
    the project's training loop, evaluate it on calibration and test (and on the held-out
    synthetic calibration split where there is one), store the result."""
    import torch
    from ray import tune

    from mosaic_ray.evaluate.planner_eval import score_planner
    from mosaic_ray.planner.model import PlannerSpec, VocabularyPlanner
    from mosaic_ray.planner.training import TrainRecipe, require_finite_weights, seed_torch, shard_rows, train_loop

    t0 = time.time()
    torch.set_num_threads(int(config["torch_threads"]))
    trial = trials[config["trial"]]
    data = shared
    feats = data["train_feats"]
    row = {c: i for i, c in enumerate(feats["clip_id"])}
    want = list(data["real_ids"]) + list(trial["synthetic_ids"])
    missing = [c for c in want if c not in row]
    if missing:
        raise RuntimeError(f"{trial['key']}: {len(missing)} training scenes without features, e.g. {missing[:3]}")
    idx = np.array([row[c] for c in want], np.int64)
    rows = shard_rows({k: np.asarray(v)[idx] for k, v in feats.items()})
    spec = PlannerSpec.from_dict(data["spec"])
    seed_torch(int(trial["seed"]))
    model = VocabularyPlanner(spec, torch.from_numpy(np.asarray(data["anchors"], np.float32)))
    losses = train_loop(model, rows, TrainRecipe(**config["recipe"]), seed=int(trial["seed"]), name=trial["key"])
    require_finite_weights(model, f"autoscale trial {trial['key']}")
    t_train = time.time() - t0
    cal = score_planner(model, data["cal_clips"], spec.features, feats=data["cal_feats"])
    test = score_planner(model, data["test_clips"], spec.features, feats=data["test_feats"])
    syncal = (score_planner(model, data["syncal_clips"], spec.features, feats=data["syncal_feats"])
              if data.get("syncal_clips") else None)
    res = {**{k: trial[k] for k in ("key", "method", "budget", "seed", "round", "fingerprint", "selection")},
           "n_real": len(data["real_ids"]), "n_synthetic": len(trial["synthetic_ids"]),
           "synthetic_counts": trial["synthetic_counts"], "loss": float(losses[-1]) if losses else None,
           "calibration": {**cal.utility(), "clip_ids": [str(c) for c in cal.clip_ids],
                           "clip_epdms": cal.epdms.round(6).tolist()},
           "test": {**test.utility(), "clip_epdms": test.epdms.round(6).tolist()},
           **({SYNTH_CAL: {**syncal.utility(), "clip_epdms": syncal.epdms.round(6).tolist()}} if syncal else {}),
           "train_time_s": round(t_train, 1), "trial_time_s": round(time.time() - t0, 1)}
    storage.write_json(f"{ROUNDS}/{trial['key']}.json", res)
    tune.report({"epdms": res["calibration"]["epdms"], "key": trial["key"]})


def _shared_data(cfg: ExperimentConfig, st: Storage, syn_ids: list[str], cal_ids: list[str]) -> dict:
    """Features of the real split and the selectable synthetic pool (computed once), the
    calibration, test and held-out synthetic calibration clips with their features, the
    vocabulary and the planner spec."""
    from mosaic_ray.data.clip import clips_from_table
    from mosaic_ray.planner.features import featurize_clips
    from mosaic_ray.planner.model import PlannerSpec
    from mosaic_ray.planner.training import drop_nonfinite_rows

    spec = PlannerSpec.from_config(cfg.planner)
    t0 = time.time()
    real = clips_from_table(st.read_table(layout.clips(real_split(cfg))))
    syn_t = st.read_table(SYNTH_SCENES)
    syn = clips_from_table(syn_t.select([c for c in syn_t.column_names if c in _clip_columns()]))
    held = held_out_synthetic_ids(st)
    syn_cal = sorted((c for c in syn if c.clip_id in held), key=lambda c: c.clip_id)
    if len(syn_cal) != len(held):
        raise RuntimeError(f"{len(held) - len(syn_cal)} held-out synthetic calibration scenes are missing from "
                           f"{SYNTH_SCENES}: run `mosaic-ray cluster` again")
    syn = [c for c in syn if c.clip_id not in held]
    feats = featurize_clips(real + syn, spec.features, with_prev=False)
    feats, dropped = drop_nonfinite_rows(feats, "autoscale training features")
    cal = clips_from_table(st.read_table(layout.clips(calibration_split(cfg))))
    cal = sorted(cal, key=lambda c: c.clip_id)
    if [c.clip_id for c in cal] != sorted(cal_ids):
        raise RuntimeError("calibration clips differ from the embedded ones: run `mosaic-ray embed` again")
    test = sorted(clips_from_table(st.read_table(layout.clips(test_split(cfg)))), key=lambda c: c.clip_id)
    if cfg.autoscale.test_max_clips and len(test) > cfg.autoscale.test_max_clips:
        keep = np.random.default_rng(cfg.autoscale.selection_seed).choice(len(test), cfg.autoscale.test_max_clips,
                                                                          replace=False)
        test = [test[i] for i in sorted(keep)]
    log.info("[rounds] features of %d real + %d synthetic scenes in %.0f s", len(real), len(syn), time.time() - t0)
    return {"train_feats": feats, "real_ids": sorted(c.clip_id for c in real), "spec": spec.__dict__,
            "anchors": np.load(st.local_copy(layout.VOCABULARY)),
            "cal_clips": cal, "cal_feats": featurize_clips(cal, spec.features, with_prev=True),
            "test_clips": test, "test_feats": featurize_clips(test, spec.features, with_prev=True),
            "syncal_clips": syn_cal,
            "syncal_feats": featurize_clips(syn_cal, spec.features, with_prev=True) if syn_cal else None,
            "dropped": dropped}


def _clip_columns() -> set[str]:
    from mosaic_ray.data.clip import clip_schema

    return set(clip_schema().names)


def _observation(res: dict, space, cal_ids: list[str]):
    from mosaic_ray.autoscale.methods import Observation, cluster_scores

    if res["calibration"]["clip_ids"] != list(cal_ids):
        raise RuntimeError(f"{res['key']}: calibration clips differ from the cluster step's")
    s = np.asarray(res["calibration"]["clip_epdms"], float)
    return Observation(np.asarray(res["synthetic_counts"], float),
                       cluster_scores(s, space.calibration_clusters, space.n_clusters), s)


def _run_trials(cfg: ExperimentConfig, st: Storage, trials: list[dict], shared: dict, tag: str) -> None:
    from ray import tune

    from mosaic_ray.planner.training import recipe_from_config
    from mosaic_ray.stages.runtime import cluster_cpus, tune_progress_callback

    if not trials:
        return
    a = cfg.autoscale
    recipe = recipe_from_config(cfg, "base", epochs=a.epochs)
    conc = a.max_concurrent_trials or max(1, int(cluster_cpus() // a.cpus_per_trial))
    by_key = {t["key"]: t for t in trials}
    trainable = tune.with_resources(tune.with_parameters(_round_trial, trials=by_key, shared=shared, storage=st),
                                    {"cpu": a.cpus_per_trial})
    log.info("[rounds] %s: %d trainings, up to %d at a time", tag, len(trials), conc)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(sorted(by_key)), "recipe": recipe.to_dict(),
                     "torch_threads": cfg.planner.torch_threads},
        tune_config=tune.TuneConfig(max_concurrent_trials=conc, reuse_actors=True,
                                    trial_dirname_creator=lambda t: f"{t.config['trial']}-{t.trial_id}"),
        run_config=tune.RunConfig(storage_path=st.path("tune"), storage_filesystem=None if st.is_local else st.fs,
                                  name=f"autoscale-{tag}-{_digest(sorted(by_key), 8)}-{int(time.time())}", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  callbacks=[tune_progress_callback(
                                      "rounds", len(trials),
                                      lambda r: f"{r['key']}: calibration EPDMS {100 * r['epdms']:.2f}")]))
    grid = tuner.fit()
    errors = [str(r.error) for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} AutoScale training(s) failed; first error: {errors[0][:2000]}")


def loops(cfg: ExperimentConfig, pool_size: int) -> list[tuple[str, int, int]]:
    """Every (method, budget, seed) loop; ``all_synthetic`` once per seed at the pool size."""
    a = cfg.autoscale
    budgets = a.resolve_budgets(pool_size)
    out = []
    for m in a.methods:
        for b in ([pool_size] if m == "all_synthetic" else budgets):
            out += [(m, int(b), int(s)) for s in a.seeds]
    return out


def run_rounds(ctx: Context) -> dict:
    """Round 0 (real only) per seed, then rounds 1..R of every loop (see the module docstring)."""
    from mosaic_ray.autoscale.methods import MOSAIC_METHOD, method_rounds, mosaic_pilots, mosaic_select, select_round

    cfg, st = ctx.cfg, ctx.storage
    a = cfg.autoscale
    t0 = time.time()
    if ctx.force:
        st.delete(ROUNDS)
    space, syn_ids, cal_ids = cluster_space(st)
    parts = trial_parts(cfg, ctx.fingerprints)
    shared = None
    ran = kept = 0
    results: dict[str, dict] = {}

    def current(key: str, fp: str) -> dict | None:
        path = f"{ROUNDS}/{key}.json"
        if st.exists(path):
            r = st.read_json(path)
            if r.get("fingerprint") == fp:
                return r
        return None

    def execute(trials: list[dict], tag: str) -> None:
        nonlocal shared, ran, kept
        todo = []
        for t in trials:
            r = current(t["key"], t["fingerprint"])
            if r is None:
                todo.append(t)
            else:
                results[t["key"]] = r
                kept += 1
        if todo:
            if shared is None:
                shared = _shared_data(cfg, st, syn_ids, cal_ids)
            _run_trials(cfg, st, todo, shared, tag)
            ran += len(todo)
        for t in todo:
            r = current(t["key"], t["fingerprint"])
            if r is None:
                raise RuntimeError(f"AutoScale training {t['key']} stored no result")
            results[t["key"]] = r

    def make(method, budget, seed, round_, rows, info) -> dict:
        ids = [syn_ids[i] for i in rows]
        counts = np.bincount(space.synthetic_clusters[rows], minlength=space.n_clusters).astype(int).tolist() \
            if len(rows) else [0] * space.n_clusters
        fp = _digest({"parts": parts, "seed": seed, "ids": sorted(ids)})
        return {"key": trial_key(method, budget, seed, round_), "method": method, "budget": budget, "seed": seed,
                "round": round_, "fingerprint": fp, "synthetic_ids": ids, "synthetic_counts": counts,
                "selection": info}

    execute([make(None, 0, s, 0, np.zeros(0, np.int64), {"method": "real_only", "round": 0}) for s in a.seeds],
            "round0")
    all_loops = loops(cfg, len(syn_ids))
    history = {lp: [_observation(results[trial_key(None, None, lp[2], 0)], space, cal_ids)] for lp in all_loops}
    mosaic = MOSAIC_METHOD in a.methods
    pilots: dict[int, list[dict]] = {}  # seed -> pilot trials of mosaic_clusters (round 1)
    for r in range(1, max(a.rounds, 2 if mosaic else 1) + 1):
        trials = []
        if mosaic and r == 1:
            for s in a.seeds:
                pilots[s] = [make("mosaic_pilot", p["n"], s, 1, p["rows"], {"method": "mosaic_pilot", "round": 1,
                                                                             "cluster": p["cluster"]})
                             for p in mosaic_pilots(space, a.mosaic_pilot_sizes, s)]
                for t in pilots[s]:
                    t["key"] = f"mosaic_pilot-c{t['selection']['cluster']}-n{t['budget']}-s{s}"
                trials += pilots[s]
        for lp in all_loops:
            m, b, s = lp
            if r not in method_rounds(m, a.rounds):
                continue
            if m == MOSAIC_METHOD:
                base_s = results[trial_key(None, None, s, 0)]["calibration"]["epdms"]
                points = [{"cluster": t["selection"]["cluster"], "n": t["budget"],
                           "delta_u": results[t["key"]]["calibration"]["epdms"] - base_s} for t in pilots[s]]
                rows, info = mosaic_select(space, b, points, s)
            else:
                rows, info = select_round(m, space, b, r, history[lp], a, s)
            if m != "all_synthetic" and len(rows) != min(b, len(syn_ids)):
                raise RuntimeError(f"{m} b={b} round {r}: selected {len(rows)} scenes")
            trials.append(make(m, b, s, r, rows, info))
        execute(trials, f"round{r}")
        for t in trials:
            lp = (t["method"], t["budget"], t["seed"])
            if lp in history:
                history[lp].append(_observation(results[t["key"]], space, cal_ids))
    keys = sorted(results)
    return {"trainings": len(keys), "ran": ran, "kept": kept, "loops": len(all_loops), "rounds": a.rounds,
            "synthetic_pool": len(syn_ids), "keys": keys, "fingerprints": {k: results[k]["fingerprint"] for k in keys},
            "wall_time_s": round(time.time() - t0, 1)}


def _rounds_complete(ctx: Context, payload: dict) -> bool:
    return all(ctx.storage.exists(f"{ROUNDS}/{k}.json") for k in payload.get("keys", []))


# ============================================================================ report
def _syncal_stats(final: list[dict]) -> dict:
    """Mean and 95% t-interval over seeds of the held-out synthetic calibration EPDMS (the
    paper's second evaluation), or nothing where the run holds no such split."""
    if not final or any(SYNTH_CAL not in r for r in final):
        return {}
    mean, hw = _t_interval(np.array([r[SYNTH_CAL]["epdms"] for r in final]))
    return {"synthetic_calibration_epdms_mean": mean, "synthetic_calibration_epdms_ci95": hw,
            "n_synthetic_calibration": final[0][SYNTH_CAL]["n_clips"]}


def build_autoscale_summary(cfg: ExperimentConfig, st: Storage) -> dict:
    """Every number of the AutoScale report from the stored round results (EPDMS on 0..1).

    Per method × budget, the *final* training of each seed (the last round of a loop method,
    round 1 of a one-shot one) on the test split: mean EPDMS and 95% t-interval over seeds, the
    mean of the per-seed 95% intervals over test clips, the nine terms, the paired difference
    against ``uniform`` at the same budget and seed (mean, 95% interval, wins); the calibration
    EPDMS of every round of the loop methods; round 0 (real only); where the run holds a
    held-out synthetic calibration split, each line's EPDMS on it (mean and 95% t-interval)."""
    from mosaic_ray.scoring.epdms import TERMS

    a = cfg.autoscale
    payload = st.done_payload(ROUNDS_RECORD)
    res = {k: st.read_json(f"{ROUNDS}/{k}.json") for k in payload["keys"]}
    final: dict[tuple[str, int], dict[int, dict]] = defaultdict(dict)
    by_round: dict[tuple[str, int], dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    pilots = 0
    for r in res.values():
        if r["method"] == "mosaic_pilot":  # MOSAIC's pilot trainings: inputs of mosaic_clusters, not results
            pilots += 1
            continue
        if r["round"] == 0:
            final[("real_only", 0)][r["seed"]] = r
            continue
        m, b = r["method"], r["budget"]
        by_round[(m, b)][r["round"]][r["seed"]] = r["calibration"]["epdms"]
        prev = final[(m, b)].get(r["seed"])
        if prev is None or r["round"] > prev["round"]:
            final[(m, b)][r["seed"]] = r

    def clip_ci(r: dict) -> float:
        e = np.asarray(r["test"]["clip_epdms"], float)
        return float(1.96 * e.std(ddof=1) / math.sqrt(e.size)) if e.size > 1 else float("nan")

    rows = []
    for (m, b), per_seed in sorted(final.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        seeds = sorted(per_seed)
        test = np.array([per_seed[s]["test"]["epdms"] for s in seeds])
        cal = np.array([per_seed[s]["calibration"]["epdms"] for s in seeds])
        mean, hw = _t_interval(test)
        row = {"method": m, "budget": b, "seeds": seeds, "rounds": max(per_seed[s]["round"] for s in seeds),
               "test_epdms_mean": mean, "test_epdms_ci95": hw, "test_epdms_per_seed": test.tolist(),
               "test_clip_ci95_mean": float(np.mean([clip_ci(per_seed[s]) for s in seeds])),
               "calibration_epdms_mean": float(cal.mean()),
               **_syncal_stats([per_seed[s_] for s_ in seeds]),
               "terms": {t: float(np.nanmean([per_seed[s]["test"]["terms"][t] for s in seeds])) for t in TERMS},
               "n_test_clips": per_seed[seeds[0]]["test"]["n_clips"],
               "n_synthetic": per_seed[seeds[0]]["n_synthetic"]}
        uni = final.get(("uniform", b))
        if m != "uniform" and uni:
            common = [s for s in seeds if s in uni]
            if common:
                d = np.array([per_seed[s]["test"]["epdms"] - uni[s]["test"]["epdms"] for s in common])
                dm, dh = _t_interval(d)
                row["vs_uniform"] = {"mean": dm, "ci95": dh, "wins": int((d > 0).sum()), "n": len(common)}
        if (m, b) in by_round:
            row["calibration_by_round"] = {str(rr): float(np.mean(list(v.values())))
                                           for rr, v in sorted(by_round[(m, b)].items())}
        rows.append(row)
    # the AutoScale loops against every other line, paired by seed (test EPDMS differences)
    comparisons = []
    for m, b in sorted(final):
        if not m.startswith("autoscale"):
            continue
        for (o, ob), other in sorted(final.items()):
            common = [s_ for s_ in sorted(final[(m, b)]) if s_ in other]
            if (o, ob) == (m, b) or not common or (ob not in (b, 0) and o != "all_synthetic"):
                continue
            d = np.array([final[(m, b)][s_]["test"]["epdms"] - other[s_]["test"]["epdms"] for s_ in common])
            dm, dh = _t_interval(d)
            comparisons.append({"method": m, "budget": b, "other": o, "other_budget": ob, "mean": dm, "ci95": dh,
                                "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "n": len(common)})
    graph = st.read_json(GRAPH_RAE_INFO) if st.exists(GRAPH_RAE_INFO) else None
    syn = st.done_payload(SYNTH_RECORD) if st.is_done(SYNTH_RECORD) else {}
    return {"version": 1, "name": cfg.name, "splits": {"real": real_split(cfg), "calibration": calibration_split(cfg),
                                                       "test": test_split(cfg)},
            "synthetic_pool": {k: syn.get(k) for k in ("source_clips", "attempts", "kept", "quarantined",
                                                        "kept_per_clip_mean", "by_kind", "quarantine_reasons")},
            "graph_rae": graph, "clusters": {k: v for k, v in st.read_json(CLUSTERS).items()
                                             if k not in ("means", "similarity")},
            "rounds": a.rounds, "methods": list(a.methods), "results": rows, "comparisons": comparisons, "mosaic_pilot_trainings": pilots,
            "config": cfg.autoscale.model_dump(mode="json")}


def render_autoscale_report(s: dict) -> str:
    """Markdown of :func:`build_autoscale_summary`'s dict (EPDMS ×100)."""
    from mosaic_ray.scoring.epdms import TERMS

    f = lambda x: "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.2f}"  # noqa: E731
    sp = s["synthetic_pool"]
    lines = [f"# AutoScale: {s['name']}", "",
             f"Real training split `{s['splits']['real']}` kept whole; feedback from `{s['splits']['calibration']}`; "
             f"numbers below on `{s['splits']['test']}` (read by nothing else).", "",
             f"Synthetic pool: {sp.get('kept')} scenes kept of {sp.get('attempts')} attempts from "
             f"{sp.get('source_clips')} real clips ({sp.get('kept_per_clip_mean')} per clip); "
             f"quarantined {sp.get('quarantined')} ({sp.get('quarantine_reasons')}).", ""]
    g = s.get("graph_rae")
    if g:
        lines += [f"Graph-RAE: {g['scenes']} real scenes, {g['steps']} steps; total loss {g['first_tenth_mean']['total']:.4f} "
                  f"(first tenth) -> {g['last_tenth_mean']['total']:.4f} (last tenth); clusters K = "
                  f"{s['clusters']['n_clusters']} (PCA {s['clusters']['pca_dims']}).", ""]
    lines += ["## Test EPDMS (final training per seed)", "",
              "| method | budget | rounds | seeds | test EPDMS | ±95% (seeds) | ±95% (clips) | vs uniform | wins | calibration |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in s["results"]:
        vs = r.get("vs_uniform")
        diff = "{:+.2f} ± {}".format(100 * vs["mean"], f(vs["ci95"])) if vs else ""
        wins = "{}/{}".format(vs["wins"], vs["n"]) if vs else ""
        lines.append(f"| {r['method']} | {r['budget']} | {r['rounds']} | {len(r['seeds'])} | {f(r['test_epdms_mean'])} | "
                     f"{f(r['test_epdms_ci95'])} | {f(r['test_clip_ci95_mean'])} | {diff} | {wins} | "
                     f"{f(r['calibration_epdms_mean'])} |")
    held = [r for r in s["results"] if "synthetic_calibration_epdms_mean" in r]
    if held:
        lines += ["", f"## Held-out synthetic calibration split ({held[0]['n_synthetic_calibration']} synthetic "
                  "scenes, cluster-stratified, never selected; the paper's second evaluation)", "",
                  "| method | budget | EPDMS | ±95% (seeds) |", "| --- | ---: | ---: | ---: |"]
        for r in held:
            lines.append(f"| {r['method']} | {r['budget']} | {f(r['synthetic_calibration_epdms_mean'])} | "
                         f"{f(r['synthetic_calibration_epdms_ci95'])} |")
    lines += ["", "## Test EPDMS terms (means over seeds)", "", "| method | budget | " + " | ".join(TERMS) + " |",
              "| --- | ---: |" + " ---: |" * len(TERMS)]
    for r in s["results"]:
        lines.append(f"| {r['method']} | {r['budget']} | " + " | ".join(f(r["terms"][t]) for t in TERMS) + " |")
    if s.get("comparisons"):
        lines += ["", "## AutoScale against every other line (test EPDMS difference, paired by seed)", "",
                  "| method | budget | against | its budget | difference | ±95% (seeds) | better / worse seeds |",
                  "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
        for c in s["comparisons"]:
            lines.append(f"| {c['method']} | {c['budget']} | {c['other']} | {c['other_budget']} | "
                         f"{100 * c['mean']:+.2f} | {f(c['ci95'])} | {c['wins']} / {c['losses']} of {c['n']} |")
    loops_ = [r for r in s["results"] if r.get("calibration_by_round") and len(r["calibration_by_round"]) > 1]
    if loops_:
        lines += ["", "## Calibration EPDMS per round (loop methods; round 0 = real only)", ""]
        r0 = next((r for r in s["results"] if r["method"] == "real_only"), None)
        for r in loops_:
            seq = ([f"r0 {f(r0['calibration_epdms_mean'])}"] if r0 else []) + \
                  [f"r{k} {f(v)}" for k, v in r["calibration_by_round"].items()]
            lines.append(f"- {r['method']} b={r['budget']}: " + ", ".join(seq))
    return "\n".join(lines) + "\n"


def run_autoscale_report(ctx: Context) -> dict:
    st = ctx.storage
    s = build_autoscale_summary(ctx.cfg, st)
    st.write_json(SUMMARY, s)
    st.write_bytes(REPORT, render_autoscale_report(s).encode())
    return {"report": st.uri(REPORT), "summary": st.uri(SUMMARY)}


# ============================================================================ steps
_AS = ("autoscale.synthesize",)
EMBED_STEP = Step("embed", run_embed, needs=needs_of({f"{SYNTH_RECORD}/_SUCCESS.json": "synthesize"}),
                  outputs=(GRAPH_RAE, GRAPH_RAE_INFO, EMBEDDINGS), record=EMBED_RECORD, enabled=enabled,
                  config_keys=("autoscale.graph_rae",), upstream=("ingest", "synthesize"),
                  depends=lambda cfg: {"splits": [graph_rae_splits(cfg), role_sources(cfg)]},
                  describe=lambda p: (f"{sum(p['counts'].values())} scenes embedded ({p['counts']}), "
                                      f"{p['scenes_per_actor_s']} scenes per actor-second"))
CLUSTER_STEP = Step("cluster", run_cluster, needs=needs_of({EMBEDDINGS: "embed"}),
                    outputs=(CLUSTERS, CLUSTER_LABELS), record=CLUSTER_RECORD, enabled=enabled,
                    config_keys=("autoscale.n_clusters", "autoscale.pca_dims", "autoscale.covariance_type",
                                 "autoscale.rbf_bandwidth", "autoscale.cluster_seed",
                                 "autoscale.synthetic_calibration", "autoscale.selection_seed"), upstream=("embed",),
                    describe=lambda p: f"K = {p['n_clusters']}, {p['empty_real_clusters']} empty")
ROUNDS_STEP = Step("rounds", run_rounds, needs=needs_of({CLUSTERS: "cluster", layout.VOCABULARY: "base"}),
                   outputs=(ROUNDS,), record=ROUNDS_RECORD, enabled=enabled, complete=_rounds_complete,
                   config_keys=("autoscale", "planner"), upstream=("base", "cluster"), rerun="resume",
                   describe=lambda p: f"{p['trainings']} trainings ({p['ran']} run, {p['kept']} kept)")
REPORT_STEP = Step("autoscale_report", run_autoscale_report,
                   needs=needs_of({f"{ROUNDS_RECORD}/_SUCCESS.json": "rounds"}), outputs=(SUMMARY, REPORT),
                   record=None, enabled=enabled, describe=lambda p: p["report"])
