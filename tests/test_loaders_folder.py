"""Image-folder loaders on JPEG folders the tests cut from scikit-image's photos (odd sizes, a grayscale and
a CMYK file among them): both backends, their agreement, sharding, shuffling, resume, broken files, the
`feed-fast data check` command. DALI runs in its CPU-only mode here; the GPU tests run the mixed decoder."""
from __future__ import annotations

import argparse
import os
import shutil
import warnings

import pytest
import torch
from _loader_data import corrupt_jpeg, make_image_folder
from feed_fast.loaders import IMAGENET_MEAN, IMAGENET_STD, build_loader, dali_available
from feed_fast.loaders.cli import register
from feed_fast.loaders.integrity import CorruptImageError
from torchvision.datasets import ImageFolder

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed (make test installs it)")
BACKENDS = ["torchvision", pytest.param("dali", marks=needs_dali)]
SIZE = 24  # output pixels: small keeps decoding cheap on two cores


def collect(batches):
    images, labels = zip(*batches)
    return torch.cat(images), torch.cat(labels)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()


def loader(root, split, backend, batch_size=8, **kwargs):
    kwargs = {"image_size": SIZE, "device": "cpu", "num_threads": 0 if backend == "torchvision" else 1} | kwargs
    return build_loader(root, split, batch_size, backend=backend, **kwargs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("images"))
    return root, make_image_folder(root)


@pytest.fixture
def broken_folder(tmp_path, folder):
    root = str(tmp_path / "broken")
    shutil.copytree(folder[0], root)
    victim = os.path.join(root, "val", "cat", "002.jpg")
    corrupt_jpeg(victim)
    return root, victim


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_size_none_is_imagenets_224_and_the_memory_format_is_the_callers(folder, backend):
    root, _ = folder
    val = loader(root, "val", backend, batch_size=2, image_size=None, memory_format=torch.channels_last)
    assert val.image_size == 224
    images, _ = next(iter(val))
    assert images.shape == (2, 3, 224, 224) and images.is_contiguous(memory_format=torch.channels_last)
    nchw, _ = next(iter(loader(root, "val", backend, batch_size=2, memory_format=torch.contiguous_format)))
    assert nchw.is_contiguous()


@pytest.mark.parametrize("backend", BACKENDS)
def test_val_batches_shapes_and_labels_match_torchvision_image_folder(folder, backend):
    root, _ = folder
    val = loader(root, "val", backend)
    reference = ImageFolder(os.path.join(root, "val"))
    assert val.classes == reference.classes and val.num_classes == 4
    assert val.num_samples == 20 and len(val) == 3  # the short last batch is kept for validation
    batches = list(val)
    assert [len(labels) for _, labels in batches] == [8, 8, 4]
    images, labels = collect(batches)
    assert images.shape == (20, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == reference.targets
    # Normalized with ImageNet statistics: pixel values map into [-mean/std, (1-mean)/std].
    low = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(1, 3, 1, 1)
    high = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(1, 3, 1, 1)
    assert (images >= low - 1e-4).all() and (images <= high + 1e-4).all()


@needs_dali
def test_dali_and_torchvision_give_the_same_val_images(folder):
    root, _ = folder
    dali_images, dali_labels = collect(loader(root, "val", "dali"))
    torch_images, torch_labels = collect(loader(root, "val", "torchvision"))
    assert torch.equal(dali_labels, torch_labels)
    for position in range(len(dali_labels)):  # grayscale and CMYK files included
        assert correlation(dali_images[position], torch_images[position]) > 0.999, position


@pytest.mark.parametrize("backend", BACKENDS)
def test_grayscale_files_decode_to_three_equal_channels(folder, backend):
    root, _ = folder
    images, labels = collect(loader(root, "val", backend))
    gray = images[labels.tolist().index(1)]  # the first 'cat' file is the grayscale one
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = gray * std + mean
    assert (pixels[0] - pixels[1]).abs().max() < 1e-3 and (pixels[1] - pixels[2]).abs().max() < 1e-3
    color = images[0] * std + mean
    assert (color[0] - color[2]).abs().max() > 0.05  # a colour photo does not


@pytest.mark.parametrize("backend", BACKENDS)
def test_sharded_val_sees_every_file_exactly_once(folder, backend):
    root, _ = folder
    whole, whole_labels = collect(loader(root, "val", backend, batch_size=3))
    parts = [loader(root, "val", backend, batch_size=3, shard_id=s, num_shards=2) for s in range(2)]
    assert sum(part.num_samples for part in parts) == 20
    matched = []
    for part in parts:
        images, labels = collect(part)
        assert len(labels) == part.num_samples
        for image, label in zip(images, labels):
            distances = (whole - image).flatten(1).abs().amax(1)
            position = int(distances.argmin())
            assert distances[position] < 1e-5 and whole_labels[position] == label
            matched.append(position)
    assert sorted(matched) == list(range(20))


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_reshuffles_each_epoch_deterministically_and_resumes(folder, backend):
    root, _ = folder
    make = lambda: loader(root, "train", backend, batch_size=6, seed=7)
    first = make()
    assert len(first) == 3 and first.dataset_size == 20  # 20 samples: 3 full batches of 6, 2 dropped
    epoch0, epoch1 = collect(first), collect(first)
    assert epoch0[0].shape == (18, 3, SIZE, SIZE)
    assert epoch0[1].tolist() != epoch1[1].tolist()
    second = make()
    replay0 = collect(second)
    assert torch.equal(replay0[1], epoch0[1]) and torch.equal(replay0[0], epoch0[0])
    tail = collect(second.iter_from(1, start_batch=1))
    assert torch.equal(tail[1], epoch1[1][6:])
    assert torch.equal(tail[0], epoch1[0][6:])  # each sample's crop hangs on its own seed: augmentation replays
    # The augmentation differs between epochs and from the val transform.
    assert not torch.equal(epoch0[0], epoch1[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_shards_split_one_epoch_order(folder, backend):
    root, _ = folder
    labels = [collect(loader(root, "train", backend, batch_size=5, shard_id=s, num_shards=2, seed=3))[1]
              for s in range(2)]
    orders = [loader(root, "train", backend, batch_size=5, shard_id=s, num_shards=2, seed=3).shard_indices(0)
              for s in range(2)]
    assert set(orders[0].tolist()).isdisjoint(orders[1].tolist())
    assert len(labels[0]) == len(labels[1]) == 10  # equal step counts on every rank
    targets = ImageFolder(os.path.join(root, "train")).targets
    for shard in range(2):
        assert labels[shard].tolist() == [targets[i] for i in orders[shard].tolist()]


@needs_dali
def test_dali_half_precision_output(folder):
    root, _ = folder
    half, _ = collect(loader(root, "val", "dali", dtype=torch.float16))
    bf16, _ = collect(loader(root, "val", "dali", dtype=torch.bfloat16))
    full, _ = collect(loader(root, "val", "dali"))
    assert half.dtype == torch.float16 and bf16.dtype == torch.bfloat16
    assert (half.float() - full).abs().max() < 1e-2 and (bf16.float() - full).abs().max() < 3e-2


def test_torchvision_workers_give_the_same_batches_as_the_main_process(folder):
    root, _ = folder
    inline = collect(loader(root, "train", "torchvision", seed=2, num_threads=0))
    workers = collect(loader(root, "train", "torchvision", seed=2, num_threads=2))
    assert torch.equal(inline[0], workers[0]) and torch.equal(inline[1], workers[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_file_is_named_in_the_error(broken_folder, backend):
    root, victim = broken_folder
    with pytest.raises(CorruptImageError, match="skip_corrupt") as caught:
        collect(loader(root, "val", backend))
    assert caught.value.paths == [victim] and victim in str(caught.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skip_corrupt_warns_and_leaves_only_that_file_out(broken_folder, folder, backend):
    root, victim = broken_folder
    val = loader(root, "val", backend, skip_corrupt=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(val)
    assert [str(w.message) for w in caught if victim in str(w.message)]
    assert [len(labels) for _, labels in batches] == [7, 8, 4]  # only the broken file's batch shrinks
    images, labels = collect(batches)
    clean_images, clean_labels = collect(loader(folder[0], "val", backend))
    keep = [i for i in range(20) if i != 7]  # the broken file is the 8th in sorted order
    assert torch.equal(labels, clean_labels[keep]) and torch.allclose(images, clean_images[keep])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known broken files are left out silently afterwards
        assert [len(labels) for _, labels in val] == [7, 8, 4]


@needs_dali
def test_dali_failure_that_pillow_cannot_explain_lists_the_suspects(broken_folder, monkeypatch):
    from feed_fast.loaders import dali_backend

    root, victim = broken_folder
    monkeypatch.setattr(dali_backend, "find_unreadable", lambda paths, workers: {})  # Pillow "reads" them all
    with pytest.raises(CorruptImageError, match="not a broken file") as caught:
        collect(loader(root, "val", "dali", skip_corrupt=True))
    assert victim in caught.value.paths and len(caught.value.paths) <= 20


@pytest.mark.parametrize("layout", ["missing split", "no classes", "empty class"])
def test_unusable_folders_are_refused_naming_the_path(tmp_path, layout):
    split = tmp_path / "train"
    if layout != "missing split":
        split.mkdir()
    if layout == "empty class":
        (split / "dog").mkdir()
        (split / "dog" / "notes.txt").write_text("not an image")
    expected = {"missing split": "image folder not found", "no classes": "no class folders",
                "empty class": "hold no image files.*dog"}[layout]
    with pytest.raises(FileNotFoundError, match=expected) as caught:
        build_loader(str(tmp_path), "train", 4, backend="torchvision", device="cpu")
    assert str(split) in str(caught.value)


def run_data_check(*argv) -> int:
    parser = argparse.ArgumentParser(prog="feed-fast")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "check", *argv])
    return args.func(args)


def test_data_check_lists_class_counts_and_unreadable_files(broken_folder, folder, capsys):
    root, victim = broken_folder
    assert run_data_check(root, "--workers", "2") == 1
    out = capsys.readouterr().out
    assert "[train]" in out and "[val]" in out and "20 images in 4 classes" in out
    assert "cat: 5" in out and f"UNREADABLE {victim}" in out and "FAILED" in out
    assert run_data_check(folder[0]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")
    assert run_data_check(os.path.join(folder[0], "val", "cat")) == 1  # images but no class folders
    assert "no class folders" in capsys.readouterr().out


def test_data_check_is_a_feed_fast_command(folder, capsys):
    from feed_fast.cli import main

    assert main(["data", "check", folder[0], "--max-classes", "1"]) == 0
    out = capsys.readouterr().out
    assert "astronaut: 5" in out and "... 3 more classes" in out


# --- on a GPU (CPU twins above) ---------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_batches_are_channels_last_on_the_device(folder, backend):
    root, _ = folder
    for split in ("train", "val"):
        images, labels = next(iter(loader(root, split, backend, device="cuda", dtype=torch.float16)))
        assert images.is_cuda and labels.is_cuda and labels.dtype == torch.int64
        assert images.dtype == torch.float16 and images.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@needs_dali
def test_gpu_dali_mixed_decoder_matches_torchvision(folder):
    root, _ = folder
    dali_images, dali_labels = collect(loader(root, "val", "dali", device="cuda"))
    torch_images, torch_labels = collect(loader(root, "val", "torchvision", device="cuda"))
    assert torch.equal(dali_labels, torch_labels)
    for position in range(len(dali_labels)):
        assert correlation(dali_images[position], torch_images[position]) > 0.995, position
