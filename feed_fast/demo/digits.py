"""scikit-learn's bundled digits (1,797 real 8x8 scans, no download) as an ImageFolder of 32x32 RGB JPEGs.

The folder is what `feed_fast.loaders.build_loader(root, ..., dataset="imagefolder")` reads, so the demo runs
the same input pipeline a user runs on ImageNet. It is built once per (size, split, seed) under a cache folder,
in a temporary directory that is renamed into place, so an interrupted build never leaves a half folder behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1  # bump when the files written here change, so old caches are not reused
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
NUM_CLASSES = 10


def default_cache_dir() -> Path:
    """`$FEED_FAST_CACHE`, else `$XDG_CACHE_HOME/feed-fast`, else `~/.cache/feed-fast`."""
    if os.environ.get("FEED_FAST_CACHE"):
        return Path(os.environ["FEED_FAST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "feed-fast"


@dataclass(frozen=True)
class DigitsFolder:
    """A prepared dataset: `root/train/<digit>/*.jpg` and `root/val/<digit>/*.jpg`."""

    root: Path
    image_size: int
    val_fraction: float
    seed: int
    counts: dict  # split -> number of images
    reused: bool  # True when the cache already held it

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES


def split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split: every class keeps (about) the same share in train and val, fixed by `seed`."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, val = train_test_split(indices, test_size=val_fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def digit_to_rgb_image(scan: np.ndarray, image_size: int):
    """One 8x8 scan (values 0..16) -> a PIL RGB image of `image_size` pixels, upsampled bicubically."""
    from PIL import Image

    gray = np.clip(np.rint(scan * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    image = Image.fromarray(gray, mode="L").resize((image_size, image_size), Image.BICUBIC)
    return image.convert("RGB")


def _write_folder(target: Path, image_size: int, val_fraction: float, seed: int) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    scans, labels = digits.images, digits.target
    train, val = split_indices(labels, val_fraction, seed)
    counts = {}
    for split, indices in zip(SPLITS, (train, val)):
        for digit in range(NUM_CLASSES):
            (target / split / str(digit)).mkdir(parents=True, exist_ok=True)
        for index in indices:
            image = digit_to_rgb_image(scans[index], image_size)
            # The scan's index in load_digits() names the file, so a result can be traced back to its scan.
            image.save(target / split / str(labels[index]) / f"{index:04d}.jpg", quality=95)
        counts[split] = len(indices)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": "sklearn.datasets.load_digits",
        "image_size": image_size,
        "val_fraction": val_fraction,
        "seed": seed,
        "counts": counts,
        "classes": [str(d) for d in range(NUM_CLASSES)],
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return counts


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format_version") == FORMAT_VERSION else None


def prepare_digits(
    cache_dir: os.PathLike | None = None, *, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0
) -> DigitsFolder:
    """Build (or reuse) the digits ImageFolder under `cache_dir` and return where it is."""
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 (the scans are 8x8), got {image_size}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if cache.exists() and not cache.is_dir():
        raise NotADirectoryError(f"cache folder {cache} exists and is not a directory")
    name = f"digits-{image_size}px-val{val_fraction:g}-seed{seed}-v{FORMAT_VERSION}"
    root = cache / name

    manifest = _read_manifest(root)
    if manifest is not None:
        return DigitsFolder(root, image_size, val_fraction, seed, manifest["counts"], reused=True)
    if root.exists():
        raise RuntimeError(
            f"{root} exists but has no valid {MANIFEST}: it was not made by this version of feed-fast; "
            "remove it and run again"
        )

    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache))
    try:
        counts = _write_folder(staging, image_size, val_fraction, seed)
        try:
            staging.rename(root)
        except OSError:
            # Another process finished the same folder first: theirs is equally good.
            if _read_manifest(root) is None:
                raise
            shutil.rmtree(staging, ignore_errors=True)
            return DigitsFolder(root, image_size, val_fraction, seed, counts, reused=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DigitsFolder(root, image_size, val_fraction, seed, counts, reused=False)
