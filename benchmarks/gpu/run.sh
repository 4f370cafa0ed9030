#!/usr/bin/env bash
# boss_fast on a CUDA machine (benchmarks/gpu/README.md): calls that run in one device command each, in order of
# importance; several calls in one invocation share $OUT, its summary and one budget:
#
#   OUT=/some/dir BUDGET_S=540 timeout 580 bash benchmarks/gpu/run.sh correctness production   # command 1
#   OUT=/some/dir BUDGET_S=420 timeout 460 bash benchmarks/gpu/run.sh figures                  # command 2
#   bash benchmarks/gpu/run.sh collect        # only collect every pytest step with the device's options
#
# correctness: build, GPU tests, kernels + sampler on CUDA. production: SD3-medium- and Flux-dev-shaped
# transformers at 1024^2 through DiffusersVelocity (production.py; diffusers comes from the wheels carried in
# benchmarks/gpu/wheels/, filled by prepare.sh: the device has no diffusers and no registry). figures:
# cuda_graph vs eager at batch 1, the fused head's tiles and wins inside CUDA graphs (tune_head.py),
# compile_graph vs cuda_graph vs eager at batch 1 and 16, the targets.
#
# --quick (or QUICK=1) runs every step on a small selection: the stand-in (benchmarks/gpu/simulate.sh) uses it
# on CPU. Needs what the device machine has: torch, triton, numba, pybind11, cmake, ninja, pytest,
# pytest-benchmark, pytest-timeout; NOT pytest-markdown-docs: pytest runs with the project's configuration
# minus the README plugin (see DEVICE_PYTEST below) on the files that hold GPU tests.
#
# Each command writes at most 8 files under $OUT (default benchmarks/results/gpu/<first call>): summary.txt
# (one line per step), env.txt, log.txt (build and benchmark output), targets.md and per call tests_gpu.txt,
# tests_kernels.txt (correctness), production.json, production.md (production), bench.json (every benchmark
# JSON merged, rewritten after each step), fused_head.json, tune_head.md (figures). Steps run under one budget
# (BUDGET_S, default 280 s): a step that would not fit is skipped and says so; each benchmark invocation is
# small and leaves its own JSON, so a step cut short loses only its own case. SEARCH=1 adds round one's search
# on a latent DiT (2 more files: then run figures alone), COMPILE_CASES="digits_dit-B1-K1 ..." compile-only
# cases. Exits non-zero when a step fails or a target is missed; every step still runs.
set -uo pipefail
cd "$(dirname "$0")/../.."
QUICK=${QUICK:-0}
CALLS=()
for arg in "$@"; do
    case $arg in
    --quick) QUICK=1 ;;
    correctness | production | figures | collect) CALLS+=("$arg") ;;
    *) CALLS=() && break ;;
    esac
done
if ((${#CALLS[@]} == 0)); then
    echo "usage: run.sh correctness|production|figures ... [--quick], or run.sh collect" >&2
    exit 2
fi
CALL=${CALLS[0]}
OUT="${OUT:-benchmarks/results/gpu/$CALL}"
BUDGET_S=${BUDGET_S:-280}
[[ $CALL != collect ]] && mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/boss_fast_gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DEADLINE=$((SECONDS + BUDGET_S))
status=0
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}  # the device's Python with torch is python3 (it may have no plain "python")

# The project's pytest configuration (pyproject.toml) minus what the device cannot load: addopts without
# --markdown-docs / --doctest-modules (the README and the docstrings are not collected here) and no required
# plugin. Markers, strict markers and filterwarnings = error stay. Inductor warns about TF32 on Hopper only;
# that hint must not fail a correctness test, and no warning fails a benchmark (-W default: shown, not raised).
DEVICE_PYTEST=("$PY" -m pytest -p no:cacheprovider -o "addopts=-ra --strict-markers" -o required_plugins=
    -W "ignore:TensorFloat32 tensor cores:UserWarning")
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    DEVICE_PYTEST+=(--timeout "${TEST_TIMEOUT_S:-240}")  # a hung CUDA test fails alone, not the whole call
fi
BENCH=("${DEVICE_PYTEST[@]}" -W default benchmarks/test_bench_sampler.py --benchmark-only -m "not slow or slow")
# The test files holding GPU tests (marked gpu), found rather than listed so that a new one is never missed.
mapfile -t GPU_FILES < <(grep -l -E "pytest\.mark\.gpu|mark\.gpu\b" tests/test_*.py)

step() {  # step NAME MIN_S LOG COMMAND...: run under the remaining budget, log, remember a failure, go on
    local name=$1 min_s=$2 log=$3 left=$((DEADLINE - SECONDS)) t0=$SECONDS rc
    shift 3
    if ((left < min_s)); then
        echo "SKIP  $name: ${left} s of the budget left, needs ${min_s} s" | tee -a "$OUT/summary.txt"
        return 0
    fi
    [[ $log == log.txt ]] && echo "== $name" >>"$OUT/$log"
    local TIMEFORMAT="%U %S" cpu
    # The wall time and the CPU time (user + system, the step's processes): the projections' inputs.
    {
        if declare -F "$1" >/dev/null; then  # a function of this script (quick): timeout cannot run it
            time "$@" >>"$OUT/$log" 2>&1
        else
            time timeout --kill-after=5 "$left" "$@" >>"$OUT/$log" 2>&1
        fi
    } 2>"$WORK/cpu"
    rc=$?
    cpu=$(awk '{printf "%.1f", $1 + $2}' "$WORK/cpu" 2>/dev/null)
    if ((rc == 0)); then
        echo "ok    $name ($((SECONDS - t0)) s, cpu ${cpu} s, $log)" | tee -a "$OUT/summary.txt"
    else
        ((rc == 124 || rc == 137)) && name="$name: cut at the budget"
        echo "FAIL  $name (rc=$rc, $((SECONDS - t0)) s, cpu ${cpu} s, $log)" | tee -a "$OUT/summary.txt"
        status=1
    fi
}

bench() {  # bench NAME MIN_S PYTEST_ARGS...: one small benchmark invocation with its own JSON, then merge
    local name=$1 min_s=$2 json="$WORK/bench-$((++BENCH_N)).json"
    shift 2
    step "bench $name" "$min_s" log.txt "${BENCH[@]}" --benchmark-json="$json" "$@"
    "$PY" benchmarks/gpu/check_targets.py --merge "$OUT/bench.json" "$WORK"/bench-*.json >>"$OUT/log.txt" 2>&1
}
BENCH_N=0

environment() {
    "$PY" - <<'PY'
import platform

import torch

import boss_fast

print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")
print("torch:", torch.__version__, "cuda:", torch.version.cuda)
try:
    import triton

    print("triton:", triton.__version__)
except ImportError as err:
    print("triton: not installed", err)
print("python:", platform.python_version())
print("boss_fast:", boss_fast.__version__ if hasattr(boss_fast, "__version__") else "", boss_fast.__file__)
print("dp backends:", boss_fast.dp_backends())
PY
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
    git log -1 --format='commit: %H %s' 2>/dev/null || true
}

# Built here already: the C++ extension that imports is this tree's (not an older editable install's).
BUILT='import os, boss_fast._C as c; assert c.__file__.startswith(os.getcwd() + "/")'

build_and_env() {
    ((BUILT_HERE)) && return 0 # a second call of this invocation: built and recorded already
    BUILT_HERE=1
    : >"$OUT/summary.txt"
    if "$PY" -c "$BUILT" 2>/dev/null; then  # a warm machine: the first call built this tree already
        echo "ok    build: already built from this tree" | tee -a "$OUT/summary.txt"
    else
        step "build (editable, no deps)" 10 log.txt "$PY" -m pip install --no-build-isolation --no-deps -e .
    fi
    step "environment" 5 env.txt environment
    cat "$OUT/env.txt"
}

BUILT_HERE=0

correctness() {
    build_and_env
    local pick=()
    ((QUICK)) && pick=(-k "test_errors or test_matches_exact or test_dit_head_fused_equals_forward_plus_step or test_eager_equals_sample_bitwise")
    # The GPU tests first (Triton kernels compiled for CUDA, cuda_graph), then the rest of those files on CUDA.
    step "GPU tests (${GPU_FILES[*]})" 20 tests_gpu.txt "${DEVICE_PYTEST[@]}" -v -m gpu "${GPU_FILES[@]}"
    step "kernel + sampler tests" 30 tests_kernels.txt "${DEVICE_PYTEST[@]}" -v -m "not gpu and not slow" \
        "${pick[@]}" "${GPU_FILES[@]}"
    tail -n 5 "$OUT/tests_gpu.txt" "$OUT/tests_kernels.txt"
}

# diffusers from the carried wheels (prepare.sh), installed into a folder of this run, on PYTHONPATH for the
# production step only (the correctness steps run as in round one, without diffusers).
carried_wheels() {
    local wheels=(benchmarks/gpu/wheels/*.whl)
    [[ -e ${wheels[0]} ]] || {
        echo "no wheels in benchmarks/gpu/wheels/: run benchmarks/gpu/prepare.sh here and carry that folder"
        return 1
    }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "${wheels[@]}"
    PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import diffusers; print('diffusers', diffusers.__version__, diffusers.__file__)"
}

production() {
    build_and_env
    local quick=()
    ((QUICK)) && quick=(--quick)
    step "carried wheels (diffusers)" 5 log.txt carried_wheels
    # No stage starts in the last 45 s of the budget (a stage of the short search takes about 30 s there).
    step "production path at size" 60 log.txt env PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" \
        "$PY" benchmarks/gpu/production.py --out "$OUT/production.json" --markdown "$OUT/production.md" \
        --budget $((DEADLINE - SECONDS - 45)) "${quick[@]}"
    cat "$OUT/production.md" 2>/dev/null
    step "targets (production)" 5 targets.md "$PY" benchmarks/gpu/check_targets.py "$OUT/env.txt" \
        "$OUT/production.json"
    cat "$OUT/targets.md"
}

# torch.compile cases, each beside its eager baseline (each compiles afresh; the unrolled K-step loop grows
# with K): K = 1 of both models at batch 1 and 64 first, then K = 4, as the budget allows (README: about four
# fit); quick: the digits DiT at batch 1, K = 1.
# Round one measured them (benchmarks/results/gpu/README.md); off unless asked for.
COMPILE_CASES=${COMPILE_CASES:-}

figures() {
    build_and_env
    local b1="B1-" compile=($COMPILE_CASES) search=() tune=() graph="B16-K4]"
    if ((QUICK)); then
        b1="digits_dit-B1-K1]"
        graph="digits_dit-B16-K4]"
        compile=("${compile[@]:0:1}")
        search=(--quick)
        tune=(--quick)
    fi
    # cuda_graph (unfused, fused) against eager at batch 1 beside the teacher's graph: the fixes, on the device.
    bench "cuda_graph vs eager, batch 1" 30 \
        -k "(test_baseline_eager or test_cuda_graph) and $b1 or teacher"
    # The fused head's tiles swept inside CUDA graphs at batch 1, 16, 64 in fp32 and bf16 against the unfused
    # GEMM + update; fused_head.json's "table" is where it wins (linear_euler.FUSED_HEAD_WINS is to hold it).
    step "fused head in CUDA graphs" 20 log.txt "$PY" benchmarks/gpu/tune_head.py --out "$OUT/fused_head.json" \
        --markdown "$OUT/tune_head.md" --budget "${TUNE_S:-90}" "${tune[@]}"
    cat "$OUT/tune_head.md" 2>/dev/null
    # compile + graph against the plain graph (both heads) and eager at batch 1 and 16, K = 4: one compile per
    # model and batch, compile time apart.
    bench "compile_graph vs cuda_graph vs eager, batch 1 and 16" 60 \
        -k "test_compile_graph or ((test_baseline_eager or test_cuda_graph) and $graph)"
    step "targets" 5 targets.md "$PY" benchmarks/gpu/check_targets.py "$OUT/env.txt" "$OUT/bench.json" \
        "$OUT/fused_head.json"
    cat "$OUT/targets.md"
    # Round one's search on a latent DiT (SEARCH=1) and compile-only cases (COMPILE_CASES), as time allows.
    ((${SEARCH:-0})) && step "search on a random latent DiT" 30 log.txt "$PY" benchmarks/gpu/search_figures.py \
        --out "$OUT/search.json" --markdown "$OUT/search.md" "${search[@]}"
    local case
    for case in "${compile[@]}"; do
        bench "compile $case" 60 -k "(test_compile or test_baseline_eager) and $case]"
    done
}

collect() {  # every file the pytest steps run, collected with their options (tests/test_gpu_device_script.py)
    "${BENCH[@]}" --collect-only -q "${GPU_FILES[@]}"
}

for call in "${CALLS[@]}"; do
    "$call"
    rc=$?
    ((rc)) && status=$rc
done
if [[ $CALL != collect ]]; then
    grep -q "^FAIL" "$OUT/summary.txt" && status=1
    echo "== ${CALLS[*]}: $((SECONDS)) s; files under $OUT: $(ls "$OUT" | tr '\n' ' ')"
fi
exit $status
