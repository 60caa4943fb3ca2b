"""ImageNet-style folders (root/<split>/<class>/<image>): the file index, built exactly like
torchvision's ImageFolder (classes sorted by name, files in sorted os.walk order), and the part of the
loader both backends share: which files each batch holds, each training sample's crop seed, and leaving
out files found broken.

Classes come from the training split: a label is the index of its class in root/train's sorted class
folders, in every split. Indexing val on its own would shift every label after a class folder missing
from val by one, silently; so val is labelled with train's map, a val class folder train does not have is
refused, and a training class without val images is a warning."""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from . import sampling
from .base import EpochLoader
from .integrity import report_corrupt
from .transforms import NO_AUGMENT, Augment, SampleAugment, TrainCrop, train_augment, train_crop

FOLDER_IMAGE_SIZE = 224  # ImageNet's training size: the native size of an image folder (image_size=None)
# torchvision.datasets.folder.IMG_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class FolderIndex:
    root: str  # the split folder
    classes: list[str]  # the class-to-index map the labels use (the training split's)
    paths: list[str]
    labels: list[int]
    absent: list[str]  # classes of the map with no folder in this split: no samples here


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def class_files(class_dir: str) -> list[str]:
    return [os.path.join(folder, name)
            for folder, _, names in sorted(os.walk(class_dir, followlinks=True))
            for name in sorted(names) if is_image_file(name)]


def class_folders(split_dir: str) -> list[str]:
    """The class names of a split: its sub-folders, sorted (torchvision's ImageFolder order)."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"image folder not found: {split_dir} (expected <root>/<split>/<class>/<image>)")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders in {split_dir} (expected {split_dir}/<class>/<image>)")
    return classes


def foreign_classes_line(foreign: Sequence[str], split_dir: str, train_dir: str) -> str:
    names = ", ".join(repr(name) for name in foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10
                                                              else "")
    return (f"{len(foreign)} class folder(s) in {split_dir} are not classes of the training split {train_dir}: "
            f"{names}; labels are indices into the training split's classes, so rename or remove them")


def absent_classes_line(absent: Sequence[str], split_dir: str) -> str:
    names = ", ".join(repr(name) for name in absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10
                                                             else "")
    return f"{len(absent)} training class(es) have no images in {split_dir}: {names}"


def scan_split(split_dir: str, classes: Sequence[str] | None = None, *, classes_from: str = "") -> FolderIndex:
    """Index one split folder; a clear error naming the path when there is nothing to train on.
    classes: the class-to-index map to label with (the training split's, read from `classes_from`); None
    labels the split by its own class folders. A folder not in the map is refused naming it."""
    found = class_folders(split_dir)
    if classes is None:
        classes = found
    else:
        classes = list(classes)
        foreign = sorted(set(found) - set(classes))
        if foreign:
            raise ValueError(foreign_classes_line(foreign, split_dir, classes_from or "the given classes"))
    label_of = {name: label for label, name in enumerate(classes)}
    paths, labels, empty = [], [], []
    for name in found:
        files = class_files(os.path.join(split_dir, name))
        if not files:
            empty.append(name)
        paths += files
        labels += [label_of[name]] * len(files)
    if empty:
        # torchvision's ImageFolder refuses these too: an empty class would silently shift nothing but
        # usually means a broken copy of the data set.
        raise FileNotFoundError(f"{len(empty)} class folder(s) in {split_dir} hold no image files "
                                f"({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty[:10])}")
    present = set(found)
    absent = [name for name in classes if name not in present]
    return FolderIndex(split_dir, classes, paths, labels, absent)


class FolderLoader(EpochLoader):
    """Batch boundaries come from the full file index, so a broken file left out (skip_corrupt) only
    makes its own batch one shorter: the epoch's other batches, its length and resume points stay put."""

    native_image_size = FOLDER_IMAGE_SIZE

    def __init__(self, root, split: str, batch_size: int, *, skip_corrupt: bool, num_threads: int,
                 classes: Sequence[str] | None = None, augment: Augment = NO_AUGMENT, **common):
        if root is None:
            raise ValueError("root is required for dataset='imagefolder': the folder holding train/ and val/")
        split = "val" if split == "test" else split
        root = os.fspath(root)
        train_dir = os.path.join(root, "train")
        if classes is None and split != "train" and os.path.isdir(train_dir):
            classes = class_folders(train_dir)
        self.index = scan_split(os.path.join(root, split), classes,
                                classes_from=train_dir if os.path.isdir(train_dir) else "")
        if self.index.absent:  # stacklevel: build_loader's caller
            warnings.warn(absent_classes_line(self.index.absent, self.index.root), RuntimeWarning, stacklevel=5)
        super().__init__(split=split, batch_size=batch_size, num_classes=len(self.index.classes), **common)
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        self.num_threads = num_threads
        self.skip_corrupt = skip_corrupt
        self.augment = augment if self.train else NO_AUGMENT  # the recipe's switches (transforms.Augment): training
        self.excluded: set[int] = set()  # dataset indices of files found broken (skip_corrupt)
        self._labels = torch.tensor(self.index.labels, dtype=torch.int64)

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    @property
    def dataset_size(self) -> int:
        return len(self.index.paths)

    def sample_seed(self, epoch: int, index: int) -> int:
        """The seed of sample `index`'s crop and flip in `epoch`: its own, whatever batch, shard or worker
        serves it, so a resumed epoch (or one re-sharded) crops every sample as before."""
        return sampling.batch_seed(self.seed, epoch, index, 0)

    def train_crop(self, epoch: int, index: int, height: int, width: int) -> TrainCrop:
        return train_crop(self.sample_seed(epoch, index), height, width)

    def train_augment(self, epoch: int, index: int) -> SampleAugment:
        """Sample `index`'s auto-augment ops and erase box in `epoch`, from the same seed as its crop."""
        return train_augment(self.sample_seed(epoch, index), self.augment, self.image_size)

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
