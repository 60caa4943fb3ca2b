"""One generation of training, read top to bottom: build the student and the method's distiller, the frozen
teachers, the optimizer and schedule; resume if asked; then for each epoch `train_one_epoch` and `evaluate`,
writing metrics and checkpoints. A step: loader -> teachers (own streams) -> student -> translators + fused
FEED loss -> backward -> optimizer."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..methods import Method
from ..models import build_model, count_parameters
from .checkpoint import atomic_save, student_export
from .distributed import DistInfo, all_reduce_sum, any_rank, broadcast_buffers
from .evaluate import evaluate
from .optim import build_optimizer, build_scheduler
from .precision import Precision
from .run_log import MetricsLog, Progress, truncate_metrics
from .signals import GracefulStop
from .teachers import TeacherRunner, check_feature_shapes
from .timing import StepTimer


def use_channels_last(cfg: dict, device: torch.device) -> bool:
    flag = cfg["train"]["channels_last"]
    return device.type == "cuda" if flag == "auto" else bool(flag)


def compile_model(model: nn.Module) -> None:
    """Compile the entry points the engine calls; the module (and its state dict) stays the same object."""
    for name in ("forward", "forward_features", "extract_features"):
        setattr(model, name, torch.compile(getattr(model, name)))


class GenerationTrainer:
    def __init__(self, cfg: dict, run_dir: Path, generation: int, teachers: Sequence[nn.Module], method: Method,
                 train_loader, val_loader, device: torch.device, dist: DistInfo, precision: Precision,
                 stop: GracefulStop, resume_dir: Path | None = None) -> None:
        self.cfg, self.run_dir, self.generation = cfg, run_dir, generation
        self.resume_dir = resume_dir or run_dir  # the directory `--resume` takes (sFEED: the parent)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.device, self.dist, self.precision, self.stop = device, dist, precision, stop
        self.num_classes = train_loader.num_classes
        channels_last = use_channels_last(cfg, device)
        memory_format = torch.channels_last if channels_last else torch.preserve_format

        # Same seed for every rank: identical initial parameters before DDP's broadcast.
        torch.manual_seed(cfg["train"]["seed"] + generation)
        self.student = build_model(cfg["model"]["name"], self.num_classes, **cfg["model"]["kwargs"])
        self.student.to(device, memory_format=memory_format)
        teachers = list(teachers)
        for teacher in teachers:
            teacher.to(device, memory_format=memory_format)
        teacher_channels, pool_to = [], None
        if teachers:
            teacher_channels, student_hw = check_feature_shapes(
                self.student, teachers, cfg["data"]["image_size"], device, cfg["method"]["feature_pool"])
            pool_to = student_hw if cfg["method"]["feature_pool"] == "adaptive" else None
        self.distiller = method.build(self.student, teacher_channels).to(device, memory_format=memory_format)
        self.teachers = TeacherRunner(teachers, device, need_features=self.distiller.needs_teacher_features,
                                      need_logits=self.distiller.needs_teacher_logits, pool_to=pool_to)
        if cfg["train"]["compile"]:
            for model in [self.student, *teachers]:
                compile_model(model)
        self.step_module = self.distiller
        if dist.enabled:
            self.step_module = DistributedDataParallel(
                self.distiller, device_ids=[device.index] if device.type == "cuda" else None)

        self.steps_per_epoch = len(train_loader)
        if cfg["train"]["max_steps_per_epoch"] is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg["train"]["max_steps_per_epoch"])
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training loader yields no full batch (data.batch_size={cfg['data']['batch_size']}"
                             f", {train_loader.num_samples} samples in this shard)")
        self.optimizer = build_optimizer(self.distiller, cfg["optim"], device)
        self.scheduler = build_scheduler(self.optimizer, self.steps_per_epoch, cfg["schedule"], cfg["optim"]["lr"])
        self.scaler = precision.grad_scaler()
        self.timer = StepTimer(device)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(run_dir, enabled=dist.is_main)
        self.progress = Progress(cfg["train"]["progress"], dist.is_main, cfg["train"]["log_every"])

        self.epoch, self.next_batch = 0, 0
        self.best_top1, self.history = -1.0, []
        self.epoch_sums: dict[str, float] = {}
        self.last_breakdown: dict[str, float] = {}
        self.stopped_by: str | None = None
        self.lr_used = cfg["optim"]["lr"]  # the lr of the latest step (logged per epoch)

    # --- checkpoints -----------------------------------------------------------------------------
    def export_data(self) -> dict:
        data = self.cfg["data"]
        return {"dataset": data["dataset"], "image_size": data["image_size"], "seed": self.cfg["train"]["seed"]}

    def export_meta(self) -> dict:
        return {"model": self.cfg["model"]["name"], "num_classes": self.num_classes,
                "model_kwargs": dict(self.cfg["model"]["kwargs"]), "data": self.export_data()}

    def state(self) -> dict:
        extras = {k: v for k, v in self.distiller.state_dict().items() if not k.startswith("student.")}
        return {
            "student": self.student.plain_module().state_dict(),
            "extras": extras,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "next_batch": self.next_batch,
            "epoch_sums": dict(self.epoch_sums),
            "best_top1": self.best_top1,
            "history": list(self.history),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generation": self.generation,
            "export_meta": self.export_meta(),
            "config": self.cfg,
        }

    def save(self, name: str) -> None:
        if self.dist.is_main:
            atomic_save(self.state(), self.run_dir / name)

    def load(self, path: Path) -> None:
        ckpt = torch.load(path, map_location=self.device, weights_only=True)
        self.student.plain_module().load_state_dict(ckpt["student"])
        missing, unexpected = self.distiller.load_state_dict(ckpt["extras"], strict=False)
        missing = [k for k in missing if not k.startswith("student.")]
        if missing or unexpected:
            raise ValueError(f"{path}: translator state does not match this config (missing {missing}, "
                             f"unexpected {unexpected})")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.next_batch = ckpt["epoch"], ckpt["next_batch"]
        self.epoch_sums, self.best_top1, self.history = ckpt["epoch_sums"], ckpt["best_top1"], ckpt["history"]
        torch.set_rng_state(ckpt["rng_cpu"].cpu())
        if ckpt["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng_cuda"]])
        if self.dist.is_main:
            truncate_metrics(self.run_dir, self.epoch)

    # --- the loop --------------------------------------------------------------------------------
    def fit(self, resume: bool, max_epochs: int | None = None) -> dict:
        """Train to the end of the schedule, or for `max_epochs` more epochs (then stop as a signal would)."""
        last = self.run_dir / "last.pt"
        if resume and last.exists():
            self.load(last)
        epochs = self.cfg["schedule"]["epochs"]
        interrupted = False
        first_epoch = self.epoch
        while self.epoch < epochs:
            if max_epochs is not None and self.epoch - first_epoch >= max_epochs:
                interrupted, self.stopped_by = True, f"the limit of {max_epochs} epoch(s) for this call"
                break
            train_stats = self.train_one_epoch(self.epoch, self.next_batch)
            if train_stats is None:
                interrupted = True
                break
            record = {"epoch": self.epoch, "generation": self.generation, **train_stats}
            last_epoch = self.epoch + 1 == epochs
            if (self.epoch + 1) % self.cfg["train"]["eval_every"] == 0 or last_epoch:
                record["val"] = evaluate(self.student, self.val_loader, autocast=self.precision.autocast(),
                                         dist=self.dist)
            self.epoch, self.next_batch, self.epoch_sums = self.epoch + 1, 0, {}
            self.history.append(record)
            self.log.write_epoch(record)
            top1 = record.get("val", {}).get("top1", -1.0)
            is_best = top1 > self.best_top1
            self.best_top1 = max(self.best_top1, top1)
            self.save("last.pt")
            if is_best:
                self.save("best.pt")
            self.progress.end_epoch(self.epoch_message(record))
        if not interrupted and self.dist.is_main:
            atomic_save(student_export(self.cfg["model"]["name"], self.num_classes, self.cfg["model"]["kwargs"],
                                       self.student, self.export_data()), self.run_dir / "student.pt")
        self.log.close()
        return self.summary(interrupted)

    def epoch_message(self, record: dict) -> str:
        val = record.get("val")
        acc = f" val top1 {val['top1']:.2f} top5 {val['top5']:.2f}" if val else ""
        return (f"gen {self.generation + 1} epoch {record['epoch'] + 1}/{self.cfg['schedule']['epochs']} "
                f"loss {record['loss']['total']:.4f}{acc} {record['images_per_sec']:.1f} img/s")

    def summary(self, interrupted: bool) -> dict:
        vals = [r["val"]["top1"] for r in self.history if "val" in r]
        return {
            "generation": self.generation,
            "history": self.history,
            "best_top1": max(vals) if vals else None,
            "final_top1": vals[-1] if vals else None,
            "student_params": count_parameters(self.student.plain_module()),
            "images_per_sec": self.history[-1]["images_per_sec"] if self.history else None,
            "step_breakdown_ms": self.last_breakdown,
            "interrupted": interrupted,
            "stopped_by": self.stop.signal_name or self.stopped_by,
            "resume_at": {"epoch": self.epoch, "batch": self.next_batch},
            "run_dir": str(self.run_dir),
            "export": str(self.run_dir / "student.pt") if not interrupted else None,
        }

    def should_stop(self) -> bool:
        """A signal on any rank stops every rank after the same step (torchrun may signal only some)."""
        return any_rank(self.stop.requested, self.dist)

    def train_one_epoch(self, epoch: int, start_batch: int) -> dict | None:
        """Runs the epoch from `start_batch`; returns its statistics, or None when stopped by a signal (after
        writing last.pt pointing at the next batch)."""
        self.distiller.train()
        self.timer.reset()
        self.progress.start_epoch(epoch + 1, self.steps_per_epoch, start_batch)
        sums = {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in self.epoch_sums.items()}
        images_seen, data_wait, t0 = 0, 0.0, time.perf_counter()
        batches = iter(self.train_loader.iter_from(epoch, start_batch))
        for step in range(start_batch, self.steps_per_epoch):
            wait_start = time.perf_counter()
            images, labels = next(batches)
            wait_ms = (time.perf_counter() - wait_start) * 1e3
            data_wait += wait_ms
            self.timer.add_ms("data_wait", wait_ms)
            losses = self.train_step(images, labels)
            batch = labels.shape[0]
            images_seen += batch
            for name, value in losses.items():
                sums.setdefault(name, torch.zeros((), dtype=torch.float64, device=self.device))
                sums[name] += value.detach().double() * batch
            sums.setdefault("samples", torch.zeros((), dtype=torch.float64, device=self.device))
            sums["samples"] += batch
            self.timer.step_done()
            if (step + 1) % self.cfg["train"]["log_every"] == 0:
                self.log_step(epoch, step, losses)
            self.progress.update(step, images_seen, losses)
            self.next_batch = step + 1
            if self.should_stop():
                broadcast_buffers(self.distiller, self.dist)
                self.epoch_sums = {k: v.item() for k, v in sums.items()}
                self.save("last.pt")
                self.progress.end_epoch(
                    f"stopped by {self.stop.signal_name or 'a signal on another rank'} after step {step + 1} of "
                    f"epoch {epoch + 1}; last.pt written to {self.run_dir}; resume with "
                    f"`feed-fast train --resume {self.resume_dir}`")
                return None
        elapsed = time.perf_counter() - t0
        broadcast_buffers(self.distiller, self.dist)
        names = sorted(k for k in sums if k != "samples")
        totals = all_reduce_sum(torch.stack([sums[k] for k in names] + [sums["samples"]]), self.dist).tolist()
        count = max(totals[-1], 1.0)
        loss = {k: v / count for k, v in zip(names, totals)}
        loss["total"] = sum(loss.values())
        self.last_breakdown = self.timer.collect()
        world_rate = images_seen * self.dist.world_size / max(elapsed, 1e-9)
        return {"loss": loss, "lr": self.lr_used, "images_per_sec": world_rate,
                "data_wait_fraction": data_wait / 1e3 / max(elapsed, 1e-9), "step_ms": self.last_breakdown}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        timer = self.timer
        with self.precision.autocast():
            pending = self.teachers.launch(images, timer)
            _, losses = self.step_module(images, labels, pending, timer)
            total = sum(losses.values())
        with timer("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
        with timer("optimizer"):
            self.lr_used = self.optimizer.param_groups[0]["lr"]
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        return losses

    def log_step(self, epoch: int, step: int, losses: dict) -> None:
        breakdown = self.timer.collect()
        self.last_breakdown = breakdown
        global_step = epoch * self.steps_per_epoch + step + 1
        scalars = {f"step_ms/{k}": v for k, v in breakdown.items()}
        scalars.update({f"train/{k}": v.item() for k, v in losses.items()})
        scalars["train/lr"] = self.lr_used
        self.log.scalars(scalars, global_step)
