"""Logit losses shared by the methods (the FEED term itself comes from `feed_fast.FEEDLoss`). Every method's CE
term is `cross_entropy` here (through `Distiller.cross_entropy`), so label smoothing is applied in one place."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Batch-mean cross-entropy in float32, with label smoothing `label_smoothing` in [0, 1) (torchvision's
    `--label-smoothing`: the target is (1 - e) * one_hot + e / num_classes). 0 is the plain CE, the same call."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def hinton_kd(student_logits: Tensor, teacher_logits: list[Tensor], temperature: float) -> Tensor:
    """KL(mean_k softmax(t_k / T) || softmax(s / T)) * T^2 (Hinton et al.), batch mean, in float32."""
    with torch.no_grad():
        target = torch.stack([F.softmax(t.float() / temperature, dim=1) for t in teacher_logits]).mean(0)
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, target, reduction="batchmean") * temperature**2
