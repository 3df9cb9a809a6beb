#!/usr/bin/env bash
# The GPU checks of one session on a machine with a CUDA device (the `device` tool's H200): the
# CUDA-marked tests, then benchmarks/bench_device.py on the GPU. Everything it writes goes to
# $OUT (the device tool's return folder; benchmarks/results when unset): cuda_tests.txt,
# cuda_tests.xml, nvidia-smi.txt, device_cuda.{json,md}, device_check.log.
# Usage, from the repository root:  bash benchmarks/device_check.sh [extra bench_device.py options]
# (at most about 9 minutes: the tests stop at 4, the benchmark at 5, inside one 10-minute device call)
set -u -o pipefail
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
{
  date -u
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed"
  # the image has torch, numpy, scipy, numba, matplotlib, tqdm, pytest and hypothesis but no network:
  # deeprg itself from the source tree
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>/dev/null \
    || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  python3 -c "import torch, deeprg; print('torch', torch.__version__, 'cuda', torch.version.cuda,
              torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE')"
  timeout 240 python3 -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider \
    --junitxml "$out/cuda_tests.xml" 2>&1 | tee "$out/cuda_tests.txt"
  echo "pytest exit status: $?"
  timeout 300 python3 benchmarks/bench_device.py --device cuda --out "$out" "$@"
  echo "bench_device exit status: $?"
  date -u
} 2>&1 | tee "$out/device_check.log"
