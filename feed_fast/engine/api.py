"""`train(config, out_dir)`: what `feed-fast train` runs. Checks the run folder (a new run never lands on an old
one, and the folder can be written) before any work, opens the runtime (device, memory format, precision,
torchrun's process group, signals, determinism), builds the loaders, the method and its teachers once, then
trains each generation the method asks for (one, except sFEED) with a `GenerationTrainer`."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
import yaml

from ..atomic_files import WriteFailed, atomic_write_text, check_writable_folder, stale_temporaries
from ..config import ConfigError, RunConfig
from ..methods import build_method
from ..runtime import open_runtime
from ..runtime.distributed import barrier, launched_rank
from .checkpoint import CHECKPOINT_NAMES, EMA_EXPORT, EXPORT, LAST, CheckpointError, load_exported_student
from .data import build_loaders
from .run_log import METRICS_FILE, TENSORBOARD_DIR
from .teachers import load_teachers
from .trainer import GenerationTrainer

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, *CHECKPOINT_NAMES, SUMMARY_FILE)  # what marks a folder as a run's
GENERATION_DIR = re.compile(r"gen\d+")  # sFEED's per-generation folders


def train(config: dict | RunConfig, out_dir, *, resume: bool = False, overwrite: bool = False,
          max_epochs: int | None = None) -> dict:
    """Train as `config` says (a RunConfig, or the nested dict of a YAML config: defaults filled in and every key
    checked here) into `out_dir`. With `resume=True`, continue from `out_dir`'s last.pt (the next batch of the
    same epoch order). A new run refuses a folder that already holds one unless `overwrite=True`, which deletes
    that run's files first. `max_epochs` stops after that many more epochs of the current generation (last.pt
    written), as a signal would: for time-limited jobs.

    Returns {history, best_top1, final_top1, student_params, images_per_sec, step_breakdown_ms, interrupted,
    export, final_top1_ema, export_ema (None without train.ema), run_dir, generations: [the same per
    generation]}. Top-level entries are the last generation's."""
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    run_dir = Path(out_dir)
    if launched_rank() == 0:  # rank 0 writes the folder; if it refuses, torchrun stops the other ranks
        prepare_run_folder(run_dir, resume=resume, overwrite=overwrite)
    with open_runtime(cfg.train) as runtime:
        loaders = build_loaders(cfg, runtime)
        method = build_method(cfg.method)
        given = load_teachers(cfg.teachers, loaders.train.num_classes) if method.uses_given_teachers else []
        if runtime.is_main:  # after the setup: a run that could not start leaves no run behind
            atomic_write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), run_dir / CONFIG_FILE)
        barrier(runtime.dist)
        generations = method.num_generations()
        summaries, previous_student = [], None
        for g in range(generations):
            stage_dir = run_dir / f"gen{g + 1}" if generations > 1 else run_dir
            done = finished_generation(stage_dir) if resume else None
            if done is not None:  # a finished generation: reuse its result and student
                summaries.append(done)
                previous_student = load_generation_student(stage_dir, cfg)
                continue
            trainer = GenerationTrainer.from_config(cfg, runtime, loaders, method,
                                                    method.teachers_for(g, given, previous_student),
                                                    generation=g, run_dir=stage_dir, resume_dir=run_dir)
            summary = trainer.fit(resume=resume, max_epochs=max_epochs)
            summaries.append(summary)
            if summary["interrupted"]:
                break
            if runtime.is_main:
                atomic_write_text(json.dumps(summary, indent=1), stage_dir / SUMMARY_FILE)
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
    try:
        recorded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(recorded, dict):
        raise ConfigError(f"{str(path)!r} does not hold a run config (a mapping)")
    return train(recorded, run_dir, resume=True, max_epochs=max_epochs)


def load_student(path) -> torch.nn.Module:
    """The plain student from an export (student.pt), best.pt or last.pt."""
    model, _ = load_exported_student(path)
    return model


# --- the run folder --------------------------------------------------------------------------------
def run_files_in(run_dir: Path) -> list[str]:
    """The names in `run_dir` that a run writes (files, tensorboard/, gen<N>/): empty for a fresh folder."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name in RUN_FILES or (p.is_dir() and (p.name == TENSORBOARD_DIR
                                                             or GENERATION_DIR.fullmatch(p.name))))


def prepare_run_folder(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Before any work: a new run refuses a folder holding a run (unless `overwrite`, which deletes that run's
    files and nothing else); the folder must exist or be creatable, and be writable. A resumed run drops the
    temporary files a killed write left behind."""
    found = run_files_in(run_dir)
    if found and not resume and not overwrite:
        raise ConfigError(f"{str(run_dir)!r} already holds a run ({', '.join(found[:4])}"
                          f"{', ...' if len(found) > 4 else ''}): continue it with `feed-fast train --resume "
                          f"{run_dir}`, or start over with --overwrite (deletes that run's checkpoints, metrics "
                          "and exports)")
    try:
        check_writable_folder(run_dir)
    except WriteFailed as err:
        raise ConfigError(f"run folder {str(run_dir)!r} cannot be written: {err.strerror}") from None
    if found and overwrite and not resume:
        for name in found:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if resume:
        folders = [run_dir, *(p for p in run_dir.iterdir() if p.is_dir() and GENERATION_DIR.fullmatch(p.name))]
        for temporary in stale_temporaries(folders):
            temporary.unlink(missing_ok=True)


def finished_generation(stage_dir: Path) -> dict | None:
    """The summary of a generation that finished (its summary.json), with the paths of the folder it is in now
    (the run may have been moved), or None when it has to (re)train: a summary that cannot be read is rebuilt
    from last.pt."""
    try:
        summary = json.loads((stage_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    summary.pop("generations", None)  # a one-generation run's summary.json is also the run's: keep the stage part
    summary.update(run_dir=str(stage_dir), export=str(stage_dir / EXPORT))
    if summary.get("export_ema"):
        summary["export_ema"] = str(stage_dir / EMA_EXPORT)
    return summary


def load_generation_student(stage_dir: Path, cfg: RunConfig) -> torch.nn.Module:
    """A finished generation's student (the next sFEED generation's teacher), refused if damaged or another model."""
    path = stage_dir / EXPORT
    hint = f"the generation's final {LAST} holds the same student: copy it over {EXPORT}"
    model, meta = load_exported_student(path, use_instead=hint)
    if meta["model"] != cfg.model.name or dict(meta.get("model_kwargs", {})) != dict(cfg.model.kwargs):
        raise CheckpointError(path, f"holds a {meta['model']} {meta.get('model_kwargs', {})}, but this run's "
                                    f"students are {cfg.model.name} {dict(cfg.model.kwargs)}", use_instead=hint)
    return model


__all__ = ["load_student", "resume", "train"]
