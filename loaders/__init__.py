"""Input pipelines (imported as `feed_fast.loaders`)."""
from .base import EpochLoader
from .build import build_loader, dali_available
from .normalize import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EpochLoader", "build_loader", "dali_available"]
