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
def probe_rows(arch: int, triton_path: str | None = None) -> tuple[dict, ...]:
    """One dict per compiled kernel and config (see gpu_compile_probe.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if triton_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [triton_path, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(PROBE), str(arch)], capture_output=True, text=True, env=env,
                          check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return tuple(json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))


def register_table(rows) -> str:
    return "\n".join(
        f"triton {r['triton']} sm_{r['arch']} {r['variant']:9} {r['kernel']:24} warps {r['num_warps']:2}: "
        f"{r['registers']} registers, {r['stack_bytes']} stack bytes, "
        f"{r['spill_stores']} spill stores, {r['spill_loads']} spill loads"
        for r in rows
    )
