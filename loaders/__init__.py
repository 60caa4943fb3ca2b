"""Input pipelines: `build_loader` for CIFAR (held on the device), image folders (DALI or torchvision) and
generated data, all with the same epoch order, sharding and exact resume.

Imported as `feed_fast.loaders`: the folder sits at the top of the repository so the data side of the project
is visible at a glance, and pyproject's package-dir mapping installs it inside the `feed_fast` namespace so the
project claims no generic top-level import name. Loaders take the device and memory format the runtime
decided (`feed_fast.runtime`); they decide neither."""
from .base import EpochLoader
from .build import build_loader, dali_available
from .integrity import CorruptImageError
from .normalize import IMAGENET_MEAN, IMAGENET_STD
from .synthetic import SYNTHETIC_BATCHES, SyntheticLoader

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SYNTHETIC_BATCHES", "CorruptImageError", "EpochLoader",
           "SyntheticLoader", "build_loader", "dali_available"]
