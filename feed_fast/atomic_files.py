"""Whole-file writes that a crash cannot tear: write a temporary file in the same folder, fsync it, rename it
over the target, fsync the folder. A reader sees the old file or the new one, never a part. Every file the
engine and the demo write (checkpoints, config.yaml, summaries, reports, plots) goes through `atomic_write`.
Arguments follow `torch.save(obj, path)`: what to write first, where second."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(write: Callable[[IO[bytes]], Any], path: str | os.PathLike) -> Path:
    """Call `write(file)` on a temporary binary file, then move it to `path` (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(lambda file: file.write(text.encode()), path)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj, path)`, atomically."""
    import torch

    return atomic_write(lambda file: torch.save(obj, file), path)
