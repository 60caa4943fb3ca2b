"""Runs tests/gpu_compile_probe.py in a subprocess (with the installed Triton, or another version put first on
PYTHONPATH) once per (Triton, architecture) per test session, and installs that other version on demand."""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("gpu_compile_probe.py")
VARIANTS = ("bf16", "fp32", "fp32_tf32")  # the probe's mixed-teacher cases at B=2, by GEMM precision
# The shapes users run, by name: (batch, head input channels, teacher maps, head kernel, plan, layout, dtype) as
# benchmarks/kernel_figures.py's case_tensors takes them.
_SHAPES = {"cifar": (128, 64, ((64, 8, 8),) * 3), "imagenet": (256, 512, ((512, 7, 7),) * 3)}
_PLANS = {"fused_3x3": (3, "fused"), "fused_1x1": (1, "fused"), "hybrid": (3, "hybrid")}
USER_SHAPES = {
    f"{shape}_{dtype}_{plan}": (*_SHAPES[shape], *_PLANS[plan], "channels_last", dtype)
    for shape in _SHAPES for dtype in VARIANTS for plan in _PLANS
}
# The Triton of the lent H100 machines (torch 2.11): the floor pyproject.toml states.
TRITON_FLOOR = "3.6.0"


def cache_root() -> Path:
    return Path(os.environ.get("FEED_FAST_CACHE", Path.home() / ".cache" / "feed-fast"))


def installed_triton(version: str) -> tuple[Path | None, str]:
    """(folder holding `triton` version `version`, "") or (None, why it could not be installed). The wheel is
    installed once with `pip install --target` into the feed-fast cache; later runs cost nothing."""
    target = cache_root() / f"triton-{version}"
    if (target / "triton" / "__init__.py").exists():
        return target, ""
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")  # parallel sessions do not collide
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(partial),
               f"triton=={version}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        return None, f"pip install triton=={version} timed out"
    if done.returncode != 0:
        return None, f"pip install triton=={version} failed (offline?): {done.stderr.strip()[-500:]}"
    try:
        partial.rename(target)  # only a complete install is ever found under the final name
    except OSError:  # another session finished first
        shutil.rmtree(partial, ignore_errors=True)
    return target, ""


@functools.cache
def probe_rows(arch: int, triton_path: str | None = None, variants: tuple[str, ...] = ()) -> tuple[dict, ...]:
    """One dict per compiled kernel and config (see gpu_compile_probe.py); `variants`: its variants or users'
    shapes by name (none: the three variants)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if triton_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [triton_path, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(PROBE), str(arch), *variants], capture_output=True, text=True,
                          env=env, check=False, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return tuple(json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))


def register_table(rows) -> str:
    return "\n".join(
        f"triton {r['triton']} sm_{r['arch']} {r['variant']:24} {r['kernel']:24} warps {r['num_warps']:2}: "
        f"{r['registers']} registers, {r['stack_bytes']} stack bytes, "
        f"{r['spill_stores']} spill stores, {r['spill_loads']} spill loads"
        for r in rows
    )


def no_local_memory(rows) -> str:
    """Assert the probe compiled something and nothing uses local memory (no stack, no spill loads or stores, at
    most 255 registers); -> the register table, for the test's report."""
    table = register_table(rows)
    assert rows, "the probe compiled nothing"
    assert all(r["stack_bytes"] == r["spill_stores"] == r["spill_loads"] == 0 for r in rows), table
    assert all(r["registers"] is not None and r["registers"] <= 255 for r in rows), table
    return table
