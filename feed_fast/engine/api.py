"""`train(config, out_dir)`: what `feed-fast train` runs. Checks the run folder (a new run never lands on an old
one, and the folder can be written) before any work, opens the runtime (device, memory format, precision,
torchrun's process group, signals, determinism), lays the optimizer step out over the processes (layout.py),
builds the loaders, the method and its teachers once, then trains each generation the method asks for (one,
except sFEED) with a `GenerationTrainer`.

`resume(run_dir, overrides)` continues a run with its recorded config and the changes a resume may make
(config/changes.py); `start_or_continue(config, out_dir)` (`--auto-resume`) continues the run in `out_dir` when
there is one, refusing a config that differs beyond those changes, and starts one otherwise: the one command for
a first start and every restart (torchrun --max-restarts, a requeued batch job)."""
from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

from ..atomic_files import WriteFailed, atomic_write_text, check_writable_folder, stale_temporaries
from ..config import ConfigError, RunConfig
from ..config.changes import check_resume_changes, config_changes, describe_change
from ..config.teachers import without_unused_teachers
from ..methods import build_method
from ..runtime import open_runtime
from ..runtime.distributed import barrier, launched_rank
from .checkpoint import CHECKPOINT_NAMES, EMA_EXPORT, LAST, CheckpointError, export_in, load_exported_student
from .data import build_loaders
from .layout import effective_config, new_layout, recorded_layout, resumed_layout
from .run_log import ATTEMPTS_FILE, METRICS_FILE, TENSORBOARD_DIR, record_attempt
from .teacher_check import TEACHERS_FILE, TeacherCheck, check_teachers, print_warnings
from .teachers import load_teachers
from .trainer import GenerationTrainer

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, ATTEMPTS_FILE, TEACHERS_FILE, *CHECKPOINT_NAMES, SUMMARY_FILE)  # a run's files
GENERATION_DIR = re.compile(r"gen\d+")  # sFEED's per-generation folders


def train(config: dict | RunConfig, out_dir, *, resume: bool = False, overwrite: bool = False,
          max_epochs: int | None = None, changes: dict | None = None) -> dict:
    """Train as `config` says (a RunConfig, or the nested dict of a YAML config: defaults filled in and every key
    checked here) into `out_dir`. With `resume=True`, continue from `out_dir`'s last.pt (the next optimizer step
    of the same epoch order, on this number of processes: layout.py); `changes` ({key: (old, new)}, from
    `resume`/`start_or_continue`) are recorded in the run's attempts.jsonl. A new run refuses a folder that
    already holds one unless `overwrite=True`, which deletes that run's files first. `max_epochs` stops after
    that many more epochs of the current generation (last.pt written), as a signal would: for time-limited jobs.

    Returns {history, best_top1, final_top1, student_params, images_per_sec, step_breakdown_ms, interrupted,
    export, final_top1_ema, export_ema (None without train.ema), run_dir, generations: [the same per
    generation]}. Top-level entries are the last generation's."""
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    cfg = without_unused_teachers(cfg, say=launched_rank() == 0)  # baseline: none in config.yaml, said once
    run_dir = Path(out_dir)
    if launched_rank() == 0:  # rank 0 writes the folder; if it refuses, torchrun stops the other ranks
        prepare_run_folder(run_dir, resume=resume, overwrite=overwrite)
    with open_runtime(cfg.train) as runtime:
        if cfg.train.sync_bn and runtime.dist.enabled and runtime.device.type != "cuda":
            raise ConfigError(f"train.sync_bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs only); this "
                              f"run is on {runtime.device.type}: set train.sync_bn=false")
        method = build_method(cfg.method)
        generations = method.num_generations()
        stages = [run_dir / f"gen{g + 1}" for g in range(generations)] if generations > 1 else [run_dir]
        processes = runtime.dist.world_size
        layout, note = (resumed_layout(cfg, processes, recorded_layout(stages, LAST)) if resume
                        else new_layout(cfg, processes))
        run_cfg = effective_config(cfg, layout)  # what the loaders and the step read: the micro-batch, accumulate
        loaders = build_loaders(run_cfg, runtime)
        given = load_teachers(cfg.teachers, loaders.train.num_classes) if method.uses_given_teachers else []
        if runtime.is_main:  # after the setup: a run that could not start leaves no run behind
            atomic_write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), run_dir / CONFIG_FILE)
            if changes and "schedule.epochs" in changes:  # a finished run made longer is unfinished again
                for stage in {run_dir, *stages}:
                    (stage / SUMMARY_FILE).unlink(missing_ok=True)
        barrier(runtime.dist)
        checked = check_teachers(cfg, runtime, loaders, given, run_dir)  # once per run: teachers.json
        summaries, previous_student, announced = [], None, False
        for g, stage_dir in enumerate(stages):
            done = finished_generation(stage_dir, cfg.schedule.epochs) if resume else None
            if done is not None:  # a finished generation: reuse its result and student
                summaries.append(done)
                previous_student = load_generation_student(stage_dir, cfg)
                continue
            trainer = GenerationTrainer.from_config(run_cfg, runtime, loaders, method,
                                                    method.teachers_for(g, given, previous_student),
                                                    generation=g, run_dir=stage_dir, resume_dir=run_dir)
            if g == 0 and checked is not None:  # the generation that learns from the configured teachers
                trainer.teacher_check = checked.record
            start = None if announced else StartReport(run_dir, resume, note, changes or {}, checked)
            summary = trainer.fit(resume=resume, max_epochs=max_epochs, announce=start)
            announced = True
            summaries.append(summary)
            if summary["interrupted"]:
                break
            if runtime.is_main:
                atomic_write_text(json.dumps(summary, indent=1), stage_dir / SUMMARY_FILE)
            previous_student = trainer.student
        result = {**summaries[-1], "generations": summaries, "run_dir": str(run_dir),
                  "teacher_check": checked.record if checked is not None else None}
        if runtime.is_main:
            if not result["interrupted"]:
                atomic_write_text(json.dumps(result, indent=1), run_dir / SUMMARY_FILE)
            outcome = f"stopped by {result['stopped_by']}" if result["interrupted"] else "finished"
            started = {} if announced else {"started": "continued", "note": "nothing left to train"}
            record_attempt(run_dir, {"time": _now(), **started, "ended": outcome})
        return result


def resume(run_dir, *, overrides=(), max_epochs: int | None = None) -> dict:
    """Continue the run in `run_dir` with its recorded config; `overrides` (`KEY=VALUE`, as --set) may change
    what config/changes.py allows (a moved data.root, data.skip_corrupt, ...), anything else is refused."""
    recorded_raw = read_recorded_config(run_dir)
    recorded = RunConfig.from_dict(recorded_raw, check_paths=False)
    try:
        cfg = RunConfig.from_dict(recorded_raw, overrides)
    except ConfigError as err:
        if str(err).startswith("data.root") and not any(o.startswith("data.root=") for o in overrides):
            raise ConfigError(f"{err} (a moved dataset: `feed-fast train --resume {run_dir} --set "
                              "data.root=PATH`)") from None
        raise
    cfg = without_unused_teachers(cfg, say=False)  # as the run recorded it
    changes = config_changes(recorded, cfg)
    check_resume_changes(changes, recorded, where="--set")
    return train(cfg, run_dir, resume=True, max_epochs=max_epochs, changes=changes)


def start_or_continue(config: dict | RunConfig, out_dir, *, max_epochs: int | None = None) -> dict:
    """`feed-fast train CONFIG --out DIR --auto-resume`: continue the run in `out_dir` (exactly as `resume`) when
    it holds one, else start it. A config that differs from the recorded one in keys a resume may not change is
    refused in one line naming them; the keys it may change are taken and recorded.

    Under torchrun every rank looks at the folder before joining the process group; rank 0 writes config.yaml
    only after all have joined, so the ranks always take the same decision."""
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    cfg = without_unused_teachers(cfg, say=launched_rank() == 0)  # as the run recorded it
    run_dir = Path(out_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        return train(cfg, run_dir, max_epochs=max_epochs)
    recorded = RunConfig.from_dict(read_recorded_config(run_dir), check_paths=False)
    changes = config_changes(recorded, cfg)
    check_resume_changes(changes, recorded, where=f"CONFIG with its --set for the run in {str(run_dir)!r}")
    return train(cfg, run_dir, resume=True, max_epochs=max_epochs, changes=changes)


def read_recorded_config(run_dir) -> dict:
    """The nested dict of a run folder's config.yaml; ConfigError when it is missing or not a config."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a feed-fast run directory: {CONFIG_FILE} is missing")
    try:
        recorded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(recorded, dict):
        raise ConfigError(f"{str(path)!r} does not hold a run config (a mapping)")
    return recorded


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class StartReport:
    """Rank 0's block at the start of training (stderr, unless train.progress is none), once the starting point
    is known, and its record in attempts.jsonl: processes, per-process batch, accumulate, global batch, lr,
    device, precision, data and loss backends, where a resumed run continues from, and the teachers' scores
    (teacher_check.py; its warnings are printed whatever train.progress says)."""

    def __init__(self, run_dir: Path, resume: bool, note: str | None, changes: dict,
                 teachers: TeacherCheck | None = None) -> None:
        self.run_dir, self.resume, self.note, self.changes, self.teachers = run_dir, resume, note, changes, teachers

    def __call__(self, trainer: GenerationTrainer) -> None:
        if trainer.cfg.train.progress != "none":  # none: nothing on stderr but warnings and errors
            print("\n".join(self.lines(trainer)), file=sys.stderr, flush=True)
        print_warnings(self.teachers)
        record = {"time": _now(), "started": "continued" if trainer.resumed_from else "new",
                  "layout": trainer.layout.to_dict(), "lr": trainer.cfg.optim.lr}
        if trainer.resumed_from:
            record["from"] = {k: trainer.resumed_from[k] for k in ("epoch", "step", "written_by")}
        if self.changes:
            record["changed"] = {key: list(values) for key, values in self.changes.items()}
        if self.note:
            record["note"] = self.note
        record_attempt(self.run_dir, record)

    def lines(self, trainer: GenerationTrainer) -> list[str]:
        cfg, runtime, layout, loader = trainer.cfg, trainer.runtime, trainer.layout, trainer.loaders.train
        steps, epochs = trainer.steps_per_epoch, cfg.schedule.epochs
        where = f"generation {trainer.generation + 1} of " if trainer.generation else ""
        if trainer.resumed_from:
            at = trainer.resumed_from
            lr_step = at["epoch"] * steps + at["step"]
            position = (f"epoch {at['epoch'] + 1}, after step {at['step']} of {steps} (sample "
                        f"{at['step'] * layout.global_batch} of the epoch's order)" if at["step"]
                        else f"the start of epoch {at['epoch'] + 1}")
            head = f"continuing {where}{self.run_dir} from {LAST} at {position}, lr step {lr_step}"
        elif self.resume:
            head = f"continuing {where}{self.run_dir} from its start (no {LAST} yet)"
        else:
            head = f"new run in {self.run_dir}"
        launcher = f"torchrun, {'gloo' if runtime.device.type != 'cuda' else 'nccl'}" if runtime.dist.enabled \
            else "one process"
        data_backend = getattr(loader, "backend", None) or "tensors on the device"
        from ..ops.loss import FEEDLoss

        uses_feed = any(isinstance(module, FEEDLoss) for module in trainer.distiller.modules())
        backend = cfg.method.backend
        if backend == "auto":
            backend += " (torch off CUDA)" if runtime.device.type != "cuda" else " (chosen per call: docs/ops.md)"
        loss = f"{cfg.method.name}, FEED backend {backend}" if uses_feed else f"{cfg.method.name} (no FEED term)"
        processes = f"{layout.processes} process{'es' if layout.processes != 1 else ''}"
        lines = [
            f"feed-fast train: {head}",
            f"  processes  {processes} ({launcher}), device {runtime.device}, precision {runtime.precision.name}",
            f"  batch      {layout.micro_batch} per process x accumulate {layout.accumulate} x {processes} = global "
            + f"batch {layout.global_batch} per optimizer step",
            f"  lr         {cfg.optim.lr:g} for the global batch {layout.global_batch} ({cfg.schedule.name} "
            + f"schedule, {steps} steps per epoch, {epochs} epochs)",
            f"  data       {cfg.data.dataset} ({data_backend}), {steps * layout.global_batch} training samples "
            + "per epoch",
            f"  loss       {loss}",
        ]
        if self.teachers is not None:
            lines += self.teachers.lines()
        elif cfg.teachers and not trainer.generation:
            lines.append("  teachers   not scored (train.check_teachers: false)")
        if self.note:
            lines.append(f"  note       {self.note}")
        if self.changes:
            lines.append("  changed    " + ", ".join(describe_change(k, *v) for k, v in self.changes.items()))
        return lines


def load_student(path) -> torch.nn.Module:
    """The plain model from an export (model.pt, or an earlier release's student.pt), best.pt or last.pt."""
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
                          f"{run_dir}` (or this command with --auto-resume), or start over with --overwrite "
                          "(deletes that run's checkpoints, metrics and exports)")
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


def finished_generation(stage_dir: Path, epochs: int) -> dict | None:
    """The summary of a generation that finished all `epochs` (its summary.json), with the paths of the folder it
    is in now (the run may have been moved), or None when it has to (re)train: a summary that cannot be read is
    rebuilt from last.pt, and a run made longer continues."""
    try:
        summary = json.loads((stage_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or len(summary.get("history", [])) < epochs:
        return None
    summary.pop("generations", None)  # a one-generation run's summary.json is also the run's: keep the stage part
    summary.update(run_dir=str(stage_dir), export=str(export_in(stage_dir)))
    if summary.get("export_ema"):
        summary["export_ema"] = str(export_in(stage_dir, EMA_EXPORT))
    return summary


def load_generation_student(stage_dir: Path, cfg: RunConfig) -> torch.nn.Module:
    """A finished generation's student (the next sFEED generation's teacher), refused if damaged or another model."""
    path = export_in(stage_dir)  # model.pt, or an earlier release's student.pt
    hint = f"the generation's final {LAST} holds the same student: copy it over {path.name}"
    model, meta = load_exported_student(path, use_instead=hint)
    if meta["model"] != cfg.model.name or dict(meta.get("model_kwargs", {})) != dict(cfg.model.kwargs):
        raise CheckpointError(path, f"holds a {meta['model']} {meta.get('model_kwargs', {})}, but this run's "
                                    f"students are {cfg.model.name} {dict(cfg.model.kwargs)}", use_instead=hint)
    return model


__all__ = ["load_student", "resume", "start_or_continue", "train"]
