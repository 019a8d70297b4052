#!/usr/bin/env bash
# GPU check of the two-stage score step (issue 14): GPU planner actors, CPU EPDMS actors.
#
#   bash benchmarks/gpu_check.sh SOURCE_RUN [N_CLIPS] [GPUS_PER_PLAN_ACTOR] [PLAN_BATCH]
#
# On a machine with NVIDIA GPUs (nvidia-smi on PATH) and Python 3.11, from the repository root:
#   1. installs what it needs into .venv-gpu (CUDA torch from the default index, Ray, the package);
#   2. writes a synthetic scale pool of N_CLIPS (default 20000) copies of SOURCE_RUN's pool
#      (a run with ingested clips and planner/base.pt) under /tmp/mosaic_gpu_check;
#   3. runs the score step with score.plan.num_gpus_per_actor=GPUS_PER_PLAN_ACTOR (default 0.25:
#      four planner actors per GPU) and one EPDMS actor per remaining CPU, on a local Ray that sees
#      every GPU and CPU of the machine, while nvidia-smi samples GPU utilisation every 0.5 s;
#   4. prints clips/s, clips/s per GPU, mean and p95 GPU busy %, and where the time goes (CPU
#      seconds in the planner stage vs the EPDMS stage, wall time, GPU busy share of the wall).
# Results: benchmarks/results/gpu_check_<date>.json. Nothing here needs the internet beyond the
# package index.
set -euo pipefail
SRC=${1:?usage: gpu_check.sh SOURCE_RUN [N_CLIPS] [GPUS_PER_PLAN_ACTOR] [PLAN_BATCH]}
N=${2:-20000}
GPA=${3:-0.25}
PB=${4:-1024}
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"
command -v nvidia-smi >/dev/null || { echo "gpu_check: nvidia-smi not found (no NVIDIA GPU here)"; exit 2; }
NGPU=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
echo "gpu_check: $NGPU GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs)"

# 1. environment
if [ ! -x .venv-gpu/bin/python ]; then
  python3.11 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q --upgrade pip
  .venv-gpu/bin/pip install -q 'torch>=2.13,<2.14'  # the CUDA build of pyproject's pin, from the default index
  .venv-gpu/bin/pip install -q -e . psutil
fi
PY=.venv-gpu/bin/python
$PY -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# 2-4. pool, run, samples
OUT=/tmp/mosaic_gpu_check
rm -rf "$OUT"; mkdir -p "$OUT"
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/smi.csv" &
SMI=$!
trap 'kill $SMI 2>/dev/null || true' EXIT
RAY_DATA_DISABLE_PROGRESS_BARS=1 OMP_NUM_THREADS=1 $PY - "$SRC" "$OUT" "$N" "$GPA" "$PB" "$NGPU" <<'EOF'
import json, os, sys, time, datetime as dt
from pathlib import Path
import ray
src, out, n, gpa, pb, ngpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
from mosaic_ray.config import validate_config
from mosaic_ray.data.synthetic import copy_run_inputs, expand_pool
from mosaic_ray.stages.runtime import score_pool_sizes
from mosaic_ray.stages.score import run_score
from mosaic_ray.storage import Storage
run = f"{out}/pool"
copy_run_inputs(Storage(src), Storage(run))
ray.init(include_dashboard=False, log_to_driver=False)
try:
    t = time.time(); expand_pool(src, run, n, 256); print(f"gpu_check: pool of {n} clips in {time.time() - t:.0f} s", flush=True)
    cfg = validate_config({"name": "pool", "output_dir": out, "selection": {"budgets": [1]},
                           "score": {"plan": {"num_gpus_per_actor": gpa, "num_cpus_per_actor": 1, "batch_size": pb}}})
    pools = score_pool_sizes(cfg, n // 256 + 1)
    t0 = time.time()
    p = run_score(cfg, Storage(run), "planner/base.pt", force=True)
    t1 = time.time()
finally:
    ray.shutdown()
json.dump({"t0": t0, "t1": t1, "payload": p, "pools": pools}, open(f"{out}/run.json", "w"))
EOF
kill $SMI 2>/dev/null || true
$PY - "$OUT" "$NGPU" "$HERE/benchmarks/results" <<'EOF'
import csv, json, sys, datetime as dt
from pathlib import Path
out, ngpu, results = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r = json.load(open(f"{out}/run.json"))
t0, t1, p = r["t0"], r["t1"], r["payload"]
util = []
for row in csv.reader(open(f"{out}/smi.csv")):
    try:
        ts = dt.datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
    except ValueError:
        continue
    if t0 <= ts <= t1:
        util.append(float(row[2]))
util.sort()
wall = t1 - t0
res = {"date": dt.date.today().isoformat(), "gpus": ngpu, "pools": r["pools"], "clips": p["rows"],
       "wall_s": round(wall, 1), "clips_per_s": round(p["rows"] / wall, 1),
       "clips_per_s_per_gpu": round(p["rows"] / wall / ngpu, 1),
       "gpu_busy_pct_mean": round(sum(util) / len(util), 1) if util else None,
       "gpu_busy_pct_p95": util[int(0.95 * (len(util) - 1))] if util else None,
       "time": {"planner_stage_cpu_s": p.get("plan_cpu_s"), "planner_stage_wall_s": p.get("plan_wall_s"),
                "epdms_stage_cpu_s": p["shard_cpu_s"], "epdms_stage_wall_s": p["shard_wall_s"]},
       "payload": p}
print(json.dumps(res, indent=2))
Path(results).mkdir(parents=True, exist_ok=True)
Path(f"{results}/gpu_check_{res['date']}.json").write_text(json.dumps(res, indent=2))
EOF
