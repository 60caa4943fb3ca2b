"""Argument checks for `feed_loss`: every bad input fails here, with a message naming the argument,
the teacher index and the expected vs. given shape/dtype, before any kernel is launched."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

LOW_PRECISION = (torch.float16, torch.bfloat16)
KERNEL_DTYPES = (torch.float32, *LOW_PRECISION)
REDUCTIONS = ("mean", "sum", "none")
BACKENDS = ("auto", "torch", "triton", "hybrid")
KERNEL_SIZES = (1, 3)

TensorOrList = Tensor | Sequence[Tensor]


@dataclass(frozen=True)
class FEEDInputs:
    """Validated, per-teacher inputs. `head_inputs[k]` is the input of translator k's last conv (the head);
    `weights[k]` is always 4-D (or None); `kernel_sizes[k]` is 0 when teacher k has no conv (the head input
    itself is compared)."""

    head_inputs: tuple[Tensor, ...]
    teachers: tuple[Tensor, ...]
    weights: tuple[Tensor | None, ...]
    biases: tuple[Tensor | None, ...]
    kernel_sizes: tuple[int, ...]

    @property
    def num_teachers(self) -> int:
        return len(self.teachers)

    @property
    def batch_size(self) -> int:
        return self.teachers[0].shape[0]

    def numels(self) -> tuple[int, ...]:
        """Elements per flattened sample, C_t * H * W, for each teacher (Python ints: no device work)."""
        return tuple(t.shape[1] * t.shape[2] * t.shape[3] for t in self.teachers)


def _as_list(name: str, value, allow_none: bool) -> list:
    if value is None:
        if allow_none:
            return []
        raise TypeError(f"{name} must be a Tensor or a list of Tensors, got None")
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f"{name} must be a Tensor or a list/tuple of Tensors, got {type(value).__name__}")


def _check_tensor(name: str, k: int, x, allow_float64: bool) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}[{k}] must be a torch.Tensor, got {type(x).__name__}")
    allowed = KERNEL_DTYPES + ((torch.float64,) if allow_float64 else ())
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name}[{k}] has dtype {x.dtype}; expected one of {names}")
    return x


def _shape(x: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in x.shape) + ")"


def check_options(beta, eps, negative_slope, reduction, backend) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, value in (("beta", beta), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if negative_slope is not None and (
        isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float))
    ):
        raise TypeError(f"negative_slope must be None or a real number, got {type(negative_slope).__name__}")


def validate_inputs(head_inputs, teachers, weights=None, biases=None, *, allow_float64=False) -> FEEDInputs:
    teacher_list = _as_list("teachers", teachers, allow_none=False)
    input_list = _as_list("head_inputs", head_inputs, allow_none=False)
    weight_list = _as_list("weights", weights, allow_none=True)
    bias_list = _as_list("biases", biases, allow_none=True)
    num = len(teacher_list)
    if num == 0:
        raise ValueError("teachers must hold at least one tensor, got an empty list")
    for name, values in (("head_inputs", input_list), ("weights", weight_list), ("biases", bias_list)):
        if values and len(values) != num:
            raise ValueError(f"{name} has {len(values)} entries but teachers has {num}: one per teacher expected")
    weight_list = weight_list or [None] * num
    bias_list = bias_list or [None] * num

    device = None
    batch = None
    out_w, out_b, kernel_sizes = [], [], []
    for k in range(num):
        t = _check_tensor("teachers", k, teacher_list[k], allow_float64)
        s = _check_tensor("head_inputs", k, input_list[k], allow_float64)
        for name, x in (("teachers", t), ("head_inputs", s)):
            if x.dim() != 4:
                raise ValueError(f"{name}[{k}] must be 4-D (B, C, H, W), got shape {_shape(x)}")
            if 0 in x.shape[1:]:  # an empty map has no norm: the loss would be 0/0 (or the conv misbehave)
                raise ValueError(f"{name}[{k}] has shape {_shape(x)}; channels, height and width must be >= 1")
        if device is None:
            device, batch = t.device, t.shape[0]
        if batch == 0:
            raise ValueError("teachers[0] has batch size 0; at least one sample is needed")
        if t.shape[0] != batch:
            raise ValueError(f"teachers[{k}] has batch size {t.shape[0]}, expected {batch} (as teachers[0])")
        if s.shape[0] != batch:
            raise ValueError(f"head_inputs[{k}] has batch size {s.shape[0]}, expected {batch} (as teachers[{k}])")
        if s.shape[2:] != t.shape[2:]:
            raise ValueError(
                f"head_inputs[{k}] has spatial size {tuple(s.shape[2:])}, expected {tuple(t.shape[2:])} "
                f"(teachers[{k}] is {_shape(t)}); pool or resize the student feature explicitly"
            )
        c_t, c_in = t.shape[1], s.shape[1]

        w = weight_list[k]
        if w is None:
            if c_in != c_t:
                raise ValueError(
                    f"head_inputs[{k}] has {c_in} channels but teachers[{k}] has {c_t}; without weights the "
                    f"channels must match (give weights[{k}] of shape ({c_t}, {c_in}, k, k))"
                )
            kernel_sizes.append(0)
        else:
            w = _check_tensor("weights", k, w, allow_float64)
            if w.dim() == 2:
                w = w[:, :, None, None]
            if w.dim() != 4 or w.shape[2] != w.shape[3] or w.shape[2] not in KERNEL_SIZES:
                raise ValueError(
                    f"weights[{k}] must be ({c_t}, {c_in}, k, k) with k in {KERNEL_SIZES} or 2-D ({c_t}, {c_in}), "
                    f"got shape {_shape(weight_list[k])}"
                )
            if tuple(w.shape[:2]) != (c_t, c_in):
                raise ValueError(
                    f"weights[{k}] has shape {_shape(weight_list[k])}, expected ({c_t}, {c_in}, {w.shape[2]}, "
                    f"{w.shape[3]}) from teachers[{k}] {_shape(t)} and head_inputs[{k}] {_shape(s)}"
                )
            kernel_sizes.append(w.shape[2])
        b = bias_list[k]
        if b is not None:
            b = _check_tensor("biases", k, b, allow_float64)
            if tuple(b.shape) != (c_t,):
                raise ValueError(f"biases[{k}] has shape {_shape(b)}, expected ({c_t},)")
        for name, x in (("teachers", t), ("head_inputs", s), ("weights", w), ("biases", b)):
            if x is not None and x.device != device:
                raise ValueError(f"{name}[{k}] is on {x.device}, expected {device} (as teachers[0])")
        out_w.append(w)
        out_b.append(b)
        teacher_list[k], input_list[k] = t, s
    return FEEDInputs(tuple(input_list), tuple(teacher_list), tuple(out_w), tuple(out_b), tuple(kernel_sizes))


def first_float64(inputs: FEEDInputs) -> str | None:
    """The first float64 argument, as "name[k]", or None when there is none."""
    for name in ("head_inputs", "teachers", "weights", "biases"):
        for k, x in enumerate(getattr(inputs, name)):
            if x is not None and x.dtype == torch.float64:
                return f"{name}[{k}]"
    return None


def reject_float64(inputs: FEEDInputs, backend: str) -> None:
    """The kernels take float32/float16/bfloat16; float64 is a reference-only (test) dtype."""
    found = first_float64(inputs)
    if found is not None:
        raise TypeError(
            f"{found} is float64; backend={backend!r} takes float32, float16 or bfloat16 "
            "(use backend='torch' for float64)"
        )
