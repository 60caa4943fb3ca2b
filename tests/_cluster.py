"""Shared by the tests of stopping, restarting and resizing runs (tests/test_cluster_*.py): `feed-fast` and
`torchrun` command lines as a user types them, a process watched line by line, and the parameters a last.pt
holds (student, translators, momentum)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

TINY = {"widths": [4, 8, 16]}


def tiny_config(*, epochs: int = 3, batch_size: int = 16, image_size: int = 32, schedule: str = "cosine",
                data: dict | None = None, **train) -> dict:
    """ResNet-8 trained from scratch on synthetic data (10 steps per epoch per process), CPU fp32, progress lines
    on every step (a test waits for them)."""
    return {
        "model": {"name": "resnet8", "kwargs": TINY},
        "method": {"name": "baseline"},
        "data": {"dataset": "synthetic", "root": "", "num_classes": 5, "batch_size": batch_size,
                 "eval_batch_size": 32, "image_size": image_size, **(data or {})},
        "schedule": {"name": schedule, "epochs": epochs, "milestones": [2] if schedule == "multistep" else []},
        "optim": {"lr": 0.05},
        "train": {"device": "cpu", "precision": "fp32", "progress": "lines", "log_every": 1, **train},
    }


def environment(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
            **extra}


def feed_fast_command(*args) -> list[str]:
    return [sys.executable, "-m", "feed_fast.cli", *map(str, args)]


def torchrun_command(*args, nproc: int = 2, launcher=("--standalone",)) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "--nproc_per_node", str(nproc),
            "-m", "feed_fast.cli", *map(str, args)]


def run(command, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    """The command to its end; on a timeout its whole process group (torchrun's workers too) is killed."""
    job = Watched(command, env=kw.pop("env", None), **kw)
    code, err = job.finish(timeout)
    return subprocess.CompletedProcess(command, code, job.stdout, err)


class Watched:
    """A process (in a session of its own: a timeout kills its workers too) whose stderr is read line by line
    (progress lines), so that a test can act at a given step."""

    def __init__(self, command, env=None, **kw) -> None:
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env or environment(), start_new_session=True, **kw)
        self.seen: list[str] = []
        self.stdout = ""

    def wait_for(self, starts_with: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        for line in self.proc.stderr:
            self.seen.append(line)
            if line.startswith(starts_with):
                return line
            if time.monotonic() > deadline:
                break
        self.kill()
        raise AssertionError(f"no line starting with {starts_with!r}; stderr so far:\n{''.join(self.seen)[-4000:]}")

    def finish(self, timeout: float = 240) -> tuple[int, str]:
        """(exit code, the whole stderr)."""
        try:
            self.stdout, rest = self.proc.communicate(timeout=timeout)
        finally:
            self.kill()
        return self.proc.returncode, "".join(self.seen) + rest

    def kill(self) -> None:
        """The process and whatever it started, if still running (torchrun's workers outlive a killed agent)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()


def worker_of_rank(launcher_pid: int, rank: int) -> int:
    """The pid of torchrun's worker with that RANK (its children, read from /proc)."""
    children = []
    for task in Path(f"/proc/{launcher_pid}/task").iterdir():
        children += (task / "children").read_text().split()
    for pid in children:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {children}")


def params(path) -> dict:
    """What an exact resume must reproduce: the student, the translators and the optimizer's momentum."""
    ckpt = torch.load(path, weights_only=True)
    return {**{"student." + k: v for k, v in ckpt["student"].items()}, **ckpt["extras"],
            **{f"momentum.{i}": s["momentum_buffer"] for i, s in ckpt["optimizer"]["state"].items()}}


def float_params(path) -> dict:
    """`params` without BatchNorm's running statistics and counters (which the process layout may change)."""
    return {k: v for k, v in params(path).items()
            if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def records(run: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def outcome(record: dict) -> tuple:
    """What an epoch's record must repeat after a resume (timings and speeds may differ)."""
    return record["epoch"], record["loss"], record.get("val"), record["lr"]


def last_position(run: Path) -> tuple[int, int]:
    ckpt = torch.load(run / "last.pt", weights_only=True, mmap=True)
    return ckpt["epoch"], ckpt["step_in_epoch"]
