"""What a run writes besides checkpoints: metrics.jsonl (one JSON object per epoch, appended and fsynced),
TensorBoard events, and a progress display (a tqdm bar on a TTY, plain lines otherwise). Rank 0 only."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ..atomic_files import atomic_write_text


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but a stripped install still trains
                self.tb = None

    def write_epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            for key, value in _flatten(record).items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.tb.add_scalar(key, value, record["epoch"])
            self.tb.flush()

    def scalars(self, values: dict, step: int) -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, keep_epochs: int) -> None:
    """On resume, drop records of epochs the checkpoint does not cover (written after it, then interrupted)."""
    records = [r for r in read_metrics(run_dir) if r["epoch"] < keep_epochs]
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        atomic_write_text("".join(json.dumps(r) + "\n" for r in records), path)


def _flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


class EpochProgress:
    """Images/s and ETA per epoch; `mode` bar | lines | none ("auto" picks bar on a TTY)."""

    def __init__(self, mode: str, enabled: bool, every: int, stream=None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "lines"
        self.mode = mode if enabled else "none"
        self.every = every
        self.bar = None

    def start_epoch(self, epoch: int, total: int, start: int) -> None:
        self.epoch, self.total, self.t0, self.start = epoch, total, time.perf_counter(), start
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=f"epoch {epoch}", file=self.stream, leave=False)

    def update(self, step: int, images: int, losses: dict) -> None:
        """`losses` maps names to 0-d tensors, read (a device sync) only on the steps that print."""
        if self.mode == "none":
            return
        if self.mode == "bar":
            self.bar.update(1)
        if (step + 1) % self.every != 0 and step + 1 != self.total:
            return
        elapsed = time.perf_counter() - self.t0
        done = step + 1 - self.start
        rate = images / max(elapsed, 1e-9)
        eta = elapsed / max(done, 1) * (self.total - step - 1)
        text = " ".join(f"{k}={float(v.detach()):.4f}" for k, v in losses.items())
        if self.mode == "bar":
            self.bar.set_postfix_str(f"{rate:.0f} img/s {text}")
        else:
            print(f"epoch {self.epoch} step {step + 1}/{self.total} {rate:.1f} img/s eta {eta:.0f}s {text}",
                  file=self.stream, flush=True)

    def end_epoch(self, message: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode != "none":
            print(message, file=self.stream, flush=True)
