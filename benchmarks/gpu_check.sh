#!/usr/bin/env bash
# GPU check on a CUDA machine (see benchmarks/README.md): the tensor tests with CUDA as default device,
# then benchmarks/gpu_check.py (invariants, bf16 steps per method, sampler timing). Results go to $OUT.
set -u
OUT=${OUT:-results/benchmarks}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
export PYTHONUNBUFFERED=1
timeout 360 python3 benchmarks/gpu_check.py "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log" | cut -c1-600
EBFT_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -p no:cacheprovider --maxfail=25 \
  tests/test_strided.py tests/test_features.py tests/test_whitening.py tests/test_rewards.py \
  tests/test_ebft_objective.py tests/test_sharing.py -k "not two_processes" 2>&1 | tee "$OUT/pytest_cuda.log" | tail -40
