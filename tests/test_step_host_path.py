"""The host path around the step (issue #11): evaluation keeps its sums on the device and reads them once, not
once per batch; the epoch statistics take one kernel per step. On a GPU: the number of host syncs of an
evaluation does not grow with its batches."""
from __future__ import annotations

import warnings

import pytest
import torch
from feed_fast.loaders import build_loader
from torch.utils._python_dispatch import TorchDispatchMode

from feed_fast.engine.epoch_stats import EpochStats
from feed_fast.engine.evaluate import evaluate
from feed_fast.engine.step import NamedLosses
from feed_fast.models import build_model

# ops that read a device value on the host, or build a tensor from host values (an upload on a GPU)
HOST_TRAFFIC = {"_local_scalar_dense", "lift_fresh", "_to_copy", "scalar_tensor", "item"}


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def ops_of(fn):
    with RecordOps() as record:
        fn()
    return record.ops


def tiny_model_and_loader(device="cpu"):
    torch.manual_seed(0)
    model = build_model("resnet8", 5, widths=[4, 8, 16]).to(device)
    loader = build_loader("", "val", 4, dataset="synthetic", image_size=16, device=device, num_classes=5)
    return model, loader


def test_evaluate_moves_nothing_between_host_and_device_per_batch():
    model, loader = tiny_model_and_loader()
    few = ops_of(lambda: evaluate(model, loader, max_batches=1))
    more = ops_of(lambda: evaluate(model, loader, max_batches=3))
    per_batch = list(more)
    for op in few:  # what two more batches added
        per_batch.remove(op)
    assert per_batch and not HOST_TRAFFIC & set(per_batch), sorted(set(per_batch))
    result = evaluate(model, loader, max_batches=3)
    assert result["samples"] == 12 and 0 <= result["top1"] <= result["top5"] <= 100 and result["loss"] > 0


def test_epoch_statistics_take_one_kernel_per_step():
    stats = EpochStats(torch.device("cpu"))
    losses = NamedLosses(["ce", "feed_0"], torch.tensor([2.0, 1.0]))
    stats.add(losses, 4)  # the first step sizes the sums
    assert [op for op in ops_of(lambda: stats.add(losses, 4)) if op != "detach"] == ["add_"]  # detach: a view
    assert stats.state() == {"ce": 16.0, "feed_0": 8.0, "samples": 8.0}


@pytest.mark.gpu
def test_evaluate_syncs_as_often_for_six_batches_as_for_two():
    model, loader = tiny_model_and_loader("cuda")
    evaluate(model, loader, max_batches=1)  # cuDNN's first choices

    def syncs(batches):
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                evaluate(model, loader, max_batches=batches)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(6) == syncs(2)
