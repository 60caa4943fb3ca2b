"""Whole-file writes that a crash cannot tear: write a temporary file in the same folder, fsync it, rename it
over the target, fsync the folder. A reader sees the old file or the new one, never a part. Every file the
engine and the demo write (checkpoints, config.yaml, metrics, summaries, reports, plots) goes through
`atomic_write`. Arguments follow `torch.save(obj, path)`: what to write first, where second.

A write the system refuses (a full disk, a file-size limit, a read-only folder) raises `WriteFailed`, one line
naming the file and the cause; the old file, if any, is left as it was and no temporary file stays behind."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


class WriteFailed(OSError):
    """The system refused a write: `filename` is the file we were writing, `strerror` why."""

    def __init__(self, path: str | os.PathLike, cause: OSError) -> None:
        code = cause.errno if cause.errno is not None else errno.EIO
        super().__init__(code, cause.strerror or str(cause), str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror} (errno {self.errno})"


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind `error`: torch.save reports a failed write as a RuntimeError chained to it."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(write: Callable[[IO[bytes]], Any], path: str | os.PathLike, *,
                 keep_previous: str | os.PathLike | None = None) -> Path:
    """Call `write(file)` on a temporary binary file, then move it to `path` (its folder is created).
    `keep_previous`: where the file `path` held until now goes (replaced as a whole too), so a damaged newest
    copy is never the only one. At every moment `path` holds the old content or the new one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise WriteFailed(path, err) from err
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600 files; these are ordinary files
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if keep_previous is not None and path.exists():
            _replace_with_copy_of(path, Path(keep_previous))
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = os_error_in(err)
        if cause is not None and not isinstance(err, WriteFailed):
            raise WriteFailed(path, cause) from err
        raise
    return path


def _replace_with_copy_of(source: Path, target: Path) -> None:
    """`target` becomes `source`'s content, atomically: a hard link costs no space (a copy where links fail)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    os.close(fd)
    try:
        try:
            os.unlink(tmp)
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = os_error_in(err)
        if cause is not None:
            raise WriteFailed(target, cause) from err
        raise


def _fsync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike, *,
                keep_previous: str | os.PathLike | None = None) -> Path:
    """`path` becomes `source`'s content, atomically (see `atomic_write` for `keep_previous`): a hard link, so
    a checkpoint that is both best.pt and last.pt is written and stored once. Safe because no file here is
    ever changed in place: each later write replaces its name with a new file, and the link keeps the old one."""
    source, path = Path(source), Path(path)
    try:
        if keep_previous is not None and path.exists():
            _replace_with_copy_of(path, Path(keep_previous))
        _replace_with_copy_of(source, path)
        _fsync_folder(path.parent)
    except WriteFailed:
        raise
    except OSError as err:
        raise WriteFailed(path, err) from err
    return path


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(lambda file: file.write(text.encode()), path)


def atomic_save(obj: Any, path: str | os.PathLike, *, keep_previous: str | os.PathLike | None = None) -> Path:
    """`torch.save(obj, path)`, atomically (see `atomic_write` for `keep_previous`)."""
    import torch

    return atomic_write(lambda file: torch.save(obj, file), path, keep_previous=keep_previous)


def stale_temporaries(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Temporary files `atomic_write` left in `folders` when its process was killed mid-write."""
    found = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            found += [p for p in folder.iterdir()
                      if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and p.is_file()]
    return found


def check_writable_folder(path: str | os.PathLike) -> Path:
    """Create `path` (and its parents) if needed and prove a file can be written there, before any work starts.
    Raises WriteFailed naming the path and the reason (a file in the way, no permission, a full disk...)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteFailed(path, OSError(errno.ENOTDIR, "it is a file, not a folder"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        why = OSError(errno.ENOTDIR, f"{blocker} is a file, not a folder") if blocker is not None else err
        raise WriteFailed(path, why) from None
    try:
        atomic_write_text("feed-fast checks that it can write here\n", path / ".write-check")
    except WriteFailed as err:
        raise WriteFailed(path, err) from None
    finally:
        (path / ".write-check").unlink(missing_ok=True)
    return path
