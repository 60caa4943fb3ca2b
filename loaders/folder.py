"""ImageNet-style folders (root/<split>/<class>/<image>): the file index, built exactly like
torchvision's ImageFolder (classes sorted by name, files in sorted os.walk order), and the part of the
loader both backends share: which files each batch holds, and leaving out files found broken."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .base import EpochLoader
from .integrity import report_corrupt

FOLDER_IMAGE_SIZE = 224  # ImageNet's training size: the native size of an image folder (image_size=None)
# torchvision.datasets.folder.IMG_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class FolderIndex:
    root: str  # the split folder
    classes: list[str]
    paths: list[str]
    labels: list[int]


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def class_files(class_dir: str) -> list[str]:
    return [os.path.join(folder, name)
            for folder, _, names in sorted(os.walk(class_dir, followlinks=True))
            for name in sorted(names) if is_image_file(name)]


def scan_split(split_dir: str) -> FolderIndex:
    """Index one split folder; a clear error naming the path when there is nothing to train on."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"image folder not found: {split_dir} (expected <root>/<split>/<class>/<image>)")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders in {split_dir} (expected {split_dir}/<class>/<image>)")
    paths, labels, empty = [], [], []
    for label, name in enumerate(classes):
        files = class_files(os.path.join(split_dir, name))
        if not files:
            empty.append(name)
        paths += files
        labels += [label] * len(files)
    if empty:
        # torchvision's ImageFolder refuses these too: an empty class would silently shift nothing but
        # usually means a broken copy of the data set.
        raise FileNotFoundError(f"{len(empty)} class folder(s) in {split_dir} hold no image files "
                                f"({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty[:10])}")
    return FolderIndex(split_dir, classes, paths, labels)


class FolderLoader(EpochLoader):
    """Batch boundaries come from the full file index, so a broken file left out (skip_corrupt) only
    makes its own batch one shorter: the epoch's other batches, its length and resume points stay put."""

    native_image_size = FOLDER_IMAGE_SIZE

    def __init__(self, root, split: str, batch_size: int, *, skip_corrupt: bool, num_threads: int, **common):
        if root is None:
            raise ValueError("root is required for dataset='imagefolder': the folder holding train/ and val/")
        split = "val" if split == "test" else split
        self.index = scan_split(os.path.join(os.fspath(root), split))
        super().__init__(split=split, batch_size=batch_size, num_classes=len(self.index.classes), **common)
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        self.num_threads = num_threads
        self.skip_corrupt = skip_corrupt
        self.excluded: set[int] = set()  # dataset indices of files found broken (skip_corrupt)
        self._labels = torch.tensor(self.index.labels, dtype=torch.int64)

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    @property
    def dataset_size(self) -> int:
        return len(self.index.paths)

    def without_excluded(self, batch_indices: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for indices in batch_indices:
            if self.excluded:
                keep = [i for i in indices.tolist() if i not in self.excluded]
                indices = torch.tensor(keep, dtype=torch.int64)
            if len(indices):
                yield indices

    def leave_out(self, unreadable: dict[str, str]) -> None:
        """Raise naming the broken files, or (skip_corrupt) warn and never serve them again."""
        report_corrupt(unreadable, skip=self.skip_corrupt, context=f" in {self.index.root}")
        position = {path: i for i, path in enumerate(self.index.paths)}
        self.excluded.update(position[path] for path in unreadable)
