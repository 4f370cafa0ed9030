#!/usr/bin/env bash
# Issue 5 on a GPU, in one call: build, run the GPU tests, benchmark the sampler, check the targets.
#
#   OUT=/some/dir bash benchmarks/gpu/run.sh        # from the repository root (or anywhere: it cds there)
#
# Writes under $OUT (default benchmarks/results/gpu): env.txt (device name, torch / triton / CUDA versions),
# pip.log, tests_gpu.txt, tests_kernels.txt, bench_sampler.txt and .json (pytest-benchmark), targets.md (issue
# 5's targets, pass/fail, with the versions), bench_compile.txt and .json (compile vs eager, compile times). Needs torch (CUDA build), triton, pytest, pytest-benchmark and
# the build requirements (setuptools, pybind11, cmake) already installed: the device machines are offline.
# Exits non-zero when a step fails or a target is missed; every step still runs and leaves its log.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
status=0

step() {  # step NAME LOGFILE COMMAND...: run, log, remember a failure, go on
    local name=$1 log=$2
    shift 2
    echo "== $name" | tee -a "$OUT/summary.txt"
    if "$@" >"$OUT/$log" 2>&1; then
        echo "   ok ($log)" | tee -a "$OUT/summary.txt"
    else
        echo "   FAILED rc=$? ($log)" | tee -a "$OUT/summary.txt"
        status=1
    fi
}

step "build (editable, no deps)" pip.log python -m pip install --no-build-isolation --no-deps -e .
step "environment" env.txt python - <<'PY'
import platform
import torch
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")
print("torch:", torch.__version__, "cuda:", torch.version.cuda)
try:
    import triton
    print("triton:", triton.__version__)
except ImportError as err:
    print("triton: not installed", err)
print("python:", platform.python_version())
PY
cat "$OUT/env.txt"
# The GPU-only tests (compiled Triton kernels, cuda_graph sampler), then the kernel and sampler suites on CUDA.
step "GPU tests" tests_gpu.txt python -m pytest -q -m gpu tests -p no:cacheprovider
step "kernel + sampler tests" tests_kernels.txt python -m pytest -q -p no:cacheprovider \
    tests/test_kernels_euler_step.py tests/test_kernels_linear_euler.py tests/test_sampler.py
# The targets' figures first (eager baseline, cuda_graph unfused and fused, the fused head): minutes at most.
step "benchmarks: eager, cuda_graph, fused head" bench_sampler.txt python -m pytest \
    benchmarks/test_bench_sampler.py --benchmark-only -p no:cacheprovider -m "not slow or slow" \
    -k "not test_compile" --benchmark-json="$OUT/bench_sampler.json"
tail -n 60 "$OUT/bench_sampler.txt"
step "targets" targets.md python benchmarks/gpu/check_targets.py "$OUT/bench_sampler.json" "$OUT/env.txt"
cat "$OUT/targets.md"
# torch.compile last, beside its eager baseline, under a budget (a device call is limited to 10 minutes and
# Inductor compiles each of the 16 cases afresh): what finishes is in bench_compile.json / .txt.
step "benchmarks: compile vs eager" bench_compile.txt timeout "${COMPILE_BUDGET_S:-300}" python -m pytest \
    benchmarks/test_bench_sampler.py --benchmark-only -p no:cacheprovider -m "not slow or slow" \
    -k "test_compile or test_baseline_eager" --benchmark-json="$OUT/bench_compile.json"
tail -n 40 "$OUT/bench_compile.txt"
exit $status
