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
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kernel_figures import compile_case, mma_counts, resource_usage, use_compile_only_driver

VARIANTS = ("bf16", "fp32", "fp32_tf32")


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
    use_compile_only_driver(arch)
    import feed_fast.kernels.feed_loss as kernels

    for variant in variants:
        for name, _grid, kernel in compile_case(kernels, case(variant)):
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
