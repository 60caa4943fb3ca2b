"""Times the pFEED training step against its floor, the engine's own parts alone, in each step mode (eager, and
the compiled step, `train.compile: step`, replayed as a CUDA graph on a GPU), in one run.

The parts:
    (a) student_step         the student's training step (method baseline: forward, CE, backward, update)
    (b) teachers_forward     the K teachers' forward (on their streams on a GPU), waited for
    (d) translators          the K translators' forward + backward as pFEED runs them (grouped bodies + the
                             FEED loss with its heads), from a student map and the teachers' maps
    (c) pfeed_step           the whole pFEED step

It reports the ratios c / (a + b + d) in time, in dispatched ops (host-issued operator calls and compiled kernels,
torch.profiler; see step_profile.py) and in host CPU time. In the compiled mode each part is compiled the same
way (and on a GPU replayed from a CUDA graph), so the floor is what the same machinery does with the parts
alone. Synthetic data, random weights (speed does not depend on them). Speed is reported, never asserted.

    python benchmarks/bench_step.py --preset cifar       # GPU: ResNet-56 + 3 ResNet-56 teachers, B=128, 32 px
    python benchmarks/bench_step.py --preset imagenet    # GPU: ResNet-18 + 3 ResNet-34 teachers, B=256, 224 px
    python benchmarks/bench_step.py --preset smoke       # tiny models, both modes (the CPU figures)
    python benchmarks/bench_step.py --smoke              # plumbing check: tiny models, eager only, few steps

Every timed figure excludes compilation: each part is warmed up (at least --warmup calls) until Dynamo compiles
nothing more and, in the compiled mode on a GPU, the step's CUDA graph is captured; the calls that took are
recorded (`warmup_steps`), and a timing during which something compiled is redone (`retimed`) or, failing that,
left out (null). Times are medians (`ms` keeps the mean). Without a GPU the Triton kernels run in Triton's
interpreter (--backend triton or hybrid): such a mode is labelled `triton_interpreter: true` and
`[triton-interpreter]` in the table, and its times are the interpreter's, not a GPU's.

GPU runs of a named preset write benchmarks/results/step_<preset>_<gpu>.json; others (smoke, CPU) write
benchmarks/results/local/ (ignored by git), or --out.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_report import (
    INTERPRETER_LABEL,
    LOCAL_RESULTS_DIR,
    RESULTS_DIR,
    choose_triton_mode,
    help_texts,
    kernels_interpreted,
    slug,
    source_record,
)

choose_triton_mode()  # without a GPU the kernels (--backend triton/hybrid) run in Triton's interpreter

from feed_loss_probes import count_triton_launches
from step_profile import inductor_kernel_profiling, profile_steps
from warmup import time_without_compiles, warm_up

from feed_fast.config import RunConfig
from feed_fast.engine.data import build_loaders
from feed_fast.engine.step import TrainStep
from feed_fast.environment import environment
from feed_fast.methods import build_method
from feed_fast.models import build_model
from feed_fast.runtime import DEVICES, PRECISIONS, open_runtime, resolve_device
from feed_fast.runtime.timing import SECTIONS

BEFORE = RESULTS_DIR / "step_ops_before_issue11_cpu.json"  # dispatched ops per step measured before issue #11
PRESETS = {  # student, teacher, K, batch, image size, classes, model kwargs
    "imagenet": {"student": "resnet18", "teacher": "resnet34", "teachers": 3, "batch": 256, "image_size": 224,
                 "classes": 1000, "kwargs": {}},
    "cifar": {"student": "resnet56", "teacher": "resnet56", "teachers": 3, "batch": 128, "image_size": 32,
              "classes": 100, "kwargs": {}},
    "smoke": {"student": "resnet8", "teacher": "resnet8", "teachers": 3, "batch": 8, "image_size": 16,
              "classes": 10, "kwargs": {"widths": [4, 8, 16]}},
}
MODES = {"eager": False, "step": "step"}  # -> train.compile
PARTS = ("student_step", "teachers_forward", "translators", "pfeed_step")
BATCH_SETS = 4  # batches cycled through (a GPU ImageNet batch is 150 MB: not one per step)


def run_config(preset: dict, method: str, args, compile_setting) -> RunConfig:
    # teachers are built here with random weights (speed does not depend on them): the entries only name them
    teachers = [{"name": preset["teacher"], "checkpoint": "<random init>", "kwargs": preset["kwargs"]}] * (
        preset["teachers"] if method != "baseline" else 0)
    return RunConfig.from_dict({
        "model": {"name": preset["student"], "kwargs": preset["kwargs"]},
        "teachers": teachers,
        "method": {"name": method, "backend": args.backend},
        "data": {"dataset": "synthetic", "root": "", "num_classes": preset["classes"], "batch_size": preset["batch"],
                 "image_size": preset["image_size"]},
        "schedule": {"name": "constant", "epochs": 1, "milestones": []},
        "train": {"device": args.device, "precision": args.precision, "channels_last": args.channels_last,
                  "compile": compile_setting, "progress": "none", "log_every": 10**9},
    }, check_paths=False)


def build_step(cfg: RunConfig, runtime, preset: dict) -> TrainStep:
    torch.manual_seed(0)
    teachers = [build_model(t.name, preset["classes"], **t.kwargs) for t in cfg.teachers]
    step = TrainStep.from_config(cfg, runtime, build_method(cfg.method), teachers, num_classes=preset["classes"],
                                 image_size=preset["image_size"], steps_per_epoch=10**6, seed=cfg.train.seed)
    step.distiller.train()
    return step


class Graphed:
    """`fn(*inputs)` captured in a CUDA graph after warm-up calls on a side stream (the part-alone twin of the
    compiled step's replay); every call copies its inputs into the static ones and replays."""

    def __init__(self, fn: Callable, inputs: list[torch.Tensor], warmup: int = 3) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.static = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            fn(*self.static, capturing=True)

    def __call__(self, *inputs) -> None:
        with torch.no_grad():
            for static, x in zip(self.static, inputs):
                static.copy_(x)
        self.graph.replay()


def teachers_part(step: TrainStep) -> Callable:
    """(b): the pFEED step's own teacher runner (compiled inference calls in the step mode), waited for."""
    precision, compiled = step.runtime.precision, step.mode == "step"

    def run(images, capturing=False):
        with precision.autocast(cache_enabled=not compiled):  # as the compiled step runs them
            step.teachers.launch(images).wait()

    return run


def translators_part(step: TrainStep, compiled: bool) -> Callable:
    """(d): the pFEED distiller's FEEDLoss (grouped translator bodies, heads in the FEED op) forward + backward
    from a student map (a leaf that requires grad) and the teachers' maps, its gradients set to None first as
    a step does."""
    feed, precision = step.distiller.feed, step.runtime.precision
    params = list(feed.parameters())

    def loss(student_feature, teacher_maps):
        return feed(student_feature, teacher_maps).total

    if compiled:
        loss = torch.compile(loss, fullgraph=True)

    def run(student_feature, *teacher_maps, capturing=False):
        for p in (*params, student_feature):  # (in a capture too: the captured backward then writes, not adds)
            p.grad = None
        with precision.autocast(cache_enabled=not compiled):  # as the compiled step runs them
            total = loss(student_feature, list(teacher_maps))
        total.backward()

    return run


def probe_inputs(step: TrainStep, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A student feature map and the teachers' maps, as the pFEED step would hand them to the translators."""
    with torch.no_grad(), step.runtime.precision.autocast():
        feature = step.student.extract_features(images)
        maps = step.teachers.launch(images).wait().features
    return feature.detach().clone(), maps


def measure(fn: Callable[[int], object], args, device: torch.device,
            steady: Callable[[], bool] = lambda: True) -> dict:
    """Warm-up calls until nothing compiles any more (at least `warmup`; see warmup.py), then `iters` timed ones
    (wall time per call, synchronized on a GPU; redone if something compiled meanwhile), then the profiler over
    `profile_steps` more. Times never include a compile: when every try compiled, they are None."""
    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def warm(start: int) -> dict:
        record = warm_up(fn, min_steps=args.warmup, max_steps=args.max_warmup, steady=steady, start=start)
        synchronize()
        return record

    def timed(start: int) -> list[float]:
        times = []
        for i in range(start, start + args.iters):
            begin = time.perf_counter()
            fn(i)
            synchronize()
            times.append((time.perf_counter() - begin) * 1e3)
        return times

    warmed = warm(0)
    times, timing = time_without_compiles(timed, warm)
    result = {**warmed, **timing, "timing_excludes_compilation": times is not None}
    if times is None:
        result.update(ms=None, median_ms=None, p20_ms=None, p80_ms=None)
    else:
        times.sort()
        result.update(ms=sum(times) / len(times), median_ms=times[len(times) // 2],
                      p20_ms=times[int(0.2 * (len(times) - 1))], p80_ms=times[int(0.8 * (len(times) - 1))])
    if args.profile_steps:
        profiled = profile_steps(fn, args.profile_steps, device)
        result.update({k: profiled[k] for k in ("dispatched_ops", "host_cpu_ms", "dispatched_by_op")})
        if "cuda_launches" in profiled:
            result["cuda_launches"] = profiled["cuda_launches"]
    return result


def graph_captured(step: TrainStep) -> Callable[[], bool]:
    """steady() for warm_up: True once the compiled step's CUDA graph is captured (always, when it has none)."""
    def steady() -> bool:
        replay = getattr(getattr(step, "compiled", None), "graph", None)
        return replay is None or getattr(replay, "graph", None) is not None

    return steady


def measure_mode(mode: str, preset: dict, args, device: torch.device) -> dict:
    """The four parts in one step mode."""
    compile_setting, compiled = MODES[mode], mode == "step"
    graph = compiled and device.type == "cuda"
    pfeed_cfg = run_config(preset, "pfeed", args, compile_setting)
    with open_runtime(pfeed_cfg.train, handle_signals=False) as runtime, (
            inductor_kernel_profiling() if compiled else contextlib.nullcontext()):
        loaders = build_loaders(pfeed_cfg, runtime)
        batches = list(itertools.islice(loaders.train.iter_from(0, 0), BATCH_SETS))
        baseline = build_step(run_config(preset, "baseline", args, compile_setting), runtime, preset)
        pfeed = build_step(pfeed_cfg, runtime, preset)
        feature, maps = probe_inputs(pfeed, batches[0][0])
        feature.requires_grad_(True)
        teachers = teachers_part(pfeed)
        translators = translators_part(pfeed, compiled)
        if graph:
            teachers = Graphed(teachers, [batches[0][0]])
            translators = Graphed(translators, [feature, *maps])
        calls = {
            "student_step": lambda i: baseline(*batches[i % BATCH_SETS]),
            "teachers_forward": lambda i: teachers(batches[i % BATCH_SETS][0]),
            "translators": lambda i: translators(feature, *maps),
            "pfeed_step": lambda i: pfeed(*batches[i % BATCH_SETS]),
        }
        steady = {"student_step": graph_captured(baseline), "pfeed_step": graph_captured(pfeed)}
        parts = {}
        for name in PARTS:
            started = time.perf_counter()
            parts[name] = measure(calls[name], args, device, steady.get(name, lambda: True))
            median = parts[name]["median_ms"]
            parts[name]["images_per_sec"] = preset["batch"] / median * 1e3 if median else None
            print(f"[{mode}] {name}: {fmt(median, '.2f')} ms median ({time.perf_counter() - started:.0f} s with "
                  "warm-up and compilation)", file=sys.stderr, flush=True)
        # one more pFEED step with Triton's launches counted: does this mode run our kernels (and where)?
        with count_triton_launches() as launches:
            calls["pfeed_step"](0)
        triton_launches = sum(launches.values())
        for name, step in (("student_step", baseline), ("pfeed_step", pfeed)):
            step.timer.reset()  # the sections of the profiled steps only are not wanted: measure a few clean ones
            for i in range(max(args.iters, 1)):
                step(*batches[i % BATCH_SETS])
            parts[name]["sections_ms"] = step.timer.collect()
        return {
            "mode": mode,
            "train_compile": compile_setting,
            "cuda_graph": graph,
            "precision": runtime.precision.name,
            "channels_last": runtime.channels_last,
            "optimizer_impl": "fused" if pfeed.optimizer.defaults.get("fused") else
            ("foreach" if pfeed.optimizer.defaults.get("foreach") else "default"),
            "feed_backend": pfeed_cfg.method.backend,
            "triton_launches_per_pfeed_step": triton_launches,
            # the times of a mode whose step launched Triton kernels in the interpreter are the interpreter's
            "triton_interpreter": bool(triton_launches) and kernels_interpreted(),
            "translator_bodies": len(pfeed.distiller.feed.translators.bodies),
            "parts": parts,
            "floor": floor_ratios(parts),
        }


def ratio(numerator, denominator):
    return None if numerator is None or not denominator else numerator / denominator


def floor_ratios(parts: dict) -> dict:
    """c / (a + b + d) for each figure the four parts share."""
    out = {}
    for key, label in (("median_ms", "time"), ("dispatched_ops", "dispatched_ops"), ("host_cpu_ms", "host_cpu"),
                       ("cuda_launches", "cuda_launches")):
        if all(parts[p].get(key) is not None for p in PARTS):
            floor = sum(parts[p][key] for p in ("student_step", "teachers_forward", "translators"))
            out[label] = ratio(parts["pfeed_step"][key], floor)
    return out


def before_issue_11(name: str, preset: dict, args, device: torch.device) -> dict | None:
    """Today's dispatched ops next to those measured before issue #11, where the setting is the same."""
    if not BEFORE.exists() or device.type != "cpu" or name != "smoke" or preset["teachers"] != 3 \
            or preset["batch"] != 8 or args.precision not in ("auto", "fp32"):
        return None
    before = json.loads(BEFORE.read_text())
    key = next((k for k in before["dispatched_ops_per_step"] if k.startswith(f"feed backend {args.backend} ")), None)
    return None if key is None else {"commit": before["commit"], "feed_backend": key,
                                     **before["dispatched_ops_per_step"][key]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(**help_texts(__doc__))
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: imagenet on a GPU, smoke on the CPU")
    parser.add_argument("--smoke", action="store_true", help="plumbing check: the smoke preset, eager only")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), help="default: eager step (--smoke: eager)")
    parser.add_argument("--teachers", type=int, help="number of teachers (default: the preset's)")
    parser.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="least untimed calls per part; more until nothing compiles (default 10 GPU, 3 CPU)")
    parser.add_argument("--max-warmup", type=int, default=None,
                        help="most untimed calls per part while something still compiles (default 60 GPU, 20 CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed calls per part (default 50 GPU, 5 CPU)")
    parser.add_argument("--profile-steps", type=int, default=None, help="profiled calls per part (default 3)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--channels-last", default="auto", type=lambda v: v if v == "auto" else v == "true",
                        help="auto | true | false")
    parser.add_argument("--backend", default="auto", help="FEED loss backend (auto | torch | triton | hybrid)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    name = "smoke" if args.smoke else (args.preset or ("imagenet" if gpu else "smoke"))
    preset = dict(PRESETS[name])
    preset["teachers"] = args.teachers or preset["teachers"]
    preset["batch"] = args.batch or preset["batch"]
    modes = args.modes or (["eager"] if args.smoke else list(MODES))
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 3)
    args.max_warmup = max(args.warmup, args.max_warmup if args.max_warmup is not None else (60 if gpu else 20))
    args.iters = max(1, args.iters if args.iters is not None else (50 if gpu else 5))
    args.profile_steps = args.profile_steps if args.profile_steps is not None else 3
    if not gpu and name != "smoke":
        print(f"note: preset {name} on the CPU runs the GPU shapes at CPU speed (minutes per part); "
              "--preset smoke gives the CPU figures", file=sys.stderr, flush=True)
    results = {mode: measure_mode(mode, preset, args, device) for mode in modes}
    report = {
        "benchmark": "train step against its floor",
        **environment(device),
        "commit": source_record()["commit"],
        "preset": name,
        "setting": {"student": preset["student"], "teacher": preset["teacher"], "teachers": preset["teachers"],
                    "batch": preset["batch"], "image_shape": [3, preset["image_size"], preset["image_size"]],
                    "model_kwargs": preset["kwargs"], "input_dtype": "float32", "num_classes": preset["classes"],
                    "warmup": args.warmup, "max_warmup": args.max_warmup, "iters": args.iters,
                    "profile_steps": args.profile_steps,
                    "modes": modes, "parts": list(PARTS), "sections": list(SECTIONS)},
        "results": results,
        "step_over_eager_images_per_sec": ratio(
            results.get("step", {}).get("parts", {}).get("pfeed_step", {}).get("images_per_sec"),
            results.get("eager", {}).get("parts", {}).get("pfeed_step", {}).get("images_per_sec")),
        "before_issue_11": before_issue_11(name, preset, args, device),
        "triton_interpreter": any(r["triton_interpreter"] for r in results.values()),
        "notes": ("median_ms: median wall time per call (synchronized on a GPU), p20_ms/p80_ms its spread, ms the "
                  "mean; images_per_sec from the median; every timed call comes after a warm-up that compiled "
                  "nothing in its last calls (warmup_steps; compiles_in_warmup), and a timing with a compile in "
                  "it is redone (retimed) or left out (null); "
                  "dispatched_ops and host_cpu_ms: torch.profiler over profile_steps calls (host_cpu_ms includes "
                  "the profiler's own cost); floor: pfeed_step / (student_step + teachers_forward + translators), "
                  "time from the medians; pfeed_step also updates the translators' parameters, which no part "
                  "does (same launches with foreach/fused SGD, a little more work); on a GPU the teachers overlap "
                  "the student, so the time ratio can fall below 1"),
    }
    out = args.out
    if out is None:
        out = (RESULTS_DIR / f"step_{name}_{slug(report['device']['name'])}.json" if gpu and not args.smoke else
               LOCAL_RESULTS_DIR / f"step_{name}_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print_report(report)
    print(f"wrote {out}")
    return 0


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(report: dict) -> None:
    for mode, result in report["results"].items():
        label = f" [{INTERPRETER_LABEL}]" if result["triton_interpreter"] else ""
        print(f"[{mode}]{label} {report['preset']} K={report['setting']['teachers']} B={report['setting']['batch']} "
              f"{result['precision']}{' cuda-graph' if result['cuda_graph'] else ''} "
              f"(median of {report['setting']['iters']} calls after warm-up)")
        for name, part in result["parts"].items():
            ops = part.get("dispatched_ops")
            timing = (f"{fmt(part['median_ms'], '9.3f')} ms  {fmt(part['images_per_sec'], '9.0f')} img/s"
                      if part["timing_excludes_compilation"] else f"{'-':>9} ms  (compiled while timed: left out)")
            print(f"  {name:17s} {timing}"
                  + (f"  {ops:7.1f} ops  {part['host_cpu_ms']:8.3f} host ms" if ops is not None else "")
                  + f"  warm-up {part['warmup_steps']} calls ({part['compiles_in_warmup']} compiles)")
        floor = " ".join(f"{k} {v:.3f}" for k, v in result["floor"].items() if v is not None)
        print(f"  c/(a+b+d): {floor}")
    if report["step_over_eager_images_per_sec"] is not None:
        print(f"compiled step / eager pFEED step, images/s (medians, compilation excluded): "
              f"{report['step_over_eager_images_per_sec']:.2f}x")
    before = report["before_issue_11"]
    if before is not None and "eager" in report["results"]:
        now = report["results"]["eager"]["parts"]["pfeed_step"].get("dispatched_ops")
        print(f"dispatched ops per pFEED step (eager): {now} now, {before['pfeed']} before issue #11")
    if report["triton_interpreter"]:
        print(f"note: modes marked [{INTERPRETER_LABEL}] ran the Triton kernels in Triton's interpreter: "
              "their times are the interpreter's, not a GPU's")


if __name__ == "__main__":
    sys.exit(main())
