"""Frozen teachers: loaded from a checkpoint or the model zoo's weights, put in eval mode with gradients off, and
run under `torch.no_grad()`, each on its own CUDA stream so they overlap each other, the student's forward and
the translator bodies. Only what the method asks for is computed: the feature map, and the logits only for KD.

`no_grad`, not `inference_mode`: the FEED op saves the teacher maps for its backward, which autograd refuses
for inference tensors, so inference mode would cost a copy of every map per step. Under `no_grad` the maps are
plain tensors without an autograd graph (the teachers' parameters do not require grad either), used as they are.
With `compiled=True` each teacher's forward is one `torch.compile(fullgraph=True)` inference call."""
from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, TeacherConfig
from ..methods import TeacherOutputs
from ..models import build_model
from ..models.zoo_weights import WeightsUnavailable
from ..runtime.device import compile_for
from ..runtime.timing import TEACHERS
from .checkpoint import load_weights


def load_teacher(spec: TeacherConfig, num_classes: int) -> nn.Module:
    """A teacher from its config entry: a checkpoint file, or weights the model zoo downloads (or has cached)."""
    model = build_model(spec.name, num_classes, weights=spec.weights, **spec.kwargs)
    if spec.checkpoint:
        load_weights(model, spec.checkpoint)
    return model


def load_teachers(specs: Sequence[TeacherConfig], num_classes: int) -> list[nn.Module]:
    """Every configured teacher; a checkpoint that does not fit, or model arguments the model does not take,
    is a config mistake naming the teacher's entry."""
    teachers = []
    for i, spec in enumerate(specs):
        try:
            teachers.append(load_teacher(spec, num_classes))
        except (ValueError, TypeError, FileNotFoundError, WeightsUnavailable) as err:
            raise ConfigError(f"teachers.{i} ({spec.name}): {err}") from None
    return teachers


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_feature_shapes(student: nn.Module, teachers: Sequence[nn.Module], image_size: int, device: torch.device,
                         feature_pool: str) -> tuple[list[int], tuple[int, int]]:
    """Probe every feature tap with one image; returns the teachers' channel counts and the student's (H, W).
    A spatial mismatch is an error naming both shapes unless `feature_pool == "adaptive"` (then the teachers'
    maps are pooled to the student's size)."""
    probe = torch.zeros(1, 3, image_size, image_size, device=device)
    was_training = student.training
    student.eval()
    for teacher in teachers:
        freeze(teacher)  # teachers are always in eval mode
    with torch.inference_mode():
        s_shape = tuple(student.extract_features(probe).shape[1:])
        t_shapes = [tuple(t.extract_features(probe).shape[1:]) for t in teachers]
    student.train(was_training)
    for k, t_shape in enumerate(t_shapes):
        if t_shape[1:] != s_shape[1:] and feature_pool != "adaptive":
            raise ConfigError(
                f"teacher {k} feature map is (C, H, W) = {t_shape} but the student's is {s_shape} at image size "
                f"{image_size}: the spatial sizes must match; set method.feature_pool=adaptive to pool the "
                "teacher's map to the student's size"
            )
    return [s[0] for s in t_shapes], s_shape[1:]


class PendingOutputs:
    def __init__(self, features, logits, events) -> None:
        self.features, self.logits, self.events = features, logits, events

    def wait(self) -> TeacherOutputs:
        if self.events:
            current = torch.cuda.current_stream()
            for event in self.events:
                current.wait_event(event)
        return TeacherOutputs(self.features, self.logits)


def teacher_outputs(teacher: nn.Module, images: Tensor, need_features: bool, need_logits: bool,
                    pool_to: tuple[int, int] | None) -> tuple[Tensor | None, Tensor | None]:
    """One frozen teacher's (feature map or None, logits or None), without an autograd graph."""
    with torch.no_grad():
        if need_logits:
            feature, logits = teacher.forward_features(images)
        else:
            feature, logits = teacher.extract_features(images), None
        if not need_features:
            feature = None
        elif pool_to is not None and tuple(feature.shape[2:]) != pool_to:
            feature = F.adaptive_avg_pool2d(feature, pool_to)
    return feature, logits


class TeacherRunner:
    def __init__(self, teachers: Sequence[nn.Module], device: torch.device, *, need_features: bool,
                 need_logits: bool, pool_to: tuple[int, int] | None = None, compiled: bool = False) -> None:
        self.teachers = [freeze(t) for t in teachers]
        self.need_features, self.need_logits, self.pool_to = need_features, need_logits, pool_to
        self.streams = [torch.cuda.Stream(device) for _ in teachers] if device.type == "cuda" else []
        self.calls = [self._call(t, device, compiled) for t in self.teachers]

    def _call(self, teacher: nn.Module, device: torch.device, compiled: bool):
        def call(images: Tensor) -> tuple[Tensor | None, Tensor | None]:
            return teacher_outputs(teacher, images, self.need_features, self.need_logits, self.pool_to)

        return compile_for(call, device, fullgraph=True) if compiled else call

    def __len__(self) -> int:
        return len(self.teachers)

    def launch(self, images: Tensor, timer=None) -> PendingOutputs | None:
        """Start every teacher on `images`; on CUDA this returns before they finish. `timer` (a StepTimer)
        gets the span from launch to each teacher's end (CUDA events), or the host time on the CPU. Without a
        timer nothing is timed, so the launch can be captured in a CUDA graph (forked and joined streams)."""
        if not self.teachers:
            return None
        features, logits, events = [], [], []
        if self.streams:
            main = torch.cuda.current_stream()
            timed, capturing = timer is not None, torch.cuda.is_current_stream_capturing()
            if timed:
                start = torch.cuda.Event(enable_timing=True)
                start.record(main)
            for call, stream in zip(self.calls, self.streams):
                stream.wait_stream(main)  # images are produced on the main stream
                with torch.cuda.stream(stream):
                    feature, logit = call(images)
                    event = torch.cuda.Event(enable_timing=timed)
                    event.record(stream)
                for out in (feature, logit):
                    if out is not None and not capturing:  # a graph's pool lives as long as the graph
                        out.record_stream(main)  # freed on the main stream: keep the allocator honest
                features.append(feature)
                logits.append(logit)
                events.append(event)
            if timed:
                timer.add_span(TEACHERS, start, events)
        else:
            host_start = time.perf_counter()
            for call in self.calls:
                feature, logit = call(images)
                features.append(feature)
                logits.append(logit)
            if timer is not None:
                timer.add_ms(TEACHERS, (time.perf_counter() - host_start) * 1e3)
        return PendingOutputs(features if self.need_features else None, logits if self.need_logits else None, events)
