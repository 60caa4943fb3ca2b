"""The runtime: what depends on the machine a run is on, decided once and handed down. The device and the
memory format (channels-last or not), the precision, torchrun's process group, stop signals (SIGINT, SIGTERM,
SIGUSR1, `train.stop_signal`) and determinism are chosen here, by `open_runtime`, from the config's `train`
section; the trainer, the loaders, `feed-fast eval` and the benchmarks receive the result instead of working it
out again. Process-wide switches (determinism flags, signal handlers, the process group) are set for the run
and put back after it."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from .determinism import determinism
from .device import DEVICES, memory_format_for, resolve_device, safe_cpu_convolutions
from .distributed import DistInfo, setup_distributed, teardown_distributed
from .precision import PRECISIONS, Precision, resolve_precision
from .signals import GracefulStop


class RuntimeOptions(Protocol):
    """What `open_runtime` reads: the config's `train` section has these fields."""

    device: str
    precision: str
    channels_last: bool | str
    deterministic: bool
    stop_signal: str | None  # one more stop signal besides SIGINT, SIGTERM and SIGUSR1 (None: none)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    memory_format: torch.memory_format  # of image batches and conv weights
    precision: Precision
    dist: DistInfo
    stop: GracefulStop  # `stop.requested` after a stop signal
    deterministic: bool

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def channels_last(self) -> bool:
        return self.memory_format == torch.channels_last


@contextlib.contextmanager
def open_runtime(options: RuntimeOptions, *, handle_signals: bool = True) -> Iterator[Runtime]:
    """Resolve the device, memory format and precision, join torchrun's process group (a plain run is a world
    of one), set the determinism switches and catch the stop signals; undo all of it on exit."""
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device)
    dist = setup_distributed(device)
    stop = GracefulStop(getattr(options, "stop_signal", None))
    memory_format = memory_format_for(device, options.channels_last)
    try:
        with determinism(options.deterministic), safe_cpu_convolutions(device, memory_format), \
                (stop if handle_signals else contextlib.nullcontext()):
            yield Runtime(device, memory_format, precision, dist, stop, options.deterministic)
    except BaseException:
        teardown_distributed(dist, failed=True)  # no closing barrier: a peer may be dead
        raise
    teardown_distributed(dist)


__all__ = ["DEVICES", "PRECISIONS", "DistInfo", "GracefulStop", "Precision", "Runtime", "RuntimeOptions",
           "determinism", "memory_format_for", "open_runtime", "resolve_device", "resolve_precision"]
