"""Which samples a shard sees in an epoch, and in what order. Pure index arithmetic shared by every
backend, so all of them shuffle, shard and resume the same way."""
from __future__ import annotations

import torch


def epoch_order(num_samples: int, *, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """All sample indices of the dataset in this epoch's order. Every shard computes the same
    permutation (seeded with seed + epoch), so the shards can split it without talking."""
    if not shuffle:
        return torch.arange(num_samples, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(num_samples, generator=generator)


def shard_size(num_samples: int, *, shard_id: int, num_shards: int, equal_shards: bool) -> int:
    """Samples shard `shard_id` gets. Training shards are cut to the same size so that every rank runs
    the same number of steps; validation shards keep every sample (sizes then differ by at most one)."""
    if equal_shards:
        return num_samples // num_shards
    return len(range(shard_id, num_samples, num_shards))


def shard_order(order: torch.Tensor, *, shard_id: int, num_shards: int, equal_shards: bool) -> torch.Tensor:
    """This shard's part of an epoch order: every num_shards-th sample starting at shard_id, so the
    shards are disjoint and together cover the order (minus the tail when equal_shards)."""
    size = shard_size(len(order), shard_id=shard_id, num_shards=num_shards, equal_shards=equal_shards)
    return order[shard_id::num_shards][:size]


def num_batches(num_samples: int, batch_size: int, *, drop_last: bool) -> int:
    return num_samples // batch_size if drop_last else -(-num_samples // batch_size)


def batch_slices(num_samples: int, batch_size: int, *, drop_last: bool, start_batch: int = 0):
    """(start, stop) of each batch from `start_batch` on; the last one may be short unless drop_last."""
    for batch in range(start_batch, num_batches(num_samples, batch_size, drop_last=drop_last)):
        start = batch * batch_size
        yield start, min(start + batch_size, num_samples)


def check_sharding(shard_id: int, num_shards: int) -> None:
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, num_shards={num_shards}), got {shard_id}")


def batch_seed(seed: int, epoch: int, batch: int, shard_id: int) -> int:
    """A seed for one batch's random augmentation: the same batch of the same epoch on the same shard
    always draws the same numbers, so a resumed epoch replays exactly."""
    mixed = hash((int(seed), int(epoch), int(batch), int(shard_id)))  # ints hash deterministically
    return mixed & 0x7FFF_FFFF_FFFF_FFFF
