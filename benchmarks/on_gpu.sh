#!/usr/bin/env bash
# Every GPU figure issue 13 asks for, in one run that fits a 10-minute device call: the
# centred form's layouts at N=1e7 (accelerator_em.py), the scaling table (scale.py, whose
# N=1e7 float32 row is the issue's figure), then per-iteration speed against scikit-learn on
# the host (em_vs_sklearn.py --no-large). Each part has its own time limit, so a slow part
# leaves the others their time; every table is also written to $OUT (or ./gpu_results).
#
#   bash benchmarks/on_gpu.sh            # JAX picks the GPU ("cuda" in JAX 0.11 and later)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
platform="$(python3 -c 'import jax; print(jax.devices()[0].platform)')"
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null) platform $platform" | tee "$out/header.txt"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv,noheader 2>/dev/null | tee -a "$out/header.txt"
timeout 240 python3 benchmarks/accelerator_em.py --iters 6 --block-factors 4 2>&1 | grep -v Warning | tee "$out/accelerator_em.txt"
timeout 200 python3 benchmarks/scale.py --platform "$platform" --reps 2 2>&1 | tee "$out/scale.txt"
timeout 140 python3 benchmarks/em_vs_sklearn.py --no-large --reps 2 2>&1 | tee "$out/em_vs_sklearn.txt"
