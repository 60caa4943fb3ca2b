"""Epoch bookkeeping every loader shares: length, epoch counter, resume point, device, dtype, memory format and
image size. A backend only says how to turn one epoch's batches of sample indices into tensors, and what its
dataset's native image size is. The device and the memory format are the runtime's decision
(`feed_fast.runtime`): a loader receives them, and only falls back to the runtime's default policy when the
caller does not say."""
from __future__ import annotations

from collections.abc import Iterator

import torch

from ..runtime.device import memory_format_for, resolve_device
from . import sampling

Batch = tuple[torch.Tensor, torch.Tensor]
OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve_dtype(dtype: torch.dtype | None) -> torch.dtype:
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {OUTPUT_DTYPES} (or None for float32), got {dtype}")
    return dtype


class EpochLoader:
    """Iterable of (images, labels) batches over one shard of a dataset.

    Epochs: `set_epoch(e)` picks the epoch the next iteration runs (its order is seeded with seed + e);
    without it, every new iteration runs the epoch after the previous one, starting at 0.
    Resume: `iter_from(epoch, start_batch)` runs `epoch` from batch `start_batch` on, with exactly the
    order an uninterrupted run would have had; the iteration after it runs epoch + 1.
    Shards (training): whole micro-batches of one global epoch order, dealt round-robin (sampling.py), with the
    random augmentation of a batch seeded by its global number (`batch_seed`).
    """

    native_image_size: int  # the dataset's own size: what image_size=None gives

    def __init__(self, *, split: str, batch_size: int, image_size: int | None, num_classes: int, device, dtype,
                 seed: int, shard_id: int, num_shards: int, drop_last: bool | None,
                 memory_format: torch.memory_format | None = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val' ('test' maps to 'val'), got {split!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        image_size = self.native_image_size if image_size is None else image_size
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be an int >= 1 (or None for the dataset's native "
                             f"{self.native_image_size}), got {image_size!r}")
        if memory_format not in (None, torch.channels_last, torch.contiguous_format):
            raise ValueError(f"memory_format must be torch.channels_last or torch.contiguous_format (or None for "
                             f"the runtime's default on the device), got {memory_format}")
        sampling.check_sharding(shard_id, num_shards)
        self.split = split
        self.train = split == "train"
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_classes = num_classes
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.memory_format = memory_format if memory_format is not None else memory_format_for(self.device)
        self.seed = seed
        self.shard_id = shard_id
        self.num_shards = num_shards
        # Training may drop the short last batch; validation must see every sample.
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.epoch = 0  # the epoch the latest iteration ran (or runs)
        self._next_epoch = 0

    # --- what a backend provides -------------------------------------------------------------
    indices_on_device = False  # True: the loader indexes tensors held on the device with them

    @property
    def dataset_size(self) -> int:
        """Samples in the whole dataset (all shards)."""
        raise NotImplementedError

    def _batches(self, batch_indices: Iterator[torch.Tensor], epoch: int, first_batch: int) -> Iterator[Batch]:
        """Turn this shard's batches of dataset indices (batch number `first_batch` first) into tensors."""
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Samples this shard sees per epoch."""
        return sampling.shard_size(self.dataset_size, shard_id=self.shard_id, num_shards=self.num_shards,
                                   equal_shards=self.train, batch_size=self.batch_size if self.train else None,
                                   drop_last=self.drop_last)

    def __len__(self) -> int:
        return sampling.num_batches(self.num_samples, self.batch_size, drop_last=self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = int(epoch)

    def shard_indices(self, epoch: int) -> torch.Tensor:
        """This shard's dataset indices for `epoch`, in the order they are served (training: whole micro-batches
        of the epoch's global order, sampling.py's layout)."""
        order = sampling.epoch_order(self.dataset_size, seed=self.seed, epoch=epoch, shuffle=self.train)
        return sampling.shard_order(order, shard_id=self.shard_id, num_shards=self.num_shards,
                                    equal_shards=self.train, batch_size=self.batch_size if self.train else None,
                                    drop_last=self.drop_last)

    def batch_seed(self, epoch: int, batch: int) -> int:
        """The augmentation seed of this shard's batch number `batch` of `epoch`: a function of the batch's place
        in the epoch's global order only, so every process layout draws the same numbers for the same samples."""
        number = sampling.global_batch_number(batch, shard_id=self.shard_id, num_shards=self.num_shards)
        return sampling.batch_seed(self.seed, epoch, number)

    def iter_from(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, len(loader)={len(self)}], got {start_batch}")
        self.epoch = int(epoch)
        self._next_epoch = self.epoch + 1
        indices = self.shard_indices(self.epoch)
        if self.indices_on_device:  # one copy per epoch instead of one per batch
            indices = indices.to(self.device)
        slices = sampling.batch_slices(len(indices), self.batch_size, drop_last=self.drop_last,
                                       start_batch=start_batch)
        return self._batches((indices[start:stop] for start, stop in slices), self.epoch, start_batch)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(self._next_epoch, 0)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, batches={len(self)}, batch_size={self.batch_size}, "
                f"samples={self.num_samples}, classes={self.num_classes}, image_size={self.image_size}, "
                f"device={self.device}, dtype={self.dtype}, memory_format={self.memory_format}, "
                f"shard={self.shard_id}/{self.num_shards})")
