"""The FEED loss benchmark grid: shapes, layouts, dtypes, the inputs of one step, and what a step must cost.

One home for the grid: benchmarks/bench_feed_loss.py (the JSON script the GPU check runs) and
benchmarks/test_feed_loss_benchmarks.py (the pytest-benchmark suite) both read it from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

BETA, NEGATIVE_SLOPE = 500.0, 0.1  # FT's official beta; the translator head's LeakyReLU
# AMP training: bf16 features, and heads in bf16 as autocast (and FEEDLoss under autocast) hands them over.
# Every implementation runs under bf16 autocast, so eager's convs are bf16 cuDNN convs too: one footing for all.
FEATURE_DTYPE = HEAD_DTYPE = torch.bfloat16
AUTOCAST_DTYPE = torch.bfloat16
KERNEL_SIZES = (3, 1)  # the paper's 3x3 head, and the cheaper 1x1 option
# The trainer runs channels-last on CUDA (activations and conv weights); NCHW is the second row.
LAYOUTS = ("channels_last", "nchw")

# The H100 as measured in this workplace (shared/FIELD_NOTES.md): roofline figures are fractions of these.
H100_LIMITS = {"name": "NVIDIA H100 (FIELD_NOTES)", "bf16_dense_tflops": 800.0, "memory_gbps": 3000.0}
H100_L2_BYTES = 50 * 2**20


@dataclass(frozen=True)
class ShapeSet:
    """One benchmark shape: K teachers (C_t, H, W) and translator heads fed `width` channels."""

    name: str
    batch: int
    student: tuple[int, int, int]  # the student's feature map (C, H, W), for the record
    width: int  # channels into each translator's last conv (NTL width)
    teachers: tuple[tuple[int, int, int], ...]

    def with_teachers(self, count: int) -> ShapeSet:
        """The same shape with `count` copies of the first teacher (the launches-vs-K sweep)."""
        return replace(self, name=f"{self.name}_k{count}", teachers=(self.teachers[0],) * count)


FULL_SHAPES = (
    # ResNet-56-like student and three 64x8x8 teachers, B=128 (FT/FEED CIFAR setting).
    ShapeSet("cifar", 128, (64, 8, 8), 64, ((64, 8, 8),) * 3),
    # ResNet-18/34 layer4 student and teachers at 224 px, B=256.
    ShapeSet("imagenet", 256, (512, 7, 7), 512, ((512, 7, 7),) * 3),
    # The same with a ResNet-50 teacher (2048x7x7) in the ensemble: teachers differ in channels.
    ShapeSet("imagenet_r50_teacher", 256, (512, 7, 7), 512, ((512, 7, 7), (512, 7, 7), (2048, 7, 7))),
)
SMOKE_SHAPES = (
    # Tiny, odd-sized versions of the two families above: they prove the plumbing, not the speed.
    ShapeSet("smoke_cifar_like", 2, (6, 4, 4), 6, ((5, 4, 4),) * 3),
    ShapeSet("smoke_mixed_teachers", 2, (6, 3, 3), 6, ((5, 3, 3), (5, 3, 3), (9, 3, 3))),
)
ALL_SHAPES = {s.name: s for s in FULL_SHAPES + SMOKE_SHAPES}


class StepInputs(NamedTuple):
    """What `feed_loss` takes, per teacher: the heads' inputs (the NTLs' last-conv inputs), the teachers'
    maps, and the heads' weights and biases. Everything but the teachers gets a gradient."""

    head_inputs: list[torch.Tensor]
    teachers: list[torch.Tensor]
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]

    def leaves(self) -> list[torch.Tensor]:
        return [*self.head_inputs, *self.weights, *self.biases]

    def all_tensors(self) -> list[torch.Tensor]:
        return [*self.head_inputs, *self.teachers, *self.weights, *self.biases]


def memory_format(layout: str) -> torch.memory_format:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def make_inputs(
    shape: ShapeSet, kernel_size: int, device: torch.device, layout: str = "channels_last", seed: int = 0
) -> StepInputs:
    """Random bf16 features and heads for one shape, in the given memory format (4-D tensors, weights
    included, as `model.to(memory_format=torch.channels_last)` leaves them)."""
    if kernel_size not in KERNEL_SIZES:
        raise ValueError(f"kernel_size must be one of {KERNEL_SIZES}, got {kernel_size}")
    fmt = memory_format(layout)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*size, dtype, scale=1.0):
        x = (scale * torch.randn(*size, generator=gen)).to(device=device, dtype=dtype)
        return x.contiguous(memory_format=fmt) if x.dim() == 4 else x

    inputs = StepInputs([], [], [], [])
    for c_t, h, w in shape.teachers:
        inputs.head_inputs.append(rand(shape.batch, shape.width, h, w, dtype=FEATURE_DTYPE))
        inputs.teachers.append(rand(shape.batch, c_t, h, w, dtype=FEATURE_DTYPE))
        fan_in = shape.width * kernel_size * kernel_size
        inputs.weights.append(rand(c_t, shape.width, kernel_size, kernel_size, dtype=HEAD_DTYPE, scale=fan_in**-0.5))
        inputs.biases.append(rand(c_t, dtype=HEAD_DTYPE, scale=0.1))
    for x in inputs.leaves():
        x.requires_grad_()
    return inputs


def useful_flops(shape: ShapeSet, kernel_size: int) -> int:
    """FLOPs a forward+backward step needs: the head conv three times (forward, input gradient, weight
    gradient), 2 FLOPs per multiply-add. The normalisation and L1 are O(B*C*H*W) and left out."""
    return sum(
        3 * 2 * shape.batch * c_t * shape.width * kernel_size**2 * h * w for c_t, h, w in shape.teachers
    )


def _per_teacher_bytes(shape: ShapeSet, kernel_size: int):
    """(head input, teacher, weight, bias) bytes of each teacher's tensors."""
    feature, head = FEATURE_DTYPE.itemsize, HEAD_DTYPE.itemsize
    for c_t, h, w in shape.teachers:
        yield (
            shape.batch * shape.width * h * w * feature,
            shape.batch * c_t * h * w * feature,
            c_t * shape.width * kernel_size**2 * head,
            c_t * head,
        )


def input_bytes(shape: ShapeSet, kernel_size: int) -> int:
    """Bytes of one step's inputs (one set)."""
    return sum(sum(sizes) for sizes in _per_teacher_bytes(shape, kernel_size))


def minimum_bytes(shape: ShapeSet, kernel_size: int) -> int:
    """Bytes any implementation must move per step: read every input once and write every gradient once
    (a lower bound of the real traffic, so GB/s computed from it is a lower bound too)."""
    return sum(
        2 * (head_input + weight + bias) + teacher  # read + gradient written; the teacher is only read
        for head_input, teacher, weight, bias in _per_teacher_bytes(shape, kernel_size)
    )


def rotation_sets(shape: ShapeSet, kernel_size: int, l2_bytes: int = H100_L2_BYTES, cap: int = 32) -> int:
    """How many input sets to cycle through so that the sets together span twice the L2 cache: no step
    finds its inputs still warm from the one before."""
    return max(2, min(cap, math.ceil(2 * l2_bytes / input_bytes(shape, kernel_size))))
