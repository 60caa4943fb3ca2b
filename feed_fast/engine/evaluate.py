"""Top-1/top-5 accuracy and cross-entropy of a model over a loader, summed across ranks. The sums stay on the
device until the end (no sync per batch); the sample count is counted on the host."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.distributed import DistInfo, all_reduce_sum


def evaluate(model: nn.Module, loader, *, autocast=None, dist: DistInfo | None = None,
             max_batches: int | None = None) -> dict:
    """`model(images)` must return logits. Returns {top1, top5 (percent), loss (mean CE), samples}.
    Loaders with `iter_from` are read as their epoch 0 every time, so every evaluation sees the same images
    (synthetic data draws fresh noise per epoch)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top1, top5: device sums, no sync per batch
    count = 0  # samples: known on the host
    with torch.inference_mode(), (autocast or contextlib.nullcontext()):
        batches = loader.iter_from(0, 0) if hasattr(loader, "iter_from") else iter(loader)
        for i, (images, labels) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            logits = model(images.to(device, non_blocking=True)).float()
            labels = labels.to(device, non_blocking=True)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top.eq(labels[:, None])
            sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum"), hits[:, :1].sum(), hits.sum()])
            count += labels.shape[0]
    model.train(was_training)
    totals = torch.cat([sums, sums.new_tensor([count])])
    totals = all_reduce_sum(totals, dist) if dist is not None else totals
    loss, top1, top5, count = totals.tolist()  # the one read of the whole evaluation
    count = max(count, 1.0)
    return {"top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count, "loss": loss / count, "samples": int(count)}
