"""Per-term EPDMS of an NGSIM-trained planner and of the logged human on ScenarioNet clips (issue 6).

    .venv/bin/mosaic-ray ingest jobs/waymo_score.yaml
    .venv/bin/python benchmarks/waymo_transfer.py runs/waymo_score runs/ngsim_demo/planner/base.pt

Reads the ingested clips of the ScenarioNet run (all splits), runs the planner checkpoint on
them and reports, per EPDMS term (mean over clips; EC over clips with a previous frame):

* ``planner``: the planner's chosen trajectory, with the human filter (the metric as used in
  selection and evaluation);
* ``planner_no_filter``: the same trajectory without the human filter;
* ``human``: the logged future of the pseudo-ego, no filter (the data's own ceiling).

Writes ``benchmarks/results/waymo_transfer_<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    import numpy as np

    from mosaic_ray.data.clip import clips_from_table
    from mosaic_ray.evaluate.planner_eval import SceneCache, score_human, score_planner
    from mosaic_ray.planner.features import featurize_clips
    from mosaic_ray.planner.model import load_checkpoint
    from mosaic_ray.planner.training import plan_batches
    from mosaic_ray.scoring.epdms import TERMS, score_trajectories
    from mosaic_ray.storage import Storage

    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a run with ingested ScenarioNet clips")
    ap.add_argument("checkpoint", help="planner checkpoint (.pt), local path")
    args = ap.parse_args()

    st = Storage(args.run)
    clips = []
    for split in ("train", "validation", "pool"):
        for shard in st.list(f"ingest/clips/{split}", ".parquet"):
            clips += clips_from_table(st.read_table(shard))
    if not clips:
        raise SystemExit(f"no ingested clips under {args.run}: run `mosaic-ray ingest` first")
    model = load_checkpoint(args.checkpoint).eval()
    cache = SceneCache()
    planner = score_planner(model, clips, model.spec.features, cache=cache)

    feats = featurize_clips(clips, model.spec.features, with_prev=True)
    cur, prev = plan_batches(model, feats, 256), plan_batches(model, feats, 256, prefix="prev_")
    raw = np.full((len(clips), len(TERMS)), np.nan)
    raw_epdms = np.zeros(len(clips))
    for i, c in enumerate(clips):
        pp = prev["trajectory"][i].astype(np.float64) if feats["prev_valid"][i] else None
        r = score_trajectories(cache.get(c), cur["trajectory"][i][None].astype(np.float64),
                               prev_poses=pp, human_filter=False)
        raw_epdms[i] = r.epdms[0]
        raw[i] = [r.terms[t][0] for t in TERMS]

    def table(epdms, terms) -> dict:
        return {"epdms": round(float(np.mean(epdms)), 4),
                "terms": {t: round(float(np.nanmean(terms[:, j])), 4) for j, t in enumerate(TERMS)}}

    human = score_human(clips, cache)
    res = {"date": dt.date.today().isoformat(), "run": args.run, "checkpoint": args.checkpoint,
           "clips": len(clips), "datasets": sorted({c.dataset for c in clips}),
           "planner": table(planner.epdms, planner.terms),
           "planner_no_filter": table(raw_epdms, raw),
           "human": {"epdms": round(human["epdms"], 4),
                     "terms": {k: round(v, 4) for k, v in human["terms"].items()}}}
    out = Path(__file__).parent / "results" / f"waymo_transfer_{res['date']}.json"
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
