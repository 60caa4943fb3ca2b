"""`train.compile: step`: the whole training step as compiled units, each `torch.compile(fullgraph=True)` (no
graph break), and on CUDA all of them replayed as one CUDA graph.

The units, in the order a datum meets them:
1. each teacher's forward: an inference call (`no_grad`) on its own CUDA stream (teachers.py);
2. the student's forward and the method's student-only work (pFEED: the grouped translator bodies), while the
   teachers run (`Distiller.run_student`);
3. after the wait for the teachers, the method's losses (pFEED: the fused FEED op's custom-op node, CE) stacked
   into one vector and summed. AOTAutograd compiles 2 and 3 with their backward graphs, so `total.backward()`
   runs compiled code;
4. the optimizer update: torch's own `SGD.step` body compiled (foreach SGD on the CPU); on CUDA torch's fused
   SGD, which is one kernel already.

Why these units and not one graph: in torch 2.11-2.14 Dynamo graph-breaks on `Tensor.backward()` and
`torch.autograd.grad` unless the experimental `torch._dynamo.config.trace_autograd_ops` is set (2.14; off by
default, and not a switch a training run should depend on), compiled autograd (`compiled_autograd`) captures the
backward as a separate graph anyway, and `Optimizer.step` graph-breaks on purpose around its body
(`_use_grad_for_differentiable`). So each unit is one full graph, and on CUDA the CUDA graph is what makes the
step one launch: PyTorch's whole-network capture (warm-up steps on a side stream, then forward, backward and
`optimizer.step()` captured together), with the teachers' streams forked and joined inside the capture, so the
graph keeps their overlap with the student.

What a graph cannot hold is kept out of the step: the lr is a device tensor per param group (`StaticLR`), filled
from the scheduler's Python float before each step (checkpoints and the scheduler keep the float); batches are
copied into static input buffers, so shapes are fixed (the training loader drops its last short batch); fp16's
GradScaler (reads the overflow flag on the host) and DDP are refused by `check_step_mode`.

`train.accumulate` = N > 1: each micro-batch runs the compiled units 2 and 3 (its loss scaled by 1/N inside
unit 3) and its backward, gradients summed in `.grad`; the update (unit 4) runs after the N-th. The units are
not captured as a CUDA graph then: one graph would have to hold N forwards and backwards (N static input
buffers, the first backward writing the gradients and the others adding), a capture no GPU here has verified;
accumulation is for memory-bound ImageNet steps, where the step is compute-bound and a graph gains little.
`train.ema`'s update runs after the update, outside the compiled units and the graph (one `_foreach_lerp_`,
no host sync).
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from ..methods import TeacherOutputs
from ..ops.backend_choice import launch_mode
from ..runtime.device import compile_for
from .step import stack_losses

CUDA_WARMUP_STEPS = 3  # compiled units compile and autotune, momentum buffers appear: then capture


class StaticLR:
    """Each param group's lr as a 0-d device tensor that a compiled update or a CUDA graph reads. The groups
    keep their Python floats (what the scheduler writes and checkpoints hold); `fill()` copies them in (one
    small kernel per group, no sync) and `swapped_in()` lends the tensors to the optimizer for one update.

    The groups are read from the optimizer at every call, never kept: `optimizer.load_state_dict` (a resume)
    replaces `param_groups` with new dicts, and a list kept from before would feed dead dicts, leaving the
    optimizer a Python float that a CUDA graph would freeze at its capture-time value."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self.optimizer = optimizer
        self.tensors = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=device)
                        for g in optimizer.param_groups]

    @property
    def groups(self) -> list[dict]:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.tensors):
            raise RuntimeError(f"the optimizer has {len(groups)} param groups, the compiled step was built for "
                               f"{len(self.tensors)}")
        return groups

    def fill(self) -> None:
        for tensor, group in zip(self.tensors, self.groups):
            tensor.fill_(group["lr"])

    @contextlib.contextmanager
    def swapped_in(self):
        groups = self.groups
        saved = [g["lr"] for g in groups]
        for tensor, group in zip(self.tensors, groups):
            group["lr"] = tensor
        try:
            yield
        finally:
            for lr, group in zip(saved, groups):
                group["lr"] = lr


def create_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """SGD's momentum buffers as zeros before the first step, so the first update is the compiled (and
    captured) code of every later one. The same numbers as SGD's own first step without dampening (ours has
    none): 0 * momentum + grad is exactly grad."""
    for group in optimizer.param_groups:
        if group.get("momentum", 0) == 0 or group.get("dampening", 0) != 0:
            continue
        for p in group["params"]:
            optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format))


def optimizer_update(optimizer: torch.optim.Optimizer, device: torch.device) -> Callable[[], None]:
    """The optimizer's own step body (without lr_scheduler's call-counting wrapper and `Optimizer.step`'s
    deliberate graph breaks), compiled with fullgraph unless the optimizer is fused (one kernel already)."""
    body = inspect.unwrap(type(optimizer).step)
    optimizer._opt_called = True  # what lr_scheduler's wrapper records; the body is called past that wrapper

    def update() -> None:
        with torch.no_grad():
            body(optimizer)

    return update if optimizer.defaults.get("fused") else compile_for(update, device, fullgraph=True)


class CompiledStep:
    def __init__(self, step) -> None:
        """`step`: the TrainStep whose parts this runs (its distiller, teachers, optimizer, runtime)."""
        self.step = step
        distiller = step.distiller
        self.device = step.runtime.device
        self.front = compile_for(distiller.run_student, self.device, fullgraph=True)

        accumulate = step.accumulate

        def losses(feature, logits, labels, teacher_features, teacher_logits, early):
            teachers = TeacherOutputs(teacher_features, teacher_logits) if step.teachers.teachers else None
            named = distiller.losses(feature, logits, labels, teachers, **early)
            total, vector = stack_losses(named)
            if accumulate > 1:  # the mean over the optimizer step's micro-batches, as the eager step scales it
                total = total / accumulate
            return total, vector, tuple(named)

        self.back = compile_for(losses, self.device, fullgraph=True)
        create_momentum_buffers(step.optimizer)
        self.update = optimizer_update(step.optimizer, self.device)
        self.lr = StaticLR(step.optimizer, self.device)
        self.constants = TracedConstants(step)
        replay = self.device.type == "cuda" and step.accumulate == 1
        self.graph = CudaGraphReplay(self.run, step.optimizer) if replay else None

    def run(self, images: Tensor, labels: Tensor, *, first: bool = True, last: bool = True,
            capturing: bool = False) -> tuple[tuple[str, ...], Tensor]:
        """One micro-batch through the compiled units (a whole step when it is both the `first` and the `last` of
        its optimizer step), nothing read on the host: (loss names, loss vector)."""
        step = self.step
        # autocast's cast cache off in every step, captured or not: Dynamo guards on the flag (a change would
        # recompile inside the capture), and a graph must not keep casts cached across replays
        with step.runtime.precision.autocast(cache_enabled=False):
            pending = step.teachers.launch(images)
            feature, logits, early = self.front(images)
            outputs = pending.wait() if pending is not None else TeacherOutputs(None, None)
            total, vector, names = self.back(feature, logits, labels, outputs.features, outputs.logits, early)
        if first and not capturing:  # a captured step's gradients live in the graph's memory: never None there
            step.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if last:
            if step.clip is not None:  # optim.clip_grad_norm: foreach, nothing read on the host (optim.py)
                step.clip()
            with self.lr.swapped_in():
                self.update()
        return names, vector.detach()

    def __call__(self, images: Tensor, labels: Tensor, *, first: bool = True,
                 last: bool = True) -> tuple[tuple[str, ...], Tensor]:
        self.constants.check()
        if self.graph is not None:  # train.accumulate == 1: every call is a whole step
            self.lr.fill()
            return self.graph(images, labels)
        if last:
            self.lr.fill()
        return self.run(images, labels, first=first, last=last)


SCALARS = (bool, int, float)


def hyperparameters(group: dict) -> list[tuple[str, object]]:
    """A param group's settings other than its parameters and its lr."""
    return [(k, v) for k, v in group.items() if k not in ("params", "lr") and (v is None or type(v) in SCALARS)]


class TracedConstants:
    """Every host value the compiled units read while tracing, other than the lr (`StaticLR` refills that one):
    the optimizer's hyperparameters per param group (momentum, weight decay, nesterov, ...), the float, int and
    bool settings of the Distiller and each of its modules (beta, the KD weight and temperature, label smoothing,
    BatchNorm's momentum and eps, ...) and `train.accumulate`. A CUDA graph keeps each as it was at capture (on
    the CPU, Dynamo would recompile). Nothing in the engine changes them during a run; `check()`, before every
    step (tens of microseconds of Python, no device work), turns a change made from outside (a user's own schedule for
    beta, a resumed optimizer with another momentum) into an error naming it, never a silently frozen value."""

    def __init__(self, step) -> None:
        self.step = step
        # the modules' attribute dicts, read by key at each check (walking the module tree costs 20x more)
        self.module_keys = [(f"{name or 'distiller'}.{key}", vars(module), key)
                            for name, module in step.distiller.named_modules()
                            for key, value in vars(module).items()
                            if type(value) in SCALARS and not key.startswith("_") and key != "training"]
        self.watched = self.read()
        self.watched_values = list(self.watched.values())

    def read(self) -> dict[str, object]:
        values = {"train.accumulate": self.step.accumulate}
        for i, group in enumerate(self.step.optimizer.param_groups):  # a resume replaces the groups: read anew
            values.update({f"optimizer group {i} {k}": v for k, v in hyperparameters(group)})
        values.update({label: attrs.get(key) for label, attrs, key in self.module_keys})
        return values

    def check(self) -> None:
        values = [self.step.accumulate]
        for group in self.step.optimizer.param_groups:
            values += [v for _, v in hyperparameters(group)]
        values += [attrs.get(key) for _, attrs, key in self.module_keys]
        if values == self.watched_values:
            return
        now = self.read()
        if now != self.watched:
            changed = sorted(k for k in now.keys() | self.watched.keys() if now.get(k) != self.watched.get(k))
            key = changed[0]
            raise RuntimeError(f"train.compile=step: {key} changed from {self.watched.get(key)!r} to "
                               f"{now.get(key)!r} after the step was compiled"
                               f"{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}; a compiled "
                               "step (and its CUDA graph) keeps the value it was built with: only the learning "
                               "rate may change during a run in step mode")


class CudaGraphReplay:
    """PyTorch's whole-network CUDA-graph capture of `run(images, labels)`: warm-up steps on a side stream, one
    capture into static input buffers, then every step is two copies and one replay. Each warm-up step and the
    captured one are real steps (a capture records without running, so it is replayed at once)."""

    def __init__(self, run, optimizer: torch.optim.Optimizer, warmup: int = CUDA_WARMUP_STEPS) -> None:
        self.run, self.optimizer, self.warmup, self.done = run, optimizer, warmup, 0
        self.graph = self.static_in = self.static_out = self.side = None

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[tuple[str, ...], Tensor]:
        if self.graph is None and self.done < self.warmup:
            self.side = self.side or torch.cuda.Stream()
            self.side.wait_stream(torch.cuda.current_stream())
            # the warm-up steps trace and compile what the graph will replay: `feed_loss`'s `auto` picks the
            # plan it costs for a replayed graph (no host launch cost), not for eager launches
            with torch.cuda.stream(self.side), launch_mode("graph"):
                names, vector = self.run(images, labels)
            torch.cuda.current_stream().wait_stream(self.side)
            self.done += 1
            return names, vector
        if self.graph is None:
            self.capture(images, labels)
        elif (images.shape, labels.shape) != (self.static_in[0].shape, self.static_in[1].shape):
            raise ValueError(f"train.compile=step replays a CUDA graph captured for images "
                             f"{tuple(self.static_in[0].shape)} and labels {tuple(self.static_in[1].shape)}; got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)} (the training loader must drop its "
                             "last short batch)")
        else:
            self.static_in[0].copy_(images)
            self.static_in[1].copy_(labels)
        self.graph.replay()
        names, vector = self.static_out
        return names, vector.clone()  # the next replay overwrites the graph's own output

    def capture(self, images: Tensor, labels: Tensor) -> None:
        self.static_in = (images.clone(memory_format=torch.preserve_format), labels.clone())
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates them in the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a loader's worker thread touching CUDA meanwhile does not invalidate the capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"), launch_mode("graph"):
            self.static_out = self.run(*self.static_in, capturing=True)
