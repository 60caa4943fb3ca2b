"""The run's two loaders (train and val shards of this rank), built from the config's `data` section on the
device and in the memory format the runtime decided; val takes the training split's classes."""
from __future__ import annotations

from dataclasses import asdict
from typing import NamedTuple

from ..config import ConfigError, RunConfig
from ..loaders import EpochLoader, build_loader
from ..loaders.transforms import Augment
from ..runtime import Runtime


class Loaders(NamedTuple):
    train: EpochLoader
    val: EpochLoader


def build_loaders(cfg: RunConfig, runtime: Runtime) -> Loaders:
    data = cfg.data
    common = {"dataset": data.dataset, "backend": data.backend, "image_size": data.image_size,
              "device": runtime.device, "memory_format": runtime.memory_format, "num_threads": data.num_threads,
              "seed": cfg.train.seed, "shard_id": runtime.dist.rank, "num_shards": runtime.dist.world_size,
              "skip_corrupt": data.skip_corrupt, "download": data.download}
    if data.dataset == "synthetic":
        common["num_classes"] = data.num_classes
    augment = Augment(**asdict(data.augment)) if data.dataset == "imagefolder" else None  # training only
    try:
        train = build_loader(data.root, "train", data.batch_size, augment=augment, **common)
        if data.dataset == "imagefolder":  # val is labelled with the training split's class indices
            common["classes"] = train.classes
        return Loaders(train, build_loader(data.root, "val", data.eval_batch_size, **common))
    except ValueError as err:  # e.g. fewer samples than one batch, a val class train lacks: found reading the data
        raise ConfigError(f"data: {err}") from None
