"""`train(config, out_dir)`: what `feed-fast train` runs. Sets up the device, torchrun's process group and the
loaders, then trains each generation the method asks for (one, except sFEED) with `GenerationTrainer`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import yaml

from ..loaders import build_loader
from ..methods import build_method
from .checkpoint import atomic_write_text, load_exported_student
from .config import ConfigError, resolve
from .distributed import barrier, setup_distributed, teardown_distributed
from .precision import resolve_precision
from .signals import GracefulStop
from .teachers import load_teacher
from .trainer import GenerationTrainer

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but CUDA is not available here; use train.device=cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def build_loaders(cfg: dict, device: torch.device, rank: int, world: int):
    data = cfg["data"]
    common = {"dataset": data["dataset"], "backend": data["backend"], "image_size": data["image_size"], "device": device,
                  "num_threads": data["num_threads"], "seed": cfg["train"]["seed"], "shard_id": rank, "num_shards": world,
                  "skip_corrupt": data["skip_corrupt"], "download": data["download"]}
    if data["dataset"] == "synthetic":
        common["num_classes"] = data["num_classes"]
    train = build_loader(data["root"], "train", data["batch_size"], **common)
    val = build_loader(data["root"], "val", data["eval_batch_size"], **common)
    return train, val


def configure_determinism(cfg: dict) -> None:
    if cfg["train"]["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def train(config: dict, out_dir, *, resume: bool = False, max_epochs: int | None = None) -> dict:
    """Train as `config` says (the nested dict of a YAML config; defaults filled in and validated here) into
    `out_dir`. With `resume=True`, continue from `out_dir`'s last.pt (the next batch of the same epoch order).
    `max_epochs` stops after that many more epochs of the current generation (last.pt written), as a signal
    would: for time-limited jobs.

    Returns {history, best_top1, final_top1, student_params, images_per_sec, step_breakdown_ms, interrupted,
    export, run_dir, generations: [the same per generation]}. Top-level entries are the last generation's."""
    cfg = resolve(config)
    run_dir = Path(out_dir)
    device = resolve_device(cfg["train"]["device"])
    precision = resolve_precision(cfg["train"]["precision"], device)
    dist = setup_distributed(device)
    configure_determinism(cfg)
    try:
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(yaml.safe_dump(cfg, sort_keys=False), run_dir / CONFIG_FILE)
        barrier(dist)
        train_loader, val_loader = build_loaders(cfg, device, dist.rank, dist.world_size)
        method = build_method(cfg["method"])
        given = []
        if cfg["teachers"] and method.uses_given_teachers:
            given = [load_teacher(spec, train_loader.num_classes) for spec in cfg["teachers"]]
        generations = method.num_generations()
        summaries, previous_student = [], None
        with GracefulStop() as stop:
            for g in range(generations):
                stage_dir = run_dir / f"gen{g + 1}" if generations > 1 else run_dir
                done = stage_dir / SUMMARY_FILE
                if resume and done.exists():  # a finished generation: reuse its result and student
                    summaries.append(json.loads(done.read_text()))
                    previous_student, _ = load_exported_student(stage_dir / "student.pt")
                    continue
                teachers = method.teachers_for(g, given, previous_student)
                trainer = GenerationTrainer(cfg, stage_dir, g, teachers, method, train_loader, val_loader, device,
                                            dist, precision, stop, resume_dir=run_dir)
                summary = trainer.fit(resume=resume, max_epochs=max_epochs)
                summaries.append(summary)
                if summary["interrupted"]:
                    break
                if dist.is_main:
                    atomic_write_text(json.dumps(summary, indent=1), done)
                previous_student = trainer.student
        result = dict(summaries[-1])
        result["generations"] = summaries
        result["run_dir"] = str(run_dir)
        if dist.is_main and not result["interrupted"]:
            atomic_write_text(json.dumps(result, indent=1), run_dir / SUMMARY_FILE)
        return result
    finally:
        teardown_distributed(dist)


def resume(run_dir, *, max_epochs: int | None = None) -> dict:
    """Continue the run in `run_dir` with its recorded config."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a feed-fast run directory: {CONFIG_FILE} is missing")
    return train(yaml.safe_load(path.read_text()), run_dir, resume=True, max_epochs=max_epochs)


def load_student(path) -> torch.nn.Module:
    """The plain student from an export (student.pt), best.pt or last.pt."""
    model, _ = load_exported_student(path)
    return model


__all__ = ["build_loaders", "load_student", "resume", "train"]
