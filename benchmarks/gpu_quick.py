"""The Python parts of `benchmarks/gpu_check.sh quick`, the first look at a GPU machine; each writes its JSON as
it goes, so a part cut short keeps what it measured, and never writes a figure it did not measure.

    python benchmarks/gpu_quick.py env --out F            # (a) GPU, capability, driver, torch/triton/cuDNN
                                                          #     versions; can Triton build its launcher (a C
                                                          #     compiler, Python.h) and launch a trivial kernel?
    python benchmarks/gpu_quick.py step-resume --out F    # (d) the CIFAR step with train.compile=step: captured
                                                          #     and replayed under torch.cuda.set_sync_debug_mode
                                                          #     ("error"), stopped after one epoch, resumed from
                                                          #     its last.pt; the lr every step really used follows
                                                          #     the schedule on both sides of the resume
    python benchmarks/gpu_quick.py imagenet-step --out F  # (e) one ImageNet-shape pFEED step (ResNet-18 from 3
                                                          #     ResNet-34 teachers, B=256, bf16, channels-last,
                                                          #     hybrid FEED op): its images/s

Parts (b) and (c) are pytest and bench_feed_loss.py runs that gpu_check.sh starts itself. --smoke runs the same
code on the CPU with tiny models (ResNet-8 students and teachers, 16 px), fp32, the Triton kernels in Triton's
interpreter, and (d) compiled with torch.compile's aot_eager backend (the same compiled units, resume and lr
handling; Inductor's C++ build alone takes minutes on 2 cores): it proves the plumbing, and its records say
`smoke: true`.

How (d) reads the lr a step used: SGD with momentum (no Nesterov, no dampening) updates p <- p - lr * m with m
the new momentum buffer (weight decay included), so lr = <p_before - p_after, m> / <m, m> on one parameter,
read after the step from device copies made around it (no host sync inside a replay). That is the lr the
captured graph applied, whatever tensor it reads it from; it is compared with the schedule's lr for that step.
The run goes through the public API (`feed_fast.engine.train` / `resume`, what `feed-fast train --set
train.compile=step` and `feed-fast train --resume` call), with `GenerationTrainer.train_step` wrapped to take
those copies.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_report import (
    choose_triton_mode,
    environment_record,
    help_texts,
    kernels_interpreted,
    now_utc,
    source_record,
)

tl = None  # triton.language: imported by launcher_check, once the Triton mode is fixed
LR_TOLERANCE = 1e-2  # relative: fp32 parameter differences read the lr to ~1e-4 at these sizes
CIFAR = {"student": "resnet56", "teacher": "resnet56", "teachers": 3, "batch": 128, "image_size": 32,
         "classes": 100, "kwargs": {}, "device": "cuda", "precision": "bf16", "channels_last": True}
SMOKE = {"student": "resnet8", "teacher": "resnet8", "teachers": 3, "batch": 8, "image_size": 16, "classes": 10,
         "kwargs": {"widths": [4, 8, 16]}, "device": "cpu", "precision": "fp32", "channels_last": False}


def say(part: str, text: str) -> None:
    print(f"[quick {part}] {text}", flush=True)


def write(record: dict, out: Path) -> None:
    """Replace `out` whole (a reader never sees half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    tmp.replace(out)


def base_record(part: str, smoke: bool) -> dict:
    return {"part": part, "smoke": smoke, "created_utc": now_utc(), "source": source_record(), "ok": None,
            "problems": []}


# --- (a) the machine, and whether Triton can build its launcher ------------------------------------------------
def _add_one(x_ptr, n):  # decorated with triton.jit at run time, once the Triton mode is fixed
    offsets = tl.program_id(0) * 1024 + tl.arange(0, 1024)
    mask = offsets < n
    tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) + 1, mask=mask)


def launcher_check(device) -> dict:
    """A C compiler and Python.h (Triton compiles its CUDA launcher with them on first use), then one trivial
    kernel launched and checked."""
    import torch

    global tl
    include = sysconfig.get_paths().get("include") or ""
    python_h = Path(include) / "Python.h"
    compiler = os.environ.get("CC") or next((shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c)),
                                            None)
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    record = {"c_compiler": compiler, "python_h": str(python_h), "python_h_found": python_h.is_file(),
              "interpreter": interpreted, "kernel_ok": False, "first_launch_s": None, "error": None}
    try:
        import triton
        import triton.language as tl

        kernel = triton.jit(_add_one)
        x = torch.arange(3000, dtype=torch.float32, device=device)
        begin = time.perf_counter()
        kernel[(triton.cdiv(x.numel(), 1024),)](x, x.numel())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        record["first_launch_s"] = round(time.perf_counter() - begin, 3)  # includes building the launcher
        record["kernel_ok"] = bool(torch.equal(x.cpu(), torch.arange(3000, dtype=torch.float32) + 1))
        if not record["kernel_ok"]:
            record["error"] = "the trivial kernel ran but wrote wrong values"
    except Exception as error:  # noqa: BLE001 -- the point is to say what broke
        record["error"] = f"{type(error).__name__}: {str(error).strip()[-1500:]}"
    hints = []
    if not interpreted and compiler is None:
        hints.append("no C compiler found: Triton builds its CUDA launcher with one (install gcc, or set CC)")
    if not interpreted and not record["python_h_found"]:
        hints.append(f"no Python.h at {python_h}: install this Python's headers (e.g. python3-dev)")
    record["hints"] = hints
    return record


def part_env(args) -> int:
    import torch

    record = {**base_record("a_env", args.smoke), **environment_record()}
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    gpus = record["nvidia_smi"].get("gpus") or [{}]
    versions = record["versions"]
    if device.type == "cuda":
        say("a", f"GPU {record['device']['name']}, capability {'.'.join(map(str, record['device']['capability']))}, "
                 f"{record['device']['multiprocessors']} SMs, {record['device']['memory_gib']} GiB, driver "
                 f"{gpus[0].get('driver_version', 'unknown (nvidia-smi: ' + str(record['nvidia_smi'].get('error')) + ')')}")
    else:
        say("a", f"no GPU in this run: {record['device']['name']} (smoke: {args.smoke})")
    say("a", f"python {versions['python']}, torch {versions['torch']}, triton {versions['triton']}, CUDA "
             f"{versions['cuda']}, cuDNN {versions.get('cudnn')}, TRITON_INTERPRET={record['settings']['TRITON_INTERPRET']}")
    record["triton_launcher"] = launcher = launcher_check(device)
    say("a", f"C compiler {launcher['c_compiler']}, Python.h {'found' if launcher['python_h_found'] else 'missing'} "
             f"({launcher['python_h']})")
    if launcher["kernel_ok"]:
        how = "in Triton's interpreter (no launcher built)" if launcher["interpreter"] else "compiled (launcher built)"
        say("a", f"trivial Triton kernel: ok, {how}, first launch {launcher['first_launch_s']} s")
    else:
        record["problems"].append(f"trivial Triton kernel failed: {launcher['error']}")
        say("a", f"trivial Triton kernel FAILED: {launcher['error']}")
    for hint in launcher["hints"]:
        say("a", f"hint: {hint}")
    if device.type != "cuda" and not args.smoke:
        record["problems"].append("no CUDA device")
    record["ok"] = not record["problems"]
    write(record, args.out)
    return 0 if record["ok"] else 1


# --- (d) the compiled step: capture, replay without syncs, resume, lr -----------------------------------------
def replay_state(step) -> tuple[bool, bool]:
    """(the step has a CUDA-graph replay, its graph is captured), read from the engine's compiled step; (False,
    False) when the engine does not expose them (its API changed: the lr check still holds)."""
    replay = getattr(getattr(step, "compiled", None), "graph", None)
    return replay is not None, replay is not None and getattr(replay, "graph", None) is not None


def static_lr_tensor(step):
    """The 0-d lr tensor the compiled step hands its update (StaticLR), or None where the engine has none."""
    tensors = getattr(getattr(getattr(step, "compiled", None), "lr", None), "tensors", None)
    return tensors[0] if tensors else None


class StepObserver:
    """Wraps GenerationTrainer.train_step: before and after each step, device copies of one parameter and its
    momentum buffer (read at the end, so nothing syncs inside a replay), the schedule's lr, the static lr
    tensor, CUDA events; replays run under torch.cuda.set_sync_debug_mode("error")."""

    def __init__(self, device) -> None:
        self.device, self.segment, self.rows = device, None, []

    @contextlib.contextmanager
    def watching(self):
        from feed_fast.engine.trainer import GenerationTrainer

        original = GenerationTrainer.train_step
        observer = self

        def train_step(trainer, images, labels):
            return observer.observe(trainer, original, images, labels)

        GenerationTrainer.train_step = train_step
        try:
            yield self
        finally:
            GenerationTrainer.train_step = original

    def observe(self, trainer, original, images, labels):
        import torch
        from warmup import compile_count

        step = trainer.step
        group = step.optimizer.param_groups[0]
        param = group["params"][0]
        has_graph, captured = replay_state(step)
        row = {"segment": self.segment, "index": len([r for r in self.rows if r["segment"] == self.segment]),
               "lr_scheduled": float(group["lr"]), "replay": captured, "has_graph": has_graph,
               "sync_checked": False, "before": param.detach().clone()}
        cuda = self.device.type == "cuda"
        if cuda:
            row["events"] = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            row["events"][0].record()
        else:
            row["t0"] = time.perf_counter()
        compiles = compile_count()
        guard = cuda and captured
        if guard:
            torch.cuda.set_sync_debug_mode("error")
        try:
            losses = original(trainer, images, labels)
        finally:
            if guard:
                torch.cuda.set_sync_debug_mode("default")
        row["sync_checked"] = guard
        if cuda:
            row["events"][1].record()
        else:
            row["wall_ms"] = (time.perf_counter() - row.pop("t0")) * 1e3
        row["compiles"] = compile_count() - compiles
        row["after"] = param.detach().clone()
        buffer = step.optimizer.state.get(param, {}).get("momentum_buffer")
        row["momentum"] = buffer.detach().clone() if buffer is not None else None
        lr_tensor = static_lr_tensor(step)
        row["lr_tensor"] = lr_tensor.detach().clone() if lr_tensor is not None else None
        self.rows.append(row)
        return losses

    def table(self) -> list[dict]:
        """The rows read back on the host (one sync per value, after the run)."""
        out = []
        for row in self.rows:
            momentum = row["momentum"]
            effective = None
            if momentum is not None:
                m = momentum.double().flatten()
                delta = (row["before"] - row["after"]).double().flatten()
                norm = float(m @ m)
                effective = float(delta @ m) / norm if norm > 0 else None
            if "events" in row:
                wall_ms = row["events"][0].elapsed_time(row["events"][1])
            else:
                wall_ms = row["wall_ms"]
            out.append({"segment": row["segment"], "index": row["index"], "replay": row["replay"],
                        "has_graph": row["has_graph"], "sync_checked": row["sync_checked"],
                        "compiles": row["compiles"], "lr_scheduled": row["lr_scheduled"], "lr_effective": effective,
                        "lr_tensor": float(row["lr_tensor"]) if row["lr_tensor"] is not None else None,
                        "ms": wall_ms})
        return out


def relative_error(value, reference) -> float | None:
    return None if value is None else abs(value - reference) / abs(reference)


def step_checks(rows: list[dict], cuda: bool) -> tuple[dict, list[str]]:
    problems = []
    segments = {name: [r for r in rows if r["segment"] == name] for name in ("first", "resumed")}
    checks = {}
    for name, seg in segments.items():
        if not seg:
            problems.append(f"the {name} segment ran no step")
            continue
        errors = [relative_error(r["lr_effective"], r["lr_scheduled"]) for r in seg]
        bad = [r["index"] for r, e in zip(seg, errors) if e is None or e > LR_TOLERANCE]
        replays = [r for r in seg if r["replay"]]
        checks[name] = {"steps": len(seg), "replays": len(replays),
                        "replays_under_sync_error_mode": sum(r["sync_checked"] for r in seg),
                        "compiles_during_replays": sum(r["compiles"] for r in replays),
                        "lr_max_rel_error": max((e for e in errors if e is not None), default=None),
                        "steps_off_schedule": bad}
        if bad:
            problems.append(f"{name}: the lr steps {bad} applied is not the schedule's (tolerance {LR_TOLERANCE})")
        tensors = [relative_error(r["lr_tensor"], r["lr_scheduled"]) for r in seg if r["lr_tensor"] is not None]
        checks[name]["lr_tensor_max_rel_error"] = max(tensors, default=None)
        if tensors and max(tensors) > LR_TOLERANCE:
            problems.append(f"{name}: the static lr tensor does not hold the schedule's lr")
        # without a graph (the CPU) every step runs the compiled units: after the first, nothing may compile
        recompiled = [r["index"] for r in seg if r["index"] >= 1 and r["compiles"]] if not cuda else []
        if recompiled:
            problems.append(f"{name}: Dynamo compiled again on steps {recompiled} (a value the units guard on "
                            "changes every step, e.g. an lr read as a Python float)")
        if cuda:
            if len(replays) < 2:
                problems.append(f"{name}: {len(replays)} graph replays (the graph was not captured, or too few steps)")
            if checks[name]["compiles_during_replays"]:
                problems.append(f"{name}: Dynamo compiled during graph replays")
    if segments["first"] and segments["resumed"]:
        lrs = [r["lr_scheduled"] for r in rows]
        moved = max(lrs) / min(lrs) if min(lrs) > 0 else None
        checks["lr_moved_ratio"] = moved
        checks["resume_continues_schedule"] = segments["resumed"][0]["lr_scheduled"] < segments["first"][-1][
            "lr_scheduled"]
        if moved is None or moved < 1.05:
            problems.append("the schedule's lr did not move over the run: nothing to check against")
        if not checks["resume_continues_schedule"]:
            problems.append("after the resume the schedule started over instead of going on")
    return checks, problems


def step_config(preset: dict, teacher_file: Path, steps_per_epoch: int) -> dict:
    return {
        "model": {"name": preset["student"], "kwargs": preset["kwargs"]},
        "teachers": [{"name": preset["teacher"], "checkpoint": str(teacher_file), "kwargs": preset["kwargs"]}]
        * preset["teachers"],
        "method": {"name": "pfeed", "backend": "auto"},
        "data": {"dataset": "synthetic", "root": "", "num_classes": preset["classes"], "batch_size": preset["batch"],
                 "eval_batch_size": preset["batch"], "image_size": preset["image_size"]},
        # cosine over 3 epochs, 2 of them run: the lr moves every step and stays large enough to read
        "schedule": {"name": "cosine", "epochs": 3, "milestones": []},
        "train": {"device": preset["device"], "precision": preset["precision"],
                  "channels_last": preset["channels_last"], "compile": "step", "progress": "none",
                  "log_every": 10**6, "max_steps_per_epoch": steps_per_epoch},
    }


def part_step_resume(args) -> int:
    import torch

    from feed_fast.engine import resume, train
    from feed_fast.engine.checkpoint import student_export
    from feed_fast.models import build_model
    from feed_fast.runtime.device import compile_backend

    preset = SMOKE if args.smoke else CIFAR
    if preset["device"] == "cuda" and not torch.cuda.is_available():
        print("gpu_quick step-resume: no CUDA device; use --smoke for the CPU twin", file=sys.stderr)
        return 2
    device = torch.device(preset["device"])
    # a GPU epoch: 3 warm-up steps, the capture (replayed at once), then replays; the CPU has no graph to capture
    steps_per_epoch = 3 if args.smoke else 8
    record = {**base_record("d_step_resume", args.smoke), "device": preset["device"],
              "setting": {**{k: preset[k] for k in ("student", "teacher", "teachers", "batch", "image_size",
                                                     "classes", "precision", "channels_last")},
                          "model_kwargs": preset["kwargs"], "train_compile": "step", "feed_backend": "auto",
                          "compile_backend": "aot_eager" if args.smoke else "inductor",
                          "schedule": "cosine, 3 epochs (2 run)", "steps_per_epoch": steps_per_epoch,
                          "lr_tolerance": LR_TOLERANCE, "synthetic_data": True, "random_teacher_weights": True},
              "segments": {}, "steps": []}
    observer = StepObserver(device)
    backend = compile_backend("aot_eager") if args.smoke else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="feed_fast_quick_") as scratch, observer.watching(), backend:
        torch.manual_seed(1)
        teacher = build_model(preset["teacher"], preset["classes"], **preset["kwargs"])
        teacher_file = Path(scratch) / "teacher.pt"
        torch.save(student_export(preset["teacher"], preset["classes"], preset["kwargs"], teacher), teacher_file)
        raw = step_config(preset, teacher_file, steps_per_epoch)
        run_dir = Path(scratch) / "run"
        for segment in ("first", "resumed"):
            observer.segment = segment
            begin = time.perf_counter()
            say("d", f"{segment}: {'train, 1 epoch' if segment == 'first' else 'resume from last.pt, 1 epoch'} "
                     f"of {steps_per_epoch} steps, train.compile=step ({preset['student']}, {preset['teachers']} "
                     f"{preset['teacher']} teachers, B={preset['batch']}, {preset['precision']})")
            try:
                summary = train(raw, run_dir, max_epochs=1) if segment == "first" else resume(run_dir, max_epochs=1)
            except Exception as error:  # noqa: BLE001 -- recorded, with what ran before it
                record["problems"].append(f"{segment}: {type(error).__name__}: {error}")
                record["traceback"] = traceback.format_exc()[-4000:]
                say("d", f"{segment} FAILED: {type(error).__name__}: {error}")
                break
            finally:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                record["steps"] = observer.table()
                record["segments"][segment] = {"seconds": round(time.perf_counter() - begin, 1)}
                write(record, args.out)
            record["segments"][segment].update(stopped_by=summary.get("stopped_by"),
                                               last_pt=(run_dir / "last.pt").is_file())
            rows = [r for r in record["steps"] if r["segment"] == segment]
            say("d", f"{segment}: {len(rows)} steps in {record['segments'][segment]['seconds']} s; lr scheduled "
                     f"{rows[0]['lr_scheduled']:.5f} -> {rows[-1]['lr_scheduled']:.5f}" if rows else
                     f"{segment}: no step ran")
    checks, problems = step_checks(record["steps"], device.type == "cuda")
    record["checks"] = checks
    record["problems"] += problems
    replays = [r["ms"] for r in record["steps"] if r["replay"] and not r["compiles"]]
    # warm replays only (captured before the call, nothing compiled during it): compilation is never in them
    record["replay_step"] = ({"median_ms": statistics.median(replays), "steps": len(replays),
                              "images_per_sec": preset["batch"] / statistics.median(replays) * 1e3}
                             if replays else None)
    record["ok"] = not record["problems"]
    write(record, args.out)
    for row in record["steps"]:
        say("d", f"  {row['segment']:7s} step {row['index']}: lr scheduled {row['lr_scheduled']:.6f}, applied "
                 f"{'-' if row['lr_effective'] is None else format(row['lr_effective'], '.6f')}"
                 f"{', replay' if row['replay'] else ''}{', sync-checked' if row['sync_checked'] else ''}"
                 f"{', compiled ' + str(row['compiles']) + ' graphs' if row['compiles'] else ''}")
    if record["replay_step"]:
        say("d", f"replayed CIFAR step: {record['replay_step']['median_ms']:.3f} ms median of "
                 f"{record['replay_step']['steps']}, {record['replay_step']['images_per_sec']:.0f} images/s"
                 f"{' (smoke)' if args.smoke else ''}")
    for problem in record["problems"]:
        say("d", f"PROBLEM: {problem}")
    say("d", "ok" if record["ok"] else "FAILED")
    return 0 if record["ok"] else 1


# --- (e) one ImageNet-shape pFEED step --------------------------------------------------------------------------
def part_imagenet_step(args) -> int:
    import itertools

    import torch
    from bench_step import BATCH_SETS, PRESETS, build_step, run_config
    from feed_loss_probes import count_triton_launches
    from warmup import time_without_compiles, warm_up

    from feed_fast.engine.data import build_loaders
    from feed_fast.runtime import open_runtime

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_quick imagenet-step: no CUDA device; use --smoke for the CPU twin", file=sys.stderr)
        return 2
    preset = dict(PRESETS["smoke" if args.smoke else "imagenet"])
    settings = argparse.Namespace(backend="hybrid", device="cpu" if args.smoke else "cuda",
                                  precision="fp32" if args.smoke else "bf16", channels_last=not args.smoke)
    iters, min_warmup, max_warmup = (2, 1, 5) if args.smoke else (10, 3, 20)
    record = {**base_record("e_imagenet_step", args.smoke),
              "setting": {"student": preset["student"], "teacher": preset["teacher"], "teachers": preset["teachers"],
                          "batch": preset["batch"], "image_size": preset["image_size"], "classes": preset["classes"],
                          "model_kwargs": preset["kwargs"], "precision": settings.precision,
                          "channels_last": settings.channels_last, "feed_backend": "hybrid", "train_compile": False,
                          "iters": iters, "min_warmup": min_warmup, "max_warmup": max_warmup,
                          "synthetic_data": True, "random_weights": True},
              "warmup": None, "median_ms": None, "images_per_sec": None}
    cfg = run_config(preset, "pfeed", settings, False)
    say("e", f"pFEED step: {preset['student']} from {preset['teachers']} {preset['teacher']} teachers, "
             f"B={preset['batch']}, {preset['image_size']} px, {settings.precision}, "
             f"{'channels-last' if settings.channels_last else 'NCHW'}, hybrid FEED op, eager step")
    try:
        with open_runtime(cfg.train, handle_signals=False) as runtime:
            loaders = build_loaders(cfg, runtime)
            batches = list(itertools.islice(loaders.train.iter_from(0, 0), BATCH_SETS))
            step = build_step(cfg, runtime, preset)
            device = runtime.device

            def call(i):
                step(*batches[i % BATCH_SETS])

            def synchronize():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            def warm(start):
                result = warm_up(call, min_steps=min_warmup, max_steps=max_warmup, start=start)
                synchronize()
                return result

            def timed(start):
                times = []
                for i in range(start, start + iters):
                    begin = time.perf_counter()
                    call(i)
                    synchronize()
                    times.append((time.perf_counter() - begin) * 1e3)
                return times

            with count_triton_launches() as launches:
                record["warmup"] = warm(0)
            record["triton_launches_in_warmup"] = sum(launches.values())
            record["triton_interpreter"] = bool(record["triton_launches_in_warmup"]) and kernels_interpreted()
            write(record, args.out)
            say("e", f"warm-up: {record['warmup']['warmup_steps']} steps, {record['warmup']['compiles_in_warmup']} "
                     "Dynamo compiles")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times, timing = time_without_compiles(timed, warm)
            record["timing"] = timing
            if times is not None:
                record["times_ms"] = times
                record["median_ms"] = statistics.median(times)
                record["images_per_sec"] = preset["batch"] / record["median_ms"] * 1e3
            else:
                record["problems"].append("Dynamo compiled during every timing: no time reported")
            if device.type == "cuda":
                record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    except Exception as error:  # noqa: BLE001
        record["problems"].append(f"{type(error).__name__}: {error}")
        record["traceback"] = traceback.format_exc()[-4000:]
    record["ok"] = not record["problems"]
    write(record, args.out)
    if record["median_ms"] is not None:
        label = " [triton-interpreter]" if record.get("triton_interpreter") else ""
        say("e", f"{record['median_ms']:.2f} ms median of {iters} steps, {record['images_per_sec']:.0f} images/s"
                 f"{label}{' (smoke: tiny models on the CPU)' if args.smoke else ''}")
    for problem in record["problems"]:
        say("e", f"PROBLEM: {problem}")
    say("e", "ok" if record["ok"] else "FAILED")
    return 0 if record["ok"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(**help_texts(__doc__))
    parser.add_argument("part", choices=("env", "step-resume", "imagenet-step"))
    parser.add_argument("--smoke", action="store_true", help="the CPU twin: tiny models, fp32, Triton interpreter")
    parser.add_argument("--out", type=Path, required=True, help="the part's JSON file")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    choose_triton_mode()
    parts = {"env": part_env, "step-resume": part_step_resume, "imagenet-step": part_imagenet_step}
    return parts[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
