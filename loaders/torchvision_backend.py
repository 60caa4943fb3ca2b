"""The fallback image-folder pipeline: Pillow decoding in DataLoader workers, the same transforms as
the DALI pipeline, uint8 batches in pinned memory, and normalization on the device (a quarter of the
bytes cross PCIe, and the GPU does the float math)."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .base import Batch
from .folder import FolderLoader
from .normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8
from .transforms import train_crop, val_resize_size


class FolderImages(Dataset):
    """Keys are (dataset index, augmentation seed): the sampler decides both in the main process, so
    a sample's crop does not depend on which worker decodes it. Returns (CHW uint8, label, path, error)."""

    def __init__(self, paths: list[str], labels: list[int], *, train: bool, image_size: int):
        self.paths, self.labels = paths, labels
        self.train, self.image_size = train, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def transform(self, image: Image.Image, seed: int) -> Image.Image:
        size = self.image_size
        if self.train:
            crop = train_crop(seed, image.height, image.width)
            image = TF.resized_crop(image, crop.top, crop.left, crop.height, crop.width, [size, size],
                                    interpolation=InterpolationMode.BILINEAR, antialias=True)
            return TF.hflip(image) if crop.flip else image
        image = TF.resize(image, val_resize_size(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        return TF.center_crop(image, [size, size])

    def __getitem__(self, key):
        index, seed = key
        path = self.paths[index]
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except Exception as error:  # noqa: BLE001 -- reported by the main process, which knows whether to skip
            return None, self.labels[index], path, f"{type(error).__name__}: {error}"
        return TF.pil_to_tensor(self.transform(image, seed)), self.labels[index], path, None


def collate(samples):
    """Stack the decodable samples; pass the broken ones' {path: reason} on to the main process."""
    good = [sample for sample in samples if sample[3] is None]
    unreadable = {path: error for _, _, path, error in samples if error is not None}
    if not good:
        return None, None, unreadable
    images = torch.stack([sample[0] for sample in good])
    labels = torch.tensor([sample[1] for sample in good], dtype=torch.int64)
    return images, labels, unreadable


class EpochBatches:
    """A batch sampler whose batches the loader sets before each epoch; with persistent workers the
    DataLoader asks for its batches again every epoch, in the main process."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class TorchvisionImageFolderLoader(FolderLoader):
    backend = "torchvision"

    def __init__(self, root, split: str, batch_size: int, **options):
        super().__init__(root, split, batch_size, **options)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._sampler = EpochBatches()
        dataset = FolderImages(self.index.paths, self.index.labels, train=self.train, image_size=self.image_size)
        workers = self.num_threads
        self._loader = DataLoader(dataset, batch_sampler=self._sampler, num_workers=workers, collate_fn=collate,
                                  pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                                  prefetch_factor=4 if workers > 0 else None)

    def _batches(self, batch_indices, epoch: int, first_batch: int) -> Iterator[Batch]:
        self._sampler.batches = [
            [(i, self.sample_seed(epoch, i)) for i in indices.tolist()]  # each sample's own crop seed
            for indices in self.without_excluded(batch_indices)]
        for images, labels, unreadable in self._loader:
            if unreadable:
                self.leave_out(unreadable)
            if images is None:
                continue
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield (normalize_uint8(images, self.mean, self.std, dtype=self.dtype),
                   labels.to(self.device, non_blocking=True))
