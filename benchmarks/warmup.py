"""Timed figures that exclude compilation: warm a call up until it stops compiling, then time it, and time it
again if something compiled while the clock ran.

Compiles are counted with Dynamo's own counter (`torch._dynamo.utils.counters["stats"]["unique_graphs"]`: one
per graph compiled, recompiles included). A Triton kernel outside a compiled graph compiles (and autotunes) on
its first call with a shape, which the warm-up's first call is; a CUDA graph is captured when the caller's
`steady()` says so (bench_step.py waits for the compiled step's capture that way).
"""
from __future__ import annotations

from collections.abc import Callable

MAX_RETIMES = 2  # timings redone after a compile inside the timed loop, before the figure is given up


def compile_count() -> int:
    """Graphs Dynamo compiled so far in this process (recompiles included)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def warm_up(call: Callable[[int], object], *, min_steps: int, max_steps: int, quiet_steps: int = 2,
            steady: Callable[[], bool] = lambda: True, start: int = 0) -> dict:
    """call(start), call(start + 1), ... until at least `min_steps` calls were made and the last `quiet_steps`
    compiled nothing while `steady()` held; at most `max_steps` calls. Returns how many it took, how many
    graphs compiled, and whether it settled (False: stopped at `max_steps`, still compiling)."""
    steps = compiles = quiet = 0
    while steps < max(max_steps, min_steps) and not (steps >= min_steps and quiet >= quiet_steps):
        before = compile_count()
        call(start + steps)
        steps += 1
        new = compile_count() - before
        compiles += new
        quiet = quiet + 1 if new == 0 and steady() else 0
    return {"warmup_steps": steps, "compiles_in_warmup": compiles, "settled": quiet >= quiet_steps}


def time_without_compiles(timed: Callable[[int], list[float]], rewarm: Callable[[int], dict]) -> tuple:
    """Run `timed(start)` (a list of per-call milliseconds); when Dynamo compiled something meanwhile, warm up
    again with `rewarm(start)` and retime, at most MAX_RETIMES times. Returns (times or None, record): None
    when every try compiled, so that no figure with a compile in it is ever reported."""
    record = {"compiles_while_timed": 0, "retimed": 0}
    start = 0
    for attempt in range(MAX_RETIMES + 1):
        before = compile_count()
        times = timed(start)
        compiled = compile_count() - before
        if not compiled:
            return times, record
        record["compiles_while_timed"] += compiled
        if attempt == MAX_RETIMES:
            break
        record["retimed"] += 1
        start += len(times)
        extra = rewarm(start)
        start += extra["warmup_steps"]
        record["extra_warmup_steps"] = record.get("extra_warmup_steps", 0) + extra["warmup_steps"]
    return None, record
