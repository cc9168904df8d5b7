#!/usr/bin/env bash
# The checks a session with a lent GPU runs (device time is short: 15 minutes per session, 10 per
# command, so pick parts). Parts, by name:
#   superopt  the superopt kernels: XLA vs the measured-best μGraph vs JAX's Pallas ops, fp16,
#             batch 1 and 8 (< 8 min), then the GPU-marked lowering tests (Triton on the GPU)
#   paged     coserve's paged-attention kernel: variant sweep and whole co-serving step with
#             attention_impl reference vs pallas, then its GPU tests (~11 min)
#   coserve   co-serving on an 8B-shaped bf16 model: co-serving vs temporal sharing at two
#             arrival rates, then the finetuning overhead sweep (decode batch + 0-512
#             finetuning tokens, 0-4 backward layers) (< 8 min; not yet run on a GPU)
#   pipeline  the pipeline planner's cost curves (blocks timed vs micro-batch; copy
#             $OUT/pipeline_profile.json to scripts/gpu/profiles/<card>.json) (2-3 min)
# Logs and JSON go to $OUT (the device tool's output folder) or ./gpu_out. Each part has its own
# time limit so a hang in one still leaves the others' results.
#   PYTHONPATH=. bash scripts/gpu_checks.sh superopt          # one part
#   PYTHONPATH=. bash scripts/gpu_checks.sh                   # all parts (about 30 minutes)
set -uo pipefail
out=${OUT:-gpu_out}
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1 JGRAPH_PROGRESS=0
parts=${*:-superopt paged coserve pipeline}
want() { [[ " $parts " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import sys, jax; print(sys.version); print('jax', jax.__version__, jax.devices())" \
  | tee -a "$out/gpu.txt"
if want superopt; then
  # The searches come from the committed cache (scripts/gpu/superopt_cache, filled on a CPU with
  # --search-only). Not yet run on a GPU; CI runs it with --smoke on the CPU.
  timeout 480 python3 scripts/gpu/bench_superopt.py --out "$out/superopt.json" 2>&1 \
    | tee "$out/superopt.log"
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 120 python3 -m pytest -q -p no:benchmark \
    -p no:cacheprovider -m gpu tests/superopt 2>&1 | tee "$out/tests_superopt_gpu.log"
fi
if want paged; then
  timeout 330 python3 scripts/bench_paged_attention.py --sweep --step --repeats 10 \
    --out "$out/paged.json" 2>&1 | tee "$out/bench.log"
  # Several pytest workers share the GPU: no preallocation of 75% of its memory each.
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 python3 -m pytest -q -n 4 -p no:benchmark \
    -p no:cacheprovider -m gpu tests/coserve/test_paged_pallas_vs_reference.py \
    tests/coserve/test_step_pallas_vs_reference.py 2>&1 | tee "$out/tests_gpu.log"
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 120 python3 -m pytest -q -p no:benchmark \
    -p no:cacheprovider tests/coserve/test_step_pallas_vs_reference.py 2>&1 \
    | tee "$out/tests_step.log"
fi
if want coserve; then
  # Not yet run on a GPU; CI runs it with --smoke on the CPU. The script stops starting parts
  # after 420 s; the timeout is the backstop.
  timeout 540 python3 scripts/gpu/bench_coserve.py --out "$out/coserve.json" 2>&1 \
    | tee "$out/coserve.log"
fi
if want pipeline; then
  # Expected 2-3 minutes on an H100/H200 (not yet run on one); CI runs it with --smoke on the CPU.
  timeout 300 python3 scripts/gpu/profile_pipeline.py --out "$out/pipeline_profile.json" 2>&1 \
    | tee "$out/pipeline_profile.log"
fi
