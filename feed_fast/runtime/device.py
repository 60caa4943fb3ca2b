"""Which device a run computes on and in which memory format its images and weights live: decided here once,
then handed to the trainer, the loaders, `feed-fast eval` and the benchmarks."""
from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator

import torch

DEVICES = ("auto", "cpu", "cuda")  # what `train.device` and `--device` take; auto = the GPU when there is one


def resolve_device(device: None | str | torch.device = "auto") -> torch.device:
    """`auto`/None: the GPU when CUDA is available, else the CPU. A CUDA device without an index is the process's
    own GPU: LOCAL_RANK under torchrun, else torch's current device."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be one of {DEVICES} or a torch device such as 'cuda:1', got {device!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for, but CUDA is not available here; use 'cpu' "
                             "(or 'auto')")
        if device.index is None:
            local_rank = os.environ.get("LOCAL_RANK")
            device = torch.device("cuda", int(local_rank) if local_rank else torch.cuda.current_device())
    return device


def memory_format_for(device: torch.device, channels_last: bool | str = "auto") -> torch.memory_format:
    """The layout of image batches and conv weights. `auto`: channels-last on CUDA, where cuDNN's NHWC kernels
    (tensor cores) want it; plain NCHW on the CPU. `True`/`False` force it either way."""
    if channels_last == "auto":
        channels_last = torch.device(device).type == "cuda"
    return torch.channels_last if channels_last else torch.contiguous_format


@contextlib.contextmanager
def safe_cpu_convolutions(device: torch.device, memory_format: torch.memory_format) -> Iterator[None]:
    """oneDNN off for a CPU run whose tensors are channels-last: its convolution backward on channels-last
    inputs corrupts the heap (seen with torch 2.14.1 on an AVX2 CPU at one thread: a 1x1 stride-2 conv, a few
    steps, `double free or corruption`; NCHW and CUDA are unaffected). PyTorch's own kernels then run those
    convolutions. Put back after the run."""
    if torch.device(device).type != "cpu" or memory_format != torch.channels_last:
        yield
        return
    with torch.backends.mkldnn.flags(enabled=False):
        yield


def compile_for(fn, device: torch.device, **kwargs):
    """`torch.compile(fn, **kwargs)` as the engine compiles every unit:

    - with a Dynamo cache of its own. Dynamo keeps compiled code per code object, so every student, Distiller
      or teacher built from the same class shares one cache: each new instance is a guard miss, and after
      `recompile_limit` (8) of them a fullgraph compile fails. sFEED's generations, several teachers and tests
      build many. The unit is called through a function with its own code object.
    - keeping the memory format decided here. On the CPU, Inductor's layout optimisation would turn our NCHW
      convolutions channels-last on its own; besides re-deciding the layout, that path crashes the process (heap
      corruption in oneDNN's convolution backward, seen with torch 2.14.1 on an AVX2 CPU with one thread), so
      it is off there. On CUDA the batches are channels-last already."""
    if _backend is not None:
        kwargs.setdefault("backend", _backend)
    if torch.device(device).type == "cpu" and kwargs.get("backend", "inductor") == "inductor":
        kwargs["options"] = {"layout_optimization": False, **kwargs.get("options", {})}
    return torch.compile(with_own_code(fn), **kwargs)


_backend: str | None = None  # set by `compile_backend`; None: torch.compile's default, Inductor


@contextlib.contextmanager
def compile_backend(backend: str) -> Iterator[None]:
    """Within: the engine's units compile with torch.compile backend `backend` instead of Inductor. For runs that
    check what surrounds the compiler rather than its code: "aot_eager" traces the same fullgraph units (Dynamo,
    AOTAutograd) and generates no code, where Inductor's C++ build costs minutes on a CPU (gpu_check's smoke
    run, the shipped configs' compiled-mode tests)."""
    global _backend
    saved, _backend = _backend, backend
    try:
        yield
    finally:
        _backend = saved


def with_own_code(fn):
    """A function calling `fn`, with a code object no other function has."""
    def unit(*args, **kwargs):
        return fn(*args, **kwargs)

    return types.FunctionType(unit.__code__.replace(), unit.__globals__, unit.__name__, unit.__defaults__,
                              unit.__closure__)
