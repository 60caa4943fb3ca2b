"""Small on-disk data sets the loader tests build for themselves: JPEG class folders cut from the real
photos that ship with scikit-image (odd sizes, one grayscale and one CMYK file among them) and CIFAR
pickles in the official format."""
from __future__ import annotations

import os
import pickle

import numpy as np
from PIL import Image
from skimage import data as photos

# class name -> the photo its images are cut from
CLASS_PHOTOS = {"astronaut": photos.astronaut, "cat": photos.chelsea, "coffee": photos.coffee,
                "rocket": photos.rocket}
# (height, width) of the images in each class folder: odd, portrait and landscape, some tiny
SIZES = [(45, 61), (70, 37), (33, 33), (57, 80), (64, 49)]


def photo_crops(photo: np.ndarray, count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    crops = []
    for height, width in SIZES[:count]:
        scale = max(height / photo.shape[0], width / photo.shape[1]) * rng.uniform(1.5, 3.0)
        small = Image.fromarray(photo).resize((max(width, round(photo.shape[1] * scale)),
                                               max(height, round(photo.shape[0] * scale))), Image.BILINEAR)
        top = int(rng.integers(0, small.height - height + 1))
        left = int(rng.integers(0, small.width - width + 1))
        crops.append(small.crop((left, top, left + width, top + height)))
    return crops


def make_image_folder(root: str, splits=("train", "val"), per_class: int = 5) -> dict[str, list[str]]:
    """root/<split>/<class>/<n>.jpg for every class; in each split the first 'cat' image is saved as
    grayscale and the first 'coffee' image as CMYK. Returns {split: [paths]}."""
    written = {}
    for split_number, split in enumerate(splits):
        written[split] = []
        for class_number, (name, photo) in enumerate(CLASS_PHOTOS.items()):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for n, image in enumerate(photo_crops(photo(), per_class, seed=100 * split_number + class_number)):
                if n == 0 and name == "cat":
                    image = image.convert("L")
                if n == 0 and name == "coffee":
                    image = image.convert("CMYK")
                path = os.path.join(folder, f"{n:03d}.jpg")
                image.save(path, quality=92)
                written[split].append(path)
    return written


def tag_rotated(path: str) -> None:
    """Re-save a JPEG with EXIF orientation 6 ("rotate 90 degrees to display"). Pillow, and so torchvision's
    ImageFolder, ignores the tag; a decoder that applies it would swap the image's height and width."""
    with Image.open(path) as image:
        image = image.copy()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    image.save(path, quality=92, exif=exif.tobytes())


def not_an_image(path: str) -> None:
    """Bytes no decoder takes for an image, under the image's name: even its header cannot be read."""
    with open(path, "wb") as file:
        file.write(b"<html>404 Not Found</html>\n")


def corrupt_jpeg(path: str) -> None:
    """Keep the header, cut the entropy-coded data: opens fine, fails to decode."""
    with open(path, "rb") as file:
        content = file.read()
    with open(path, "wb") as file:
        file.write(content[: len(content) // 3])


def write_cifar(root: str, dataset: str = "cifar100", train: int = 40, test: int = 23, seed: int = 0):
    """CIFAR pickles in the official layout (bytes keys, (N, 3072) uint8 rows, label lists).
    Returns {split: (images (N, 3, 32, 32) uint8, labels)}."""
    rng = np.random.default_rng(seed)
    classes, label_key = (100, b"fine_labels") if dataset == "cifar100" else (10, b"labels")
    folder = os.path.join(root, "cifar-100-python" if dataset == "cifar100" else "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    names = (["train"], ["test"]) if dataset == "cifar100" else ([f"data_batch_{i}" for i in range(1, 6)],
                                                                  ["test_batch"])
    result = {}
    for split, count, files in (("train", train, names[0]), ("val", test, names[1])):
        images = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, count).tolist()
        result[split] = (images.reshape(-1, 3, 32, 32), np.asarray(labels))
        for part, rows in zip(files, np.array_split(np.arange(count), len(files))):
            entry = {b"batch_label": b"testing", b"data": images[rows], label_key: [labels[i] for i in rows],
                     b"filenames": [f"img_{i}.png".encode() for i in rows]}
            if dataset == "cifar100":
                entry[b"coarse_labels"] = [label // 5 for label in (labels[i] for i in rows)]
            with open(os.path.join(folder, part), "wb") as file:
                pickle.dump(entry, file, protocol=2)
    return result
