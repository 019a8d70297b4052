"""Rule distillation on/off: validation EPDMS of the planner trained on D_train with and
without Hydra-MDP distillation heads (same seeds, same epochs, in-process training).

For every D_train clip of an ingested run the K anchors of the run's vocabulary are scored
(:func:`mosaic_ray.scoring.epdms.score_vocabulary`, the targets the distill stage writes);
then for each seed two planners are trained with :func:`mosaic_ray.planner.training.fit`
from the same initial weights of the shared layers: the plain one (imitation only) and one
with distillation heads (imitation + BCE on the 8 sub-scores, plan chosen by the documented
log-score combination). Both are evaluated on the validation clips with
:func:`mosaic_ray.evaluate.planner_eval.score_planner` (EPDMS with EC from the previous frame
where the clip has one). For the distilled planner the imitation-only choice is also scored,
separating the effect of the auxiliary loss from that of the score-based selection.

Usage::

    python benchmarks/distill_compare.py --run /work/ci_check/runs/ngsim_demo --seeds 0 1 2 3 4
    # more data: D_train and the pool, targets read from a distill stage's output
    python benchmarks/distill_compare.py --train-splits train pool --targets-run <run with distill/targets> \
        --seeds 0 1 --tag train_pool

Writes ``benchmarks/results/distill_<date>[_<tag>].json``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mosaic_ray.config import PlannerConfig  # noqa: E402
from mosaic_ray.evaluate.planner_eval import SceneCache, score_planner  # noqa: E402
from mosaic_ray.planner.features import featurize_clips  # noqa: E402
from mosaic_ray.planner.model import PlannerSpec, VocabularyPlanner  # noqa: E402
from mosaic_ray.planner.training import fit  # noqa: E402
from mosaic_ray.scoring.epdms import TERMS, prepare_scene, score_vocabulary  # noqa: E402
from mosaic_ray.stages.distill import DISTILL_COLUMNS  # noqa: E402
from mosaic_ray.stages.ingest import load_clips  # noqa: E402
from mosaic_ray.storage import Storage  # noqa: E402


class _ImitationChoice(torch.nn.Module):
    """A distilled planner that plans with the imitation logits alone (ablation)."""

    def __init__(self, model: VocabularyPlanner):
        super().__init__()
        self.inner = copy.deepcopy(model)
        self.inner.spec = PlannerSpec(**{**model.spec.__dict__, "distill": False})
        self.spec = self.inner.spec

    def plan(self, batch):
        return self.inner.plan(batch)

    def parameters(self, *a, **k):
        return self.inner.parameters(*a, **k)

    def eval(self):
        self.inner.eval()
        return self


def utility_row(res) -> dict:
    u = res.utility()
    return {"epdms": u["epdms"], "terms": u["terms"], "n_clips": u["n_clips"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="/work/ci_check/runs/ngsim_demo")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="default: planner.base_epochs (60)")
    ap.add_argument("--train-splits", nargs="+", default=["train"], help="clip splits to train on")
    ap.add_argument("--targets-run", default=None,
                    help="read the targets from this run's distill/targets (default: compute them here)")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pc = PlannerConfig()
    epochs = args.epochs or pc.base_epochs
    st = Storage(args.run)
    train = [c for split in args.train_splits for c in load_clips(st, split)]
    val = load_clips(st, "validation")
    anchors = np.load(Path(args.run) / "planner" / "vocabulary.npy").astype(np.float32)
    K = anchors.shape[0]
    t0 = time.time()
    if args.targets_run:
        from mosaic_ray.stages.distill import load_targets, targets_for

        targets = targets_for(load_targets(Storage(args.targets_run)), [c.clip_id for c in train], K)
        if not np.isfinite(targets).all(axis=(1, 2)).all():
            raise SystemExit("some training clips have no targets in --targets-run")
    else:
        targets = np.stack([score_vocabulary(prepare_scene(c), anchors.astype(np.float64))[:, DISTILL_COLUMNS]
                            for c in train]).astype(np.float32)
    t_targets = time.time() - t0
    print(f"[distill] targets for {len(train)} training clips ({'+'.join(args.train_splits)}) x K={K} "
          f"in {t_targets:.1f} s", flush=True)
    spec = PlannerSpec.from_config(pc)
    spec = PlannerSpec(**{**spec.__dict__, "vocab_size": K})
    feats = featurize_clips(train, spec.features, with_prev=False)
    vfeats = featurize_clips(val, spec.features, with_prev=True)
    cache = SceneCache()
    rows = []
    for seed in args.seeds:
        for distill in (False, True):
            s = PlannerSpec(**{**spec.__dict__, "distill": distill})
            torch.manual_seed(seed)
            model = VocabularyPlanner(s, torch.from_numpy(anchors))
            data = dict(feats)
            if distill:
                data["distill_targets"] = targets
            t1 = time.time()
            hist = fit(model, data, epochs=epochs, lr=pc.lr, weight_decay=pc.weight_decay,
                       batch_size=pc.batch_size, seed=seed, mirror=pc.augment_mirror,
                       distill_weight=pc.distill_loss_weight)
            t_train = time.time() - t1
            res = score_planner(model, val, s.features, cache=cache, feats=vfeats)
            row = {"seed": seed, "distill": distill, "train_s": round(t_train, 1),
                   "final_loss": hist[-1], **utility_row(res)}
            if distill:
                row["imitation_choice"] = utility_row(score_planner(_ImitationChoice(model), val, s.features,
                                                                    cache=cache, feats=vfeats))
            rows.append(row)
            extra = (f" (imitation-only choice {100 * row['imitation_choice']['epdms']:.2f})" if distill else "")
            print(f"[distill] seed {seed} distill={distill}: validation EPDMS {100 * row['epdms']:.2f}{extra} "
                  f"[{t_train:.0f} s]", flush=True)

    def mean(sel, key=lambda r: r["epdms"]):
        v = [key(r) for r in rows if sel(r)]
        return float(np.mean(v)), float(np.std(v))

    summary = {
        "plain": mean(lambda r: not r["distill"]),
        "distill": mean(lambda r: r["distill"]),
        "distill_imitation_choice": mean(lambda r: r["distill"], lambda r: r["imitation_choice"]["epdms"]),
        "terms_plain": {t: float(np.nanmean([r["terms"][t] for r in rows if not r["distill"]])) for t in TERMS},
        "terms_distill": {t: float(np.nanmean([r["terms"][t] for r in rows if r["distill"]])) for t in TERMS},
    }
    result = {"benchmark": "distill_compare", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "command": "python benchmarks/distill_compare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "run": args.run, "train_splits": args.train_splits, "targets_run": args.targets_run,
              "n_train": len(train), "n_validation": len(val), "K": K, "epochs": epochs,
              "planner": pc.model_dump(), "targets_s": round(t_targets, 1), "rows": rows, "summary": summary}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"distill_{dt.date.today().isoformat()}{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"[distill] plain {100 * summary['plain'][0]:.2f} +- {100 * summary['plain'][1]:.2f}, "
          f"distill {100 * summary['distill'][0]:.2f} +- {100 * summary['distill'][1]:.2f} "
          f"(imitation-only choice {100 * summary['distill_imitation_choice'][0]:.2f}); wrote {path}", flush=True)
    return result


if __name__ == "__main__":
    main()
