"""Compile the fused FEED kernels for a CUDA target on a machine without a GPU, and print what came out.

Triton compiles through its bundled ptxas; only launching needs a driver. A stand-in driver reports the target
architecture, and `warmup` compiles without launching. Run in its own process (it must not inherit
TRITON_INTERPRET=1): `python tests/gpu_compile_probe.py 90 [variant ...]` prints one JSON object per compiled
kernel and config. Works with any Triton on PYTHONPATH (tests/test_triton_versions.py runs it under 3.6).

Variants (each its own specialisation, as the op compiles them):
- bf16: the trainer under bf16 autocast: bf16 head inputs with fp32 master weights cast in registers (3x3,
  one tile per sample, CIFAR-like), bf16 weights (3x3, several tiles, ImageNet-like), and a head without a conv
  but with a bias (what the hybrid plan launches);
- fp32: the same heads in float32 (the 3x3 multi-tile one as a 1x1), IEEE fp32 GEMMs (the default);
- fp32_tf32: the fp32 heads with TF32 allowed (torch.backends.cuda.matmul.allow_tf32 = True).
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
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver

VARIANTS = ("bf16", "fp32", "fp32_tf32")
KERNELS = ("feed_forward_kernel", "feed_grad_preact_kernel", "feed_grad_input_kernel", "feed_grad_weight_kernel")


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
    """Registers per thread and stack bytes (cuobjdump -res-usage), and the local-memory loads and stores in the
    machine code (SASS LDL/STL): the kernels have no local arrays, so any of those is a register spill."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return {
        "registers": int(found[1]) if found else None,
        "stack_bytes": int(found[2]) if found else None,
        "spill_stores": len(re.findall(r"\bSTL(?:\.\w+)*\b", sass)),
        "spill_loads": len(re.findall(r"\bLDL(?:\.\w+)*\b", sass)),
    }


def mma_counts(ptx: str) -> dict:
    """Tensor-core instructions in the PTX, by operand type (`.tf32` operands = TF32 rounding)."""
    mma = [line for line in ptx.splitlines() if "wgmma.mma_async" in line or "mma.sync" in line]
    return {
        "wgmma": sum("wgmma.mma_async" in line for line in mma),
        "mma_sync": sum("mma.sync" in line for line in mma),
        "tf32_mma": sum(".tf32" in line for line in mma),
        "bf16_mma": sum(".bf16" in line for line in mma),
    }


def case(variant: str):
    """(head_inputs, teachers, weights, biases, dot_dtypes, tf32) of one variant, batch 2 (shapes only matter
    through block sizes and the one-tile test)."""
    low = torch.bfloat16 if variant == "bf16" else torch.float32
    cl = torch.channels_last
    head_inputs = [torch.randn(2, 64, 8, 8, dtype=low).to(memory_format=cl),
                   torch.randn(2, 512, 7, 7, dtype=low).to(memory_format=cl),
                   torch.randn(2, 32, 7, 7, dtype=low).to(memory_format=cl)]
    teachers = [torch.randn(2, 64, 8, 8, dtype=low).to(memory_format=cl),
                torch.randn(2, 512, 7, 7, dtype=low).to(memory_format=cl),
                torch.randn(2, 32, 7, 7, dtype=low).to(memory_format=cl)]
    second_kernel = 3 if variant == "bf16" else 1
    weights = [torch.randn(64, 64, 3, 3).to(memory_format=cl),  # fp32 master weights
               torch.randn(512, 512, second_kernel, second_kernel, dtype=low).to(memory_format=cl), None]
    biases = [torch.randn(64), torch.randn(512, dtype=low), torch.randn(32, dtype=low)]
    dot_dtypes = (low, low, low)
    return head_inputs, teachers, weights, biases, dot_dtypes, variant == "fp32_tf32"


def main(arch: int, variants) -> None:
    driver.set_active(CompileOnlyDriver(arch))
    import feed_fast.kernels.feed_loss as kernels

    for variant in variants:
        compiled = []
        originals = {name: getattr(kernels, name) for name in KERNELS}
        for name in KERNELS:
            setattr(kernels, name, CompileOnlyLauncher(name, originals[name], compiled))
        try:
            head_inputs, teachers, weights, biases, dots, tf32 = case(variant)
            scales = (1.0,) * len(teachers)
            kernels.feed_forward(head_inputs, teachers, weights, biases, scales, dots, tf32, 0.1, 1e-12)
            kernels.feed_backward(torch.ones(3, 2), torch.ones(3, 2, kernels.STATS), head_inputs, teachers, weights,
                                  biases, scales, dots, tf32, 0.1, 1e-12)
        finally:
            for name in KERNELS:
                setattr(kernels, name, originals[name])
        for name, kernel in compiled:
            cubin = kernel.asm.get("cubin", b"")
            print(json.dumps({
                "variant": variant,
                "kernel": name,
                "arch": arch,
                "triton": triton.__version__,
                "num_warps": kernel.metadata.num_warps,
                "cubin_bytes": len(cubin),
                "shared_bytes": kernel.metadata.shared,
                **mma_counts(kernel.asm.get("ptx", "")),
                **resource_usage(cubin),
            }), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90, sys.argv[2:] or VARIANTS)
