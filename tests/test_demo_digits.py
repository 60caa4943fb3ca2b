"""The digits ImageFolder the demo trains on: real scans, a fixed stratified split, built once and atomically."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from feed_fast.demo.digits import MANIFEST, NUM_CLASSES, prepare_digits, split_indices


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp("cache"), image_size=32, val_fraction=0.2, seed=0)


def files_of(root, split):
    return sorted(p.relative_to(root / split) for p in (root / split).rglob("*.jpg"))


def test_folder_holds_every_scan_once_in_a_stratified_split(digits_folder):
    root = digits_folder.root
    train, val = files_of(root, "train"), files_of(root, "val")
    assert len(train) + len(val) == 1797
    assert digits_folder.counts == {"train": len(train), "val": len(val)}
    assert len(val) == 360  # 20% of 1,797, rounded up by scikit-learn
    train_ids = {int(p.stem) for p in train}
    val_ids = {int(p.stem) for p in val}
    assert not train_ids & val_ids
    assert sorted(d.name for d in (root / "train").iterdir() if d.is_dir()) == [str(d) for d in range(NUM_CLASSES)]
    # Stratified: every class has about 20% of its scans in val.
    labels = load_digits().target
    for digit in range(NUM_CLASSES):
        share = sum(1 for p in val if p.parts[0] == str(digit)) / np.sum(labels == digit)
        assert 0.17 < share < 0.23, (digit, share)


def test_files_are_32px_rgb_jpegs_of_the_right_scan(digits_folder):
    digits = load_digits()
    path = next((digits_folder.root / "val" / "7").glob("*.jpg"))
    index = int(path.stem)
    assert digits.target[index] == 7  # the file name is the scan's index, the folder its label
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (32, 32)
        pixels = np.asarray(image.convert("L").resize((8, 8), Image.BILINEAR), dtype=np.float64)
    # Down-sampled back to 8x8 it still resembles its own scan more than the other scans.
    scans = digits.images.reshape(len(digits.images), -1)
    correlations = [np.corrcoef(pixels.ravel(), s)[0, 1] for s in scans]
    assert correlations[index] > 0.8


def test_second_call_reuses_the_cache_and_leaves_no_staging(digits_folder):
    before = {p: p.stat().st_mtime_ns for p in digits_folder.root.rglob("*.jpg")}
    again = prepare_digits(digits_folder.root.parent, image_size=32, val_fraction=0.2, seed=0)
    assert again.reused and not digits_folder.reused
    assert again.root == digits_folder.root
    assert {p: p.stat().st_mtime_ns for p in again.root.rglob("*.jpg")} == before
    assert [p.name for p in digits_folder.root.parent.iterdir()] == [digits_folder.root.name]
    assert (digits_folder.root / MANIFEST).is_file()


def test_split_is_fixed_by_its_seed():
    labels = load_digits().target
    first = split_indices(labels, 0.2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(first, split_indices(labels, 0.2, seed=0)))
    assert not np.array_equal(first[1], split_indices(labels, 0.2, seed=1)[1])


def test_folder_without_manifest_is_not_reused(tmp_path):
    stale = tmp_path / "digits-32px-val0.2-seed0-v1"
    (stale / "train").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="manifest.json"):
        prepare_digits(tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"image_size": 4}, "image_size"), ({"val_fraction": 1.5}, "val_fraction"), ({"val_fraction": 0.0}, "val_fraction")],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare_digits(tmp_path, **kwargs)


def test_cache_path_that_is_a_file_is_rejected(tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    with pytest.raises(NotADirectoryError, match=str(not_a_folder)):
        prepare_digits(not_a_folder)
