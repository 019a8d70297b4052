"""Training-step time of the planner's two scoring heads, side by side (issue 12 parts 6 and 7).

    .venv/bin/python benchmarks/bench_head.py [--batch 64] [--steps 20] [--rounds 3]

Builds the default :class:`~mosaic_ray.planner.model.PlannerSpec` (K = 256 anchors, H = 128)
with ``head="mlp"`` and ``head="additive"`` on random inputs of the feature shapes, and times
``--steps`` optimisation steps of :func:`mosaic_ray.planner.training.train_step` (batch
``--batch`` plus its mirror, AdamW, one torch thread) after 3 warm-up steps, alternating the
heads over ``--rounds`` rounds. Prints and writes ``benchmarks/results/head_<date>.json``:
median seconds per step of each head and their ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from mosaic_ray.planner.model import PlannerSpec, VocabularyPlanner
    from mosaic_ray.planner.training import train_step

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    shapes = PlannerSpec().features.shapes()
    B = args.batch
    batch = {}
    for k, shape in shapes.items():
        if k.startswith("prev_"):
            continue
        if k.endswith("mask"):
            batch[k] = torch.rand((B,) + shape, generator=g) > 0.3
        elif k in ("ego", "agents", "lanes", "lanes_attr", "route", "target"):
            batch[k] = torch.randn((B,) + shape, generator=g)
    models = {}
    for head in ("mlp", "additive"):
        torch.manual_seed(0)
        spec = PlannerSpec(head=head)
        m = VocabularyPlanner(spec, torch.randn(spec.vocab_size, 8, 3, generator=g))
        models[head] = (m, torch.optim.AdamW(m.parameters(), lr=1e-3))
    times: dict[str, list[float]] = {h: [] for h in models}
    for _ in range(args.rounds):
        for head, (m, opt) in models.items():
            for _ in range(3):
                train_step(m, opt, batch, mirror=True)
            t = time.perf_counter()
            for _ in range(args.steps):
                train_step(m, opt, batch, mirror=True)
            times[head].append((time.perf_counter() - t) / args.steps)
    med = {h: statistics.median(v) for h, v in times.items()}
    res = {"date": dt.date.today().isoformat(), "machine": platform.platform(), "batch": B, "steps": args.steps,
           "rounds": args.rounds, "s_per_step": {h: round(v, 4) for h, v in med.items()},
           "all_s_per_step": {h: [round(x, 4) for x in v] for h, v in times.items()},
           "params": {h: sum(p.numel() for p in m.parameters()) for h, (m, _) in models.items()},
           "mlp_over_additive": round(med["mlp"] / med["additive"], 2)}
    out = ROOT / "benchmarks" / "results" / f"head_{res['date']}.json"
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
