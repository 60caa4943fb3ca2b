"""How a run's optimizer step is laid out: P processes x a micro-batch of b images x train.accumulate A = the
global batch G, the samples one optimizer step consumes (the loaders' sampling.py says which). Decided once at
start, before the loaders are built:

- a new run: b = data.batch_size and A = train.accumulate as given, so G = b x P x A; or, with
  data.global_batch_size = G, A and b are derived: b is the largest divisor of G / P up to data.batch_size (the
  most one process holds), A = G / (P x b), and one line says so when b differs from data.batch_size.
- a resumed run keeps the global batch and micro-batch its last.pt was written with; on another number of
  processes A changes to G / (P x b) (refused in one line when that is no whole number), so the run takes the
  same optimizer steps over the same samples, and continues at the same step of the epoch.

The rest of the run reads the layout from the effective config (`effective_config`: data.batch_size = b,
train.accumulate = A); config.yaml keeps the config as given."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError, RunConfig


@dataclass(frozen=True)
class Layout:
    processes: int
    micro_batch: int  # images per process per micro-batch (the loaders' batch size)
    accumulate: int  # micro-batches per optimizer step

    @property
    def global_batch(self) -> int:
        return self.processes * self.micro_batch * self.accumulate

    def describe(self) -> str:
        return (f"{self.processes} process{'es' if self.processes != 1 else ''} x {self.micro_batch} per "
                f"micro-batch x accumulate {self.accumulate} = global batch {self.global_batch}")

    def to_dict(self) -> dict:
        return {"processes": self.processes, "micro_batch": self.micro_batch, "accumulate": self.accumulate,
                "global_batch": self.global_batch}

    @classmethod
    def from_dict(cls, raw: dict) -> Layout:
        return cls(int(raw["processes"]), int(raw["micro_batch"]), int(raw["accumulate"]))


def new_layout(cfg: RunConfig, processes: int) -> tuple[Layout, str | None]:
    """The layout of a run starting on `processes` processes, and a line when it differs from what the config
    says per process (data.batch_size)."""
    data = cfg.data
    if data.global_batch_size is None:
        return Layout(processes, data.batch_size, cfg.train.accumulate), None
    total = data.global_batch_size
    if total % processes:
        raise ConfigError(f"data.global_batch_size={total} cannot be split over {processes} processes (not a "
                          f"multiple); use a number of processes that divides it")
    share = total // processes
    micro = max(d for d in range(1, min(share, data.batch_size) + 1) if share % d == 0)
    layout = Layout(processes, micro, share // micro)
    if micro == data.batch_size:
        return layout, None
    return layout, (f"data.global_batch_size={total} on {processes} process{'es' if processes != 1 else ''}: "
                    f"{micro} images per micro-batch x accumulate {layout.accumulate} per process (data.batch_size="
                    f"{data.batch_size} is the most a micro-batch holds)")


def resumed_layout(cfg: RunConfig, processes: int, recorded: Layout | None) -> tuple[Layout, str | None]:
    """The layout of a run continuing from a last.pt written with `recorded` (None: no checkpoint yet, a new
    layout). On the same number of processes the config's own layout (the trainer refuses a last.pt it does not
    fit); on another, the recorded global batch and micro-batch with the accumulate that keeps them."""
    if recorded is None or recorded.processes == processes:
        return new_layout(cfg, processes)
    total, micro = recorded.global_batch, recorded.micro_batch
    if total % (micro * processes):
        fitting = [p for p in range(1, total // micro + 1) if (total // micro) % p == 0]
        raise ConfigError(f"the run's last.pt was written by {recorded.describe()}; on {processes} processes no "
                          f"whole train.accumulate keeps that global batch with {micro} images per micro-batch: "
                          f"continue it on {', '.join(map(str, fitting))} process(es)")
    layout = Layout(processes, micro, total // (micro * processes))
    return layout, (f"continued on {processes} process{'es' if processes != 1 else ''} instead of "
                    f"{recorded.processes}: accumulate {layout.accumulate} (was {recorded.accumulate}) keeps the "
                    f"global batch {total}")


def effective_config(cfg: RunConfig, layout: Layout) -> RunConfig:
    """`cfg` with the layout's micro-batch as data.batch_size and its accumulate as train.accumulate."""
    data = dataclasses.replace(cfg.data, batch_size=layout.micro_batch)
    train = dataclasses.replace(cfg.train, accumulate=layout.accumulate)
    return dataclasses.replace(cfg, data=data, train=train)


def checkpoint_layout(ckpt: dict) -> Layout | None:
    """The layout a last.pt was written with (checkpoints from before layouts were recorded: from their world
    size and config)."""
    if isinstance(ckpt.get("layout"), dict):
        return Layout.from_dict(ckpt["layout"])
    config = ckpt.get("config")
    if not isinstance(config, dict):
        return None
    try:
        return Layout(int(ckpt.get("world_size", 1)), int(config["data"]["batch_size"]),
                      int(config["train"].get("accumulate", 1)))
    except (KeyError, TypeError, ValueError):
        return None


def recorded_layout(stage_dirs: list[Path], last_name: str) -> Layout | None:
    """The layout of the newest last.pt among the run's stage folders (one, or sFEED's gen1/, gen2/, ...): read
    without its tensors. None when there is none, or it cannot be read (the trainer then names the problem)."""
    for folder in reversed(stage_dirs):
        path = folder / last_name
        if not path.is_file():
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 -- a damaged file is reported by the trainer, which reads it fully
            return None
        return checkpoint_layout(ckpt) if isinstance(ckpt, dict) else None
    return None
