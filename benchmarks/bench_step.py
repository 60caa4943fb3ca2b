"""Step-time breakdown of a training step (data wait, teachers, student forward, loss, backward, optimizer)
for the student alone (baseline) and for pFEED with K teachers, through the engine's own step; reports the
pFEED overhead over the student alone. CUDA events on a GPU, timers on the CPU. Synthetic data, random
weights (speed does not depend on them). Speed is reported, never asserted.

    python benchmarks/bench_step.py                      # GPU: ResNet-18 + 3 ResNet-34 teachers, batch 256, 224 px
    python benchmarks/bench_step.py --preset cifar       # ResNet-56 + 3 ResNet-56, batch 128, 32 px
    python benchmarks/bench_step.py --smoke              # tiny models, a few steps (the default on the CPU)

GPU full runs write benchmarks/results/step_<preset>_<gpu>.json; others a temp file (or --out).
On a GPU the teachers run on their own streams, so sections overlap: `step_ms` is the wall time per step,
and the sections add up to more than it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from feed_fast.config import RunConfig
from feed_fast.engine.data import build_loaders
from feed_fast.engine.step import TrainStep
from feed_fast.environment import environment
from feed_fast.methods import METHODS, build_method
from feed_fast.models import build_model
from feed_fast.runtime import DEVICES, PRECISIONS, open_runtime, resolve_device
from feed_fast.runtime.timing import SECTIONS

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PRESETS = {  # student, teacher, K, batch, image size, classes, model kwargs
    "imagenet": {"student": "resnet18", "teacher": "resnet34", "teachers": 3, "batch": 256, "image_size": 224,
                 "classes": 1000, "kwargs": {}},
    "cifar": {"student": "resnet56", "teacher": "resnet56", "teachers": 3, "batch": 128, "image_size": 32,
              "classes": 100, "kwargs": {}},
    "smoke": {"student": "resnet8", "teacher": "resnet8", "teachers": 3, "batch": 8, "image_size": 16,
              "classes": 10, "kwargs": {"widths": [4, 8, 16]}},
}


def run_config(preset: dict, method: str, args) -> RunConfig:
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
                  "compile": args.compile, "progress": "none", "log_every": 10**9},
    }, check_paths=False)


def endless(loader):
    epoch = 0
    while True:
        yield from loader.iter_from(epoch, 0)
        epoch += 1


def measure(method: str, preset: dict, args) -> dict:
    """The engine's own step (TrainStep, as the trainer assembles it), `warmup` untimed then `iters` timed steps."""
    cfg = run_config(preset, method, args)
    with open_runtime(cfg.train, handle_signals=False) as runtime:
        loaders = build_loaders(cfg, runtime)
        torch.manual_seed(0)
        teachers = [build_model(t.name, preset["classes"], **t.kwargs) for t in cfg.teachers]
        step = TrainStep.from_config(cfg, runtime, build_method(cfg.method), teachers,
                                     num_classes=loaders.train.num_classes, image_size=loaders.train.image_size,
                                     steps_per_epoch=len(loaders.train), seed=cfg.train.seed)
        step.distiller.train()
        batches = step.timed(endless(loaders.train))
        for images, labels in itertools.islice(batches, args.warmup):
            step(images, labels)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        step.timer.reset()
        start = time.perf_counter()
        for images, labels in itertools.islice(batches, args.iters):
            step(images, labels)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3 / args.iters
        breakdown = step.timer.collect()
        return {
            "method": method,
            "teachers": len(teachers),
            "step_ms": wall_ms,
            "images_per_sec": preset["batch"] / wall_ms * 1e3,
            "sections_ms": breakdown,
            "sections_sum_ms": sum(breakdown.values()),
            "precision": runtime.precision.name,
            "channels_last": runtime.channels_last,
            "optimizer": type(step.optimizer).__name__,
            "optimizer_impl": "fused" if step.optimizer.defaults.get("fused") else
            ("foreach" if step.optimizer.defaults.get("foreach") else "default"),
            "feed_backend": cfg.method.backend,
        }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: imagenet on a GPU, smoke on the CPU")
    parser.add_argument("--smoke", action="store_true", help="the tiny preset (same as --preset smoke)")
    parser.add_argument("--teachers", type=int, help="number of teachers (default: the preset's)")
    parser.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    parser.add_argument("--methods", nargs="+", default=["baseline", "pfeed"],
                        choices=[m for m in METHODS if m != "sfeed"])  # sfeed's step is pfeed's
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10 GPU, 2 CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default 50 GPU, 3 CPU)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--channels-last", default="auto", type=lambda v: v if v == "auto" else v == "true",
                        help="auto | true | false")
    parser.add_argument("--compile", action="store_true", help="torch.compile student and teachers")
    parser.add_argument("--backend", default="auto", help="FEED loss backend (auto | torch | triton | hybrid)")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    name = "smoke" if args.smoke else (args.preset or ("imagenet" if gpu else "smoke"))
    preset = dict(PRESETS[name])
    preset["teachers"] = args.teachers or preset["teachers"]
    preset["batch"] = args.batch or preset["batch"]
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    args.iters = args.iters if args.iters is not None else (50 if gpu else 3)
    results = [measure(method, preset, args) for method in args.methods]
    by_method = {r["method"]: r for r in results}
    overhead = None
    if "baseline" in by_method and "pfeed" in by_method:
        overhead = by_method["pfeed"]["step_ms"] / by_method["baseline"]["step_ms"]
    report = {
        "benchmark": "train step breakdown",
        **environment(device),
        "preset": name,
        "setting": {"student": preset["student"], "teacher": preset["teacher"], "teachers": preset["teachers"],
                    "batch": preset["batch"], "image_shape": [3, preset["image_size"], preset["image_size"]],
                    "input_dtype": "float32", "num_classes": preset["classes"], "warmup": args.warmup,
                    "iters": args.iters, "compile": args.compile, "sections": list(SECTIONS)},
        "results": results,
        "pfeed_over_baseline_step_time": overhead,
        "notes": "step_ms is wall time per step; sections overlap on a GPU (teachers on their own streams)",
    }
    out = args.out
    if out is None:
        slug = re.sub(r"[^a-z0-9]+", "_", report["device"]["name"].lower()).strip("_")
        out = (RESULTS_DIR / f"step_{name}_{slug}.json" if gpu and name != "smoke" else
               Path(tempfile.gettempdir()) / "feed_fast_bench" / f"step_{name}_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for r in results:
        sections = " ".join(f"{k} {v:.2f}" for k, v in r["sections_ms"].items())
        print(f"{r['method']:8s} K={r['teachers']} step {r['step_ms']:.2f} ms ({r['images_per_sec']:.0f} img/s) "
              f"| {sections}")
    if overhead is not None:
        print(f"pFEED / baseline step time: {overhead:.2f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
