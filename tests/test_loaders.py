"""Loaders that need no image files: index arithmetic (shuffle, shard, resume), `synthetic`, CIFAR held on
the device (pickles written by the test in the official format), and build_loader's argument checks."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from _loader_data import write_cifar
from feed_fast.loaders import build_loader, sampling
from feed_fast.loaders.normalize import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

from feed_fast.runtime import memory_format_for


def collect(batches):
    images, labels = zip(*batches)
    return torch.cat(images), torch.cat(labels)


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalized floats back to uint8 pixel values (rounded)."""
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return ((images.float().cpu() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cifar"))
    return root, write_cifar(root, "cifar100", train=40, test=23), write_cifar(root, "cifar10", train=30, test=11)


# --- index arithmetic -------------------------------------------------------------------------
@pytest.mark.parametrize("num_samples,num_shards", [(23, 1), (23, 2), (23, 3), (24, 4)])
def test_val_shards_cover_every_sample_exactly_once(num_samples, num_shards):
    order = sampling.epoch_order(num_samples, seed=0, epoch=0, shuffle=False)
    parts = [sampling.shard_order(order, shard_id=s, num_shards=num_shards, equal_shards=False)
             for s in range(num_shards)]
    assert sorted(torch.cat(parts).tolist()) == list(range(num_samples))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_train_shards_are_equal_disjoint_and_reshuffled():
    order = sampling.epoch_order(50, seed=3, epoch=0, shuffle=True)
    parts = [sampling.shard_order(order, shard_id=s, num_shards=4, equal_shards=True) for s in range(4)]
    assert {len(p) for p in parts} == {12}
    assert len(set(torch.cat(parts).tolist())) == 48
    assert torch.equal(order, sampling.epoch_order(50, seed=3, epoch=0, shuffle=True))
    assert not torch.equal(order, sampling.epoch_order(50, seed=3, epoch=1, shuffle=True))
    assert not torch.equal(order, sampling.epoch_order(50, seed=4, epoch=0, shuffle=True))


def test_memory_format_is_channels_last_only_on_cuda():
    assert memory_format_for(torch.device("cuda", 0)) == torch.channels_last
    assert memory_format_for(torch.device("cpu")) == torch.contiguous_format


# --- synthetic --------------------------------------------------------------------------------
def test_synthetic_shapes_length_and_labels():
    loader = build_loader(None, "train", 6, dataset="synthetic", image_size=20, num_classes=7, device="cpu")
    assert len(loader) == 10 and loader.num_samples == 60 and loader.num_classes == 7
    assert loader.image_size == 20
    batches = list(loader)
    assert len(batches) == 10
    for images, labels in batches:
        assert images.shape == (6, 3, 20, 20) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < 7
    assert build_loader(None, "train", 4, dataset="synthetic", device="cpu", image_size=8).num_classes == 1000


def test_synthetic_labels_stay_with_their_samples_and_classes_are_learnable():
    loader = build_loader(None, "train", 5, dataset="synthetic", image_size=16, num_classes=3, device="cpu", seed=1)
    epoch0 = collect(loader.iter_from(0))
    epoch1 = collect(loader.iter_from(1))
    # Same samples (same label multiset) in another order.
    assert sorted(epoch0[1].tolist()) == sorted(epoch1[1].tolist())
    assert not torch.equal(epoch0[1], epoch1[1])
    # Class means of the images differ far more than the noise left in a 16x16 mean: classes are separable.
    images, labels = epoch0
    means = torch.stack([images[labels == c].mean(0) for c in labels.unique()])
    assert (means[0] - means[1]).abs().mean() > 0.2


def test_synthetic_splits_of_different_sizes_share_their_class_patterns():
    """A model trained on the train split must be scorable on val: the same class looks the same in both,
    whatever the batch sizes (and so the split sizes) are."""
    def class_means(split, batch_size):
        loader = build_loader(None, split, batch_size, dataset="synthetic", image_size=8, num_classes=4,
                              device="cpu", seed=3)
        images, labels = collect(loader)
        return torch.stack([images[labels == c].mean(0) for c in range(4)])

    train, val = class_means("train", 16), class_means("val", 9)
    distance = (train[:, None] - val[None]).abs().mean(dim=(2, 3, 4))  # (train class, val class)
    assert torch.equal(distance.argmin(dim=1), torch.arange(4))  # each class is nearest to itself


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_synthetic_half_dtypes(dtype):
    images, labels = next(iter(build_loader(None, "val", 3, dataset="synthetic", dtype=dtype, image_size=8,
                                            device="cpu")))
    assert images.dtype == dtype and labels.dtype == torch.int64


def test_synthetic_epochs_advance_by_themselves_and_set_epoch_replays():
    make = lambda: build_loader(None, "train", 4, dataset="synthetic", image_size=8, num_classes=50,
                                device="cpu", seed=5)
    auto = make()
    first, second = collect(auto), collect(auto)
    assert auto.epoch == 1
    assert not torch.equal(first[1], second[1])
    replay = make()
    replay.set_epoch(1)
    again = collect(replay)
    assert torch.equal(again[0], second[0]) and torch.equal(again[1], second[1])


def test_synthetic_resume_continues_with_the_same_batches():
    loader = build_loader(None, "train", 4, dataset="synthetic", image_size=8, device="cpu", seed=2)
    full = list(loader.iter_from(3))
    resumed = list(loader.iter_from(3, start_batch=7))
    assert len(resumed) == len(full) - 7
    for (a, la), (b, lb) in zip(full[7:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert loader.epoch == 3
    assert len(list(loader.iter_from(3, start_batch=len(loader)))) == 0
    with pytest.raises(ValueError, match="start_batch"):
        loader.iter_from(0, start_batch=len(loader) + 1)


# --- CIFAR ------------------------------------------------------------------------------------
def test_cifar_val_is_the_file_content_in_order(cifar_root):
    root, cifar100, _ = cifar_root
    loader = build_loader(root, "val", 10, dataset="cifar100", image_size=32, device="cpu")
    assert len(loader) == 3 and loader.num_samples == 23 and loader.num_classes == 100
    images, labels = collect(loader)
    assert images.shape == (23, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(labels, torch.from_numpy(cifar100["val"][1]))
    assert torch.equal(denormalize(images, CIFAR100_MEAN, CIFAR100_STD), torch.from_numpy(cifar100["val"][0]))


def test_cifar10_reads_all_five_batch_files_and_test_maps_to_the_test_batch(cifar_root):
    root, _, cifar10 = cifar_root
    train = build_loader(root, "train", 7, dataset="cifar10", image_size=32, device="cpu", drop_last=False)
    assert train.num_samples == 30 and train.num_classes == 10 and len(train) == 5
    images, labels = collect(build_loader(root, "test", 7, dataset="cifar10", image_size=32, device="cpu"))
    assert torch.equal(labels, torch.from_numpy(cifar10["val"][1]))
    assert torch.equal(denormalize(images, CIFAR10_MEAN, CIFAR10_STD), torch.from_numpy(cifar10["val"][0]))


def test_cifar_train_images_are_padded_crops_of_their_samples_with_flips(cifar_root):
    root, cifar100, _ = cifar_root
    loader = build_loader(root, "train", 8, dataset="cifar100", image_size=32, device="cpu", seed=11)
    assert len(loader) == 5  # 40 samples, last short batch dropped for training
    order = loader.shard_indices(0)
    images, labels = collect(loader.iter_from(0))
    pixels = denormalize(images, CIFAR100_MEAN, CIFAR100_STD)
    originals = torch.nn.functional.pad(torch.from_numpy(cifar100["train"][0]), (4, 4, 4, 4))
    flips = 0
    for position, index in enumerate(order[: len(labels)].tolist()):
        assert labels[position] == cifar100["train"][1][index]
        padded = originals[index]
        crops = {(dy, dx, flip): padded[:, dy:dy + 32, dx:dx + 32].flip(-1) if flip else
                 padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9) for flip in (False, True)}
        windows = [key for key, crop in crops.items() if torch.equal(pixels[position], crop)]
        assert windows, f"sample {index} is not a crop of its padded original"
        flips += windows[0][2]
    assert 0 < flips < len(labels)  # both flipped and unflipped samples occur


def test_cifar_sharded_val_sees_every_sample_once(cifar_root):
    root, cifar100, _ = cifar_root
    seen = []
    for shard in range(2):
        loader = build_loader(root, "val", 4, dataset="cifar100", image_size=32, device="cpu",
                              shard_id=shard, num_shards=2)
        images, _ = collect(loader)
        assert loader.num_samples == len(images)
        seen += [bytes(row.numpy()) for row in denormalize(images, CIFAR100_MEAN, CIFAR100_STD).flatten(1)]
    expected = [bytes(row) for row in cifar100["val"][0].reshape(23, -1)]
    assert sorted(seen) == sorted(expected)


def test_cifar_reshuffles_deterministically_and_resumes(cifar_root):
    root, _, _ = cifar_root
    make = lambda: build_loader(root, "train", 8, dataset="cifar100", image_size=32, device="cpu", seed=4)
    a, b = make(), make()
    epoch0, epoch1 = collect(a), collect(a)
    assert not torch.equal(epoch0[1], epoch1[1])
    replay0 = collect(b)
    assert torch.equal(replay0[0], epoch0[0]) and torch.equal(replay0[1], epoch0[1])
    tail = collect(b.iter_from(1, start_batch=2))
    assert torch.equal(tail[0], epoch1[0][16:]) and torch.equal(tail[1], epoch1[1][16:])


def test_cifar_drop_last_image_size_and_dtype(cifar_root):
    root, _, _ = cifar_root
    assert len(build_loader(root, "train", 16, dataset="cifar100", image_size=32, device="cpu")) == 2
    kept = build_loader(root, "train", 16, dataset="cifar100", image_size=32, device="cpu", drop_last=False)
    assert len(kept) == 3 and [len(labels) for _, labels in kept] == [16, 16, 8]
    images, _ = next(iter(build_loader(root, "val", 4, dataset="cifar100", image_size=48, device="cpu",
                                       dtype=torch.bfloat16)))
    assert images.shape == (4, 3, 48, 48) and images.dtype == torch.bfloat16


def test_image_size_none_is_each_datasets_native_size(cifar_root):
    root, cifar100, _ = cifar_root
    images, _ = next(iter(build_loader(root, "val", 128, dataset="cifar100", device="cpu")))
    assert images.shape[1:] == (3, 32, 32)  # CIFAR's own pixels, not upsampled
    assert torch.equal(denormalize(images, CIFAR100_MEAN, CIFAR100_STD), torch.from_numpy(cifar100["val"][0]))
    synthetic = build_loader(None, "val", 2, dataset="synthetic", num_classes=3, device="cpu")
    assert synthetic.image_size == 224 and next(iter(synthetic))[0].shape == (2, 3, 224, 224)  # ImageNet-shaped
    with pytest.raises(ValueError, match=r"image_size must be an int >= 1 \(or None for the dataset's native 32\)"):
        build_loader(root, "val", 4, dataset="cifar100", device="cpu", image_size=0)


def test_loaders_serve_the_memory_format_they_are_given(cifar_root):
    root, _, _ = cifar_root
    for make in (lambda fmt: build_loader(root, "train", 8, dataset="cifar100", device="cpu", memory_format=fmt),
                 lambda fmt: build_loader(None, "train", 4, dataset="synthetic", image_size=8, num_classes=3,
                                          device="cpu", memory_format=fmt)):
        nhwc = next(iter(make(torch.channels_last)))[0]
        assert nhwc.is_contiguous(memory_format=torch.channels_last) and not nhwc.is_contiguous()
        nchw = next(iter(make(torch.contiguous_format)))[0]
        assert nchw.is_contiguous() and torch.equal(nchw, nhwc)  # same values, another layout
        assert make(None).memory_format == memory_format_for(torch.device("cpu"))  # the runtime's default
    with pytest.raises(ValueError, match="memory_format must be"):
        build_loader(root, "val", 4, dataset="cifar100", device="cpu", memory_format=torch.preserve_format)


def test_cifar_missing_or_broken_pickle_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.train.*download"):
        build_loader(str(tmp_path), "train", 4, dataset="cifar100", device="cpu")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch"):
        build_loader(str(tmp_path), "val", 4, dataset="cifar10", device="cpu")


def test_cifar_labels_out_of_range_are_refused(tmp_path):
    write_cifar(str(tmp_path), "cifar100")
    import pickle

    path = os.path.join(tmp_path, "cifar-100-python", "test")
    with open(path, "rb") as file:
        entry = pickle.load(file, encoding="bytes")
    entry[b"fine_labels"][0] = 100
    with open(path, "wb") as file:
        pickle.dump(entry, file)
    with pytest.raises(ValueError, match=r"labels span .*expected \[0, 100\)"):
        build_loader(str(tmp_path), "val", 4, dataset="cifar100", device="cpu")


# --- argument checks --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"dataset": "imagenet"}, "dataset must be one of"),
    ({"backend": "pillow"}, "backend must be one of"),
    ({"split": "training"}, "split must be"),
    ({"shard_id": 2, "num_shards": 2}, "shard_id"),
    ({"num_shards": 0}, "num_shards"),
    ({"batch_size": 0}, "batch_size"),
    ({"dtype": torch.int8}, "dtype must be one of"),
    ({"dataset": "cifar10", "num_classes": 10}, "num_classes is only for"),
    ({"dataset": "imagefolder", "root": None}, "root is required"),
    ({"dataset": "cifar100", "root": "CIFAR", "batch_size": 41}, r"has 40 samples, \d+ of them for shard 0/1: not one batch of 41 \(drop_last"),
])
def test_bad_arguments_are_named(kwargs, message, cifar_root):
    args = {"root": None, "split": "train", "batch_size": 4, "dataset": "synthetic", "device": "cpu"} | kwargs
    if args["root"] == "CIFAR":
        args["root"] = cifar_root[0]
    with pytest.raises(ValueError, match=message):
        build_loader(args.pop("root"), args.pop("split"), args.pop("batch_size"), **args)


# --- on a GPU (each has a CPU twin above) -----------------------------------------------------
@pytest.mark.gpu
def test_gpu_synthetic_and_cifar_are_channels_last_on_the_device(cifar_root):
    root, cifar100, _ = cifar_root
    for loader in (build_loader(None, "train", 4, dataset="synthetic", image_size=16, dtype=torch.float16),
                   build_loader(root, "train", 8, dataset="cifar100", image_size=32)):
        images, labels = next(iter(loader))
        assert images.is_cuda and labels.is_cuda and labels.dtype == torch.int64
        assert images.is_contiguous(memory_format=torch.channels_last)
    images, labels = collect(build_loader(root, "val", 10, dataset="cifar100", image_size=32))
    assert torch.equal(denormalize(images, CIFAR100_MEAN, CIFAR100_STD), torch.from_numpy(cifar100["val"][0]))
    assert np.array_equal(labels.cpu().numpy(), cifar100["val"][1])
