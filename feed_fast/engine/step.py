"""One training step, put together in one place (`TrainStep.from_config`) for the trainer and for
benchmarks/bench_step.py alike. A datum's path: loader batch -> teachers (each on its own CUDA stream) ->
student -> the translator bodies (while the teachers still run) -> wait for the teachers -> the method's losses
(the Distiller; pFEED: the fused FEED op + CE) -> backward -> optimizer and lr schedule.

Three ways to run it, chosen by `train.compile` (see `step_mode`): eager; `true`, the student's and teachers'
forwards through `torch.compile` (the switch's meaning before `step` existed); `step`, the whole step as
compiled units without graph breaks, replayed as one CUDA graph on a GPU (compiled_step.py).

The recipe switches act here: `train.label_smoothing` is handed to the Distiller (every method's CE term);
`train.accumulate` = N makes a call one micro-batch, N of them one optimizer step (each micro-batch's loss scaled
by 1/N, gradients summed; under DDP synchronised on the N-th only, via `no_sync`); `train.ema` updates the
student's moving average right after each optimizer step (ema.py). torchvision's recipe (docs/recipe.md):
`train.mixup_alpha` / `train.cutmix_alpha` mix each batch on the device before the teachers and the student see it
(mix.py; the labels become soft), `optim.clip_grad_norm` clips the gradients before each update (optim.py), in
every mode."""
from __future__ import annotations

import contextlib
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
from ..runtime.device import compile_for
from ..runtime.timing import BACKWARD, COMPILED_STEP, DATA_WAIT, OPTIMIZER, StepTimer
from .ema import StudentEMA
from .mix import BatchMix
from .optim import GradientClip, build_optimizer, build_scheduler
from .optimizer_state import accept_pre_grouping_state
from .teachers import TeacherRunner, check_feature_shapes

Batch = tuple[Tensor, Tensor]
STEP_MODES = ("eager", "modules", "step")


def step_mode(compile_setting: bool | str) -> str:
    """`train.compile` -> how the step runs: false -> "eager"; true -> "modules" (torch.compile of the
    student's and teachers' forwards, the switch's original meaning, kept); "step" -> "step"."""
    if compile_setting == "step":
        return "step"
    if isinstance(compile_setting, bool):
        return "modules" if compile_setting else "eager"
    raise ValueError(f"train.compile must be true, false or 'step', got {compile_setting!r}")


def compile_model(model: nn.Module, device: torch.device) -> None:
    """Compile the entry points the engine calls; the module (and its state dict) stays the same object."""
    for name in ("forward", "forward_features", "extract_features"):
        setattr(model, name, compile_for(getattr(model, name), device))


def stack_losses(losses: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(total, vector) of a step's named 0-d losses: one stack and one sum (a single loss: views only)."""
    values = list(losses.values())
    if len(values) == 1:
        return values[0], values[0].reshape(1)
    vector = torch.stack(values)
    return vector.sum(), vector


class NamedLosses(dict):
    """What a step returns: loss name -> 0-d tensor (detached), all views of one vector (`vector`), so that
    stacking them for the epoch sums costs nothing and nothing is read on the host."""

    def __init__(self, names: Sequence[str], vector: Tensor) -> None:
        super().__init__(zip(names, vector.unbind(0)))
        self.vector = vector


class TrainStep:
    def __init__(self, *, student: nn.Module, distiller: Distiller, teachers: TeacherRunner,
                 optimizer: torch.optim.Optimizer, scheduler, runtime: Runtime, mode: str = "eager",
                 accumulate: int = 1, ema: StudentEMA | None = None, clip: GradientClip | None = None,
                 mix: BatchMix | None = None) -> None:
        if mode not in STEP_MODES:
            raise ValueError(f"mode must be one of {STEP_MODES}, got {mode!r}")
        if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
            raise ValueError(f"accumulate must be an int >= 1 (train.accumulate), got {accumulate!r}")
        self.student, self.distiller, self.teachers = student, distiller, teachers
        self.optimizer, self.scheduler, self.runtime, self.mode = optimizer, scheduler, runtime, mode
        self.accumulate, self.ema = accumulate, ema
        self.clip, self.mix = clip, mix  # optim.clip_grad_norm, train.mixup_alpha / cutmix_alpha (or None)
        self.micro = 0  # micro-batches of the current optimizer step done so far (0 between optimizer steps)
        self.scaler = runtime.precision.grad_scaler()
        self.timer = StepTimer(runtime.device)
        self.module = distiller  # what the step calls: DDP's wrapper under torchrun, for its gradient sync
        if runtime.dist.enabled:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.module = DistributedDataParallel(distiller, device_ids=device_ids)
        self.lr_used = optimizer.param_groups[0]["lr"]  # the lr of the latest step (logged per epoch)
        self.compiled = None
        if mode == "step":
            from .compiled_step import CompiledStep

            self.compiled = CompiledStep(self)

    @classmethod
    def from_config(cls, cfg: RunConfig, runtime: Runtime, method: Method, teachers: Sequence[nn.Module], *,
                    num_classes: int, image_size: int, steps_per_epoch: int, seed: int) -> TrainStep:
        """A fresh student (initialised from `seed`, the same on every rank before DDP's broadcast), the method's
        Distiller around it, the frozen teachers, the optimizer and the per-iteration lr schedule."""
        device, memory_format = runtime.device, runtime.memory_format
        mode = step_mode(cfg.train.compile)
        # `steps_per_epoch` counts optimizer steps (with train.accumulate, each is N micro-batches)
        if mode == "step":
            check_step_mode(cfg, runtime)
        torch.manual_seed(seed)
        try:
            student = build_model(cfg.model.name, num_classes, **cfg.model.kwargs)
        except TypeError as err:  # a keyword the model does not take
            raise ConfigError(f"model.kwargs: {err}") from None
        student.to(device, memory_format=memory_format)
        ema = StudentEMA(student, cfg.train.ema) if cfg.train.ema.enabled else None  # copied before any compile
        teachers = [teacher.to(device, memory_format=memory_format) for teacher in teachers]
        teacher_channels, pool_to = [], None
        if teachers:
            teacher_channels, student_hw = check_feature_shapes(student, teachers, image_size, device,
                                                                cfg.method.feature_pool)
            pool_to = student_hw if cfg.method.feature_pool == "adaptive" else None
        distiller = method.build(student, teacher_channels).to(device, memory_format=memory_format)
        distiller.label_smoothing = cfg.train.label_smoothing  # the one place every method's CE gets it from
        runner = TeacherRunner(teachers, device, need_features=distiller.needs_teacher_features,
                               need_logits=distiller.needs_teacher_logits, pool_to=pool_to,
                               compiled=mode == "step")
        if mode == "modules":
            for model in [student, *teachers]:
                compile_model(model, device)
        optimizer = build_optimizer(distiller, cfg.optim, device)
        accept_pre_grouping_state(optimizer, distiller)  # last.pt from before the translators were grouped
        if mode == "step" and type(optimizer) is not torch.optim.SGD:
            raise ConfigError(f"train.compile=step needs torch's SGD (its lr can live on the device); "
                              f"optim.apex gave {type(optimizer).__name__}: set optim.apex=false")
        scheduler = build_scheduler(optimizer, steps_per_epoch, cfg.schedule, cfg.optim.lr)
        clip = GradientClip(optimizer, cfg.optim.clip_grad_norm) if cfg.optim.clip_grad_norm is not None else None
        mix = None
        if cfg.train.mixup_alpha > 0 or cfg.train.cutmix_alpha > 0:
            mix = BatchMix(mixup_alpha=cfg.train.mixup_alpha, cutmix_alpha=cfg.train.cutmix_alpha,
                           num_classes=num_classes, seed=seed, accumulate=cfg.train.accumulate,
                           rank=runtime.dist.rank, world_size=runtime.dist.world_size)
        return cls(student=student, distiller=distiller, teachers=runner, optimizer=optimizer, scheduler=scheduler,
                   runtime=runtime, mode=mode, accumulate=cfg.train.accumulate, ema=ema, clip=clip, mix=mix)

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

    @property
    def at_boundary(self) -> bool:
        """True between optimizer steps (no micro-batch of the next one taken yet): where checkpoints and stops
        may happen with `train.accumulate` > 1."""
        return self.micro == 0

    def __call__(self, images: Tensor, labels: Tensor) -> NamedLosses:
        """One micro-batch (one batch when train.accumulate is 1); the N-th of an optimizer step ends with the
        update. Returns its named losses (unscaled, 0-d tensors, not synced)."""
        first, last = self.micro == 0, self.micro + 1 == self.accumulate
        if self.mix is not None:  # the teachers and the student see the same mixed batch; the labels become soft
            images, labels = self.mix(images, labels, self.scheduler.last_epoch, self.micro)
        if self.compiled is not None:
            with self.timer(COMPILED_STEP):
                names, vector = self.compiled(images, labels, first=first, last=last)
                if last and self.ema is not None:
                    self.ema.after_optimizer_step()
            losses = NamedLosses(names, vector)
        else:
            losses = self.eager(images, labels, first=first, last=last)
        self.micro = 0 if last else self.micro + 1
        if last:
            self.advance_schedule()
        return losses

    def eager(self, images: Tensor, labels: Tensor, *, first: bool, last: bool) -> NamedLosses:
        timer, precision = self.timer, self.runtime.precision
        with self.gradient_sync(last):
            with precision.autocast():
                pending = self.teachers.launch(images, timer)
                _, losses = self.module(images, labels, pending, timer)
                total, vector = stack_losses(losses)  # the epoch sums read the vector
            with timer(BACKWARD):
                if first:
                    self.optimizer.zero_grad(set_to_none=True)
                if self.accumulate > 1:  # the mean over the optimizer step's N micro-batches
                    total = total / self.accumulate
                self.scaler.scale(total).backward()
        if last:
            with timer(OPTIMIZER):
                if self.clip is not None:
                    self.scaler.unscale_(self.optimizer)  # the true gradients' norm (fp16: the loss scale off)
                    self.clip()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.after_optimizer_step()
        return NamedLosses(list(losses), vector.detach())

    def gradient_sync(self, last: bool):
        """DDP all-reduces gradients in the backward of the optimizer step's last micro-batch only: the earlier
        ones run (forward and backward) under `no_sync`, their gradients summed locally."""
        if last or not isinstance(self.module, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.module.no_sync()

    def advance_schedule(self) -> None:
        """After the update: remember the lr it used, move the per-iteration schedule on, count the step."""
        self.lr_used = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.timer.step_done()


def check_step_mode(cfg: RunConfig, runtime: Runtime) -> None:
    """What `train.compile=step` cannot hold, refused before any work."""
    if runtime.dist.enabled:
        raise ConfigError("train.compile=step runs one process (DDP's gradient hooks sit between the compiled "
                          "parts); under torchrun use train.compile=true or false")
    if runtime.precision.name == "fp16":
        raise ConfigError("train.compile=step cannot use train.precision=fp16: its GradScaler reads the "
                          "overflow flag on the host every step; use bf16 (or fp32)")
