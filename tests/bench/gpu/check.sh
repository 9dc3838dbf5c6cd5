#!/bin/bash
# The device check, run on the GPU machine with .gpu/ carried (made by prepare.sh):
#   run(command="bash tests/bench/gpu/check.sh", carry=[".gpu"], timeout_s=540)
# Installs the carried wheels beside the image's torch, runs the CUDA tests, then the local
# benchmark on SmolLM2's shape with random weights, then the batched-throughput benchmark
# (8 calls at once against one, through the scheduler: the static batch and its CUDA graphs,
# then the dynamic path for comparison). Everything it prints is also in $OUT.
# DEVICE=cpu runs the same steps without a GPU (a rehearsal of the script itself);
# BATCH_TOKENS and BATCH_RUNS shorten the batch rows there (2 cores are slow at 8 x 64).
# STEPS picks parts (default all: "tests profile bench batch"), for a rerun that must fit
# the device time left: STEPS="tests bench" bash tests/bench/gpu/check.sh.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
STEPS=" ${STEPS:-tests profile bench batch} "
want() { case "$STEPS" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
mkdir -p "$OUT"
cd "$(dirname "$0")/../../.."
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/llmcli-site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/llmcli-site PYTHONUNBUFFERED=1
export LLMCLI_USER_PATH=/tmp/llmcli-user LLMCLI_LOCAL_CACHE=/tmp/llmcli-cache
{
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c 'import sys, torch, transformers
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda",
      torch.cuda.is_available(), "transformers", transformers.__version__)'
} 2>&1 | tee "$OUT/env.txt"
"$PY" tests/bench/shaped_model.py /tmp/smollm2-shaped --shape .gpu/smollm2-shape \
    2>&1 | tee "$OUT/shaped.txt"
want tests && "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/local 2>&1 \
    | grep -v '^DEBUG ' | tee "$OUT/cuda_tests.txt"
# Where the scheduler's time goes, 8 calls and 1 (prompt passes, steps, per-row work); then
# the static step alone: operations and a graph replay's time, 1 row and 8.
want profile && LLMCLI_LOCAL_STATIC_BATCH=1 "$PY" tests/bench/bench_local_batch.py --profile \
    --device "$DEVICE" --model /tmp/smollm2-shaped --batch 8 --tokens "${BATCH_TOKENS:-64}" \
    2>&1 | tee "$OUT/profile.txt"
want profile && "$PY" tests/bench/bench_static_step.py --device "$DEVICE" \
    --model /tmp/smollm2-shaped 2>&1 | tee "$OUT/static_step.txt"
want bench && "$PY" tests/bench/bench_local.py --device "$DEVICE" --model /tmp/smollm2-shaped \
    --no-cli --rounds 1 --runs "${BENCH_RUNS:-3}" --worker-timeout "${WORKER_TIMEOUT:-240}" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt"
want batch || exit 0
# The static batch (on by default on CUDA; forced here so that the CPU rehearsal runs it too),
# then the dynamic path (attention per row, no graphs) for comparison.
LLMCLI_LOCAL_STATIC_BATCH=1 "$PY" tests/bench/bench_local_batch.py --device "$DEVICE" \
    --model /tmp/smollm2-shaped --batch 8 --tokens "${BATCH_TOKENS:-64}" \
    --runs "${BATCH_RUNS:-3}" 2>&1 | tee "$OUT/batch.txt"
LLMCLI_LOCAL_STATIC_BATCH=0 "$PY" tests/bench/bench_local_batch.py --device "$DEVICE" \
    --model /tmp/smollm2-shaped --batch 8 --tokens "${BATCH_TOKENS:-64}" \
    --runs "${BATCH_RUNS:-3}" 2>&1 | tee "$OUT/batch-dynamic.txt"
