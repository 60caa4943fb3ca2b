"""`train(config, out_dir)`: what `feed-fast train` runs. Opens the runtime (device, memory format, precision,
torchrun's process group, signals, determinism), builds the loaders, the method and its teachers once, then
trains each generation the method asks for (one, except sFEED) with a `GenerationTrainer`."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from ..atomic_files import atomic_write_text
from ..config import ConfigError, RunConfig
from ..methods import build_method
from ..runtime import open_runtime
from ..runtime.distributed import barrier
from .checkpoint import load_exported_student
from .data import build_loaders
from .teachers import load_teachers
from .trainer import EXPORT, GenerationTrainer

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"


def train(config: dict | RunConfig, out_dir, *, resume: bool = False, max_epochs: int | None = None) -> dict:
    """Train as `config` says (a RunConfig, or the nested dict of a YAML config: defaults filled in and every key
    checked here) into `out_dir`. With `resume=True`, continue from `out_dir`'s last.pt (the next batch of the
    same epoch order). `max_epochs` stops after that many more epochs of the current generation (last.pt
    written), as a signal would: for time-limited jobs.

    Returns {history, best_top1, final_top1, student_params, images_per_sec, step_breakdown_ms, interrupted,
    export, run_dir, generations: [the same per generation]}. Top-level entries are the last generation's."""
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    run_dir = Path(out_dir)
    with open_runtime(cfg.train) as runtime:
        if runtime.is_main:
            atomic_write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), run_dir / CONFIG_FILE)
        barrier(runtime.dist)
        loaders = build_loaders(cfg, runtime)
        method = build_method(cfg.method)
        given = load_teachers(cfg.teachers, loaders.train.num_classes) if method.uses_given_teachers else []
        generations = method.num_generations()
        summaries, previous_student = [], None
        for g in range(generations):
            stage_dir = run_dir / f"gen{g + 1}" if generations > 1 else run_dir
            done = stage_dir / SUMMARY_FILE
            if resume and done.exists():  # a finished generation: reuse its result and student
                summaries.append(json.loads(done.read_text()))
                previous_student = load_student(stage_dir / EXPORT)
                continue
            trainer = GenerationTrainer.from_config(cfg, runtime, loaders, method,
                                                    method.teachers_for(g, given, previous_student),
                                                    generation=g, run_dir=stage_dir, resume_dir=run_dir)
            summary = trainer.fit(resume=resume, max_epochs=max_epochs)
            summaries.append(summary)
            if summary["interrupted"]:
                break
            if runtime.is_main:
                atomic_write_text(json.dumps(summary, indent=1), done)
            previous_student = trainer.student
        result = {**summaries[-1], "generations": summaries, "run_dir": str(run_dir)}
        if runtime.is_main and not result["interrupted"]:
            atomic_write_text(json.dumps(result, indent=1), run_dir / SUMMARY_FILE)
        return result


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


__all__ = ["load_student", "resume", "train"]
