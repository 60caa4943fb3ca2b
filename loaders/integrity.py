"""Telling readable images from broken ones with Pillow: a full decode, because a truncated JPEG
opens fine and fails only when its pixels are read. DALI's decoder does not name the file that
failed it, so the DALI loader asks this module which one it was."""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

CHUNK = 4096


class CorruptImageError(RuntimeError):
    """An image file that cannot be decoded; `paths` names the file(s)."""

    def __init__(self, message: str, paths: Iterable[str] = ()):
        super().__init__(message)
        self.paths = list(paths)


def image_error(path: str) -> str | None:
    """Why `path` cannot be decoded as an RGB image, or None when it can."""
    try:
        with Image.open(path) as image:
            # JPEGs decode at 1/8 scale (DCT scaling): every byte of entropy-coded data is still read, so
            # truncation and corruption still fail, at a fraction of the cost of a full decode.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.convert("RGB").load()
    except Exception as error:  # noqa: BLE001 -- Pillow raises many types (OSError, SyntaxError, ...)
        return f"{type(error).__name__}: {error}"
    return None


def find_unreadable(paths: Iterable[str], *, workers: int = 4) -> dict[str, str]:
    """{path: reason} for every path Pillow cannot decode. Threads suffice: decoding releases the GIL."""
    paths = list(paths)
    if workers <= 1:  # no thread at all
        return {path: reason for path in paths if (reason := image_error(path)) is not None}
    unreadable = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), CHUNK):  # bounded number of futures alive on huge folders
            chunk = paths[start:start + CHUNK]
            unreadable.update((path, reason) for path, reason in zip(chunk, pool.map(image_error, chunk))
                              if reason is not None)
    return unreadable


def report_corrupt(unreadable: dict[str, str], *, skip: bool, context: str = "") -> None:
    """Raise an error naming the broken files, or with skip, warn about each (the caller leaves them out)."""
    if not unreadable:
        return
    lines = "\n".join(f"  {path}: {reason}" for path, reason in unreadable.items())
    if not skip:
        raise CorruptImageError(f"cannot decode {len(unreadable)} image file(s){context}:\n{lines}\n"
                                "Fix or remove them, or pass skip_corrupt=True to leave them out "
                                "(`feed-fast data check ROOT` lists every broken file).", unreadable)
    for path, reason in unreadable.items():
        warnings.warn(f"skipping unreadable image {path} ({reason})", RuntimeWarning, stacklevel=3)
