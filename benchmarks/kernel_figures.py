"""Figures a CPU can prove about the fused FEED kernels: compile every kernel for sm_90 (no GPU needed) at the
shapes users run and read the compiler's own output.

    python benchmarks/kernel_figures.py [--out PATH] [--cases NAME ...] [--triton-path installed|DIR ...]

Per compiled kernel (one JSON row each): the launch grid and its CTAs, registers per thread, shared memory,
CTAs per SM (the occupancy limit of an H100's SM, `feed_fast.ops.backend_choice.ctas_per_sm`), waves on 132 SMs,
the software pipeline's waits in the PTX (`cp.async.wait_group N`, `wgmma.wait_group N`), global loads by
width (vector vs scalar, `ld.global` and `cp.async`), tensor-core instructions, and spills (stack bytes, local
loads/stores in the SASS). Nothing is launched and nothing is timed: these are properties of the binaries.

Cases (`CASES`): the CIFAR shape (B=128, K=3 teachers of 64x8x8, 64-channel heads) and the ImageNet shape
(B=256, K=3 of 512x7x7, 512-channel heads), bf16 channels-last as the trainer runs them under autocast (bf16
features, fp32 master weights), 3x3 and 1x1 heads, both plans (fused; hybrid = the fused kernels without the
conv), plus the CIFAR 3x3 head with NCHW features. `--triton-path DIR` compiles with another Triton too (first
on sys.path of a subprocess, so the import sees it); the committed JSON holds Triton 3.8 and 3.6. The machinery here (a stand-in driver that reports sm_90, `warmup`
instead of a launch, cuobjdump on the cubin) is shared with tests/gpu_compile_probe.py.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "kernel_figures_sm90.json"
# ---- compiling without a GPU --------------------------------------------------------------------------------


class CompileOnlyDriver:
    """Just enough of Triton's driver interface to compile (never to launch) for `arch`."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def is_active(self):
        return True


class CompileOnlyLauncher:
    """Stands in for `kernel[grid]`: compiles with `warmup` and records (name, grid, binary) instead of
    launching. An autotuned kernel compiles one binary per config."""

    def __init__(self, name, kernel, sink):
        self.name, self.kernel, self.sink = name, kernel, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            compiled = self.kernel.warmup(*args, grid=grid, **kwargs)
            for binary in compiled if isinstance(compiled, list) else [compiled]:
                self.sink.append((self.name, tuple(int(g) for g in grid), binary))

        return launch


def use_compile_only_driver(arch: int) -> None:
    """Compile for `arch` from here on. Call before feed_fast.kernels is imported: the kernels must be decorated
    as compiled code, not for Triton's interpreter."""
    os.environ["TRITON_INTERPRET"] = "0"
    from triton.runtime import driver

    driver.set_active(CompileOnlyDriver(arch))


def compile_calls(kernels_module, calls, names) -> list[tuple[str, tuple, object]]:
    """Run `calls()` (host code that launches kernels) with every launcher in `names` replaced by a
    compile-only one; -> [(kernel name, grid, compiled binary)] in launch order."""
    compiled: list = []
    originals = {name: getattr(kernels_module, name) for name in names if hasattr(kernels_module, name)}
    for name, kernel in originals.items():
        setattr(kernels_module, name, CompileOnlyLauncher(name, kernel, compiled))
    try:
        calls()
    finally:
        for name, kernel in originals.items():
            setattr(kernels_module, name, kernel)
    return compiled


# ---- reading the binaries -----------------------------------------------------------------------------------


def _nvidia_tool(name: str) -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread, stack bytes and local memory per thread (cuobjdump -res-usage), and the local-memory
    loads and stores in the machine code (SASS LDL/STL): the kernels have no local arrays, so any of those is a
    register spill. Spills live in local memory, so with no stack and no local memory there is none to count
    and the SASS (a disassembly of about a second per binary) is read only when there is some."""
    tool = _nvidia_tool("cuobjdump")
    if not tool.exists():
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
        found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
        no_local = found is not None and int(found[2]) == int(found[3]) == 0
        sass = "" if no_local else subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True,
                                                  check=True).stdout
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


def fp32_math(ptx: str) -> dict:
    """Divisions and square roots in the PTX by rounding: `.rn` rounds to nearest (IEEE), `div.full` (within 2
    ulp) and `sqrt.approx` (about 1 ulp) do not."""
    return {
        "div_rn": len(re.findall(r"\bdiv\.rn(?:\.ftz)?\.f32\b", ptx)),
        "div_approx": len(re.findall(r"\bdiv\.(?:full|approx)(?:\.ftz)?\.f32\b", ptx)),
        "sqrt_rn": len(re.findall(r"\bsqrt\.rn(?:\.ftz)?\.f32\b", ptx)),
        "sqrt_approx": len(re.findall(r"\bsqrt\.approx(?:\.ftz)?\.f32\b", ptx)),
    }


_BITS = {"b8": 1, "u8": 1, "s8": 1, "b16": 2, "u16": 2, "s16": 2, "f16": 2, "bf16": 2, "b32": 4, "u32": 4,
         "s32": 4, "f32": 4, "b64": 8, "u64": 8, "s64": 8, "f64": 8}


def pipeline_waits(ptx: str) -> dict:
    """The software pipeline's waits: `cp.async.wait_group N` (N copies may stay in flight; N = 0 drains the
    pipeline) and `wgmma.wait_group N`, as {"N": count}."""
    waits = {}
    for op in ("cp.async.wait_group", "wgmma.wait_group.sync.aligned"):
        found = Counter(re.findall(re.escape(op) + r"\s+(\d+)", ptx))
        waits[op.split(".wait")[0] + ".wait_group"] = dict(sorted(found.items()))
    return waits


def global_loads(ptx: str) -> dict:
    """Global loads by bytes per thread and instruction: `ld.global[.vN].T` and `cp.async.* [smem], [gmem], B`.
    A vector load moves 8 or 16 bytes per thread; a scalar one a single 1-4 byte element."""
    ld = Counter()
    for vec, kind in re.findall(r"ld\.global(?:\.\w+)*?(?:\.v(\d))?\.(\w+)\s", ptx):
        ld[str(int(vec or 1) * _BITS.get(kind, 0))] += 1
    cp = Counter(str(int(size, 0)) for size in re.findall(
        r"cp\.async\.c[ag]\.shared\.global(?:\.\w+)*\s+\[[^\]]+\],\s*\[[^\]]+\],\s*(0x[0-9a-fA-F]+|\d+)", ptx))
    total = {"ld.global": dict(sorted(ld.items(), key=lambda kv: int(kv[0]))),
             "cp.async": dict(sorted(cp.items(), key=lambda kv: int(kv[0])))}
    counts = Counter()
    for table in total.values():
        for width, n in table.items():
            counts["vector" if int(width) >= 8 else "scalar"] += n
    total["vector"], total["scalar"] = counts["vector"], counts["scalar"]
    return total


def binary_figures(binary) -> dict:
    """Everything read from one compiled kernel."""
    from feed_fast.ops.backend_choice import H100, ctas_per_sm

    ptx = binary.asm.get("ptx", "")
    usage = resource_usage(binary.asm.get("cubin", b""))
    num_warps = binary.metadata.num_warps
    shared = binary.metadata.shared
    per_sm = ctas_per_sm(usage.get("registers") or 0, shared, num_warps) if usage.get("registers") else None
    return {
        "num_warps": num_warps,
        "num_stages": getattr(binary.metadata, "num_stages", None),
        "registers": usage.get("registers"),
        "shared_bytes": shared,
        "ctas_per_sm": per_sm,
        "occupancy_warps": per_sm * num_warps if per_sm else None,
        "stack_bytes": usage.get("stack_bytes"),
        "spill_stores": usage.get("spill_stores"),
        "spill_loads": usage.get("spill_loads"),
        "pipeline_waits": pipeline_waits(ptx),
        "global_loads": global_loads(ptx),
        "fp32_math": fp32_math(ptx),
        **mma_counts(ptx),
        "sms": H100.sms,
    }


def grid_figures(grid: tuple, per_sm: int | None) -> dict:
    from feed_fast.ops.backend_choice import H100

    ctas = 1
    for g in grid:
        ctas *= g
    return {
        "grid": list(grid),
        "ctas": ctas,
        "sms_busy": min(ctas, H100.sms),
        "waves": round(ctas / (H100.sms * per_sm), 3) if per_sm else None,
    }


# ---- the cases ----------------------------------------------------------------------------------------------

# name -> (batch, head input channels, teacher maps (C_t, H, W), head kernel, plan, layout, dtype)
CASES = {
    "cifar_fused_3x3": (128, 64, [(64, 8, 8)] * 3, 3, "fused", "channels_last", "bf16"),
    "cifar_fused_1x1": (128, 64, [(64, 8, 8)] * 3, 1, "fused", "channels_last", "bf16"),
    "cifar_hybrid_3x3": (128, 64, [(64, 8, 8)] * 3, 3, "hybrid", "channels_last", "bf16"),
    "cifar_fused_3x3_nchw": (128, 64, [(64, 8, 8)] * 3, 3, "fused", "nchw", "bf16"),
    "imagenet_fused_3x3": (256, 512, [(512, 7, 7)] * 3, 3, "fused", "channels_last", "bf16"),
    "imagenet_fused_1x1": (256, 512, [(512, 7, 7)] * 3, 1, "fused", "channels_last", "bf16"),
    "imagenet_hybrid_3x3": (256, 512, [(512, 7, 7)] * 3, 3, "hybrid", "channels_last", "bf16"),
}
DTYPES = {"bf16": "bfloat16", "fp32": "float32", "fp32_tf32": "float32"}


def case_tensors(batch, width, teachers, kernel, plan, layout, dtype):
    """The tensors one `feed_loss` call hands the kernels (meta-free: the compile reads shapes, strides and
    dtypes only, so the values are zeros). bf16: bf16 features and fp32 master weights cast in registers (the
    trainer under autocast); the hybrid plan hands over the conv outputs (bf16, the features' layout) and no
    weights. -> (head_inputs, teachers, weights, biases, dot_dtypes, tf32)."""
    import torch

    low = getattr(torch, DTYPES[dtype])
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def feature(c, h, w):
        return torch.zeros(batch, c, h, w, dtype=low).contiguous(memory_format=fmt)

    head_inputs, maps, weights, biases = [], [], [], []
    for c_t, h, w in teachers:
        maps.append(feature(c_t, h, w))
        biases.append(torch.zeros(c_t))
        if plan == "hybrid":
            head_inputs.append(feature(c_t, h, w))
            weights.append(None)
        else:
            head_inputs.append(feature(width, h, w))
            weights.append(torch.zeros(c_t, width, kernel, kernel).contiguous(memory_format=torch.channels_last))
    return head_inputs, maps, weights, biases, (low,) * len(teachers), dtype == "fp32_tf32"


def compile_case(kernels_module, tensors) -> list[tuple[str, tuple, object]]:
    """Compile the forward and backward launches of one case; -> [(kernel, grid, binary)]."""
    import torch

    head_inputs, teachers, weights, biases, dots, tf32 = tensors
    num, batch = len(teachers), teachers[0].shape[0]
    scales = (1.0,) * num

    def calls():
        kernels_module.feed_forward(head_inputs, teachers, weights, biases, scales, dots, tf32, 0.1, 1e-12)
        kernels_module.feed_backward(torch.ones(num, batch), torch.ones(num, batch, kernels_module.STATS),
                                     head_inputs, teachers, weights, biases, scales, dots, tf32, 0.1, 1e-12)

    return compile_calls(kernels_module, calls, kernels_module.KERNEL_NAMES)


def loop_steps(kernels_module, tensors) -> dict:
    """Steps of each kernel's GEMM loop per CTA and output tile, from the launch plan (teacher 0): the depth the
    software pipeline has to fill and drain (forward, dz pass: taps x C_in tiles; input gradient: taps x C_t
    tiles; weight gradient: BLOCK_N-position steps over its split of the batch; reduce: split partials added)."""
    head_inputs, teachers, weights, biases, dots, tf32 = tensors
    plan = kernels_module._plan(head_inputs, teachers, [kernels_module.gemm_weight(w) for w in weights], biases,
                                dots, tf32)
    tiling = kernels_module.tiling
    taps = plan.ks[0] ** 2 if plan.has_w[0] else 0
    return {
        "forward": taps * tiling.cdiv(plan.c_ins[0], plan.block_k[0]),
        "grad_preact": taps * tiling.cdiv(plan.c_ins[0], plan.block_k[0]),
        "grad_input": taps * tiling.cdiv(plan.c_outs[0], plan.block_co[0]),
        "grad_weight": tiling.cdiv(plan.split_batch * plan.positions[0], tiling.BLOCK_N),
        "grad_reduce": plan.splits if plan.split else 0,
    }


def rows_for(case_names, arch: int = 90) -> list[dict]:
    use_compile_only_driver(arch)
    import feed_fast.kernels.feed_loss as kernels
    import triton

    rows = []
    for name in case_names:
        spec = CASES[name]
        tensors = case_tensors(*spec)
        steps = loop_steps(kernels, tensors)
        for kernel, grid, binary in compile_case(kernels, tensors):
            figures = binary_figures(binary)
            short = kernel.removeprefix("feed_").removesuffix("_kernel")
            rows.append({
                "case": name, "kernel": short,
                "batch": spec[0], "head_channels": spec[1], "teachers": [list(t) for t in spec[2]],
                "head_kernel": spec[3], "plan": spec[4], "layout": spec[5], "dtype": spec[6],
                "arch": f"sm_{arch}", "triton": triton.__version__,
                **grid_figures(grid, figures["ctas_per_sm"]), "loop_steps": steps.get(short), **figures,
            })
            print(table_line(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table_line(r: dict) -> str:
    waits = r["pipeline_waits"]["cp.async.wait_group"]
    loads = r["global_loads"]
    return (f"{r['case']:22} {r['kernel']:12} triton {r['triton']}: {r['ctas']:5} CTAs, {r['ctas_per_sm']}/SM "
            f"({r['registers']} regs, {r['shared_bytes'] // 1024} KB), {r['waves']} waves; "
            f"cp.async waits {waits}; loads {loads['vector']} vector / {loads['scalar']} scalar; "
            f"stack {r['stack_bytes']} B, {r['spill_stores']}/{r['spill_loads']} local st/ld")


def markdown_table(rows, triton_version: str | None = None) -> str:
    """The docs/ops.md table: one line per (case, kernel) of one Triton version (the first in `rows` unless
    named), with the spill column covering every version in `rows`."""
    version = triton_version or rows[0]["triton"]
    spills = {}
    for r in rows:
        spills.setdefault((r["case"], r["kernel"]), {})[r["triton"]] = (
            f"{r['stack_bytes']} B, {r['spill_stores']}/{r['spill_loads']}"
            if r["stack_bytes"] or r["spill_stores"] or r["spill_loads"] else "0")
    versions = sorted({r["triton"] for r in rows})
    header = ("| case | kernel | CTAs | CTAs/SM (regs, smem) | waves | SMs busy | GEMM loop steps | cp.async drains "
              f"| loads vector / scalar | spills ({' / '.join(versions)}) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["triton"] != version:
            continue
        drains = r["pipeline_waits"]["cp.async.wait_group"].get("0", 0)
        spill = " / ".join(spills[(r["case"], r["kernel"])].get(v, "-") for v in versions)
        lines.append(
            f"| {r['case']} | {r['kernel']} | {r['ctas']} | {r['ctas_per_sm']} ({r['registers']}, "
            f"{r['shared_bytes'] // 1024} KB) | {r['waves']:.2f} | {r['sms_busy']} | {r.get('loop_steps', '-')} | "
            f"{drains} | "
            f"{r['global_loads']['vector']} / {r['global_loads']['scalar']} | {spill} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write ('-': stdout)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--triton-path", action="append", default=[],
                        help="also compile with the Triton in this folder (put first on sys.path in a subprocess); "
                             "repeatable; 'installed' names the Triton this Python imports")
    parser.add_argument("--table", type=Path, help="print the markdown table of this JSON file and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    rows = []
    for path in args.triton_path or ["installed"]:
        if path == "installed":
            rows += rows_for(args.cases)
            continue
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, __file__, "--out", "-", "--cases", *args.cases]
        done = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True)
        rows += json.loads(done.stdout)
    text = json.dumps(rows, indent=1) + "\n"
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
