"""CIFAR-10/100 held on the device: the python-pickle files are read once into one uint8 tensor, and
each batch is gathered, augmented (random crop 32 with zero padding 4, horizontal flip) and normalized
by a few batched tensor ops, with no per-sample Python."""
from __future__ import annotations

import os
import pickle
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .base import Batch, EpochLoader
from .normalize import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, normalize_uint8

PAD = 4
CIFAR_SIZE = 32

# dataset -> (folder, train files, test files, label key, classes, mean, std)
LAYOUTS = {
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100, CIFAR100_MEAN, CIFAR100_STD),
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10,
                CIFAR10_MEAN, CIFAR10_STD),
}


def cifar_files(root: str, dataset: str, split: str) -> list[str]:
    folder, train_files, test_files, *_ = LAYOUTS[dataset]
    return [os.path.join(root, folder, name) for name in (train_files if split == "train" else test_files)]


def download_cifar(root: str, dataset: str) -> None:
    """Fetch the official archive into root (only when the user asked: build_loader(download=True))."""
    from torchvision import datasets

    cls = datasets.CIFAR100 if dataset == "cifar100" else datasets.CIFAR10
    cls(root, train=True, download=True)


def read_cifar_pickle(path: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickle file -> (N, 3, 32, 32) uint8 images and (N,) int64 labels. The official files were
    written by Python 2, so their keys load as bytes; files written by Python 3 have str keys."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR file not found: {path} (pass download=True / --download to fetch it)")
    try:
        with open(path, "rb") as file:
            entry = pickle.load(file, encoding="bytes")
    except Exception as error:  # truncated or not a pickle at all
        raise ValueError(f"cannot read CIFAR pickle {path}: {error}") from error
    if not isinstance(entry, dict):
        raise TypeError(f"CIFAR pickle {path} holds a {type(entry).__name__}, expected a dict")
    entry = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise ValueError(f"CIFAR pickle {path} lacks 'data' or {label_key!r} (keys: {sorted(entry)})")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * CIFAR_SIZE * CIFAR_SIZE or len(data) != len(labels):
        raise ValueError(f"CIFAR pickle {path}: data has shape {data.shape} and {len(labels)} labels, "
                         f"expected (N, 3072) rows with one label each")
    return data.reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE), labels


def crop_flip_indices(batch: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices into the padded (40x40) images that pick each sample's random 32x32 crop,
    with the columns reversed for the half that is flipped: crop and flip become one gather."""
    offsets = torch.randint(0, 2 * PAD + 1, (2, batch, 1), generator=generator, device=device)
    flip = torch.rand(batch, 1, generator=generator, device=device) < 0.5
    steps = torch.arange(CIFAR_SIZE, device=device)
    rows = offsets[0] + steps
    cols = offsets[1] + torch.where(flip, CIFAR_SIZE - 1 - steps, steps)
    return rows, cols


class CifarLoader(EpochLoader):
    indices_on_device = True
    native_image_size = CIFAR_SIZE

    def __init__(self, root: str, split: str, batch_size: int, *, dataset: str = "cifar100",
                 download: bool = False, **common):
        if dataset not in LAYOUTS:
            raise ValueError(f"dataset must be one of {sorted(LAYOUTS)}, got {dataset!r}")
        if root is None:
            raise ValueError(f"root is required for dataset={dataset!r}: the folder holding {LAYOUTS[dataset][0]}/")
        split = "val" if split == "test" else split
        folder, _, _, label_key, num_classes, self.mean, self.std = LAYOUTS[dataset]
        super().__init__(split=split, batch_size=batch_size, num_classes=num_classes, **common)
        root = os.fspath(root)
        paths = cifar_files(root, dataset, self.split)
        if download and not all(os.path.isfile(path) for path in paths):
            download_cifar(root, dataset)
        parts = [read_cifar_pickle(path, label_key) for path in paths]
        images = np.concatenate([part[0] for part in parts])
        labels = np.concatenate([part[1] for part in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{os.path.join(root, folder)}: labels span [{labels.min()}, {labels.max()}], "
                             f"expected [0, {num_classes})")
        if len(labels) == 0:
            raise ValueError(f"{os.path.join(root, folder)}: the {self.split} files hold no images")
        self.dataset = dataset
        self.images = torch.from_numpy(images).to(self.device)  # (N, 3, 32, 32) uint8, resident
        self.labels = torch.from_numpy(labels).to(self.device)
        self._generator = torch.Generator(self.device)

    @property
    def dataset_size(self) -> int:
        return len(self.labels)

    def _batches(self, batch_indices, epoch: int, first_batch: int) -> Iterator[Batch]:
        for batch, indices in enumerate(batch_indices, start=first_batch):
            images, labels = self.images[indices], self.labels[indices]
            if self.train:
                self._generator.manual_seed(self.batch_seed(epoch, batch))  # by its place in the global order
                rows, cols = crop_flip_indices(len(indices), self._generator, self.device)
                padded = F.pad(images, (PAD, PAD, PAD, PAD))
                images = padded[torch.arange(len(indices), device=self.device)[:, None, None, None],
                                torch.arange(3, device=self.device)[None, :, None, None],
                                rows[:, None, :, None], cols[:, None, None, :]]
            images = images.contiguous(memory_format=self.memory_format)
            images = normalize_uint8(images, self.mean, self.std, dtype=self.dtype)
            if self.image_size != CIFAR_SIZE:
                images = F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bilinear",
                                       align_corners=False).to(self.dtype)
            yield images.contiguous(memory_format=self.memory_format), labels
