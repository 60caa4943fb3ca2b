"""What a run writes besides checkpoints: metrics.jsonl (one JSON object per epoch), attempts.jsonl (one JSON
object per start of `feed-fast train` on the folder: new or continued, from which step, on which layout, with
which config changes), TensorBoard events, and a progress display (a tqdm bar on a TTY, plain lines otherwise).
Rank 0 only.

metrics.jsonl mirrors the `history` that last.pt carries: it is rewritten whole (atomically) after each
last.pt, and again when a run resumes, so whatever the moment of a crash it holds each epoch once and matches
the checkpoint training continues from. TensorBoard scalars all use the global step as their x axis; a resumed
run hides the events an earlier attempt wrote after its checkpoint (SummaryWriter's purge_step)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..atomic_files import WriteFailed, atomic_write_text, os_error_in

METRICS_FILE = "metrics.jsonl"
ATTEMPTS_FILE = "attempts.jsonl"
TENSORBOARD_DIR = "tensorboard"


def record_attempt(run_dir: Path, record: dict) -> None:
    """Append one line to the run's attempts.jsonl (the file is rewritten whole, so a crash never tears it)."""
    path = run_dir / ATTEMPTS_FILE
    try:
        before = path.read_text()
    except FileNotFoundError:
        before = ""
    if before and not before.endswith("\n"):
        before += "\n"
    atomic_write_text(before + json.dumps(record) + "\n", path)


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.path = run_dir / METRICS_FILE
        self.tb_dir = run_dir / TENSORBOARD_DIR
        self.enabled, self.use_tensorboard = enabled, tensorboard
        self.tb = None
        self.purge_step: int | None = None

    def restart(self, history: list[dict], global_step: int) -> None:
        """A (re)start from a checkpoint holding `history` at `global_step` (0 and [] for a fresh start):
        metrics.jsonl becomes exactly `history`; TensorBoard events after `global_step` are hidden."""
        self.purge_step = global_step + 1
        self.write_history(history)

    def write_history(self, history: list[dict]) -> None:
        if self.enabled:
            atomic_write_text("".join(json.dumps(record) + "\n" for record in history), self.path)

    def epoch_scalars(self, record: dict, global_step: int) -> None:
        self.scalars({k: v for k, v in _flatten(record).items() if isinstance(v, (int, float)) and k != "epoch"},
                     global_step)

    def scalars(self, values: dict, step: int) -> None:
        writer = self._writer()
        if writer is None:
            return
        try:
            for key, value in values.items():
                writer.add_scalar(key, value, step)
            writer.flush()
        except Exception as err:  # the event writer's thread re-raises a failed write on the next call
            cause = os_error_in(err)
            if cause is None:
                raise
            raise WriteFailed(self.tb_dir, cause) from err

    def _writer(self):
        if self.tb is None and self.enabled and self.use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but a stripped install still trains
                self.use_tensorboard = False
                return None
            self.tb = SummaryWriter(log_dir=str(self.tb_dir), purge_step=self.purge_step)
        return self.tb

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


class EpochProgress:
    """Images/s and ETA per epoch; `mode` bar | lines | epochs | none ("auto" picks bar on a TTY). `epochs`: the
    epoch lines and the notes between steps (a checkpoint written), no per-step progress; `none`: nothing."""

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
        """`images`: seen in this call's part of the epoch by all processes together (the rate printed is the
        total, as the epoch line's). `losses` maps names to 0-d tensors, read (a device sync) only on the steps
        that print."""
        if self.mode in ("none", "epochs"):
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

    def note(self, message: str) -> None:
        """A line between steps (a checkpoint written), above the bar or among the progress lines."""
        if self.mode == "bar" and self.bar is not None:
            self.bar.write(message, file=self.stream)
        elif self.mode != "none":
            print(message, file=self.stream, flush=True)

    def end_epoch(self, message: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode != "none":
            print(message, file=self.stream, flush=True)
