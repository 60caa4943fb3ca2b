"""One generation of training, read top to bottom: `from_config` assembles the step (student, the method's
Distiller, frozen teachers, optimizer, schedule); `fit` resumes if asked, then runs `train_one_epoch` and
`evaluate` per epoch, writing metrics and checkpoints. The step itself is step.py's `TrainStep`.

Counting with `train.accumulate` = N: a step is an optimizer step (N micro-batches of data.batch_size); steps per
epoch, the lr schedule, `log_every`, `max_steps_per_epoch` and TensorBoard's x axis count them, and an epoch
uses steps * N micro-batches (fewer than N left over at its end are not used, as the loader drops its last
short batch). Checkpoints and signal stops happen between optimizer steps only: a SIGINT/SIGTERM mid-step
finishes the step's remaining micro-batches first, so a checkpoint never holds half-accumulated gradients and
`next_batch` (the loader position, in micro-batches) is a multiple of N."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..atomic_files import atomic_save
from ..config import ConfigError, RunConfig
from ..methods import Method
from ..models import count_parameters
from ..runtime import DistInfo, Runtime
from ..runtime.distributed import any_rank, broadcast_buffers
from .checkpoint import (
    BEST,
    EMA_EXPORT,
    EXPORT,
    LAST,
    LAST_PREVIOUS,
    CheckpointError,
    check_training_checkpoint,
    load_fitting,
    read_checkpoint,
    student_export,
)
from .data import Loaders
from .epoch_stats import EpochStats
from .evaluate import evaluate
from .run_log import EpochProgress, MetricsLog
from .step import TrainStep


class GenerationTrainer:
    def __init__(self, cfg: RunConfig, runtime: Runtime, step: TrainStep, loaders: Loaders, *, generation: int,
                 steps_per_epoch: int, run_dir: Path, resume_dir: Path | None = None) -> None:
        self.cfg, self.runtime, self.step, self.loaders = cfg, runtime, step, loaders
        self.generation, self.steps_per_epoch, self.run_dir = generation, steps_per_epoch, run_dir  # optimizer steps
        self.batches_per_epoch = steps_per_epoch * step.accumulate  # micro-batches the loader serves per epoch
        self.resume_dir = resume_dir or run_dir  # the directory `--resume` takes (sFEED: the parent)
        if runtime.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(run_dir, enabled=runtime.is_main)
        self.progress = EpochProgress(cfg.train.progress, runtime.is_main, cfg.train.log_every)
        self.epoch, self.next_batch = 0, 0
        self.stats = EpochStats(runtime.device)
        self.best_top1, self.history = -1.0, []
        self.last_breakdown: dict[str, float] = {}
        self.stopped_by: str | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig, runtime: Runtime, loaders: Loaders, method: Method,
                    teachers: Sequence[nn.Module], *, generation: int = 0, run_dir: Path,
                    resume_dir: Path | None = None) -> GenerationTrainer:
        """The one assembly point of a generation: its step, from the config, on the runtime's device."""
        steps_per_epoch = len(loaders.train) // cfg.train.accumulate  # optimizer steps
        if cfg.train.max_steps_per_epoch is not None:
            steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
        if steps_per_epoch < 1:
            raise ConfigError(f"the training loader yields no full optimizer step (train.accumulate="
                              f"{cfg.train.accumulate} batches of data.batch_size={cfg.data.batch_size}; "
                              f"{len(loaders.train)} full batches of {loaders.train.num_samples} samples in this shard)")
        step = TrainStep.from_config(cfg, runtime, method, teachers, num_classes=loaders.train.num_classes,
                                     image_size=loaders.train.image_size, steps_per_epoch=steps_per_epoch,
                                     seed=cfg.train.seed + generation)
        return cls(cfg, runtime, step, loaders, generation=generation, steps_per_epoch=steps_per_epoch,
                   run_dir=run_dir, resume_dir=resume_dir)

    @property
    def student(self) -> nn.Module:
        return self.step.student

    @property
    def distiller(self) -> nn.Module:
        return self.step.distiller

    @property
    def dist(self) -> DistInfo:
        return self.runtime.dist

    @property
    def ema(self):
        """The student's moving average (`train.ema`), or None."""
        return self.step.ema

    # --- the loop --------------------------------------------------------------------------------
    def fit(self, resume: bool, max_epochs: int | None = None) -> dict:
        """Train to the end of the schedule, or for `max_epochs` more epochs (then stop as a signal would).

        Per epoch, best.pt (when the epoch is the best so far), then last.pt (the epoch's commit point; the one
        it replaces becomes last.prev.pt), then metrics.jsonl rewritten from last.pt's history. A crash at any
        moment costs at most the current step (a signal: nothing) and leaves metrics.jsonl matching the
        checkpoint a resume starts from, which rewrites it again."""
        if resume:
            if (self.run_dir / LAST).exists():
                self.load(self.run_dir / LAST)
            elif (self.run_dir / LAST_PREVIOUS).exists():  # removed by hand: do not silently start over
                raise CheckpointError(self.run_dir / LAST, "does not exist", use_instead=f"copy one to {LAST} to "
                                      "resume from it, or start over with --overwrite")
        self.log.restart(self.history, self.global_step())  # metrics.jsonl == the history training continues
        epochs, first_epoch, interrupted = self.cfg.schedule.epochs, self.epoch, False
        while self.epoch < epochs:
            if max_epochs is not None and self.epoch - first_epoch >= max_epochs:
                interrupted, self.stopped_by = True, f"the limit of {max_epochs} epoch(s) for this call"
                break
            train_stats = self.train_one_epoch(self.epoch, self.next_batch)
            if train_stats is None:
                interrupted = True
                break
            record = {"epoch": self.epoch, "generation": self.generation, **train_stats}
            if (self.epoch + 1) % self.cfg.train.eval_every == 0 or self.epoch + 1 == epochs:
                record["val"] = self.evaluate(self.student)
                if self.ema is not None:  # beside the raw student; "best" follows the raw student
                    record["val_ema"] = self.evaluate(self.ema.model)
            self.epoch, self.next_batch, self.stats = self.epoch + 1, 0, EpochStats(self.runtime.device)
            self.history.append(record)
            top1 = record.get("val", {}).get("top1", -1.0)
            is_best, self.best_top1 = top1 > self.best_top1, max(self.best_top1, top1)
            if is_best:
                self.save(BEST)
            self.save(LAST)
            self.log.write_history(self.history)
            self.log.epoch_scalars(record, self.global_step())
            self.progress.end_epoch(self.epoch_message(record))
        if not interrupted and self.runtime.is_main:
            atomic_save(self.export(self.student), self.run_dir / EXPORT)
            if self.ema is not None:
                atomic_save(self.export(self.ema.model), self.run_dir / EMA_EXPORT)
        self.log.close()
        return self.summary(interrupted)

    def evaluate(self, model: nn.Module) -> dict:
        """Top-1/top-5 and plain CE (no label smoothing) on the val loader, reduced over the ranks."""
        return evaluate(model, self.loaders.val, autocast=self.runtime.precision.autocast(), dist=self.dist)

    def train_one_epoch(self, epoch: int, start_batch: int) -> dict | None:
        """Runs the epoch from micro-batch `start_batch` (a multiple of train.accumulate); returns its statistics,
        or None when stopped by a signal (after the optimizer step in progress, writing last.pt pointing at the
        next batch)."""
        self.distiller.train()
        self.step.timer.reset()
        self.stats.start()
        per_step = self.step.accumulate
        self.progress.start_epoch(epoch + 1, self.steps_per_epoch, start_batch // per_step)
        batches = self.step.timed(self.loaders.train.iter_from(epoch, start_batch),
                                  self.batches_per_epoch - start_batch)
        for batch, (images, labels) in enumerate(batches, start=start_batch):
            losses = self.train_step(images, labels)
            self.stats.add(losses, labels.shape[0])
            self.next_batch = batch + 1
            if not self.step.at_boundary:
                continue  # logs, checkpoints and stops happen between optimizer steps
            step = self.next_batch // per_step - 1  # the optimizer step just taken, within the epoch
            if (step + 1) % self.cfg.train.log_every == 0:
                self.log_step(epoch, step, losses)
            self.progress.update(step, self.stats.images, losses)
            if self.should_stop():
                self.stop_mid_epoch(epoch, step)
                return None
        self.broadcast_buffers()
        self.last_breakdown = self.step.timer.collect()
        stats = self.stats.summary(self.dist, self.step.timer)
        return {"loss": stats.pop("loss"), "lr": self.step.lr_used, **stats, "step_ms": self.last_breakdown}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.step(images, labels)

    def should_stop(self) -> bool:
        """A signal on any rank stops every rank after the same step (torchrun may signal only some)."""
        return any_rank(self.runtime.stop.requested, self.dist)

    def broadcast_buffers(self) -> None:
        """Every rank takes rank 0's BatchNorm statistics (the student's and the EMA's) before evaluating or
        saving: within an epoch each rank's running statistics saw its own batches."""
        broadcast_buffers(self.distiller, self.dist)
        if self.ema is not None:
            broadcast_buffers(self.ema.model, self.dist)

    def stop_mid_epoch(self, epoch: int, step: int) -> None:
        self.broadcast_buffers()
        self.save(LAST)
        self.progress.end_epoch(
            f"stopped by {self.runtime.stop.signal_name or 'a signal on another rank'} after step {step + 1} of "
            f"epoch {epoch + 1}; {LAST} written to {self.run_dir}; resume with "
            f"`feed-fast train --resume {self.resume_dir}`")

    def log_step(self, epoch: int, step: int, losses: dict) -> None:
        self.last_breakdown = self.step.timer.collect()
        scalars = {f"step_ms/{k}": v for k, v in self.last_breakdown.items()}
        values = torch.stack([v.detach().float() for v in losses.values()]).tolist()  # one device read
        scalars.update({f"train/{k}": v for k, v in zip(losses, values)})
        scalars["train/lr"] = self.step.lr_used
        self.log.scalars(scalars, epoch * self.steps_per_epoch + step + 1)

    def epoch_message(self, record: dict) -> str:
        val, val_ema = record.get("val"), record.get("val_ema")
        acc = f" val top1 {val['top1']:.2f} top5 {val['top5']:.2f}" if val else ""
        acc += f" (EMA top1 {val_ema['top1']:.2f})" if val_ema else ""
        return (f"gen {self.generation + 1} epoch {record['epoch'] + 1}/{self.cfg.schedule.epochs} "
                f"loss {record['loss']['total']:.4f}{acc} {record['images_per_sec']:.1f} img/s")

    def global_step(self) -> int:
        """Optimizer steps taken so far in this generation: the x axis of every TensorBoard scalar."""
        return self.epoch * self.steps_per_epoch + self.next_batch // self.step.accumulate

    def summary(self, interrupted: bool) -> dict:
        vals = [r["val"]["top1"] for r in self.history if "val" in r]
        vals_ema = [r["val_ema"]["top1"] for r in self.history if "val_ema" in r]
        return {
            "generation": self.generation,
            "history": self.history,
            "best_top1": max(vals) if vals else None,
            "final_top1": vals[-1] if vals else None,
            "student_params": count_parameters(self.student.plain_module()),
            "images_per_sec": self.history[-1]["images_per_sec"] if self.history else None,
            "step_breakdown_ms": self.last_breakdown,
            "interrupted": interrupted,
            "stopped_by": self.runtime.stop.signal_name or self.stopped_by,
            "resume_at": {"epoch": self.epoch, "batch": self.next_batch},
            "run_dir": str(self.run_dir),
            "export": str(self.run_dir / EXPORT) if not interrupted else None,
            "final_top1_ema": vals_ema[-1] if vals_ema else None,
            "export_ema": str(self.run_dir / EMA_EXPORT) if self.ema is not None and not interrupted else None,
        }

    # --- checkpoints -----------------------------------------------------------------------------
    def export(self, model: nn.Module) -> dict:
        """student.pt's content for `model` (the student, or its EMA)."""
        return student_export(self.cfg.model.name, self.loaders.train.num_classes, self.cfg.model.kwargs, model,
                              self.export_data())

    def export_data(self) -> dict:
        """What the student was trained on, for `feed-fast eval` (the image size the loader served)."""
        return {"dataset": self.cfg.data.dataset, "image_size": self.loaders.train.image_size,
                "seed": self.cfg.train.seed}

    def state(self) -> dict:
        step = self.step
        ema = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        return {
            **ema,
            "student": self.student.plain_module().state_dict(),
            "extras": {k: v for k, v in self.distiller.state_dict().items() if not k.startswith("student.")},
            "optimizer": step.optimizer.state_dict(),
            "scheduler": step.scheduler.state_dict(),
            "scaler": step.scaler.state_dict(),
            "epoch": self.epoch,
            "next_batch": self.next_batch,
            "epoch_sums": self.stats.state(),
            "best_top1": self.best_top1,
            "history": list(self.history),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generation": self.generation,
            "world_size": self.dist.world_size,
            "export_meta": {"model": self.cfg.model.name, "num_classes": self.loaders.train.num_classes,
                            "model_kwargs": dict(self.cfg.model.kwargs), "data": self.export_data()},
            "config": self.cfg.to_dict(),
        }

    def save(self, name: str) -> None:
        if self.runtime.is_main:
            keep = self.run_dir / LAST_PREVIOUS if name == LAST else None
            atomic_save(self.state(), self.run_dir / name, keep_previous=keep)

    def load(self, path: Path) -> None:
        """Continue from a last.pt (or a best.pt copied over it). A file that cannot be read or does not fit
        this run raises a CheckpointError naming it (the run stops there; the file is left as it is)."""
        step, device = self.step, self.runtime.device
        use_instead = f"copy one over {LAST} to resume from it"
        ckpt = check_training_checkpoint(read_checkpoint(path, map_location=device, use_instead=use_instead), path,
                                         use_instead)
        load_fitting(self.student.plain_module(), ckpt["student"], path, f"this run's student ({self.cfg.model.name})")
        load_fitting(self.distiller, ckpt["extras"], path, f"this run's {self.cfg.method.name} translators",
                     ignore=lambda key: key.startswith("student."))
        try:
            step.optimizer.load_state_dict(ckpt["optimizer"])
            step.scheduler.load_state_dict(ckpt["scheduler"])
            step.scaler.load_state_dict(ckpt["scaler"])
        except (KeyError, RuntimeError, TypeError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(path, f"does not fit this run's optimizer: {first}", look_beside=False) from None
        if ckpt["next_batch"] % step.accumulate:
            raise CheckpointError(path, f"stops after micro-batch {ckpt['next_batch']}, inside an optimizer step of "
                                  f"train.accumulate={step.accumulate} (it was written with another value)",
                                  look_beside=False)
        self.epoch, self.next_batch = ckpt["epoch"], ckpt["next_batch"]
        if self.ema is not None:
            self.load_ema(ckpt, path)
        self.stats = EpochStats(device, ckpt["epoch_sums"])
        self.best_top1, self.history = ckpt["best_top1"], ckpt["history"]
        torch.set_rng_state(ckpt["rng_cpu"].cpu())
        if ckpt.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng_cuda"]])
        written_by = ckpt.get("world_size", 1)
        if written_by != self.dist.world_size and self.runtime.is_main:
            print(f"feed-fast train: warning: {path} was written by a run of {written_by} process(es), this one has "
                  f"{self.dist.world_size}: each process's share of the data differs from here on, so the run will "
                  "not repeat an uninterrupted one", file=sys.stderr)

    def load_ema(self, ckpt: dict, path: Path) -> None:
        """The EMA as last.pt holds it; a checkpoint written without train.ema starts the average from the
        resumed student (with a warning: the run then differs from one with the EMA from the start)."""
        if "ema" in ckpt:
            load_fitting(self.ema.plain_module(), ckpt["ema"]["state_dict"], path,
                         f"this run's EMA student ({self.cfg.model.name})")
            self.ema.steps = int(ckpt["ema"]["steps"])
            return
        self.ema.plain_module().load_state_dict(self.student.plain_module().state_dict())
        self.ema.steps = self.global_step()
        if self.runtime.is_main:
            print(f"feed-fast train: warning: {path} holds no EMA (written with train.ema.enabled=false); the "
                  "average starts from the resumed student", file=sys.stderr)
