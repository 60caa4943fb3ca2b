"""The fused kernels compile to GPU machine code (cubin) for an H100 and an A100, on this GPU-less machine.

The interpreter tests prove the math; this proves the same source passes Triton's real compiler, that bf16
GEMMs become bf16 tensor-core instructions (wgmma on sm_90, mma.sync on sm_80), that float32 GEMMs contain no
TF32 instruction unless TF32 was allowed, that the IEEE fp32 specialisation divides and takes square roots
rounded to nearest (div.rn/sqrt.rn, as the interpreter computes them, not div.full/sqrt.approx), and that
nothing spills. It does not run the code: `-m gpu` does that.
"""
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
from _compile_probe import no_local_memory, probe_rows

VARIANTS = {"bf16", "fp32", "fp32_tf32"}
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
needs_ptxas = pytest.mark.skipif(not PTXAS.exists(), reason="this triton build ships no ptxas")
pytestmark = pytest.mark.slow  # Triton's compiler and ptxas, minutes on a cold cache


def warps_per_kernel():
    from feed_fast.kernels.feed_loss import WARPS

    return {f"feed_{name}_kernel": set(warps) for name, warps in WARPS.items()}


@needs_ptxas
@pytest.mark.parametrize("arch, tensor_core_op", [(90, "wgmma"), (80, "mma_sync")])
def test_kernels_compile_with_the_right_gemm_instructions(arch, tensor_core_op):
    rows = probe_rows(arch)
    no_local_memory(rows)  # no spills with the installed Triton (3.6.0's sm_90 code: test_triton_versions.py)
    # Every autotuning config of every kernel compiles, in every variant.
    expected = {(v, k, w) for v in VARIANTS for k, warps in warps_per_kernel().items() for w in warps}
    assert {(r["variant"], r["kernel"], r["num_warps"]) for r in rows} == expected
    for row in rows:
        where = f"{row['variant']} {row['kernel']} (sm_{arch}, {row['num_warps']} warps)"
        assert row["cubin_bytes"] > 0, where
        if row["kernel"] == "feed_grad_reduce_kernel":  # sums of fp32 partials: no GEMM
            assert row["wgmma"] == row["mma_sync"] == 0, where
        elif row["variant"] == "bf16":
            assert row[tensor_core_op] > 0, f"{where} has no {tensor_core_op} instruction"
            assert row["bf16_mma"] == row[tensor_core_op], f"{where}: a tensor-core GEMM is not bf16"
        elif row["variant"] == "fp32":  # IEEE fp32: no TF32 rounding, hence no tensor-core GEMM at all
            assert row["tf32_mma"] == 0, f"{where} rounds float32 operands to TF32"
            assert row["wgmma"] == row["mma_sync"] == 0, f"{where} uses tensor cores for IEEE fp32"
        else:  # the user opted into TF32: the check above would see it
            assert row["tf32_mma"] > 0, f"{where} has no TF32 instruction although TF32 was allowed"
        if row["variant"] == "fp32":  # ... and divisions and square roots rounded to nearest, as interpreted
            assert row["div_approx"] == row["sqrt_approx"] == 0, f"{where} has approximate fp32 math"
        if row["kernel"] in ("feed_forward_kernel", "feed_grad_preact_kernel"):
            assert row["div_rn"] + row["div_approx"] > 0, f"{where}: no division found (the PTX pattern broke?)"


