"""`build_loader`: the one entry point the trainer calls; it checks the arguments and picks the loader."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import EpochLoader
from .transforms import NO_AUGMENT, Augment

DATASETS = ("imagefolder", "cifar100", "cifar10", "synthetic")
BACKENDS = ("auto", "dali", "torchvision")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def build_loader(root, split: str, batch_size: int, *, dataset: str = "imagefolder", backend: str = "auto",
                 image_size: int | None = None, device: None | str | torch.device = None, num_threads: int = 2,
                 seed: int = 0, shard_id: int = 0, num_shards: int = 1, drop_last: bool | None = None,
                 dtype: torch.dtype | None = None, skip_corrupt: bool = False, download: bool = False,
                 num_classes: int | None = None, memory_format: torch.memory_format | None = None,
                 classes: Sequence[str] | None = None, augment: Augment | None = None) -> EpochLoader:
    """An iterable with len() of (images (B, 3, H, W) normalized float, labels int64) on `device`
    (default: CUDA if available, else CPU). See the README's "Input pipelines".

    image_size: output pixels per side; None means the dataset's native size (CIFAR 32, image folders 224,
    synthetic 224), so `build_loader(root, "val", 128, dataset="cifar100")` serves 32x32 CIFAR images.
    memory_format: torch.channels_last or torch.contiguous_format, as the runtime decided for the model
    (`feed_fast.runtime.memory_format_for`); None takes the runtime's default: channels-last on CUDA.

    split: "train" (shuffled each epoch, augmented, short last batch dropped unless drop_last=False) or
    "val" ("test" is the same; fixed order, every sample exactly once across shards).
    backend applies to imagefolder only: "auto" takes DALI when it is installed, else torchvision.
    num_classes applies to synthetic only (default 1000); the other datasets know their classes.
    classes applies to imagefolder only: the class-to-index map the labels use, in index order. By default
    the training split's: root/train's class folders, sorted, for every split (a split holding a class folder
    train lacks is refused naming it; a training class it has no images of is a warning); a root without
    train/ labels its split by its own folders.
    augment applies to imagefolder only: torchvision's recipe switches after the training crop and flip
    (`transforms.Augment`: auto-augment ops, random erasing; docs/recipe.md), the same on both backends; the
    val split is never augmented.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    split = "val" if split == "test" else split
    common = {"image_size": image_size, "device": device, "dtype": dtype, "seed": seed, "shard_id": shard_id,
              "num_shards": num_shards, "drop_last": drop_last, "memory_format": memory_format}
    if dataset != "synthetic" and num_classes is not None:
        raise ValueError(f"num_classes is only for dataset='synthetic'; {dataset!r} reads its classes from the data")
    if dataset != "imagefolder" and classes is not None:
        raise ValueError(f"classes is only for dataset='imagefolder'; {dataset!r} has fixed class indices")
    if dataset != "imagefolder" and augment is not None and augment.active:
        raise ValueError(f"augment is only for dataset='imagefolder' (both backends); {dataset!r} has its own "
                         "augmentation")
    loader = _make_loader(root, split, batch_size, dataset, backend, num_threads, skip_corrupt, download, num_classes,
                          classes, common, augment or NO_AUGMENT)
    if len(loader) == 0:
        raise ValueError(f"{dataset} {split!r} (root={root!r}) has {loader.dataset_size} samples, "
                         f"{loader.num_samples} of them for shard {shard_id}/{num_shards}: not one batch of "
                         f"{batch_size}" + (" (drop_last=True)" if loader.drop_last else ""))
    return loader


def _make_loader(root, split, batch_size, dataset, backend, num_threads, skip_corrupt, download, num_classes,
                 classes, common, augment) -> EpochLoader:
    if dataset == "synthetic":
        from .synthetic import SyntheticLoader

        return SyntheticLoader(split, batch_size, num_classes=num_classes, **common)
    if dataset in ("cifar100", "cifar10"):
        from .cifar import CifarLoader

        return CifarLoader(root, split, batch_size, dataset=dataset, download=download, **common)
    if backend == "auto":
        backend = "dali" if dali_available() else "torchvision"
    if backend == "dali":
        if not dali_available():
            raise ImportError("backend='dali' needs NVIDIA DALI: pip install 'feed-fast[dali]' "
                              "(or nvidia-dali-cuda120 for CUDA 12); backend='torchvision' works without it")
        from .dali_backend import DaliImageFolderLoader

        return DaliImageFolderLoader(root, split, batch_size, num_threads=num_threads,
                                     skip_corrupt=skip_corrupt, classes=classes, augment=augment, **common)
    from .torchvision_backend import TorchvisionImageFolderLoader

    return TorchvisionImageFolderLoader(root, split, batch_size, num_threads=num_threads,
                                        skip_corrupt=skip_corrupt, classes=classes, augment=augment, **common)
