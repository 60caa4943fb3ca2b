"""Classes come from the training split: val is labelled with train's class-to-index map on both image-folder
backends, a val class folder train lacks is refused (a one-line exit 2 from `feed-fast train`, before any
work), a training class without val images is a warning, and `feed-fast data check` reports both."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from _loader_data import make_image_folder
from feed_fast.loaders import IMAGENET_MEAN, IMAGENET_STD, build_loader, dali_available
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed (make test installs it)")
BACKENDS = ["torchvision", pytest.param("dali", marks=needs_dali)]
SIZE = 16
TRAIN_CLASSES = ["astronaut", "cat", "coffee", "rocket"]  # make_image_folder's, sorted: indices 0..3


def loader(root, split, backend, **kwargs):
    kwargs = {"image_size": SIZE, "device": "cpu", "num_threads": 0 if backend == "torchvision" else 1} | kwargs
    return build_loader(root, split, 4, backend=backend, **kwargs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("classes") / "full")
    make_image_folder(root, per_class=2)
    return root


@pytest.fixture
def val_without_cat(folder, tmp_path):
    """val has no 'cat' folder: by its own folders, coffee and rocket would become classes 1 and 2."""
    root = str(tmp_path / "no-cat")
    shutil.copytree(folder, root)
    shutil.rmtree(os.path.join(root, "val", "cat"))
    return root


@pytest.fixture
def val_with_dog(folder, tmp_path):
    """val holds a 'dog' folder train does not have."""
    root = str(tmp_path / "dog")
    shutil.copytree(folder, root)
    shutil.copytree(os.path.join(root, "val", "cat"), os.path.join(root, "val", "dog"))
    return root


def reference_pixels(path: str) -> torch.Tensor:
    """The val transform of one file, done here with Pillow and torchvision's functions: uint8 (3, S, S)."""
    with Image.open(path) as file:
        image = file.convert("RGB")
    image = TF.resize(image, int(SIZE * 256 / 224), interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.pil_to_tensor(TF.center_crop(image, [SIZE, SIZE]))


def denormalize(images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean) * 255


@pytest.mark.parametrize("backend", BACKENDS)
def test_val_with_a_missing_class_labels_each_image_with_its_folders_training_index(val_without_cat, backend):
    with pytest.warns(RuntimeWarning, match=r"1 training class\(es\) have no images in .*val: 'cat'"):
        val = loader(val_without_cat, "val", backend)
    assert val.classes == TRAIN_CLASSES and val.num_classes == 4  # the model's output size: train's
    images, labels = (torch.cat(parts) for parts in zip(*val))
    files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(os.path.join(val_without_cat, "val"))
                   for name in names)
    references = torch.stack([reference_pixels(path) for path in files]).flatten(1).double()
    assert len(labels) == len(files) == 6
    served = denormalize(images).flatten(1).double()
    for image, label in zip(served, labels.tolist()):
        # Which file this image is: the one whose own pixels it matches (JPEG decoders differ a little).
        distance = (references - image).abs().mean(1)
        path = files[int(distance.argmin())]
        assert distance.min() < 2.0 and sorted(distance)[1] > 10.0, distance
        assert label == TRAIN_CLASSES.index(os.path.basename(os.path.dirname(path))), path
    assert sorted(set(labels.tolist())) == [0, 2, 3]  # coffee and rocket keep train's 2 and 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_val_class_the_training_split_lacks_is_refused_naming_it(val_with_dog, backend):
    with pytest.raises(ValueError, match=r"1 class folder\(s\) in .*val are not classes of the training split "
                                         r".*train: 'dog'") as caught:
        loader(val_with_dog, "val", backend)
    assert "\n" not in str(caught.value)
    assert loader(val_with_dog, "train", backend).classes == TRAIN_CLASSES  # train itself is fine


def test_an_explicit_class_map_is_used_as_given_and_only_for_image_folders(folder):
    classes = ["rocket", "coffee", "cat", "astronaut", "zebra"]  # e.g. from a checkpoint; more classes than here
    with pytest.warns(RuntimeWarning, match="'zebra'"):
        val = loader(folder, "val", "torchvision", classes=classes)
    assert val.num_classes == 5
    labels = torch.cat([labels for _, labels in val]).tolist()
    assert labels == [3, 3, 2, 2, 1, 1, 0, 0]  # files in sorted folder order, labels from the map
    with pytest.raises(ValueError, match="classes is only for dataset='imagefolder'"):
        build_loader(None, "val", 4, dataset="synthetic", classes=classes)


def test_a_root_without_a_train_split_labels_val_by_its_own_folders(folder, tmp_path):
    root = tmp_path / "val-only"
    shutil.copytree(os.path.join(folder, "val"), root / "val")
    shutil.rmtree(root / "val" / "cat")
    assert loader(str(root), "val", "torchvision").classes == ["astronaut", "coffee", "rocket"]


def feed_fast_train(tmp_path, root, capsys) -> tuple[int, str]:
    from feed_fast.cli import main

    config = tmp_path / "folder.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "resnet8", "kwargs": {"widths": [4, 8, 16]}}, "method": {"name": "baseline"},
        "data": {"dataset": "imagefolder", "root": root, "backend": "torchvision", "batch_size": 4,
                 "eval_batch_size": 4, "image_size": SIZE, "num_threads": 1},
        "schedule": {"name": "cosine", "epochs": 1, "milestones": []},
        "train": {"device": "cpu", "progress": "none", "max_steps_per_epoch": 1}}))
    capsys.readouterr()
    code = main(["train", str(config), "--out", str(tmp_path / "run")])
    return code, capsys.readouterr().err


def test_feed_fast_train_refuses_a_val_class_train_lacks_in_one_line_before_any_work(val_with_dog, tmp_path, capsys):
    code, err = feed_fast_train(tmp_path, val_with_dog, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("feed-fast train: error: data: 1 class folder(s) in ") and "'dog'" in err
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing of a run was written


def test_data_check_reports_a_val_class_train_lacks_and_a_training_class_without_val_images(
        val_with_dog, val_without_cat, capsys):
    from feed_fast.cli import main

    assert main(["data", "check", val_with_dog, "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "ERROR: 1 class folder(s) in " in out and "are not classes of the training split" in out
    assert "'dog'" in out and out.rstrip().endswith("FAILED: 1 split(s) with problems")
    assert main(["data", "check", val_without_cat, "--workers", "1"]) == 0  # a warning, not a failure
    out = capsys.readouterr().out
    assert "WARNING: 1 training class(es) have no images in " in out and "'cat'" in out
    assert out.rstrip().endswith("OK")


def test_the_trainers_val_loader_takes_the_training_splits_classes(val_without_cat):
    """feed_fast.engine.data.build_loaders hands train's map to val (the loader's own default agrees)."""
    from feed_fast.config import RunConfig
    from feed_fast.engine.data import build_loaders
    from feed_fast.runtime import open_runtime

    cfg = RunConfig.from_dict({
        "model": {"name": "resnet8"}, "method": {"name": "baseline"},
        "data": {"dataset": "imagefolder", "root": val_without_cat, "backend": "torchvision", "batch_size": 2,
                 "eval_batch_size": 2, "image_size": SIZE, "num_threads": 1},
        "train": {"device": "cpu", "progress": "none"}}, check_paths=False)
    with open_runtime(cfg.train, handle_signals=False) as runtime, pytest.warns(RuntimeWarning, match="'cat'"):
        loaders = build_loaders(cfg, runtime)
    assert loaders.val.classes == loaders.train.classes == TRAIN_CLASSES
    assert np.array_equal(sorted(set(loaders.val.index.labels)), [0, 2, 3])
