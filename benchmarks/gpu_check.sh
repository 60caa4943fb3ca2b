#!/usr/bin/env bash
# One command for a GPU machine (issues #10, #15): test the FEED op on CUDA and benchmark it, one PART at a time.
#
#   benchmarks/gpu_check.sh [--smoke] [--out DIR] PART     PART: quick | tests | cifar | imagenet | step | all
#
# quick is the first look at a machine: one call of at most 7 minutes on a cold H100, install included.
#
#   quick     in this order, each part with its own share of GPU_CHECK_QUICK_LIMIT_S (default 400 s, counted
#             from the start):
#             (a) GPU, capability, driver, torch/triton/cuDNN versions; a C compiler and Python.h for Triton's
#                 launcher, and one trivial Triton kernel launched (benchmarks/gpu_quick.py env)
#             (b) the fused-op GPU tests, the op at the real CIFAR and ImageNet shapes included (pytest -m gpu
#                 tests/test_fused_op.py tests/test_bench_fused_shapes.py)
#             (c) triton, hybrid, eager and compile (the compiled reference) timed at the CIFAR shape (K=3,
#                 bf16, channels-last; bench_feed_loss.py)
#             (d) the CIFAR step with train.compile=step: captured and replayed under
#                 torch.cuda.set_sync_debug_mode("error"), resumed from its last.pt, the lr each step applied
#                 checked against the schedule on both sides of the resume (gpu_quick.py step-resume)
#             (e) one ImageNet-shape pFEED step (ResNet-18 from 3 ResNet-34 teachers, B=256, bf16,
#                 channels-last, hybrid) and its images/s (gpu_quick.py imagenet-step)
#   tests     python3 -m pytest -m gpu tests (every GPU twin: fused op, loaders, engine, benchmarks) + junit
#   cifar     bench_feed_loss.py at the CIFAR shape (B=128, 64x8x8, K=3), both head kernels and layouts,
#             and the launches-vs-K sweep
#   imagenet  bench_feed_loss.py at the ImageNet shapes (B=256, 512x7x7, K=3; and with a 2048-channel teacher)
#   step      bench_step.py, cifar and imagenet presets
#   all       tests, cifar, imagenet and step, one after another (each with its own time limit: more than one
#             10-minute call)
#
# --smoke (or GPU_CHECK_SMOKE=1) runs the same plumbing on a CPU with tiny shapes, the Triton kernels in Triton's
# interpreter; CI runs `--smoke quick` and `--smoke all` (tests/test_gpu_check.py). Smoke figures prove the
# plumbing, not a speed.
#
# Python: $PYTHON, else this checkout's .venv/bin/python when there is one, else python3 (a GPU machine's stock
# Python). The script installs this checkout with `pip install --no-index --no-deps --no-build-isolation -e .`
# unless feed_fast is already importable from here (PYTHONPATH=. is not enough: feed_fast.kernels/.loaders/
# .configs come from pyproject's package-dir mapping); that needs setuptools>=77 and wheel in that Python, and
# the script says which Python to use when it fails. It sets TRITON_INTERPRET=0 (1 in smoke runs) and shared
# Triton/Inductor caches under /tmp, so a second call on the same machine reuses the compiled kernels. Each PART
# but quick stops within GPU_CHECK_PART_LIMIT_S seconds (default 510: under 9 minutes cold, install included).
# Every JSON is rewritten as its part goes, so a part cut short keeps what it measured; no part writes a figure
# it did not measure.
#
# Writes to --out DIR (or $OUT); by default benchmarks/results/ on a GPU (figures to commit) and the ignored
# benchmarks/results/local/ in smoke runs. File names end in the device (e.g. nvidia_h100_80gb_hbm3):
#   quick: quick_a_env_<dev>.json, quick_b_tests_<dev>.json and .xml, quick_c_loss_<dev>.json,
#   quick_d_step_resume_<dev>.json, quick_e_imagenet_step_<dev>.json, and for each part
#   gpu_check_quick_<part>_<dev>.log and gpu_check_quick_<part>_<dev>.json (rc, seconds, limit, timed_out).
#   The other parts: gpu_check_env_<dev>.json (device, versions, nvidia-smi, settings), nvidia_smi_<dev>.txt,
#   gpu_tests_<dev>.xml and .json, feed_loss_<cifar|imagenet>_<dev>.json, step_<cifar|imagenet>_<dev>.json,
#   gpu_check_<part>_<dev>.log and gpu_check_<part>_<dev>.json.
# Smoke runs prefix every name with smoke_. Exit status: 0 when every part passed, else the first failure's
# (124: a part reached its time limit, or had no time left; 2: bad usage; 3: no usable Python).
set -uo pipefail

# The header above, from its second line to the line before `set`: the whole help.
usage() {
    sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

short_usage() {
    sed -n '4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    echo "(benchmarks/gpu_check.sh --help says more.)"
}

SMOKE=${GPU_CHECK_SMOKE:-0}
OUT_ARG=
while [[ $# -gt 0 ]]; do
    case $1 in
        --smoke) SMOKE=1; shift ;;
        --out) [[ $# -ge 2 ]] || { echo "gpu_check: --out needs a folder" >&2; exit 2; }; OUT_ARG=$2; shift 2 ;;
        --out=*) OUT_ARG=${1#--out=}; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_check: unknown option '$1'" >&2; short_usage >&2; exit 2 ;;
        *) break ;;
    esac
done
if [[ $# -ne 1 ]]; then
    short_usage >&2
    exit 2
fi
PART=$1
case $PART in
    quick|tests|cifar|imagenet|step|all) ;;
    *) echo "gpu_check: unknown PART '$PART': expected quick, tests, cifar, imagenet, step or all" >&2; exit 2 ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
LIMIT_S=${GPU_CHECK_PART_LIMIT_S:-510}
QUICK_LIMIT_S=${GPU_CHECK_QUICK_LIMIT_S:-400}
if [[ -n $OUT_ARG ]]; then
    OUT_DIR=$OUT_ARG
elif [[ -n ${OUT:-} ]]; then
    OUT_DIR=$OUT
elif [[ $SMOKE == 1 ]]; then
    OUT_DIR=benchmarks/results/local  # ignored by git: smoke figures are not for committing
else
    OUT_DIR=benchmarks/results
fi
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || exit 2
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/feed_fast_triton_cache}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/feed_fast_inductor_cache}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
SMOKE_FLAG=()
if [[ $SMOKE == 1 ]]; then
    export TRITON_INTERPRET=1  # no GPU: the Triton kernels run in the interpreter
    PREFIX=smoke_
    SMOKE_FLAG=(--smoke)
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
    say "installing this checkout with $PYTHON (pip --no-index --no-deps --no-build-isolation -e .)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e .
}

# Which Python to use instead, after $PYTHON could not install or import the checkout.
python_hint() {
    local version
    version=$("$PYTHON" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null) || version="not runnable"
    {
        echo "gpu_check: $PYTHON (Python $version) cannot run this checkout. Use a Python that has torch, triton and"
        echo "  feed-fast's dependencies, with setuptools>=77 and wheel for the editable install ('invalid command"
        echo "  bdist_wheel' means this one lacks them), for example:"
        echo "    PYTHON=$REPO/.venv/bin/python benchmarks/gpu_check.sh ...   # this checkout's venv (make builds it)"
        echo "    PYTHON=/usr/bin/python3 benchmarks/gpu_check.sh ...    # a GPU machine's own Python with torch"
    } >&2
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

# The one place that calls bench_step.py: PRESET OUT_JSON SECONDS.
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

# --- quick: (a) to (e) in one call ------------------------------------------------------------------------------
# Each part's cap (the most seconds it may take) and floor (what it keeps for itself while earlier parts run): a
# part may use what is left of the quick limit less the floors of the parts after it. These are guesses for a
# cold H100, not measurements: replace them with the seconds the gpu_check_quick_*.json records report.
QUICK_PARTS=(a_env b_tests c_loss d_step_resume e_imagenet_step)
QUICK_CAPS=(60 100 90 170 80)
QUICK_FLOORS=(15 30 30 60 45)

quick_a_env() {
    local json=$OUT_DIR/${PREFIX}quick_a_env_$DEV.json
    OUTPUTS=("$json")
    run_limited "$LOG" "$LIMIT" "$PYTHON" benchmarks/gpu_quick.py env "${SMOKE_FLAG[@]}" --out "$json"
}

quick_b_tests() {
    local xml=$OUT_DIR/${PREFIX}quick_b_tests_$DEV.xml json=$OUT_DIR/${PREFIX}quick_b_tests_$DEV.json
    OUTPUTS=("$xml" "$json")
    rm -f "$xml" "$json"
    # On the CPU these GPU tests skip: the plumbing (junit, summary) is what a smoke run proves.
    run_limited "$LOG" "$LIMIT" "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_fused_op.py \
        tests/test_bench_fused_shapes.py -o junit_family=xunit2 --junitxml="$xml"
    local rc=$?
    "$PYTHON" benchmarks/gpu_check_report.py junit "$xml" --out "$json" | tee -a "$LOG" >/dev/null
    return "$rc"
}

quick_c_loss() {
    local json=$OUT_DIR/${PREFIX}quick_c_loss_$DEV.json
    OUTPUTS=("$json")
    local args=(--full --shapes cifar)
    [[ $SMOKE == 1 ]] && args=(--smoke --shapes smoke_cifar_like --iters 1)
    # no new case 20 s before the limit: the JSON keeps every case that ran
    local budget=$((LIMIT - 20))
    run_limited "$LOG" "$LIMIT" "$PYTHON" benchmarks/bench_feed_loss.py "${args[@]}" --kernel-sizes 3 \
        --layouts channels_last --impls triton hybrid eager compile --no-sweep --profile-steps 0 \
        --budget-s $((budget > 0 ? budget : 0)) --out "$json"
}

quick_d_step_resume() {
    local json=$OUT_DIR/${PREFIX}quick_d_step_resume_$DEV.json
    OUTPUTS=("$json")
    run_limited "$LOG" "$LIMIT" "$PYTHON" benchmarks/gpu_quick.py step-resume "${SMOKE_FLAG[@]}" --out "$json"
}

quick_e_imagenet_step() {
    local json=$OUT_DIR/${PREFIX}quick_e_imagenet_step_$DEV.json
    OUTPUTS=("$json")
    run_limited "$LOG" "$LIMIT" "$PYTHON" benchmarks/gpu_quick.py imagenet-step "${SMOKE_FLAG[@]}" --out "$json"
}

# status_record NAME RC SECONDS LIMIT [NOTE]: the part's gpu_check_<name>_<dev>.json.
status_record() {
    "$PYTHON" benchmarks/gpu_check_report.py status --part "$1" --rc "$2" --seconds "$3" --limit-s "$4" \
        --log "$LOG" "${SMOKE_FLAG[@]}" --note "${5:-}" --outputs "${OUTPUTS[@]}" \
        --out "$OUT_DIR/${PREFIX}gpu_check_$1_$DEV.json"
}

part_quick() {
    local status=0 i j later rc left name start summary=()
    for i in "${!QUICK_PARTS[@]}"; do
        name=quick_${QUICK_PARTS[$i]}
        later=0
        for ((j = i + 1; j < ${#QUICK_PARTS[@]}; j++)); do later=$((later + QUICK_FLOORS[j])); done
        left=$((QUICK_LIMIT_S - SECONDS))
        LIMIT=$((left - later < QUICK_CAPS[i] ? left - later : QUICK_CAPS[i]))
        LOG=$OUT_DIR/${PREFIX}gpu_check_${name}_$DEV.log
        : >"$LOG"
        OUTPUTS=()
        start=$SECONDS
        if ((LIMIT < 10)); then
            say "== $name: skipped, ${left} s left of the quick check's ${QUICK_LIMIT_S} s" | tee -a "$LOG"
            rc=124
            status_record "$name" "$rc" 0 "$LIMIT" "skipped: no time left of the quick limit"
        else
            say "== $name: limit ${LIMIT} s (${left} s left of ${QUICK_LIMIT_S} s), smoke=$SMOKE" | tee -a "$LOG"
            "$name"
            rc=$?
            if [[ $rc == 124 || $rc == 137 ]]; then
                say "$name reached its limit of ${LIMIT} s (rc $rc): what it wrote so far is kept" | tee -a "$LOG"
            fi
            status_record "$name" "$rc" $((SECONDS - start)) "$LIMIT"
        fi
        summary+=("$(printf '%-22s %-7s %4d s (limit %3d s)' "$name" "$([[ $rc == 0 ]] && echo ok || echo "rc $rc")" \
            $((SECONDS - start)) "$LIMIT")")
        [[ $rc != 0 && $status == 0 ]] && status=$rc
    done
    say "quick check: ${SECONDS} s of ${QUICK_LIMIT_S} s"
    printf '    %s\n' "${summary[@]}"
    return "$status"
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
    status_record "$name" "$rc" "$seconds" "$LIMIT_S"
    say "part $name: rc $rc in ${seconds} s" | tee -a "$LOG"
    return "$rc"
}

PART_START=$SECONDS
say "python: $PYTHON; out: $OUT_DIR"
install_checkout || { echo "gpu_check: installing the checkout failed (above)" >&2; python_hint; exit 3; }
DEV=$("$PYTHON" benchmarks/gpu_check_report.py slug) || {
    echo "gpu_check: cannot import torch and feed_fast with $PYTHON" >&2
    python_hint
    exit 3
}
if [[ $SMOKE != 1 && $DEV == cpu_* ]]; then
    echo "gpu_check: no CUDA device here; use --smoke (GPU_CHECK_SMOKE=1) for the CPU plumbing run" >&2
    exit 2
fi

if [[ $PART == quick ]]; then
    part_quick
    STATUS=$?
    say "done: status $STATUS, results in $OUT_DIR"
    exit "$STATUS"
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
