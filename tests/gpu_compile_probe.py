"""Compile the fused FEED kernels for a CUDA target on a machine without a GPU, and print what came out.

Triton compiles through its bundled ptxas; only launching needs a driver. A stand-in driver reports the target
architecture, and `warmup` compiles without launching. Run in its own process (it must not inherit
TRITON_INTERPRET=1): `python tests/gpu_compile_probe.py 90 [variant ... | users]` prints one JSON object per compiled
kernel and config (a variant: one of VARIANTS or a USER_SHAPES name). Works with any Triton on PYTHONPATH (tests/test_triton_versions.py runs it under 3.6).

Besides these, the shapes users run (`USER_SHAPES`, named `<cifar|imagenet>_<dtype>_<fused_3x3|fused_1x1|hybrid>`):
B=128 with K=3 teachers of 64x8x8 and 64-channel heads, B=256 with K=3 of 512x7x7 and 512-channel heads,
channels-last, as `benchmarks/kernel_figures.py` builds them (Triton specialises integer arguments divisible by
16, so B=128/256 compile other code than B=2: ptxas spilled there where it did not at B=2).

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
from _compile_probe import USER_SHAPES, VARIANTS
from kernel_figures import (
    case_tensors,
    compile_case,
    fp32_math,
    mma_counts,
    resource_usage,
    use_compile_only_driver,
)


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
        tensors = case_tensors(*USER_SHAPES[variant]) if variant in USER_SHAPES else case(variant)
        for name, _grid, kernel in compile_case(kernels, tensors):
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
                **fp32_math(kernel.asm.get("ptx", "")),
                **resource_usage(cubin),
            }), flush=True)


if __name__ == "__main__":
    # variants or USER_SHAPES names; "users": every one of USER_SHAPES (the whole matrix, minutes of compiling)
    names = [n for name in sys.argv[2:] for n in (USER_SHAPES if name == "users" else [name])]
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90, names or VARIANTS)
