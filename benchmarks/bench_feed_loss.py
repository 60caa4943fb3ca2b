"""Forward+backward time and peak memory of the FEED loss op: fused Triton kernels (backend "triton"), the
hybrid (cuDNN head conv + fused rest, backend "hybrid"), the eager PyTorch reference and torch.compile of that
reference, at CIFAR and ImageNet shapes, under bf16 autocast (bf16 features and heads, as in AMP training).

    python benchmarks/bench_feed_loss.py                 # GPU: full shapes -> benchmarks/results/feed_loss_<gpu>.json
    python benchmarks/bench_feed_loss.py --smoke         # tiny shapes, a few iterations (the default on CPU)
    TRITON_INTERPRET=1 python benchmarks/bench_feed_loss.py --smoke --out /tmp/bench.json   # CPU incl. fused

What is timed is one training step of the loss alone: `feed_loss(students, teachers, weights, biases)` on K
translator heads (students = the inputs of the NTLs' last convs, width channels) and `.backward()`, with
gradients to the students, weights and biases. Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from feed_fast import feed_loss
from feed_fast.environment import environment

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# fused kernels; cuDNN head conv + fused rest; eager reference; torch.compile of the reference
IMPLS = ("triton", "hybrid", "torch", "compile")
KERNEL_IMPLS = ("triton", "hybrid")  # the ones that need Triton (a GPU, or the interpreter in smoke runs)
BETA, NEGATIVE_SLOPE = 500.0, 0.1  # FT's official beta; the translator head's LeakyReLU
# AMP training: bf16 features, and heads in bf16 as autocast (and FEEDLoss under autocast) hands them over.
# Every impl runs under bf16 autocast, so eager's convs are bf16 cuDNN convs too: one footing for all.
FEATURE_DTYPE = HEAD_DTYPE = torch.bfloat16


@dataclass(frozen=True)
class ShapeSet:
    """One benchmark shape: K teachers (C_t, H, W) and translator heads fed `width` channels."""

    name: str
    batch: int
    student: tuple[int, int, int]  # the student's feature map (C, H, W), for the record
    width: int  # channels into each translator's last conv (NTL width)
    teachers: tuple[tuple[int, int, int], ...]


FULL_SHAPES = (
    # ResNet-56-like student and three 64x8x8 teachers, B=128 (FT/FEED CIFAR setting).
    ShapeSet("cifar", 128, (64, 8, 8), 64, ((64, 8, 8),) * 3),
    # ResNet-18/34 layer4 student and teachers at 224 px, B=256.
    ShapeSet("imagenet", 256, (512, 7, 7), 512, ((512, 7, 7),) * 3),
    # The same with a ResNet-50 teacher (2048x7x7) in the ensemble: teachers differ in channels.
    ShapeSet("imagenet_r50_teacher", 256, (512, 7, 7), 512, ((512, 7, 7), (512, 7, 7), (2048, 7, 7))),
)
SMOKE_SHAPES = (
    # Tiny, odd-sized versions of the two families above: they prove the script, not the speed.
    ShapeSet("smoke_cifar_like", 2, (6, 4, 4), 6, ((5, 4, 4),) * 3),
    ShapeSet("smoke_mixed_teachers", 2, (6, 3, 3), 6, ((5, 3, 3), (5, 3, 3), (9, 3, 3))),
)
KERNEL_SIZES = (3, 1)


def make_inputs(shape: ShapeSet, kernel_size: int, device: torch.device, seed: int = 0):
    """Random students/teachers (bf16) and head weights/biases (fp32) for one shape; grads on all but teachers."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*size, dtype, scale=1.0):
        return (scale * torch.randn(*size, generator=gen)).to(device=device, dtype=dtype)

    students, teachers, weights, biases = [], [], [], []
    for c_t, h, w in shape.teachers:
        students.append(rand(shape.batch, shape.width, h, w, dtype=FEATURE_DTYPE).requires_grad_())
        teachers.append(rand(shape.batch, c_t, h, w, dtype=FEATURE_DTYPE))
        fan_in = shape.width * kernel_size * kernel_size
        weights.append(rand(c_t, shape.width, kernel_size, kernel_size, dtype=HEAD_DTYPE, scale=fan_in**-0.5))
        biases.append(rand(c_t, dtype=HEAD_DTYPE, scale=0.1))
    for x in (*weights, *biases):
        x.requires_grad_()
    return students, teachers, weights, biases


def loss_function(impl: str, compile_backend: str) -> Callable:
    def eager(students, teachers, weights, biases, backend="torch"):
        with torch.autocast(students[0].device.type, dtype=FEATURE_DTYPE):
            return feed_loss(
                students, teachers, weights, biases, beta=BETA, negative_slope=NEGATIVE_SLOPE, backend=backend
            )

    if impl in KERNEL_IMPLS:
        return lambda *inputs: eager(*inputs, backend=impl)
    if impl == "torch":
        return eager
    torch._dynamo.reset()  # each shape compiles afresh instead of filling one recompile cache
    return torch.compile(eager, backend=compile_backend, dynamic=False)


def training_step(loss_fn: Callable, inputs) -> torch.Tensor:
    students, _, weights, biases = inputs
    for x in (*students, *weights, *biases):
        x.grad = None
    loss = loss_fn(*inputs)
    loss.backward()
    return loss


def time_steps(loss_fn: Callable, inputs, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Milliseconds per step: CUDA events on GPU (no host sync inside the loop), perf_counter on CPU."""
    for _ in range(warmup):
        training_step(loss_fn, inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)
        ]
        for start, end in events:
            start.record()
            training_step(loss_fn, inputs)
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(iters):
        begin = time.perf_counter()
        training_step(loss_fn, inputs)
        times.append(1e3 * (time.perf_counter() - begin))
    return times


def peak_extra_mib(loss_fn: Callable, inputs, device: torch.device) -> float | None:
    """Memory one step allocates above its inputs (grads included), in MiB. None off the GPU."""
    if device.type != "cuda":
        return None
    students, _, weights, biases = inputs
    for x in (*students, *weights, *biases):
        x.grad = None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    training_step(loss_fn, inputs)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def fused_skip_reason(device: torch.device, smoke: bool) -> str | None:
    """Why the fused case cannot run here, or None when it can."""
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    try:
        import feed_fast.fused  # noqa: F401
    except ImportError as error:
        return f"fused kernels not available (feed_fast.fused: {error}); only the reference paths ran"
    if device.type == "cuda" and interpreted:
        return "TRITON_INTERPRET=1 on a GPU would time the interpreter, not the kernels: unset it"
    if device.type != "cuda" and not interpreted:
        return "no GPU and TRITON_INTERPRET is not 1: the fused case needs one or the other"
    if device.type != "cuda" and not smoke:
        return "the Triton interpreter is far too slow for full shapes on the CPU: use --smoke"
    return None


def run_case(shape: ShapeSet, kernel_size: int, impl: str, args, device, skip_fused: str | None) -> dict:
    record = {"shape": shape.name, "kernel_size": kernel_size, "impl": impl, "status": "ok", "note": None}
    if impl in KERNEL_IMPLS and skip_fused:
        return {**record, "status": "skipped", "note": skip_fused}
    try:
        inputs = make_inputs(shape, kernel_size, device)
        loss_fn = loss_function(impl, args.compile_backend)
        loss = training_step(loss_fn, inputs).item()  # first call: compiles / autotunes outside the timing
        times = time_steps(loss_fn, inputs, device, args.warmup, args.iters)
        memory = peak_extra_mib(loss_fn, inputs, device)
    except Exception as error:  # noqa: BLE001 -- one failing case must not hide the others' numbers
        return {**record, "status": "error", "note": f"{type(error).__name__}: {error}"}
    return {
        **record,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "iters": len(times),
        "peak_extra_mib": memory,
        "loss": loss,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def summarize(results: list[dict]) -> list[dict]:
    """Per shape and kernel size: speedups of the fused op and its memory relative to eager."""
    by_case: dict[tuple, dict[str, dict]] = {}
    for r in results:
        by_case.setdefault((r["shape"], r["kernel_size"]), {})[r["impl"]] = r if r["status"] == "ok" else {}
    rows = []
    for (shape, kernel_size), impls in by_case.items():
        fused, hybrid, eager, compiled = (impls.get(name, {}) for name in IMPLS)
        eager_loss = eager.get("loss")
        rows.append(
            {
                "shape": shape,
                "kernel_size": kernel_size,
                "fused_speedup_vs_eager": ratio(eager.get("median_ms"), fused.get("median_ms")),
                "fused_speedup_vs_compile": ratio(compiled.get("median_ms"), fused.get("median_ms")),
                "hybrid_speedup_vs_eager": ratio(eager.get("median_ms"), hybrid.get("median_ms")),
                "hybrid_speedup_vs_compile": ratio(compiled.get("median_ms"), hybrid.get("median_ms")),
                "compile_speedup_vs_eager": ratio(eager.get("median_ms"), compiled.get("median_ms")),
                "fused_memory_vs_eager": ratio(fused.get("peak_extra_mib"), eager.get("peak_extra_mib")),
                "hybrid_memory_vs_eager": ratio(hybrid.get("peak_extra_mib"), eager.get("peak_extra_mib")),
                # A benchmark of wrong numbers is worthless: record how far each loss is from eager's.
                "fused_loss_rel_diff": rel_diff(fused.get("loss"), eager_loss),
                "hybrid_loss_rel_diff": rel_diff(hybrid.get("loss"), eager_loss),
                "compile_loss_rel_diff": rel_diff(compiled.get("loss"), eager_loss),
            }
        )
    return rows


def rel_diff(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None:
        return None
    return abs(value - reference) / max(abs(reference), 1e-30)


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def default_out(device: torch.device, smoke: bool) -> Path:
    """GPU full runs are results worth committing; anything else goes to a temp dir."""
    if device.type == "cuda" and not smoke:
        return RESULTS_DIR / f"feed_loss_{device_slug(torch.cuda.get_device_name(device))}.json"
    suffix = "smoke" if smoke else "full"
    return Path(tempfile.gettempdir()) / "feed_fast_bench" / f"feed_loss_{device.type}_{suffix}.json"


def print_table(results: list[dict], summary: list[dict], impls) -> None:
    print(f"{'shape':<22} {'k':>2} {'impl':<8} {'median ms':>10} {'peak MiB':>9}  note")
    for r in results:
        median = f"{r['median_ms']:.3f}" if r["status"] == "ok" else r["status"]
        memory = r.get("peak_extra_mib")
        memory = f"{memory:.1f}" if memory is not None else "-"
        print(
            f"{r['shape']:<22} {r['kernel_size']:>2} {r['impl']:<8} {median:>10} {memory:>9}  {r['note'] or ''}"
        )
    for s in summary:
        fmt = lambda v: "-" if v is None else f"{v:.2f}x"
        for impl in (i for i in KERNEL_IMPLS if i in impls):
            name = "fused" if impl == "triton" else impl
            print(
                f"{s['shape']} k={s['kernel_size']} {impl}: vs eager {fmt(s[f'{name}_speedup_vs_eager'])}, "
                f"vs compile {fmt(s[f'{name}_speedup_vs_compile'])}, "
                f"memory vs eager {fmt(s[f'{name}_memory_vs_eager'])}"
            )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--smoke", action="store_true", default=None, help="tiny shapes (default without a GPU)"
    )
    mode.add_argument("--full", dest="smoke", action="store_false", help="the real shapes (default on a GPU)")
    parser.add_argument(
        "--out", type=Path, help="JSON path (default: benchmarks/results/ on GPU, else a temp dir)"
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed steps per case after the first (default 10 full, 0 smoke)"
    )
    parser.add_argument("--iters", type=int, help="timed steps per case (default 50 full, 2 smoke)")
    parser.add_argument("--shapes", nargs="+", help="only these shape names")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default 1 in CPU smoke runs: steady on a shared machine)",
    )
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument(
        "--kernel-sizes", nargs="+", type=int, choices=KERNEL_SIZES, default=list(KERNEL_SIZES)
    )
    parser.add_argument(
        "--compile-backend",
        help="torch.compile backend (default inductor on GPU; aot_eager on CPU, where inductor's C++ build "
        "takes about 30 s per shape)",
    )
    args = parser.parse_args(argv)
    for name in ("warmup", "iters"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name} must be >= {0 if name == 'warmup' else 1}, got {value}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = device.type != "cuda" if args.smoke is None else args.smoke
    args.warmup = args.warmup if args.warmup is not None else (0 if smoke else 10)
    args.iters = args.iters if args.iters is not None else (2 if smoke else 50)
    args.compile_backend = args.compile_backend or ("inductor" if device.type == "cuda" else "aot_eager")
    shapes = SMOKE_SHAPES if smoke else FULL_SHAPES
    if args.shapes:
        known = {s.name for s in SMOKE_SHAPES + FULL_SHAPES}
        unknown = sorted(set(args.shapes) - known)
        if unknown:
            print(f"error: --shapes {unknown} unknown; choose from {sorted(known)}", file=sys.stderr)
            return 2
        shapes = tuple(s for s in SMOKE_SHAPES + FULL_SHAPES if s.name in args.shapes)
    if args.threads or (device.type == "cpu" and smoke):
        torch.set_num_threads(args.threads or 1)

    skip_fused = fused_skip_reason(device, smoke) if set(KERNEL_IMPLS) & set(args.impls) else None
    results = [
        run_case(shape, kernel_size, impl, args, device, skip_fused)
        for shape in shapes
        for kernel_size in args.kernel_sizes
        for impl in args.impls
    ]
    summary = summarize(results)
    notes = []
    if smoke:
        notes.append(
            "smoke run: tiny shapes and few steps prove the script works; the times are not the op's speed "
            "(on the CPU the Triton cases run in the interpreter)"
        )
    if skip_fused:
        notes.append(skip_fused)
    report = {
        "benchmark": "feed_loss forward+backward (students, weights, biases get gradients)",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "smoke" if smoke else "full",
        **environment(device),
        "settings": {
            "warmup": args.warmup,
            "iters": args.iters,
            "timer": "cuda_events" if device.type == "cuda" else "perf_counter",
            "statistic": "median",
            "compile_backend": args.compile_backend,
            "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
            "beta": BETA,
            "negative_slope": NEGATIVE_SLOPE,
            "reduction": "mean",
        },
        "dtypes": {
            "students": str(FEATURE_DTYPE).removeprefix("torch."),
            "teachers": str(FEATURE_DTYPE).removeprefix("torch."),
            "weights": str(HEAD_DTYPE).removeprefix("torch."),
            "biases": str(HEAD_DTYPE).removeprefix("torch."),
            "loss": "float32",
        },
        "shapes": [asdict(s) for s in shapes],
        "kernel_sizes": list(args.kernel_sizes),
        "results": results,
        "speedups": summary,
        "notes": notes,
    }
    out = args.out or default_out(device, smoke)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    print_table(results, summary, args.impls)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 1 if any(r["status"] == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
