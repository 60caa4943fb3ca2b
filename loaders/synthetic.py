"""`synthetic`: an ImageNet-shaped dataset generated on the device, for benchmarks and tests.

Each sample has a fixed label; its image is that class's coarse 4x4 colour pattern, upsampled, plus
fresh Gaussian noise each time it is served. So the data costs no I/O, yet a model can learn it
(a loss that falls is a real signal in trainer tests), and labels are stable across epochs."""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .base import Batch, EpochLoader

SYNTHETIC_BATCHES = 10  # default epoch length, in batches per shard
SYNTHETIC_NUM_CLASSES = 1000  # ImageNet-like
SYNTHETIC_IMAGE_SIZE = 224  # ImageNet-like too: the native size, what image_size=None gives
NOISE_STD = 0.5


def class_patterns(num_classes: int, seed: int) -> torch.Tensor:
    """Each class's coarse 4x4 colour pattern: a function of (num_classes, seed) only."""
    return torch.randn(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


class SyntheticLoader(EpochLoader):
    """`num_samples_total` defaults to SYNTHETIC_BATCHES full batches for every shard."""

    indices_on_device = True
    native_image_size = SYNTHETIC_IMAGE_SIZE

    def __init__(self, split: str, batch_size: int, *, num_classes: int | None = None,
                 num_samples_total: int | None = None, **common):
        num_classes = SYNTHETIC_NUM_CLASSES if num_classes is None else int(num_classes)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        super().__init__(split=split, batch_size=batch_size, num_classes=num_classes, **common)
        if num_samples_total is None:
            num_samples_total = SYNTHETIC_BATCHES * batch_size * self.num_shards
        if num_samples_total < 1:
            raise ValueError(f"num_samples_total must be >= 1, got {num_samples_total}")
        self._size = int(num_samples_total)
        # Fixed tables (not per epoch). The class patterns depend on the seed alone, so every split and
        # every size of this dataset draws the same classes (a val split can be scored against train);
        # the labels come from their own generator.
        self._patterns = class_patterns(num_classes, self.seed).to(self.device)
        label_generator = torch.Generator().manual_seed(self.seed + 1)
        self._labels = torch.randint(num_classes, (self._size,), generator=label_generator).to(self.device)
        self._noise_generator = torch.Generator(self.device)

    @property
    def dataset_size(self) -> int:
        return self._size

    def _batches(self, batch_indices, epoch: int, first_batch: int) -> Iterator[Batch]:
        size = self.image_size
        for batch, indices in enumerate(batch_indices, start=first_batch):
            labels = self._labels[indices]
            self._noise_generator.manual_seed(self.batch_seed(epoch, batch))  # by its global place
            images = F.interpolate(self._patterns[labels], size=(size, size), mode="nearest")
            noise = torch.randn(images.shape, generator=self._noise_generator, device=self.device)
            images = (images + NOISE_STD * noise).to(self.dtype).contiguous(memory_format=self.memory_format)
            yield images, labels
