"""Compile the fused FEED kernels for a CUDA target on a machine without a GPU, and print what came out.

Triton compiles through its bundled ptxas; only launching needs a driver. A stand-in driver reports the target
architecture, and `warmup` compiles without launching. Run in its own process (it must not inherit
TRITON_INTERPRET=1): `python tests/gpu_compile_probe.py 90` prints one JSON object per compiled kernel.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver


class CompileOnlyDriver:
    """Just enough of Triton's driver interface to compile (never to launch) for `arch`."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def is_active(self):
        return True


class CompileOnlyLauncher:
    """Stands in for `kernel[grid]`: compiles with `warmup` and records the result instead of launching."""

    def __init__(self, name, kernel, sink):
        self.name, self.kernel, self.sink = name, kernel, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            compiled = self.kernel.warmup(*args, grid=grid, **kwargs)
            # An autotuned kernel compiles one binary per config.
            for binary in compiled if isinstance(compiled, list) else [compiled]:
                self.sink.append((self.name, binary))

        return launch


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread and stack (spill) bytes, from the cuobjdump that ships with Triton."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=False).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return {"registers": int(found[1]), "stack_bytes": int(found[2])} if found else {}


def main(arch: int) -> None:
    driver.set_active(CompileOnlyDriver(arch))
    import feed_fast.kernels.feed_loss as kernels

    compiled = []
    for name in ("feed_forward_kernel", "feed_grad_preact_kernel", "feed_grad_input_kernel", "feed_grad_weight_kernel"):
        setattr(kernels, name, CompileOnlyLauncher(name, getattr(kernels, name), compiled))

    # Three teachers covering the specialisations: bf16 3x3 single-tile (CIFAR-like), an identity head
    # (no conv), and a multi-tile ImageNet-like 1x1 head with fp32 weights (fp32/TF32 GEMM), channels-last.
    bf16 = torch.bfloat16
    students = [torch.randn(2, 64, 8, 8, dtype=bf16), torch.randn(2, 32, 7, 7, dtype=bf16),
                torch.randn(2, 512, 7, 7).to(memory_format=torch.channels_last)]
    teachers = [torch.randn(2, 64, 8, 8, dtype=bf16), torch.randn(2, 32, 7, 7, dtype=bf16),
                torch.randn(2, 512, 7, 7)]
    weights = [torch.randn(64, 64, 3, 3, dtype=bf16), None, torch.randn(512, 512, 1, 1)]
    biases = [torch.randn(64, dtype=bf16), None, torch.randn(512)]
    kernel_sizes = (3, 0, 1)
    kernels.feed_forward(students, teachers, weights, biases, kernel_sizes, 0.1, 1e-12)
    kernels.feed_backward(torch.ones(3, 2), torch.ones(3, 2, kernels.STATS), students, teachers, weights, biases,
                          kernel_sizes, 0.1, 1e-12)
    for name, kernel in compiled:
        ptx = kernel.asm.get("ptx", "")
        print(json.dumps({
            "kernel": name,
            "arch": arch,
            "cubin_bytes": len(kernel.asm.get("cubin", b"")),
            "wgmma": ptx.count("wgmma.mma_async"),
            "mma_sync": ptx.count("mma.sync"),
            "num_warps": kernel.metadata.num_warps,
            "shared_bytes": kernel.metadata.shared,
            **resource_usage(kernel.asm.get("cubin", b"")),
        }))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
