"""Forward+backward of the FEED loss op against what a user would write, per shape, layout and head kernel.

    python benchmarks/bench_feed_loss.py                       # GPU: the full grid -> benchmarks/results/
    python benchmarks/bench_feed_loss.py --shapes cifar        # one shape of the grid
    python benchmarks/bench_feed_loss.py                       # CPU (`make bench`): smoke shapes, kernels in
                                                               # Triton's interpreter -> benchmarks/results/local/

One step = `feed_loss(head_inputs, teachers, weights, biases)` on K translator heads under bf16 autocast, and
`.backward()` (benchmarks/feed_loss_impls.py lists the implementations; benchmarks/feed_loss_shapes.py the
grid). Inputs are channels-last as the trainer passes them (NCHW as a second row) and are rotated among
enough sets to span twice the H100's L2, so no step finds its inputs warm.

Per case: p20/median/p80 step time (CUDA events on a GPU), achieved TFLOP/s and GB/s against the H100's
limits, extra peak memory, kernels per step and GPU-busy time (torch.profiler), and two device-independent
figures the CPU measures for real: bytes saved for backward (beyond the step's own inputs) and launches per
step (Triton kernels + aten ops that launch work), the latter also for K = 1..4 teachers.
Speed is reported, never asserted. The JSON is rewritten after every case, so a run cut short keeps its rows.

Times exclude compilation: after the first call (compiles, autotunes) each case is warmed up (at least --warmup
steps) until Dynamo compiles nothing more (`warmup_steps`), and a timing during which something compiled is
redone (`retimed`) or left out (null). Without a GPU the triton and hybrid rows run their kernels in Triton's
interpreter (TRITON_INTERPRET=1 is set before the kernels are imported unless the environment says otherwise):
each such row says `triton_interpreter: true` in the JSON and `[triton-interpreter]` in the table, and its times
are the interpreter's. GPU runs of the full grid write benchmarks/results/; smoke and CPU runs
benchmarks/results/local/ (ignored by git), or --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from gpu_check_report import (
    INTERPRETER_LABEL,
    LOCAL_RESULTS_DIR,
    RESULTS_DIR,
    choose_triton_mode,
    help_texts,
    kernels_interpreted,
    now_utc,
    slug,
    source_record,
)

choose_triton_mode()  # before feed_fast is imported: without a GPU the kernels run in Triton's interpreter

from feed_loss_impls import (
    BASELINE,
    COMPILED_IMPLS,
    IMPLS,
    KERNEL_IMPLS,
    default_compile_backend,
    kernel_skip_reason,
    make_loss_fn,
    training_step,
)
from feed_loss_probes import peak_extra_mib, probe_step, profile_device, resolved_plan
from feed_loss_shapes import (
    ALL_SHAPES,
    AUTOCAST_DTYPE,
    BETA,
    FEATURE_DTYPE,
    FULL_SHAPES,
    H100_LIMITS,
    HEAD_DTYPE,
    KERNEL_SIZES,
    LAYOUTS,
    NEGATIVE_SLOPE,
    SMOKE_SHAPES,
    ShapeSet,
    StepInputs,
    make_inputs,
    memory_format,
    minimum_bytes,
    rotation_sets,
    useful_flops,
)
from warmup import time_without_compiles, warm_up

from feed_fast.environment import environment
from feed_fast.runtime import resolve_device
from feed_fast.runtime.device import safe_cpu_convolutions

SWEEP_TEACHERS = (1, 2, 3, 4)


@dataclass(frozen=True)
class Case:
    shape: ShapeSet
    kernel_size: int
    layout: str
    impl: str


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def spread(times: list[float]) -> dict:
    """p20 / median / p80 / min of per-step milliseconds."""
    if len(times) == 1:
        p20 = p80 = times[0]
    else:
        p20, _, _, p80 = statistics.quantiles(times, n=5, method="inclusive")
    return {"p20_ms": p20, "median_ms": statistics.median(times), "p80_ms": p80, "min_ms": min(times)}


def time_steps(loss_fn: Callable, sets: list[StepInputs], device: torch.device, warmup: int, iters: int,
               max_warmup: int | None = None) -> tuple[list[float] | None, dict]:
    """Milliseconds per step, step i on input set i mod len(sets): CUDA events on a GPU (no host sync inside
    the loop), perf_counter on the CPU. Warm-up steps first, at least `warmup`, more (up to `max_warmup`) while
    Dynamo still compiles; a timing with a compile in it is redone, and given up (None) if that keeps happening.
    Returns (times or None, the warm-up record)."""
    def step(i: int):
        training_step(loss_fn, sets[i % len(sets)])

    def warm(start: int) -> dict:
        record = warm_up(step, min_steps=warmup, max_steps=max_warmup or warmup, quiet_steps=1 if warmup else 0,
                         start=start)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return record

    def timed(start: int) -> list[float]:
        if device.type == "cuda":
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(iters)]
            for i, (begin, end) in enumerate(events, start=start):
                begin.record()
                step(i)
                end.record()
            torch.cuda.synchronize(device)
            return [begin.elapsed_time(end) for begin, end in events]
        times = []
        for i in range(start, start + iters):
            begin = time.perf_counter()
            step(i)
            times.append(1e3 * (time.perf_counter() - begin))
        return times

    warmed = warm(0)
    times, record = time_without_compiles(timed, warm)
    return times, {**warmed, **record}


def roofline(shape: ShapeSet, kernel_size: int, median_ms: float | None, device_name: str) -> dict:
    """Achieved TFLOP/s (useful FLOPs) and GB/s (minimum bytes), and their fractions of the H100's limits
    (None without a time)."""
    if median_ms is None:
        return dict.fromkeys(("achieved_tflops", "achieved_gbps", "tflops_fraction_of_limit",
                              "gbps_fraction_of_limit"))
    seconds = median_ms / 1e3
    tflops = useful_flops(shape, kernel_size) / seconds / 1e12
    gbps = minimum_bytes(shape, kernel_size) / seconds / 1e9
    h100 = "H100" in device_name
    return {
        "achieved_tflops": tflops,
        "achieved_gbps": gbps,
        "tflops_fraction_of_limit": tflops / H100_LIMITS["bf16_dense_tflops"] if h100 else None,
        "gbps_fraction_of_limit": gbps / H100_LIMITS["memory_gbps"] if h100 else None,
    }


def run_case(case: Case, args, device: torch.device, skip_kernels: str | None) -> dict:
    record = {
        "shape": case.shape.name,
        "kernel_size": case.kernel_size,
        "layout": case.layout,
        "impl": case.impl,
        "status": "ok",
        "note": None,
    }
    if case.impl in KERNEL_IMPLS and skip_kernels:
        return {**record, "status": "skipped", "note": skip_kernels, "triton_interpreter": False}
    n_sets = args.sets or (rotation_sets(case.shape, case.kernel_size) if device.type == "cuda" else 2)
    try:
        sets = [make_inputs(case.shape, case.kernel_size, device, case.layout, seed=i) for i in range(n_sets)]
        loss_fn = make_loss_fn(case.impl, args.compile_backend)
        loss = training_step(loss_fn, sets[0]).item()  # first call: compiles / autotunes outside the timing
        times, warmed = time_steps(loss_fn, sets, device, args.warmup, args.iters, args.max_warmup)
    except Exception as error:  # noqa: BLE001 -- one failing case must not hide the others' numbers
        return {**record, "status": "error", "note": f"{type(error).__name__}: {error}"}
    record.update(sets=n_sets, loss=loss, **warmed, timing_excludes_compilation=times is not None)
    if times is None:
        record.update(iters=0, p20_ms=None, median_ms=None, p80_ms=None, min_ms=None,
                      note="Dynamo compiled during every timing: no time is reported")
        record.update(roofline(case.shape, case.kernel_size, None, args.device_name))
    else:
        record.update(iters=len(times), **spread(times))
        record.update(roofline(case.shape, case.kernel_size, record["median_ms"], args.device_name))
    record.update(run_probes(loss_fn, sets, device, args.profile_steps, count=case.impl not in COMPILED_IMPLS))
    record["triton_interpreter"] = runs_in_interpreter(case.impl, record.get("resolved_plan"))
    return record


def runs_in_interpreter(impl: str, plan: str | None) -> bool:
    """A row whose step ran feed_fast's Triton kernels (triton, hybrid, or auto when it picked one of them)
    while they are decorated for Triton's interpreter."""
    uses_kernels = impl in KERNEL_IMPLS or plan in KERNEL_IMPLS
    return uses_kernels and kernels_interpreted()


def run_probes(loss_fn: Callable, sets: list[StepInputs], device, profile_steps: int, count: bool) -> dict:
    """Memory, saved bytes, launches and the device profile of one implementation. A probe that fails
    leaves its figure empty and says why in `probe_errors`, beside the timing that did work."""

    def one_step():
        return training_step(loss_fn, sets[0])

    def profiled():
        return profile_device(lambda i: training_step(loss_fn, sets[i % len(sets)]), profile_steps, device)

    probes = {
        "peak_extra_mib": lambda: peak_extra_mib(one_step, device),
        # Launches are counted through the dispatcher: a compiled graph hides its kernels from it.
        "saved_and_launches": lambda: probe_step(one_step, sets[0].all_tensors(), count=count),
        "profile": profiled if profile_steps else lambda: None,
    }
    record, errors = {}, {}
    for name, probe in probes.items():
        try:
            value = probe()
        except Exception as error:  # noqa: BLE001
            errors[name], value = f"{type(error).__name__}: {error}", None
        if name == "saved_and_launches":
            record["saved_for_backward"], record["launches"] = value or (None, None)
            record["resolved_plan"] = resolved_plan(record["launches"]) if record["launches"] else None
        else:
            record[name] = value
    if errors:
        record["probe_errors"] = errors
    return record


def sweep_counts(impl: str, shape: ShapeSet, kernel_size: int, layout: str, device, compile_backend: str) -> tuple:
    """(launches, profiled kernels per step or None) of one step with `shape`'s teachers."""
    inputs = make_inputs(shape, kernel_size, device, layout)
    loss_fn = make_loss_fn(impl, compile_backend)

    def step(_=None):
        return training_step(loss_fn, inputs)

    step()  # compile / autotune this K first: counts are of the steady state
    _, launches = probe_step(step, [], count=True)
    profiled = profile_device(step, 3, device)
    return launches, profiled["kernels_per_step"] if profiled else None


def launch_sweep(shape: ShapeSet, kernel_size: int, layout: str, impls, device, skip_kernels, args) -> dict:
    """Launches per step with K = 1..4 copies of the shape's first teacher, for every implementation the
    dispatcher can see into (on a GPU also the profiler's kernels per step). A fused op's must stay flat."""
    rows = {}
    for impl in impls:
        if impl in COMPILED_IMPLS or (impl in KERNEL_IMPLS and skip_kernels):
            continue
        row = {"teachers": list(SWEEP_TEACHERS), "total": [], "triton": [], "aten": [], "gpu_kernels": []}
        by_op = []
        try:
            for count in SWEEP_TEACHERS:
                launches, kernels = sweep_counts(
                    impl, shape.with_teachers(count), kernel_size, layout, device, args.compile_backend
                )
                for key in ("total", "triton", "aten"):
                    row[key].append(launches[key])
                by_op.append(launches["aten_by_op"])
                row["gpu_kernels"].append(kernels)
        except Exception as error:  # noqa: BLE001
            rows[impl] = {**row, "error": f"{type(error).__name__}: {error}"}
            continue
        row["constant_in_k"] = len(set(row["total"])) == 1
        # The aten ops whose count changes with K: what makes a count grow.
        row["ops_growing_with_k"] = {
            op: [ops.get(op, 0) for ops in by_op]
            for op in sorted(set().union(*by_op))
            if len({ops.get(op, 0) for ops in by_op}) > 1
        }
        rows[impl] = row
    return {"shape": shape.name, "kernel_size": kernel_size, "layout": layout, "head_input_width": shape.width,
            "teacher": list(shape.teachers[0]), "batch": shape.batch, "by_impl": rows}


def ratio(numerator, denominator) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def summarize(results: list[dict]) -> list[dict]:
    """Per (shape, kernel size, layout): every implementation against the eager baseline and compile."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in results:
        key = (r["shape"], r["kernel_size"], r["layout"])
        groups.setdefault(key, {})[r["impl"]] = r if r["status"] == "ok" else {}
    rows = []
    for (shape, kernel_size, layout), impls in groups.items():
        eager = impls.get(BASELINE, {})
        eager_saved = (eager.get("saved_for_backward") or {}).get("extra_bytes")
        row = {"shape": shape, "kernel_size": kernel_size, "layout": layout, "vs_eager": {}}
        for impl, r in impls.items():
            if not r or impl == BASELINE:
                continue
            row["vs_eager"][impl] = {
                "speedup": ratio(eager.get("median_ms"), r.get("median_ms")),
                "speedup_vs_compile": ratio(impls.get("compile", {}).get("median_ms"), r.get("median_ms")),
                "speedup_vs_compile_reduce_overhead": ratio(
                    impls.get("compile_reduce_overhead", {}).get("median_ms"), r.get("median_ms")
                ),
                "peak_memory_ratio": ratio(r.get("peak_extra_mib"), eager.get("peak_extra_mib")),
                "saved_extra_ratio": ratio((r.get("saved_for_backward") or {}).get("extra_bytes"), eager_saved),
                # A benchmark of wrong numbers is worthless: how far each loss is from the baseline's.
                "loss_rel_diff": ratio(abs(r["loss"] - eager["loss"]), abs(eager["loss"])) if eager else None,
                "triton_interpreter": r.get("triton_interpreter", False),
            }
        rows.append(row)
    return rows


def default_out(device: torch.device, smoke: bool) -> Path:
    """GPU full runs are results worth committing; anything else goes to the ignored benchmarks/results/local/."""
    if device.type == "cuda" and not smoke:
        return RESULTS_DIR / f"feed_loss_{slug(torch.cuda.get_device_name(device))}.json"
    suffix = "smoke" if smoke else "full"
    return LOCAL_RESULTS_DIR / f"feed_loss_{device.type}_{suffix}.json"


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


def fmt(value, spec=".3f", unit="") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def impl_label(impl: str, interpreted: bool) -> str:
    return f"{impl} [{INTERPRETER_LABEL}]" if interpreted else impl


def print_report(report: dict) -> None:
    print(f"{'shape':<22} {'k':>1} {'layout':<13} {'impl':<32} {'median ms':>10} {'p20-p80':>17} "
          f"{'TFLOP/s':>8} {'peak MiB':>8} {'saved+ KiB':>10} {'launch':>6} {'warm-up':>7}")
    for r in report["results"]:
        head = (f"{r['shape']:<22} {r['kernel_size']:>1} {r['layout']:<13} "
                f"{impl_label(r['impl'], r.get('triton_interpreter', False)):<32}")
        if r["status"] != "ok":
            print(f"{head} {r['status']}: {r['note']}")
            continue
        saved = (r.get("saved_for_backward") or {}).get("extra_bytes")
        launches = (r.get("launches") or {}).get("total")
        print(f"{head} {fmt(r['median_ms']):>10} {fmt(r['p20_ms']):>8}-{fmt(r['p80_ms']):<8} "
              f"{fmt(r['achieved_tflops'], '.2f'):>8} {fmt(r.get('peak_extra_mib'), '.1f'):>8} "
              f"{fmt(saved and saved / 1024, '.1f'):>10} {fmt(launches, 'd'):>6} {r['warmup_steps']:>7}")
    for row in report["summary"]:
        for impl, s in row["vs_eager"].items():
            print(f"{row['shape']} k={row['kernel_size']} {row['layout']} {impl_label(impl, s['triton_interpreter'])}: "
                  f"{fmt(s['speedup'], '.2f', 'x')} vs eager, {fmt(s['speedup_vs_compile'], '.2f', 'x')} vs compile, "
                  f"saved-for-backward {fmt(s['saved_extra_ratio'], '.4f', 'x')} of eager's")
    for sweep in report["launches_vs_teachers"]:
        for impl, row in sweep["by_impl"].items():
            print(f"launches per step, {sweep['layout']}, K={row['teachers']}: {impl:<7} {row['total']} "
                  f"(triton {row['triton']}){'' if row.get('constant_in_k') else ' grows with K'}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(**help_texts(__doc__))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", default=None, help="tiny shapes (default without a GPU)")
    mode.add_argument("--full", dest="smoke", action="store_false", help="the real shapes (default on a GPU)")
    parser.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/ on a GPU, else a temp dir)")
    parser.add_argument("--shapes", nargs="+", choices=sorted(ALL_SHAPES), help="only these shapes")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--kernel-sizes", nargs="+", type=int, choices=KERNEL_SIZES, default=list(KERNEL_SIZES))
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--warmup", type=int, help="least untimed steps per case after the first, more while "
                        "something still compiles (default 10; smoke 0)")
    parser.add_argument("--max-warmup", type=int, help="most untimed steps per case while something still compiles "
                        "(default 40; smoke 5)")
    parser.add_argument("--iters", type=int, help="timed steps per case (default 50; smoke 2)")
    parser.add_argument("--sets", type=int, help="input sets to rotate (default: 2x the H100 L2 on a GPU, 2 on CPU)")
    parser.add_argument("--profile-steps", type=int, help="steps under torch.profiler on a GPU (default 5; 0: off)")
    parser.add_argument("--sweep-shape", choices=sorted(ALL_SHAPES),
                        help="shape of the launches-vs-K sweep (default: the first shape run)")
    parser.add_argument("--sweep-layouts", nargs="+", choices=LAYOUTS,
                        help="layouts of the launches-vs-K sweep (default: every layout run)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the launches-vs-K sweep")
    parser.add_argument("--budget-s", type=float,
                        help="start no new case after this many seconds (the rest are recorded as skipped)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default 1 on the CPU: steady on a "
                        "shared machine)")
    parser.add_argument("--compile-backend", help="torch.compile backend (default inductor on a GPU, aot_eager on "
                        "the CPU, where Inductor's C++ build takes 15-30 s per shape)")
    args = parser.parse_args(argv)
    for name, low in (("warmup", 0), ("max_warmup", 0), ("iters", 1), ("sets", 1), ("profile_steps", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device()
    smoke = device.type != "cuda" if args.smoke is None else args.smoke
    args.warmup = args.warmup if args.warmup is not None else (0 if smoke else 10)
    args.max_warmup = max(args.warmup, args.max_warmup if args.max_warmup is not None else (5 if smoke else 40))
    args.iters = args.iters if args.iters is not None else (2 if smoke else 50)
    args.profile_steps = args.profile_steps if args.profile_steps is not None else (0 if smoke else 5)
    args.compile_backend = args.compile_backend or default_compile_backend(device)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    env = environment(device)
    args.device_name = env["device"]["name"]
    shapes = [ALL_SHAPES[name] for name in args.shapes] if args.shapes else list(SMOKE_SHAPES if smoke else FULL_SHAPES)
    # Most wanted first: a run cut short by --budget-s keeps the trainer's layout and the paper's 3x3 head.
    cases = [
        Case(shape, kernel_size, layout, impl)
        for layout in args.layouts
        for kernel_size in args.kernel_sizes
        for shape in shapes
        for impl in args.impls
    ]
    skip_kernels = kernel_skip_reason(device) if set(KERNEL_IMPLS) & set(args.impls) else None
    notes = []
    if smoke:
        notes.append("smoke run: tiny shapes and few steps prove the script works; the times are not the op's "
                     "speed (on the CPU the Triton cases run in the interpreter)")
    elif device.type != "cuda":
        notes.append("CPU run: times are the Triton interpreter's and CPU torch's, not a GPU's; the saved bytes and "
                     "launch counts are the device-independent figures")
    if skip_kernels:
        notes.append(skip_kernels)
    out = args.out or default_out(device, smoke)
    report = {
        "benchmark": "feed_loss forward+backward (head inputs, weights, biases get gradients)",
        "created_utc": now_utc(),
        "mode": "smoke" if smoke else "full",
        **env,
        "source": source_record(),
        "settings": {
            "warmup": args.warmup, "max_warmup": args.max_warmup, "iters": args.iters, "sets": args.sets or "auto",
            "profile_steps": args.profile_steps,
            "warmup_rule": "after the first call, at least `warmup` steps and on until a step compiles nothing "
                           "(Dynamo's count); a timing with a compile in it is redone or left out",
            "timer": "cuda_events" if device.type == "cuda" else "perf_counter",
            "statistics": ["p20", "median", "p80", "min"],
            "compile_backend": args.compile_backend,
            "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
            "kernels_interpreted": kernels_interpreted(),
            "autocast_dtype": dtype_name(AUTOCAST_DTYPE),
            "beta": BETA, "negative_slope": NEGATIVE_SLOPE, "reduction": "mean",
            "baseline": BASELINE,
            "limits": H100_LIMITS,
            "flops": "useful: 3 head convs (forward, input grad, weight grad), 2 per multiply-add",
            "bytes": "minimum: every input read once, every gradient written once",
            "saved_for_backward": "bytes autograd keeps between forward and backward, once per storage; "
                                  "extra_bytes leaves out the step's own inputs",
            "launches": "Triton launches + dispatched aten ops that launch work, one step; not for compiled graphs",
        },
        "dtypes": {"head_inputs": dtype_name(FEATURE_DTYPE), "teachers": dtype_name(FEATURE_DTYPE),
                   "weights": dtype_name(HEAD_DTYPE), "biases": dtype_name(HEAD_DTYPE), "loss": "float32"},
        "shapes": [asdict(s) for s in shapes],
        "kernel_sizes": list(args.kernel_sizes),
        "layouts": list(args.layouts),
        "results": [],
        "summary": [],
        "launches_vs_teachers": [],
        "notes": notes,
    }
    started = time.monotonic()
    for case in cases:
        if args.budget_s is not None and time.monotonic() - started > args.budget_s:
            record = {"shape": case.shape.name, "kernel_size": case.kernel_size, "layout": case.layout,
                      "impl": case.impl, "status": "skipped", "note": f"time budget of {args.budget_s:.0f} s reached"}
        else:
            with safe_cpu_convolutions(device, memory_format(case.layout)):  # a torch 2.14 CPU crash, fenced
                record = run_case(case, args, device, skip_kernels)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the case's input sets are gone: start the next one from a clean pool
        report["results"].append(record)
        report["summary"] = summarize(report["results"])
        write_json(out, report)
    sweep_shape = ALL_SHAPES[args.sweep_shape] if args.sweep_shape else shapes[0]
    for layout in [] if args.no_sweep else (args.sweep_layouts or args.layouts):
        if args.budget_s is not None and time.monotonic() - started > args.budget_s:
            break
        with safe_cpu_convolutions(device, memory_format(layout)):
            sweep = launch_sweep(sweep_shape, args.kernel_sizes[0], layout, args.impls, device, skip_kernels, args)
        report["launches_vs_teachers"].append(sweep)
        write_json(out, report)
    if any(r.get("triton_interpreter") for r in report["results"]):
        notes.append(f"rows marked [{INTERPRETER_LABEL}] (triton_interpreter: true) ran feed_fast's Triton kernels "
                     "in Triton's interpreter: their times are the interpreter's, not a GPU's")
    report["wall_s"] = time.monotonic() - started
    write_json(out, report)
    print_report(report)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 1 if any(r["status"] == "error" for r in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
