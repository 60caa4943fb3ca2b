"""Which samples a shard sees in an epoch, and in what order. Pure index arithmetic shared by every
backend, so all of them shuffle, shard and resume the same way.

Training order, whatever the number of processes (shards): the epoch's global order (one permutation, seeded
with seed + epoch) is cut into consecutive micro-batches of `batch_size`; global micro-batch g goes to process
g mod P as its (g div P)-th batch. With train.accumulate = A, optimizer step s takes global micro-batches
[s*P*A, (s+1)*P*A), the next P*A*batch_size samples of the order, and process r's micro-step m reads global
micro-batch s*P*A + m*P + r. So two layouts with the same P*A (2 processes x 1, 1 process x accumulate 2) see the
same samples in the same micro-batches, and a run resumed on another P at the same optimizer step continues at the
same sample. A batch's random augmentation is seeded by its global number (`global_batch_number`), not by the
process that reads it."""
from __future__ import annotations

import torch


def epoch_order(num_samples: int, *, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """All sample indices of the dataset in this epoch's order. Every shard computes the same
    permutation (seeded with seed + epoch), so the shards can split it without talking."""
    if not shuffle:
        return torch.arange(num_samples, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(num_samples, generator=generator)


def shard_size(num_samples: int, *, shard_id: int, num_shards: int, equal_shards: bool,
               batch_size: int | None = None, drop_last: bool = True) -> int:
    """Samples shard `shard_id` gets. Training shards are cut to the same size so that every rank runs
    the same number of steps; validation shards keep every sample (sizes then differ by at most one). With
    `batch_size` (training), whole micro-batches: see `shard_order`."""
    if equal_shards and batch_size:
        full = num_samples // (batch_size * num_shards) * batch_size
        return full if drop_last else full + (num_samples - full * num_shards) // num_shards
    if equal_shards:
        return num_samples // num_shards
    return len(range(shard_id, num_samples, num_shards))


def shard_order(order: torch.Tensor, *, shard_id: int, num_shards: int, equal_shards: bool,
                batch_size: int | None = None, drop_last: bool = True) -> torch.Tensor:
    """This shard's part of an epoch order, disjoint from the other shards'. Without `batch_size`: every
    num_shards-th sample starting at shard_id (together they cover the order, minus the tail when equal_shards).
    With `batch_size` (training, equal shards): the global micro-batches g = shard_id, shard_id + num_shards, ...
    of the order cut into micro-batches of batch_size (the module docstring's layout); the fewer than
    num_shards * batch_size samples left at the end are dropped, or with `drop_last=False` split equally as
    each shard's short last batch."""
    if equal_shards and batch_size:
        per_round = batch_size * num_shards
        rounds = len(order) // per_round
        mine = order[: rounds * per_round].view(rounds, num_shards, batch_size)[:, shard_id].reshape(-1)
        if drop_last:
            return mine
        rest = order[rounds * per_round:]
        share = len(rest) // num_shards
        return torch.cat([mine, rest[shard_id * share:(shard_id + 1) * share]])
    size = shard_size(len(order), shard_id=shard_id, num_shards=num_shards, equal_shards=equal_shards)
    return order[shard_id::num_shards][:size]


def global_batch_number(batch: int, *, shard_id: int, num_shards: int) -> int:
    """The place in the epoch's global order of shard `shard_id`'s batch number `batch` (training layout)."""
    return batch * num_shards + shard_id


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


def batch_seed(seed: int, epoch: int, batch: int, shard_id: int = 0) -> int:
    """A seed for one batch's (or, with a dataset index as `batch`, one sample's) random augmentation: the same
    batch of the same epoch always draws the same numbers, so a resumed epoch replays exactly. Loaders pass the
    batch's global number (`EpochLoader.batch_seed`) and shard_id 0, so that the numbers do not depend on which
    process reads the batch."""
    mixed = hash((int(seed), int(epoch), int(batch), int(shard_id)))  # ints hash deterministically
    return mixed & 0x7FFF_FFFF_FFFF_FFFF
