"""Top-1/top-5 accuracy and cross-entropy of a model over a loader, summed across ranks. The sums stay on the
device until the end (no sync per batch); the sample count is counted on the host.

`evaluate_many` scores several models in one pass over the loader (each batch read once), and with
`ensemble=True` their ensemble too: the mean of their softmax outputs (`softmax_ensemble`, the one home of that
rule; the demo's teachers' ensemble uses it as well)."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime.distributed import DistInfo, all_reduce_sum


def softmax_ensemble(logits: Sequence[Tensor]) -> Tensor:
    """The log of the mean of the members' softmax outputs: the ensemble's argmax, and a proper log-likelihood for
    a cross-entropy (float32)."""
    probabilities = torch.stack([x.float().softmax(dim=1) for x in logits]).mean(dim=0)
    return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()


def evaluate(model: nn.Module, loader, *, autocast=None, dist: DistInfo | None = None,
             max_batches: int | None = None) -> dict:
    """`model(images)` must return logits. Returns {top1, top5 (percent), loss (mean CE), samples}.
    Loaders with `iter_from` are read as their epoch 0 every time, so every evaluation sees the same images
    (synthetic data draws fresh noise per epoch)."""
    return evaluate_many([model], loader, autocast=autocast, dist=dist, max_batches=max_batches)[0]


def evaluate_many(models: Sequence[nn.Module], loader, *, ensemble: bool = False, autocast=None,
                  dist: DistInfo | None = None, max_batches: int | None = None) -> list[dict]:
    """`evaluate` for each of `models` (on one device) over one pass of `loader`, then, with `ensemble`, one more
    entry for the mean of their softmax outputs. One device-to-host read for the whole evaluation."""
    was_training = [model.training for model in models]
    for model in models:
        model.eval()
    device = next(models[0].parameters()).device
    rows = len(models) + int(ensemble)
    sums = torch.zeros(rows, 3, dtype=torch.float64, device=device)  # loss, top1, top5 per row: no sync per batch
    count = 0  # samples: known on the host
    with torch.inference_mode(), (autocast or contextlib.nullcontext()):
        batches = loader.iter_from(0, 0) if hasattr(loader, "iter_from") else iter(loader)
        for i, (images, labels) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            outputs = [model(images).float() for model in models]
            if ensemble:
                outputs.append(softmax_ensemble(outputs))
            sums += torch.stack([batch_sums(logits, labels) for logits in outputs])
            count += labels.shape[0]
    for model, training in zip(models, was_training):
        model.train(training)
    totals = torch.cat([sums.flatten(), sums.new_tensor([count])])
    totals = all_reduce_sum(totals, dist) if dist is not None else totals
    values = totals.tolist()  # the one read of the whole evaluation
    count = max(values[-1], 1.0)
    return [{"top1": 100.0 * values[3 * r + 1] / count, "top5": 100.0 * values[3 * r + 2] / count,
             "loss": values[3 * r] / count, "samples": int(count)} for r in range(rows)]


def batch_sums(logits: Tensor, labels: Tensor) -> Tensor:
    """(summed CE, top-1 hits, top-5 hits) of one batch, on the device."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = top.eq(labels[:, None])
    return torch.stack([F.cross_entropy(logits, labels, reduction="sum"), hits[:, :1].sum(), hits.sum()]).double()
