#!/usr/bin/env bash
# One command for a GPU machine (issue #10): test the FEED op on CUDA and benchmark it, one PART at a time.
#
#   benchmarks/gpu_check.sh PART             PART: tests | cifar | imagenet | step | all
#   benchmarks/gpu_check.sh --smoke PART     the same plumbing on a CPU with tiny shapes (or GPU_CHECK_SMOKE=1)
#
#   tests     python3 -m pytest -m gpu tests (every GPU twin: fused op, loaders, engine, benchmarks) + junit
#   cifar     bench_feed_loss.py at the CIFAR shape (B=128, 64x8x8, K=3), both head kernels and layouts,
#             and the launches-vs-K sweep
#   imagenet  bench_feed_loss.py at the ImageNet shapes (B=256, 512x7x7, K=3; and with a 2048-channel teacher)
#   step      bench_step.py, cifar and imagenet presets
#   all       the four above, one after another (each with its own time limit: more than one 10-minute call)
#
# Runs on the machine's stock Python with nothing downloaded: installs this checkout with
# `python3 -m pip install --no-index --no-deps --no-build-isolation -e .` unless it is already importable from
# here (PYTHONPATH=. is not enough: feed_fast.kernels/.loaders/.configs come from pyproject's package-dir
# mapping). Sets TRITON_INTERPRET=0 and shared Triton/Inductor caches under /tmp, so a second call on the
# same machine reuses the compiled kernels. Each PART stops within GPU_CHECK_PART_LIMIT_S seconds (default
# 510: under 9 minutes cold, install included); the benchmark JSON is rewritten after every case, so a part
# cut short keeps what it measured.
#
# Writes to ${OUT:-benchmarks/results}, file names ending in the device (e.g. nvidia_h100_80gb_hbm3):
#   gpu_check_env_<dev>.json (device, versions, nvidia-smi, settings), nvidia_smi_<dev>.txt,
#   gpu_tests_<dev>.xml/.json, feed_loss_<cifar|imagenet>_<dev>.json, step_<cifar|imagenet>_<dev>.json,
#   gpu_check_<part>_<dev>.log and gpu_check_<part>_<dev>.json (rc, seconds, timed_out, outputs).
# Smoke runs prefix every name with smoke_. Exit status: 0 when every part passed, else the first failure's
# (124: a part reached its time limit; 2: bad usage).
set -uo pipefail

usage() {
    sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

SMOKE=${GPU_CHECK_SMOKE:-0}
while [[ $# -gt 0 ]]; do
    case $1 in
        --smoke) SMOKE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) break ;;
    esac
done
if [[ $# -ne 1 ]]; then
    usage >&2
    exit 2
fi
PART=$1
case $PART in
    tests|cifar|imagenet|step|all) ;;
    *) echo "gpu_check: unknown PART '$PART': expected tests, cifar, imagenet, step or all" >&2; exit 2 ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PYTHON=${PYTHON:-python3}
LIMIT_S=${GPU_CHECK_PART_LIMIT_S:-510}
OUT_DIR=${OUT:-benchmarks/results}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || exit 2
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/feed_fast_triton_cache}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/feed_fast_inductor_cache}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
if [[ $SMOKE == 1 ]]; then
    export TRITON_INTERPRET=1  # no GPU: the Triton kernels run in the interpreter
    PREFIX=smoke_
else
    export TRITON_INTERPRET=0  # tests/conftest.py would default it to 1
    PREFIX=
fi
mkdir -p "$TRITON_CACHE_DIR" "$TORCHINDUCTOR_CACHE_DIR"

say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*"; }

# Seconds left of this part's limit; never below 1 (timeout 0 would mean no limit at all).
remaining() {
    local left=$((LIMIT_S - (SECONDS - PART_START)))
    echo $((left > 1 ? left : 1))
}

# run_limited LOG SECONDS CMD...: runs CMD for at most SECONDS, output to the terminal and LOG.
run_limited() {
    local log=$1 limit=$2
    shift 2
    say "\$ $* (limit ${limit} s)" | tee -a "$log"
    timeout --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$log"
    return "${PIPESTATUS[0]}"
}

install_checkout() {
    # Already installed from this checkout (a warm machine, or a CPU venv): nothing to do. A smoke run never
    # installs over an importable feed_fast: it must not re-point a developer's environment.
    if "$PYTHON" - "$REPO" "$SMOKE" <<'EOF' 2>/dev/null; then
import os, sys
import feed_fast.kernels, feed_fast
repo, smoke = sys.argv[1], sys.argv[2] == "1"
sys.exit(0 if smoke or os.path.realpath(feed_fast.__file__).startswith(os.path.realpath(repo) + os.sep) else 1)
EOF
        say "feed_fast is importable from this checkout: no install"
        return 0
    fi
    say "installing this checkout (pip --no-index --no-deps --no-build-isolation -e .)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e .
}

record_machine() {
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi >"$OUT_DIR/${PREFIX}nvidia_smi_$DEV.txt" 2>&1
    else
        echo "nvidia-smi: not found on this machine" >"$OUT_DIR/${PREFIX}nvidia_smi_$DEV.txt"
    fi
    "$PYTHON" benchmarks/gpu_check_report.py env --out "$OUT_DIR/${PREFIX}gpu_check_env_$DEV.json"
}

part_tests() {
    local xml=$OUT_DIR/${PREFIX}gpu_tests_$DEV.xml json=$OUT_DIR/${PREFIX}gpu_tests_$DEV.json
    OUTPUTS=("$xml" "$json")
    rm -f "$xml" "$json"
    # Smoke: one file's GPU tests (they skip on the CPU) prove the plumbing without collecting the whole suite.
    local paths=(tests)
    [[ $SMOKE == 1 ]] && paths=(tests/test_bench_feed_loss.py)
    run_limited "$LOG" "$(remaining)" "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu "${paths[@]}" -o junit_family=xunit2 \
        --junitxml="$xml"
    local rc=$?
    "$PYTHON" benchmarks/gpu_check_report.py junit "$xml" --out "$json" | tee -a "$LOG" >/dev/null
    # pytest exits 5 when nothing was selected: no GPU test ran, which is a failure here too.
    return "$rc"
}

# bench_loss NAME SHAPES...: bench_feed_loss.py at these shapes; stops starting cases 45 s before the limit.
bench_loss() {
    local name=$1
    shift
    local json=$OUT_DIR/${PREFIX}feed_loss_${name}_$DEV.json
    OUTPUTS=("$json")
    local args=(--full --shapes "$@")
    if [[ $SMOKE == 1 ]]; then
        args=(--smoke --shapes "$@" --kernel-sizes 3 --layouts channels_last --iters 1 --no-sweep)
    fi
    # Launches vs K: once, at the cheap shape, in the trainer's layout (each K compiles its own kernels).
    if [[ $name == cifar ]]; then args+=(--sweep-layouts channels_last); else args+=(--no-sweep); fi
    local budget=$(($(remaining) - 45))
    run_limited "$LOG" "$(remaining)" "$PYTHON" benchmarks/bench_feed_loss.py "${args[@]}" --budget-s $((budget > 0 ? budget : 0)) \
        --out "$json"
}

# The one place that calls bench_step.py (its flags are another engineer's): PRESET OUT_JSON SECONDS.
bench_step() {
    local args=(--preset "$1")
    [[ $SMOKE == 1 ]] && args=(--smoke --warmup 1 --iters 1)
    run_limited "$LOG" "$3" "$PYTHON" benchmarks/bench_step.py "${args[@]}" --out "$2"
}

part_cifar() { bench_loss cifar "$([[ $SMOKE == 1 ]] && echo smoke_cifar_like || echo cifar)"; }

part_imagenet() {
    if [[ $SMOKE == 1 ]]; then
        bench_loss imagenet smoke_mixed_teachers
    else
        bench_loss imagenet imagenet imagenet_r50_teacher
    fi
}

part_step() {
    local rc=0 preset json
    OUTPUTS=()
    for preset in cifar imagenet; do
        json=$OUT_DIR/${PREFIX}step_${preset}_$DEV.json
        OUTPUTS+=("$json")
        # cifar may use half of what is left, so that imagenet always gets its turn.
        local limit
        limit=$(remaining)
        [[ $preset == cifar ]] && limit=$((limit / 2))
        bench_step "$preset" "$json" "$limit" || { local failed=$?; [[ $rc == 0 ]] && rc=$failed; }
    done
    return "$rc"
}

# run_part NAME: one part with its own limit, log and status record.
run_part() {
    local name=$1
    # The first part's clock started before the install: a cold call stays within the limit as a whole.
    [[ -n ${FIRST_PART_STARTED:-} ]] && PART_START=$SECONDS
    FIRST_PART_STARTED=1
    LOG=$OUT_DIR/${PREFIX}gpu_check_${name}_$DEV.log
    : >"$LOG"
    OUTPUTS=()
    say "part $name: limit ${LIMIT_S} s, smoke=$SMOKE, out $OUT_DIR" | tee -a "$LOG"
    "part_$name"
    local rc=$?
    local seconds=$((SECONDS - PART_START))
    if [[ $rc == 124 || $rc == 137 ]]; then
        say "part $name reached its limit of ${LIMIT_S} s (rc $rc): what it wrote so far is kept" | tee -a "$LOG"
    fi
    local smoke_flag=()
    [[ $SMOKE == 1 ]] && smoke_flag=(--smoke)
    "$PYTHON" benchmarks/gpu_check_report.py status --part "$name" --rc "$rc" --seconds "$seconds" \
        --limit-s "$LIMIT_S" --log "$LOG" "${smoke_flag[@]}" --outputs "${OUTPUTS[@]}" \
        --out "$OUT_DIR/${PREFIX}gpu_check_${name}_$DEV.json"
    say "part $name: rc $rc in ${seconds} s" | tee -a "$LOG"
    return "$rc"
}

PART_START=$SECONDS
install_checkout || { echo "gpu_check: installing the checkout failed" >&2; exit 3; }
DEV=$("$PYTHON" benchmarks/gpu_check_report.py slug) || { echo "gpu_check: cannot import torch/feed_fast" >&2; exit 3; }
if [[ $SMOKE != 1 && $DEV == cpu_* ]]; then
    echo "gpu_check: no CUDA device here; use --smoke (GPU_CHECK_SMOKE=1) for the CPU plumbing run" >&2
    exit 2
fi
record_machine

if [[ $PART == all ]]; then
    PARTS=(tests cifar imagenet step)
else
    PARTS=("$PART")
fi
STATUS=0
for name in "${PARTS[@]}"; do
    run_part "$name" || { rc=$?; [[ $STATUS == 0 ]] && STATUS=$rc; }
done
say "done: status $STATUS, results in $OUT_DIR"
exit "$STATUS"
