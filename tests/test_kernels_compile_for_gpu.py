"""The fused kernels compile to GPU machine code (cubin) for an H100 and an A100, on this GPU-less machine.

The interpreter tests prove the math; this proves the same source passes Triton's real compiler and uses
tensor-core instructions (wgmma on sm_90, mma.sync on sm_80). It does not run the code: `-m gpu` does that.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
PROBE = Path(__file__).with_name("gpu_compile_probe.py")
KERNELS = {"feed_forward_kernel", "feed_grad_preact_kernel", "feed_grad_input_kernel", "feed_grad_weight_kernel"}
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason="this triton build ships no ptxas")
@pytest.mark.parametrize("arch, tensor_core_op", [(90, "wgmma"), (80, "mma_sync")])
def test_kernels_compile_to_cubin_with_tensor_core_instructions(arch, tensor_core_op):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(PROBE), str(arch)], capture_output=True, text=True, env=env, check=False,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert {r["kernel"] for r in rows} == KERNELS
    # Every autotuning config of every kernel compiles.
    assert {(r["kernel"], r["num_warps"]) for r in rows} == {(k, w) for k in KERNELS for w in (4, 8)}
    for row in rows:
        assert row["cubin_bytes"] > 0, row
        assert row[tensor_core_op] > 0, f"{row['kernel']} has no {tensor_core_op} instruction for sm_{arch}"
