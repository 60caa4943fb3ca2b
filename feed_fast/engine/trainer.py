"""One generation of training, read top to bottom: `from_config` assembles the step (student, the method's
Distiller, frozen teachers, optimizer, schedule); `fit` resumes if asked, then runs `train_one_epoch` and
`evaluate` per epoch, writing metrics and checkpoints. The step itself is step.py's `TrainStep`.

Counting with `train.accumulate` = N: a step is an optimizer step (N micro-batches of data.batch_size); steps per
epoch, the lr schedule, `log_every`, `max_steps_per_epoch` and TensorBoard's x axis count them, and an epoch
uses steps * N micro-batches (fewer than N left over at its end are not used, as the loader drops its last
short batch). Checkpoints and signal stops happen between optimizer steps only: a stop signal mid-step
finishes the step's remaining micro-batches first, so a checkpoint never holds half-accumulated gradients and
`next_batch` (the loader position, in micro-batches) is a multiple of N.

Checkpoints: last.pt at every epoch end, at a stop signal, and inside the epoch every `train.checkpoint_minutes`
(at the first step boundary after that long: rank 0 decides, and the one message the ranks already exchange
between steps, a stop signal's number, carries the decision). The step loop waits only for the copy of the
state to host memory; the files are written by a background thread (checkpoint.py's CheckpointWriter), and a
time-based checkpoint is put off while the previous one is still being written. last.pt records the layout
it was written with (layout.py) and the position as an optimizer step of the epoch, so a run continued on
another number of processes resumes at the same step and sample."""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..atomic_files import atomic_copy, atomic_save
from ..config import ConfigError, RunConfig
from ..methods import Method
from ..models import count_parameters
from ..runtime import DistInfo, Runtime
from ..runtime.distributed import agree, broadcast_buffers, sync_batch_norm
from .checkpoint import (
    BEST,
    EMA_EXPORT,
    EXPORT,
    LAST,
    LAST_PREVIOUS,
    CheckpointError,
    CheckpointWriter,
    check_training_checkpoint,
    load_fitting,
    read_checkpoint,
    student_export,
    to_host,
)
from .data import Loaders
from .epoch_stats import EpochStats
from .evaluate import evaluate
from .layout import Layout, checkpoint_layout
from .run_log import EpochProgress, MetricsLog
from .step import TrainStep


class WithSyncBatchNorm:
    """`train.sync_bn`: the method, with the BatchNorm layers of the Distiller it builds (the student's and the
    translators') turned into SyncBatchNorm under torchrun, before TrainStep wraps it in DDP. The teachers (frozen,
    in eval mode) and the EMA copy (taken from the plain student) keep plain BatchNorm."""

    def __init__(self, method: Method, dist: DistInfo) -> None:
        self.method, self.dist = method, dist

    def build(self, *args, **kwargs) -> nn.Module:
        return sync_batch_norm(self.method.build(*args, **kwargs), self.dist)

    def __getattr__(self, name: str):
        return getattr(self.method, name)


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
        self.layout = Layout(runtime.dist.world_size, cfg.data.batch_size, step.accumulate)
        self.epoch, self.next_batch = 0, 0
        self.stats = EpochStats(runtime.device)
        self.best_top1, self.history = -1.0, []
        self.last_breakdown: dict[str, float] = {}
        self.stopped_by: str | None = None
        self.writer = CheckpointWriter()  # rank 0's background writes
        self.last_checkpoint = time.monotonic()  # when the latest checkpoint was taken (the time-based clock)
        self.checkpoint_stalls_ms: list[float] = []  # how long the step loop waited, per checkpoint
        self.written: deque[str] = deque()  # lines about finished mid-epoch checkpoints, printed between steps
        self.resumed_from: dict | None = None  # where a resumed run continues (after `load`)
        self.teacher_check: dict | None = None  # teacher_check.py's record (set by api.train): in epoch 0's record

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
        if cfg.train.sync_bn:
            method = WithSyncBatchNorm(method, runtime.dist)
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
    def fit(self, resume: bool, max_epochs: int | None = None, *, announce=None) -> dict:
        """Train to the end of the schedule, or for `max_epochs` more epochs (then stop as a signal would).
        `announce(trainer)` is called on rank 0 once the starting point is known (the start block).

        Per epoch, best.pt (when the epoch is the best so far), then last.pt (the epoch's commit point; the one
        it replaces becomes last.prev.pt; a hard link to best.pt when they hold the same state), then
        metrics.jsonl rewritten from last.pt's history, all written in the background. A crash at any moment
        costs at most the steps since the latest checkpoint (a signal: nothing) and leaves metrics.jsonl matching
        the checkpoint a resume starts from, which rewrites it again."""
        if resume:
            if (self.run_dir / LAST).exists():
                self.load(self.run_dir / LAST)
            elif (self.run_dir / LAST_PREVIOUS).exists():  # removed by hand: do not silently start over
                raise CheckpointError(self.run_dir / LAST, "does not exist", use_instead=f"copy one to {LAST} to "
                                      "resume from it, or start over with --overwrite")
        if announce is not None and self.runtime.is_main:
            announce(self)
        self.log.restart(self.history, self.global_step())  # metrics.jsonl == the history training continues
        self.last_checkpoint = time.monotonic()
        try:
            interrupted = self.run_epochs(max_epochs)
            self.writer.wait()  # the last checkpoint is on disk (or its error raised) before the exports
        except BaseException:
            self.finish_pending_write()
            raise
        if not interrupted and self.runtime.is_main:
            atomic_save(self.export(self.student), self.run_dir / EXPORT)
            if self.ema is not None:
                atomic_save(self.export(self.ema.model), self.run_dir / EMA_EXPORT)
                if self.ema.unaveraged():
                    print(f"feed-fast train: warning: {self.ema.unaveraged()}", file=sys.stderr, flush=True)
        self.log.close()
        return self.summary(interrupted)

    def finish_pending_write(self) -> None:
        """On the way out after an error: let a checkpoint under way reach the disk; its own error, if any, is
        dropped (the first error is the one reported)."""
        with contextlib.suppress(Exception):
            self.writer.wait()

    def run_epochs(self, max_epochs: int | None) -> bool:
        """The epoch loop; True when stopped before the end of the schedule."""
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
            if self.epoch == 0 and self.teacher_check is not None:
                record["teacher_check"] = self.teacher_check
            if (self.epoch + 1) % self.cfg.train.eval_every == 0 or self.epoch + 1 == epochs:
                record["val"] = self.evaluate(self.student)
                if self.ema is not None:  # beside the raw student; "best" follows the raw student
                    record["val_ema"] = self.evaluate(self.ema.model)
            self.epoch, self.next_batch, self.stats = self.epoch + 1, 0, EpochStats(self.runtime.device)
            self.history.append(record)
            top1 = record.get("val", {}).get("top1", -1.0)
            is_best, self.best_top1 = top1 > self.best_top1, max(self.best_top1, top1)
            self.checkpoint(best=is_best)
            self.log.epoch_scalars(record, self.global_step())
            self.progress.end_epoch(self.epoch_message(record))
        return interrupted

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
            self.progress.update(step, self.stats.images * self.dist.world_size, losses)
            stop, checkpoint_due = self.between_steps(last_of_epoch=step + 1 == self.steps_per_epoch)
            if stop:
                self.stop_mid_epoch(epoch, step)
                return None
            if checkpoint_due:
                self.checkpoint()
        self.broadcast_buffers()
        self.last_breakdown = self.step.timer.collect()
        stats = self.stats.summary(self.dist, self.step.timer)
        return {"loss": stats.pop("loss"), "lr": self.step.lr_used, **stats, "step_ms": self.last_breakdown}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.step(images, labels)

    def between_steps(self, *, last_of_epoch: bool) -> tuple[bool, bool]:
        """(stop, checkpoint now), the same on every rank: a stop signal on any rank stops every rank after the
        same step (torchrun may signal only some), and rank 0's clock decides a time-based checkpoint; both
        travel in the one small all-reduce the ranks exchange per optimizer step."""
        while self.written:  # finished background writes (appended by the writer's thread), between steps
            self.progress.note(self.written.popleft())
        signal_number, due = agree([self.runtime.stop.signal_number, int(self.checkpoint_due(last_of_epoch))],
                                   self.dist)
        if signal_number:
            self.stopped_by = signal.Signals(signal_number).name
        return bool(signal_number), bool(due)

    def checkpoint_due(self, last_of_epoch: bool) -> bool:
        """Rank 0: `train.checkpoint_minutes` have passed since the latest checkpoint, the previous one is
        written, and the epoch's own checkpoint is not about to follow."""
        minutes = self.cfg.train.checkpoint_minutes
        return (self.runtime.is_main and minutes > 0 and not last_of_epoch and not self.writer.busy
                and time.monotonic() - self.last_checkpoint >= minutes * 60)

    def broadcast_buffers(self) -> None:
        """Every rank takes rank 0's BatchNorm statistics (the student's and the EMA's) before evaluating or
        saving: within an epoch each rank's running statistics saw its own batches."""
        broadcast_buffers(self.distiller, self.dist)
        if self.ema is not None:
            broadcast_buffers(self.ema.model, self.dist)

    def stop_mid_epoch(self, epoch: int, step: int) -> None:
        self.broadcast_buffers()
        self.checkpoint()
        self.writer.wait()
        self.written.clear()
        received = "" if self.runtime.stop.requested else " (on another process)"
        self.progress.end_epoch(
            f"stopped by {self.stopped_by}{received} after step {step + 1} of epoch {epoch + 1}; {LAST} written to "
            f"{self.run_dir}; resume with `feed-fast train --resume {self.resume_dir}` (or the same command with "
            "--auto-resume)")

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
            "checkpoint_stall_ms": self.checkpoint_stalls_ms,
            "interrupted": interrupted,
            "stopped_by": self.stopped_by,
            "resume_at": {"epoch": self.epoch, "batch": self.next_batch},
            "run_dir": str(self.run_dir),
            "export": str(self.run_dir / EXPORT) if not interrupted else None,
            "final_top1_ema": vals_ema[-1] if vals_ema else None,
            "export_ema": str(self.run_dir / EMA_EXPORT) if self.ema is not None and not interrupted else None,
        }

    # --- checkpoints -----------------------------------------------------------------------------
    def export(self, model: nn.Module) -> dict:
        """model.pt's content for `model` (the student, or its EMA)."""
        return student_export(self.cfg.model.name, self.loaders.train.num_classes, self.cfg.model.kwargs, model,
                              self.export_data())

    def export_data(self) -> dict:
        """What the student was trained on, for `feed-fast eval` (the image size the loader served)."""
        return {"dataset": self.cfg.data.dataset, "image_size": self.loaders.train.image_size,
                "seed": self.cfg.train.seed}

    def state(self, epoch_sums: dict[str, float]) -> dict:
        """last.pt's content (tensors still the live ones: `to_host` copies them); `epoch_sums`: the epoch's loss
        sums over every rank."""
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
            "step_in_epoch": self.next_batch // step.accumulate,
            "layout": {**self.layout.to_dict(), "steps_per_epoch": self.steps_per_epoch},
            "epoch_sums": epoch_sums,
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

    def checkpoint(self, *, best: bool = False) -> None:
        """last.pt (and best.pt first when `best`), then metrics.jsonl from last.pt's history, as one background
        write; the caller waits only for the state's copy to host memory. Every rank calls it at the same step
        (the epoch's loss sums are added up over the ranks); rank 0 writes."""
        epoch_sums = self.stats.state(self.dist)
        self.last_checkpoint = time.monotonic()
        if not self.runtime.is_main:
            return
        started = time.perf_counter()
        self.writer.wait()  # never two at once (a time-based one is only taken when none is under way)
        state = to_host(self.state(epoch_sums))
        stall_ms = (time.perf_counter() - started) * 1e3
        self.checkpoint_stalls_ms.append(round(stall_ms, 3))
        run_dir, log, history = self.run_dir, self.log, state["history"]
        mid_epoch = (f"{LAST} written: epoch {self.epoch + 1}, step {state['step_in_epoch']} of "
                     f"{self.steps_per_epoch} (the step loop waited {stall_ms:.0f} ms)") if self.next_batch else None

        def write() -> None:
            if best:  # best.pt first: a crash between the two never leaves last.pt ahead of it
                atomic_save(state, run_dir / BEST)
                atomic_copy(run_dir / BEST, run_dir / LAST, keep_previous=run_dir / LAST_PREVIOUS)
            else:
                atomic_save(state, run_dir / LAST, keep_previous=run_dir / LAST_PREVIOUS)
            log.write_history(history)
            if mid_epoch:
                self.written.append(mid_epoch)

        self.writer.submit(write)

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
        written = checkpoint_layout(ckpt) or self.layout
        self.check_layout(ckpt, written, path)
        step_in_epoch = ckpt["next_batch"] // written.accumulate
        self.epoch, self.next_batch = ckpt["epoch"], step_in_epoch * step.accumulate
        if self.ema is not None:
            self.load_ema(ckpt, path)
        self.stats = EpochStats(device, ckpt["epoch_sums"], keep=self.runtime.is_main)
        self.best_top1, self.history = ckpt["best_top1"], ckpt["history"]
        torch.set_rng_state(ckpt["rng_cpu"].cpu())
        if ckpt.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng_cuda"]])
        self.resumed_from = {"path": str(path), "epoch": self.epoch, "step": step_in_epoch,
                             "written_by": written.to_dict()}

    def check_layout(self, ckpt: dict, written: Layout, path: Path) -> None:
        """A last.pt continues only on the layout it was written with, or one with the same global batch and
        micro-batch on another number of processes (layout.py), and only over epochs of the same length."""
        here = self.layout
        if ckpt["next_batch"] % written.accumulate:
            raise CheckpointError(path, f"stops after micro-batch {ckpt['next_batch']}, inside an optimizer step of "
                                  f"train.accumulate={written.accumulate}", look_beside=False)
        if (written.global_batch, written.micro_batch) != (here.global_batch, here.micro_batch):
            if ckpt["next_batch"] % here.accumulate:
                raise CheckpointError(path, f"stops after micro-batch {ckpt['next_batch']}, inside an optimizer step "
                                      f"of train.accumulate={here.accumulate} (it was written with another value)",
                                      look_beside=False)
            raise CheckpointError(path, f"was written by {written.describe()}; this run's config gives "
                                  f"{here.describe()}: a run continues with the global batch and micro-batch it "
                                  "started with", look_beside=False)
        steps = (ckpt.get("layout") or {}).get("steps_per_epoch")
        if steps is not None and steps != self.steps_per_epoch:
            why = (" (synthetic data holds 10 batches per process: its size follows the number of processes)"
                   if self.cfg.data.dataset == "synthetic" else " (the data or train.max_steps_per_epoch changed)")
            raise CheckpointError(path, f"was written with {steps} optimizer steps per epoch, this run has "
                                  f"{self.steps_per_epoch}{why}", look_beside=False)

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
