"""The teachers' ensemble as one model: the mean of their softmax outputs, so that the engine's own
`evaluate` (which takes the argmax of what a model returns) scores the ensemble like any single model."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class SoftmaxEnsemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member model")
        self.members = nn.ModuleList(members)

    def forward(self, images: Tensor) -> Tensor:
        from ..engine.evaluate import softmax_ensemble  # the engine's rule, as its teacher check scores it

        return softmax_ensemble([m(images) for m in self.members])


def evaluate_ensemble(student_exports: Sequence[str], data_root: str, *, image_size: int, batch_size: int,
                      device: torch.device) -> dict:
    """Val top-1/top-5 of the ensemble of the models exported by the engine (each run's model.pt), read
    through the same loader and scored by the same `evaluate` as every training run."""
    from ..engine import evaluate, load_student
    from ..loaders import build_loader
    from ..runtime import memory_format_for

    memory_format = memory_format_for(device)  # the runtime's default layout, for the models and the batches
    ensemble = SoftmaxEnsemble([load_student(path) for path in student_exports]).to(device, memory_format=memory_format)
    loader = build_loader(data_root, "val", batch_size, dataset="imagefolder", image_size=image_size, device=device,
                          memory_format=memory_format)
    return evaluate(ensemble, loader)
