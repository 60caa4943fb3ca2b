"""What one training step of the loss holds and launches, measured rather than timed:

- saved_for_backward: the bytes autograd keeps between forward and backward (saved_tensors_hooks), split
  into the step's own inputs (alive anyway) and the extra the implementation adds. Device-independent.
- count_launches: Triton kernel launches (a wrapper on the launcher) and dispatched aten ops that launch
  work (a TorchDispatchMode; views, allocations and metadata ops launch nothing). Device-independent.
- profile_device: on a GPU, torch.profiler's device kernels per step and the time they keep the GPU busy.
- peak_extra_mib: on a GPU, the memory one step allocates above its inputs.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterable

import torch
from step_profile import quiet_profiler_logs  # a sibling: the script's folder is on sys.path
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that only allocate, alias or relabel memory: no kernel runs for them on any device.
NO_WORK_OPS = frozenset(
    {
        "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias",
        "lift_fresh", "set_", "resize_", "_reshape_alias", "_unsafe_view", "view", "as_strided",
    }
)


def _op_name(func) -> str:
    """'aten.mul.Tensor' -> 'mul'."""
    parts = str(func).split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def launches_work(func) -> bool:
    return not getattr(func, "is_view", False) and _op_name(func) not in NO_WORK_OPS


class _AtenCounter(TorchDispatchMode):
    """Counts dispatched aten ops that launch work, looking inside what the dispatcher would hide: a custom
    op's kernel (the fused op is one) and composite ops (`to` may or may not copy). Not counted: ops run while
    a Triton kernel runs (the interpreter emulates kernels with torch ops of its own)."""

    def __init__(self, inside_kernel: list[int]):
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.inside_kernel = inside_kernel

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace != "aten":  # a custom op: count what its kernel launches, not the op itself
            with self:
                return func.redispatch(_backend_keys(args, kwargs), *args, **kwargs)
        if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        if not self.inside_kernel[0] and launches_work(func):
            self.ops[str(func)] += 1
        return func(*args, **kwargs)


def _backend_keys(args, kwargs) -> torch._C.DispatchKeySet:
    """The device's backend key, below autograd and Python: where a custom op's kernel is registered."""
    tensors = [x for x in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    cuda = any(x.device.type == "cuda" for x in tensors)
    return torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA if cuda else torch._C.DispatchKey.CPU)


def _triton_launchers() -> list[type]:
    """The classes whose `run` launches a @triton.jit kernel: the compiled one and the interpreter's."""
    classes = []
    with contextlib.suppress(ImportError):
        from triton.runtime.jit import JITFunction

        classes.append(JITFunction)
    with contextlib.suppress(ImportError):
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    return classes


@contextlib.contextmanager
def _counting_triton_launches(counter: collections.Counter, inside_kernel: list[int]):
    originals = {cls: cls.run for cls in _triton_launchers()}

    def wrap(original):
        def run(self, *args, **kwargs):
            if kwargs.get("warmup"):  # compiles only
                return original(self, *args, **kwargs)
            counter[getattr(self, "__name__", None) or type(self).__name__] += 1
            inside_kernel[0] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                inside_kernel[0] -= 1

        return run

    try:
        for cls, original in originals.items():
            cls.run = wrap(original)
        yield
    finally:
        for cls, original in originals.items():
            cls.run = original


@contextlib.contextmanager
def count_triton_launches():
    """Counts the Triton kernel launches made inside the block (compiled or interpreted), by kernel name."""
    counter: collections.Counter[str] = collections.Counter()
    with _counting_triton_launches(counter, [0]):
        yield counter


def count_launches(step: Callable[[], object]) -> dict:
    """Launches of one call of `step` (forward and backward): Triton kernels by name, aten ops by name."""
    triton_kernels: collections.Counter[str] = collections.Counter()
    inside_kernel = [0]
    with _counting_triton_launches(triton_kernels, inside_kernel), _AtenCounter(inside_kernel) as aten:
        step()
    return {
        "triton": sum(triton_kernels.values()),
        "aten": sum(aten.ops.values()),
        "total": sum(triton_kernels.values()) + sum(aten.ops.values()),
        "triton_by_kernel": dict(sorted(triton_kernels.items())),
        "aten_by_op": dict(sorted(aten.ops.items())),
    }


def resolved_plan(launches: dict) -> str:
    """Which plan a call took, read from what it launched: fused kernels only, fused + a torch conv, or no
    Triton at all (how `auto` is reported without depending on the op's internals)."""
    if not launches["triton"]:
        return "torch"
    convs = any(key.startswith("aten.convolution") for key in launches["aten_by_op"])
    return "hybrid" if convs else "triton"


def _storage_key(x: torch.Tensor) -> tuple:
    storage = x.untyped_storage()
    return (x.device.type, x.device.index, storage.data_ptr(), storage.nbytes())


def saved_for_backward(step: Callable[[], object], inputs: Iterable[torch.Tensor]) -> dict:
    """Bytes autograd saves for backward during `step`, counted once per storage. `extra_bytes` leaves out
    the storages of `inputs`, which the caller holds whether or not autograd saves them."""
    saved: dict[tuple, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        key = _storage_key(x)
        saved[key] = key[-1]
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        step()
    owned = {_storage_key(x) for x in inputs}
    return {
        "total_bytes": sum(saved.values()),
        "extra_bytes": sum(n for key, n in saved.items() if key not in owned),
        "storages": len(saved),
    }


def probe_step(step: Callable[[], object], inputs: Iterable[torch.Tensor], count: bool = True) -> tuple:
    """(saved_for_backward, count_launches or None) from one call of `step`: one step instead of two,
    which matters where a step takes a minute (the Triton interpreter at real shapes)."""
    if not count:
        return saved_for_backward(step, inputs), None
    saved = {}
    launches = count_launches(lambda: saved.update(saved_for_backward(step, inputs)))
    return saved, launches


def peak_extra_mib(step: Callable[[], object], device: torch.device) -> float | None:
    """Memory one step allocates above what was allocated before it (gradients included), in MiB."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def busy_us(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: time the device runs at least one kernel."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def summarize_device_events(events: list[tuple[str, float, float]], steps: int, wall_ms: float) -> dict:
    """(name, start_us, end_us) device events of `steps` steps -> per-step counts and busy time."""
    kernels = [e for e in events if not e[0].startswith(("Memcpy", "Memset"))]
    busy_ms = busy_us((start, end) for _, start, end in events) / 1e3
    return {
        "steps": steps,
        "device_ops_per_step": len(events) / steps,
        "kernels_per_step": len(kernels) / steps,
        "gpu_busy_ms_per_step": busy_ms / steps,
        "profiled_wall_ms_per_step": wall_ms / steps,
        "kernel_names": sorted({e[0] for e in kernels})[:40],
    }


def profile_device(step: Callable[[int], object], steps: int, device: torch.device) -> dict | None:
    """torch.profiler over `steps` calls of step(i) on a GPU: device kernels per step and busy time.
    The profiler slows the CPU side, so its wall time overstates; compare busy time with the CUDA-event
    median taken without it."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with quiet_profiler_logs():
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            begin = time.perf_counter()
            for i in range(steps):
                step(i)
            torch.cuda.synchronize(device)
            wall_ms = 1e3 * (time.perf_counter() - begin)
        events = [
            (e.name, float(e.time_range.start), float(e.time_range.end))
            for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA
        ]
    summary = summarize_device_events(events, steps, wall_ms)
    if not events:
        summary["note"] = "the profiler saw no device events"
    return summary
