"""The fallback image-folder pipeline: Pillow decoding in DataLoader workers, the same transforms as
the DALI pipeline, uint8 batches in pinned memory, and normalization on the device (a quarter of the
bytes cross PCIe, and the GPU does the float math).

The recipe's switches (`Augment`, docs/recipe.md) act where torchvision's train.py puts them: the auto-augment
ops on the cropped and flipped Pillow image in the workers (torchvision.transforms.v2's own op code, with the ops
and magnitudes drawn from the sample's seed), random erasing on the normalized batch on the device (the boxes
drawn in the workers travel with the batch)."""
from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .base import Batch
from .folder import FolderLoader
from .normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8
from .transforms import (
    NO_AUGMENT,
    Augment,
    AugmentOp,
    SampleAugment,
    op_magnitude,
    train_augment,
    train_crop,
    val_resize_size,
)

NO_ERASE = (0, 0, 0, 0)  # (top, left, height, width) of a sample nothing is erased in
NO_DRAWS = SampleAugment((), None)


@functools.cache
def auto_augment_transform(policy: str):
    """torchvision's v2 transform of `policy`, as train.py builds it (bilinear, fill 0): its op code applies the
    ops drawn from the sample's seed."""
    from torchvision.transforms import v2

    transform = {"ta_wide": v2.TrivialAugmentWide, "ra": v2.RandAugment}[policy]
    return transform(interpolation=InterpolationMode.BILINEAR)


def apply_auto_augment(image: Image.Image, policy: str, ops: tuple[AugmentOp, ...]) -> Image.Image:
    """The drawn ops in order, each as torchvision's `TrivialAugmentWide` / `RandAugment` forward applies the op
    it draws itself (`_apply_image_or_video_transform`, with the magnitude of torchvision's table)."""
    transform = auto_augment_transform(policy)
    for op in ops:
        name, magnitude = op_magnitude(policy, op, image.height, image.width)
        image = transform._apply_image_or_video_transform(image, name, magnitude,
                                                          interpolation=transform.interpolation, fill=transform._fill)
    return image


def erase(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """RandomErasing with value 0 on a normalized (B, C, H, W) batch, in place: each sample's (top, left, height,
    width) box (height 0: nothing) set to 0, as one masked fill on the device."""
    top, left, height, width = boxes.to(images.device, non_blocking=True).unbind(1)
    rows = torch.arange(images.shape[2], device=images.device)
    cols = torch.arange(images.shape[3], device=images.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])
    return images.masked_fill_(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0)  # in place: keeps the format


class FolderImages(Dataset):
    """Keys are (dataset index, augmentation seed): the sampler decides both in the main process, so
    a sample's crop does not depend on which worker decodes it. Returns (CHW uint8, label, path, error, erase box)."""

    def __init__(self, paths: list[str], labels: list[int], *, train: bool, image_size: int,
                 augment: Augment = NO_AUGMENT):
        self.paths, self.labels = paths, labels
        self.train, self.image_size, self.augment = train, image_size, augment

    def __len__(self) -> int:
        return len(self.paths)

    def transform(self, image: Image.Image, seed: int, ops: tuple[AugmentOp, ...] = ()) -> Image.Image:
        """Training: the crop and flip drawn from `seed`, then the auto-augment `ops`; val: resize, center crop."""
        size = self.image_size
        if self.train:
            crop = train_crop(seed, image.height, image.width)
            image = TF.resized_crop(image, crop.top, crop.left, crop.height, crop.width, [size, size],
                                    interpolation=InterpolationMode.BILINEAR, antialias=True)
            image = TF.hflip(image) if crop.flip else image
            return apply_auto_augment(image, self.augment.auto_augment, ops) if ops else image
        image = TF.resize(image, val_resize_size(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        return TF.center_crop(image, [size, size])

    def __getitem__(self, key):
        index, seed = key
        path = self.paths[index]
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except Exception as error:  # noqa: BLE001 -- reported by the main process, which knows whether to skip
            return None, self.labels[index], path, f"{type(error).__name__}: {error}", NO_ERASE
        drawn = train_augment(seed, self.augment, self.image_size) if self.train else NO_DRAWS
        image = TF.pil_to_tensor(self.transform(image, seed, drawn.ops))
        return image, self.labels[index], path, None, NO_ERASE if drawn.erase is None else tuple(drawn.erase)


def collate(samples):
    """Stack the decodable samples and their erase boxes; pass the broken ones' {path: reason} on to the main
    process."""
    good = [sample for sample in samples if sample[3] is None]
    unreadable = {path: error for _, _, path, error, _ in samples if error is not None}
    if not good:
        return None, None, None, unreadable
    images = torch.stack([sample[0] for sample in good])
    labels = torch.tensor([sample[1] for sample in good], dtype=torch.int64)
    boxes = torch.tensor([sample[4] for sample in good], dtype=torch.int64)
    return images, labels, boxes, unreadable


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
        dataset = FolderImages(self.index.paths, self.index.labels, train=self.train, image_size=self.image_size,
                               augment=self.augment)
        workers = self.num_threads
        self._loader = DataLoader(dataset, batch_sampler=self._sampler, num_workers=workers, collate_fn=collate,
                                  pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                                  prefetch_factor=4 if workers > 0 else None)

    def _batches(self, batch_indices, epoch: int, first_batch: int) -> Iterator[Batch]:
        self._sampler.batches = [
            [(i, self.sample_seed(epoch, i)) for i in indices.tolist()]  # each sample's own crop seed
            for indices in self.without_excluded(batch_indices)]
        erasing = self.train and self.augment.random_erase > 0
        for images, labels, boxes, unreadable in self._loader:
            if unreadable:
                self.leave_out(unreadable)
            if images is None:
                continue
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            images = normalize_uint8(images, self.mean, self.std, dtype=self.dtype)
            yield (erase(images, boxes) if erasing else images), labels.to(self.device, non_blocking=True)
