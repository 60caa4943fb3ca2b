"""Where a figure was measured: device and package versions, recorded by every benchmark and report (the
benchmarks' JSON takes `environment`, the demo's markdown report `environment_summary`, the same facts flat)."""
from __future__ import annotations

import platform
from pathlib import Path

import torch

import feed_fast


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def device_label(device: torch.device) -> str:
    """One line for people: `cuda:0 (NVIDIA H100 80GB HBM3)` or `cpu (<model>, 2 torch threads)`."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({cpu_name()}, {threads} torch thread{'' if threads == 1 else 's'})"


def optional_version(module: str) -> str | None:
    try:
        return __import__(module, fromlist=["__version__"]).__version__
    except ImportError:
        return None


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": optional_version("torchvision"),
        "triton": optional_version("triton"),
        "cuda": torch.version.cuda,
        "feed_fast": feed_fast.__version__,
    }


def environment(device: torch.device) -> dict:
    device = torch.device(device)
    return {
        "device": {"type": device.type, "name": device_name(device), "cpu_threads": torch.get_num_threads()},
        "versions": versions(),
    }


def environment_summary(device: torch.device) -> dict:
    """The same record flat, one entry per line of a report: the versions, the device label and the platform."""
    return {**versions(), "device": device_label(device), "platform": platform.platform()}
