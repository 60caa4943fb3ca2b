"""FEEDLoss: K translators plus the fused FEED loss, as one module a training loop can own."""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .functional import feed_loss
from .numerics import DEFAULT_EPS
from .translator import TranslatorGroup


class FEEDLossOutput(NamedTuple):
    total: Tensor  # beta * sum_k mean_b l_kb, the term added to the cross-entropy
    per_teacher: Tensor  # (K,) beta * mean_b l_kb, for logging


class FEEDLoss(nn.Module):
    """pFEED's feature loss: one translator per teacher, all fed the student's last feature map.

    `forward(student_feature, teacher_features)` runs the translators' bodies (grouped across teachers: two convs
    for all K, see `TranslatorGroup`) and hands each translator's last conv
    (+ bias + LeakyReLU) to `feed_loss`, which fuses it with the normalisation and the L1 distance. The heads'
    fp32 parameters go in as they are: under autocast `feed_loss` runs the head GEMMs in the autocast dtype
    (`feed_fast.ops.head`), the fused kernels cast in registers and write fp32 gradients directly. The heads are
    kept channels-last (C_in innermost), the layout the kernels read weights in, so no step repacks them.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: Sequence[int],
        *,
        beta: float = 500.0,
        width: int | None = None,
        final_kernel_size: int = 3,
        batch_norm: bool = False,
        final_activation: bool = True,
        negative_slope: float = 0.1,
        eps: float = DEFAULT_EPS,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if len(teacher_channels) == 0:
            raise ValueError("teacher_channels must name at least one teacher")
        self.beta, self.eps, self.backend = beta, eps, backend
        self.translators = TranslatorGroup(
            student_channels,
            list(teacher_channels),
            width,
            final_kernel_size=final_kernel_size,
            batch_norm=batch_norm,
            final_activation=final_activation,
            negative_slope=negative_slope,
        )
        self.translators.heads.to(memory_format=torch.channels_last)

    def forward(
        self, student_feature: Tensor, teacher_features: Sequence[Tensor], *, head_inputs: Sequence[Tensor] | None = None
    ) -> FEEDLossOutput:
        """`head_inputs`: the translator bodies' outputs when the caller ran them already
        (`self.translators.head_inputs(student_feature)`, e.g. while the teachers still run); then
        `student_feature` is not read again."""
        if isinstance(teacher_features, Tensor):
            teacher_features = [teacher_features]
        if len(teacher_features) != len(self.translators):
            raise ValueError(
                f"teacher_features has {len(teacher_features)} entries, expected {len(self.translators)} "
                "(one per translator)"
            )
        if head_inputs is None:
            head_inputs = self.translators.head_inputs(student_feature)
        heads = self.translators.heads
        terms = feed_loss(
            list(head_inputs),
            list(teacher_features),
            [head.weight for head in heads],
            [head.bias for head in heads],
            beta=self.beta,
            eps=self.eps,
            negative_slope=self.translators.head_slope,
            reduction="none",
            backend=self.backend,
        )
        per_teacher = terms.mean(dim=1)
        return FEEDLossOutput(per_teacher.sum(), per_teacher)
