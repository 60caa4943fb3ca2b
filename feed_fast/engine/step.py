"""One training step, put together in one place (`TrainStep.from_config`) for the trainer and for
benchmarks/bench_step.py alike. A datum's path: loader batch -> teachers (each on its own CUDA stream) ->
student -> the method's translators and loss (the Distiller) -> backward -> optimizer and lr schedule."""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..config import ConfigError, RunConfig
from ..methods import Distiller, Method
from ..models import build_model
from ..runtime import Runtime
from ..runtime.timing import BACKWARD, DATA_WAIT, OPTIMIZER, StepTimer
from .optim import build_optimizer, build_scheduler
from .teachers import TeacherRunner, check_feature_shapes

Batch = tuple[Tensor, Tensor]


def compile_model(model: nn.Module) -> None:
    """Compile the entry points the engine calls; the module (and its state dict) stays the same object."""
    for name in ("forward", "forward_features", "extract_features"):
        setattr(model, name, torch.compile(getattr(model, name)))


class TrainStep:
    def __init__(self, *, student: nn.Module, distiller: Distiller, teachers: TeacherRunner,
                 optimizer: torch.optim.Optimizer, scheduler, runtime: Runtime) -> None:
        self.student, self.distiller, self.teachers = student, distiller, teachers
        self.optimizer, self.scheduler, self.runtime = optimizer, scheduler, runtime
        self.scaler = runtime.precision.grad_scaler()
        self.timer = StepTimer(runtime.device)
        self.module = distiller  # what the step calls: DDP's wrapper under torchrun, for its gradient sync
        if runtime.dist.enabled:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.module = DistributedDataParallel(distiller, device_ids=device_ids)
        self.lr_used = optimizer.param_groups[0]["lr"]  # the lr of the latest step (logged per epoch)

    @classmethod
    def from_config(cls, cfg: RunConfig, runtime: Runtime, method: Method, teachers: Sequence[nn.Module], *,
                    num_classes: int, image_size: int, steps_per_epoch: int, seed: int) -> TrainStep:
        """A fresh student (initialised from `seed`, the same on every rank before DDP's broadcast), the method's
        Distiller around it, the frozen teachers, the optimizer and the per-iteration lr schedule."""
        device, memory_format = runtime.device, runtime.memory_format
        torch.manual_seed(seed)
        try:
            student = build_model(cfg.model.name, num_classes, **cfg.model.kwargs)
        except TypeError as err:  # a keyword the model does not take
            raise ConfigError(f"model.kwargs: {err}") from None
        student.to(device, memory_format=memory_format)
        teachers = [teacher.to(device, memory_format=memory_format) for teacher in teachers]
        teacher_channels, pool_to = [], None
        if teachers:
            teacher_channels, student_hw = check_feature_shapes(student, teachers, image_size, device,
                                                                cfg.method.feature_pool)
            pool_to = student_hw if cfg.method.feature_pool == "adaptive" else None
        distiller = method.build(student, teacher_channels).to(device, memory_format=memory_format)
        runner = TeacherRunner(teachers, device, need_features=distiller.needs_teacher_features,
                               need_logits=distiller.needs_teacher_logits, pool_to=pool_to)
        if cfg.train.compile:
            for model in [student, *teachers]:
                compile_model(model)
        optimizer = build_optimizer(distiller, cfg.optim, device)
        scheduler = build_scheduler(optimizer, steps_per_epoch, cfg.schedule, cfg.optim.lr)
        return cls(student=student, distiller=distiller, teachers=runner, optimizer=optimizer, scheduler=scheduler,
                   runtime=runtime)

    def timed(self, batches: Iterable[Batch], limit: int | None = None) -> Iterator[Batch]:
        """The first `limit` batches (all when None), the wait for each recorded as the data_wait section."""
        batches = iter(batches if limit is None else itertools.islice(batches, limit))
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            self.timer.add_ms(DATA_WAIT, (time.perf_counter() - start) * 1e3)
            yield batch

    def __call__(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """One step; returns the named losses (0-d tensors, not synced)."""
        timer, precision = self.timer, self.runtime.precision
        with precision.autocast():
            pending = self.teachers.launch(images, timer)
            _, losses = self.module(images, labels, pending, timer)
            total = sum(losses.values())
        with timer(BACKWARD):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
        with timer(OPTIMIZER):
            self.lr_used = self.optimizer.param_groups[0]["lr"]
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        timer.step_done()
        return losses
