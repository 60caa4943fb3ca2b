"""Input pipelines (imported as `feed_fast.loaders`)."""
from .base import EpochLoader
from .build import build_loader, dali_available
from .integrity import CorruptImageError
from .normalize import IMAGENET_MEAN, IMAGENET_STD
from .synthetic import SYNTHETIC_BATCHES, SyntheticLoader

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SYNTHETIC_BATCHES", "CorruptImageError", "EpochLoader",
           "SyntheticLoader", "build_loader", "dali_available"]
