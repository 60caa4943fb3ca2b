"""What one training step dispatches, read from torch.profiler (bench_step.py's floor and its test use it).

- dispatched_ops: the operator calls the host issues that do work, counted once each: a top-level call of an
  operator (aten::conv2d counts once, not again for the aten::convolution it calls), plus every kernel a
  compiled graph runs (Inductor's C++ kernels are recorded when `inductor_kernel_profiling()` was on while
  they were compiled; Triton kernels are recorded as launches). Views, allocations and metadata ops
  (aten::view, aten::empty, aten::detach, ...) launch nothing and are not counted. Device-independent: on a
  GPU the same calls are what the CPU issues, so this is the launch-bound floor of a step.
- cuda_launches (GPU only): the CUDA runtime's launch calls (kernels, and one per CUDA-graph replay).
- host_cpu_ms: CPU time of the profiled steps' top-level events, per step (with the profiler's own overhead).

The profiler's C++ side (Kineto) logs to the process's stderr each time it starts and stops (`USDT ...
profiler_start`, `STAGE ... Completed Stage`, and on a machine without a GPU `gpuGetDeviceCount failed with
code 35`): `quiet_profiler_logs()` keeps those lines out of the output and passes every other line on.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable

import torch

# Operator namespaces: an event named "<ns>::<op>" with one of these is an operator call.
OP_NAMESPACES = ("aten", "prims", "feed_fast", "mkldnn", "mkl", "quantized", "torchvision", "inductor", "_c10d",
                 "c10d", "triton")
# aten ops that allocate or relabel memory without a kernel (besides views, found from their schema).
NO_WORK_OPS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
                         "detach_", "lift_fresh", "set_", "resize_", "_reshape_alias", "_unsafe_view", "size",
                         "stride", "requires_grad_", "retain_grad", "record_stream", "result_type"})
CUDA_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                 "cudaGraphLaunch", "cudaLaunchCooperativeKernel")
# Inductor's kernels as the profiler names them: "graph_0_cpp_fused_relu_1" (C++), "triton_poi_fused_add_0" (GPU)
INDUCTOR_KERNEL = re.compile(r"^(graph_\d+_)?(cpp_fused|triton_(poi|red|per|tem|for)_)")
# Kineto's log lines: "USDT:2026-12-07 10:05:52 4546:4546 SyncActivityProfilerHandler.cpp:39] profiler_start"
KINETO_LINE = re.compile(r"^(?P<level>[A-Z]+):\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ [\w.]+:\d+\] (?P<text>.*)$")
KINETO_NOISE_LEVELS = ("USDT", "STAGE", "INFO", "VERBOSE")  # start/stop markers and progress: never news
KINETO_NOISE_TEXT = ("gpuGetDeviceCount failed",)  # the CPU-only machine has no GPU to count: expected


def is_profiler_noise(line: str) -> bool:
    """A Kineto log line that says nothing about the measurement (see the module docstring)."""
    match = KINETO_LINE.match(line.strip())
    if match is None:
        return False
    return match["level"] in KINETO_NOISE_LEVELS or match["text"].startswith(KINETO_NOISE_TEXT)


@contextlib.contextmanager
def quiet_profiler_logs():
    """Capture the process's stderr (file descriptor 2, where Kineto writes) while the profiler runs; on exit,
    write back every line but Kineto's noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if not is_profiler_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@functools.cache
def is_view_op(name: str) -> bool:
    """aten::<name> returns an alias of its input (schema alias annotation on an overload's output): no kernel
    of its own. Composites that may copy (`contiguous`, `reshape`, `to`) are annotated so too; when they do
    copy, the copying op they call (clone, _to_copy) is counted instead."""
    ns, _, op = name.partition("::")
    packet = getattr(getattr(torch.ops, ns, None), op, None)
    if packet is None:
        return False
    try:
        overloads = [getattr(packet, o) for o in packet.overloads()]
    except (AttributeError, RuntimeError):
        return False
    return any(getattr(o, "is_view", False) for o in overloads)


def is_operator(name: str) -> bool:
    ns, sep, _ = name.partition("::")
    return bool(sep) and ns in OP_NAMESPACES


def does_work(name: str) -> bool:
    if INDUCTOR_KERNEL.match(name):
        return True
    if not is_operator(name):
        return False
    op = name.partition("::")[2]
    return op not in NO_WORK_OPS and not is_view_op(name)


def count_events(events) -> dict:
    """Dispatched ops (see the module docstring) and CUDA launches in a list of profiler FunctionEvents."""
    ops: dict[str, int] = {}
    launches = 0
    host_us = 0.0
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue
        if event.cpu_parent is None:
            host_us += event.cpu_time_total
        if event.name in CUDA_LAUNCHES:
            launches += 1
            continue
        if not does_work(event.name):
            continue
        parent, nested = event.cpu_parent, False
        while parent is not None:
            if does_work(parent.name):
                nested = True
                break
            parent = parent.cpu_parent
        if not nested:
            ops[event.name] = ops.get(event.name, 0) + 1
    return {"ops": ops, "cuda_launches": launches, "host_us": host_us}


def profile_steps(step: Callable[[int], object], steps: int, device: torch.device) -> dict:
    """Run step(i) for i < steps under torch.profiler; per-step dispatched ops, CUDA launches, host CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with quiet_profiler_logs():
        with profile(activities=activities) as prof:
            begin = time.perf_counter()
            for i in range(steps):
                step(i)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall_ms = (time.perf_counter() - begin) * 1e3
        counted = count_events(prof.events())
    by_op = {name: n / steps for name, n in sorted(counted["ops"].items())}
    result = {
        "steps": steps,
        "dispatched_ops": sum(counted["ops"].values()) / steps,
        "host_cpu_ms": counted["host_us"] / 1e3 / steps,
        "profiled_wall_ms": wall_ms / steps,
        "dispatched_by_op": by_op,
    }
    if device.type == "cuda":
        result["cuda_launches"] = counted["cuda_launches"] / steps
    return result


@contextlib.contextmanager
def inductor_kernel_profiling():
    """Make Inductor's C++ kernels record themselves in the profiler (a compile-time switch: set it while the
    step is compiled). Triton kernels are seen through their launches on a GPU."""
    from torch._inductor import config

    saved = config.cpp.enable_kernel_profile
    config.cpp.enable_kernel_profile = True
    try:
        yield
    finally:
        config.cpp.enable_kernel_profile = saved
