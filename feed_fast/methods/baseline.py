"""Cross-entropy only: the student trained alone, the reference every other method is compared to."""
from __future__ import annotations

import torch.nn.functional as F

from .base import Distiller


class Baseline(Distiller):
    def losses(self, student_feature, logits, labels, teachers):
        return {"ce": F.cross_entropy(logits.float(), labels)}
