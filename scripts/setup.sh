#!/usr/bin/env bash
# Create .venv and install mosaic_ray with its test extras.
# Torch: the CPU build of 2.13.0 where no NVIDIA GPU is present (a bare `torch` requirement
# would pull several GB of CUDA packages), the default CUDA build where one is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then PY="$c"; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=".venv/.mosaic-installed-$( (cat pyproject.toml scripts/setup.sh) | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
if ! python -c 'import torch, sys; sys.exit(not torch.__version__.startswith("2.13."))' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing torch 2.13.0 (CUDA build)"
    pip install -q "torch==2.13.0"
  else
    echo "setup: no GPU, installing the CPU build of torch 2.13.0"
    pip install -q "torch==2.13.0+cpu" 2>/dev/null \
      || pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
echo "setup: installing mosaic_ray and its dependencies"
pip install -q -e ".[test,bench]" 2>&1 | grep -v "^WARNING: Location" || true
python -c 'import mosaic_ray, ray, torch, commonroad; print(f"setup: ok (ray {ray.__version__}, torch {torch.__version__})")'
# Ray workers import the package afresh: keep bytecode around even when the
# environment sets PYTHONDONTWRITEBYTECODE.
PYTHONDONTWRITEBYTECODE= python -m compileall -q mosaic_ray >/dev/null || true
rm -f .venv/.mosaic-installed-*
touch "$stamp"
