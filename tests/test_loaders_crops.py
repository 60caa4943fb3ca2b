"""Training crops drawn on the host from each sample's seed (loaders/transforms.py): both image-folder backends
crop the same boxes and give the same images within JPEG-decoder tolerance, a DALI epoch iterated from
(epoch, start_batch) repeats the uninterrupted one exactly, EXIF-rotated files are read as Pillow reads them,
a file whose header cannot be read is named before DALI sees it, and DALI's own decoder log line about a
broken file is folded into our one message."""
from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch
import yaml
from _loader_data import corrupt_jpeg, make_image_folder, not_an_image, tag_rotated
from _recipe import train_straight_and_interrupted
from feed_fast.loaders import CorruptImageError, build_loader, dali_available, torchvision_backend
from feed_fast.loaders.transforms import train_crop

from feed_fast.cli import main

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed (make test installs it)")
BACKENDS = ["torchvision", pytest.param("dali", marks=needs_dali)]
SIZE = 24


def loader(root, split, backend, batch_size=6, **kwargs):
    kwargs = {"image_size": SIZE, "device": "cpu", "num_threads": 0 if backend == "torchvision" else 1,
              "seed": 7} | kwargs
    return build_loader(root, split, batch_size, backend=backend, **kwargs)


def collect(batches):
    images, labels = zip(*batches)
    return torch.cat(images), torch.cat(labels)


def correlations(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [torch.corrcoef(torch.stack([x.flatten().double(), y.flatten().double()]))[0, 1].item()
            for x, y in zip(a, b)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The shared photo folder, with one training and one val file tagged as EXIF-rotated."""
    root = str(tmp_path_factory.mktemp("crops"))
    written = make_image_folder(root)
    tag_rotated(written["train"][16])  # rocket/001.jpg: 37 x 70, landscape as stored
    tag_rotated(written["val"][16])
    return root


def test_a_crop_is_torchvisions_rule_drawn_from_the_samples_own_seed():
    crops = [train_crop(seed, 45, 61) for seed in range(400)]
    assert crops == [train_crop(seed, 45, 61) for seed in range(400)]  # a seed always draws the same
    for crop in crops:
        assert 0 <= crop.top <= 45 - crop.height and 0 <= crop.left <= 61 - crop.width
        assert 0.08 * 45 * 61 * 0.8 <= crop.height * crop.width <= 45 * 61
    assert 150 < sum(crop.flip for crop in crops) < 250
    assert len({crop[:4] for crop in crops}) > 390


@needs_dali
def test_the_header_size_is_pillows_size_without_decoding(folder, tmp_path):
    import numpy as np
    from feed_fast.loaders.dali_backend import header_size, jpeg_frame_size
    from PIL import Image

    with Image.open(os.path.join(folder, "train", "rocket", "003.jpg")) as photo:
        photo = photo.convert("RGB")
    extra = {"progressive.jpg": {"progressive": True}, "image.png": {},
             "big-icc.jpg": {"icc_profile": bytes(70000)}}  # the frame header after 64 KiB: Pillow reads it
    for name, options in extra.items():
        photo.save(tmp_path / name, **options)
    files = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names] + [
        str(tmp_path / name) for name in extra]
    for path in files:  # grayscale, CMYK and EXIF-tagged JPEGs among them
        encoded = np.fromfile(path, np.uint8)
        with Image.open(path) as image:
            assert header_size(encoded) == (image.height, image.width), path
    assert jpeg_frame_size(np.fromfile(tmp_path / "progressive.jpg", np.uint8).tobytes()) == (57, 80)
    assert jpeg_frame_size(np.fromfile(tmp_path / "image.png", np.uint8).tobytes()) is None


@needs_dali
def test_both_backends_crop_the_same_boxes_and_give_the_same_images(folder, monkeypatch):
    drawn_by_torchvision = {}  # seed -> crop, as the torchvision workers (here: this process) draw them

    def recording_train_crop(seed, height, width):
        drawn_by_torchvision[seed] = crop = train_crop(seed, height, width)
        return crop

    monkeypatch.setattr(torchvision_backend, "train_crop", recording_train_crop)
    dali, tv = loader(folder, "train", "dali"), loader(folder, "train", "torchvision")
    for epoch in (0, 1):
        dali_images, dali_labels = collect(dali.iter_from(epoch))
        tv_images, tv_labels = collect(tv.iter_from(epoch))
        assert torch.equal(dali_labels, tv_labels)
        order = dali.shard_indices(epoch)[: len(dali_labels)].tolist()
        anchors, shapes, mirrors = dali.crop_windows(epoch, order)  # what the DALI pipeline is handed
        for position, index in enumerate(order):
            crop = drawn_by_torchvision[tv.sample_seed(epoch, index)]
            assert tuple(anchors[position]) == (crop.left, crop.top), index
            assert tuple(shapes[position]) == (crop.width, crop.height), index
            assert bool(mirrors[position]) == crop.flip, index
        # The same pixels, but for the two JPEG decoders and the two bilinear resizers (grayscale, CMYK and
        # EXIF-tagged files included).
        assert min(correlations(dali_images, tv_images)) > 0.999
        assert (dali_images - tv_images).abs().mean() < 0.02
    assert {crop.flip for crop in drawn_by_torchvision.values()} == {False, True}


@needs_dali
def test_a_dali_epoch_resumed_from_any_batch_repeats_the_uninterrupted_one(folder):
    uninterrupted = list(loader(folder, "train", "dali", batch_size=4).iter_from(2))
    assert len(uninterrupted) == 5
    for start in (1, 3):
        resumed = list(loader(folder, "train", "dali", batch_size=4).iter_from(2, start_batch=start))  # a new process
        assert len(resumed) == len(uninterrupted) - start
        for (images, labels), (again, again_labels) in zip(uninterrupted[start:], resumed):
            assert torch.equal(images, again) and torch.equal(labels, again_labels)
    # A sample's crop hangs on (seed, epoch, sample) alone, not on the batch that serves it.
    sample = loader(folder, "train", "dali", batch_size=4).shard_indices(2)[0].item()
    in_batch_of_2 = loader(folder, "train", "dali", batch_size=2)
    assert in_batch_of_2.shard_indices(2)[0].item() == sample
    assert torch.equal(next(iter(in_batch_of_2.iter_from(2)))[0][0], uninterrupted[0][0][0])


@needs_dali
def test_val_stays_a_deterministic_resize_and_center_crop_matching_torchvision(folder):
    first, again = collect(loader(folder, "val", "dali")), collect(loader(folder, "val", "dali", seed=99))
    assert torch.equal(first[0], again[0])
    tv = collect(loader(folder, "val", "torchvision"))
    assert min(correlations(first[0], tv[0])) > 0.999  # the EXIF-tagged file too: not rotated by either


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_file_whose_header_cannot_be_read_is_named_or_left_out(folder, tmp_path, backend):
    root = str(tmp_path / "html")
    shutil.copytree(folder, root)
    victim = os.path.join(root, "train", "cat", "003.jpg")
    not_an_image(victim)
    with pytest.raises(CorruptImageError, match="skip_corrupt") as caught:
        collect(loader(root, "train", backend))
    assert caught.value.paths == [victim] and f"{victim}: UnidentifiedImageError: cannot identify" in str(caught.value)
    skipping = loader(root, "train", backend, skip_corrupt=True)
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        sizes = [len(labels) for _, labels in skipping]
    assert [w for w in caught_warnings if victim in str(w.message)]
    victim_index = skipping.index.paths.index(victim)
    expected = [len([i for i in batch if i != victim_index]) for batch in skipping.shard_indices(0)[:18].split(6)]
    assert sizes == expected and sum(sizes) == 17


@needs_dali
def test_a_broken_jpeg_gives_one_message_not_dalis_own_log_line_too(folder, tmp_path, capfd):
    root = str(tmp_path / "broken")
    shutil.copytree(folder, root)
    victim = os.path.join(root, "val", "cat", "002.jpg")
    corrupt_jpeg(victim)
    with pytest.raises(CorruptImageError) as caught:
        collect(loader(root, "val", "dali"))
    assert caught.value.paths == [victim]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        collect(loader(root, "val", "dali", skip_corrupt=True))
    os.write(2, b"stderr is ours again\n")
    err = capfd.readouterr().err
    assert "jpeg_parser" not in err and "Invalid marker" not in err and "[ERROR]" not in err, err
    assert err.endswith("stderr is ours again\n")


def test_native_log_lines_are_held_and_everything_else_passes(capfd):
    import gc

    from feed_fast.loaders import native_log
    from feed_fast.loaders.native_log import claim_native_logs, holding_native_logs

    gc.collect()  # a DALI iterator some earlier test left suspended would keep its redirection open
    assert native_log._session is None
    with holding_native_logs():
        os.write(2, b"\x1b[0;31m[ERROR] \x1b[0m[jpeg_parser] Invalid marker\n")
        os.write(2, b"an ordinary line\n[not a log line\n")
        assert claim_native_logs() == ["[ERROR] [jpeg_parser] Invalid marker"]
        os.write(2, b"[WARNING] [nvjpeg_ext] unclaimed, so written out at the end\n")
        with holding_native_logs():  # nested: one redirection
            os.write(2, b"inner\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == ("an ordinary line\n[not a log line\ninner\n"
                                      "[WARNING] [nvjpeg_ext] unclaimed, so written out at the end\nafter\n")


@needs_dali
def test_feed_fast_train_stopped_mid_epoch_and_resumed_on_dali_matches_the_uninterrupted_run(tmp_path, capsys,
                                                                                            one_torch_thread):
    """The issue's case: `feed-fast train` on an image folder with the DALI backend (what `make` installs and
    data.backend=auto picks), SIGINT in the middle of an epoch, then --resume: the same losses and top-1."""
    root = tmp_path / "data"
    make_image_folder(str(root), per_class=4)  # 16 training images: 4 batches of 4 per epoch
    config = tmp_path / "dali.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "resnet8", "kwargs": {"widths": [4, 8, 16]}}, "method": {"name": "baseline"},
        "data": {"dataset": "imagefolder", "root": str(root), "backend": "dali", "batch_size": 4,
                 "eval_batch_size": 8, "image_size": 16, "num_threads": 1},
        "schedule": {"name": "cosine", "epochs": 2, "milestones": []}, "optim": {"lr": 0.05},
        "train": {"device": "cpu", "progress": "none", "log_every": 1}}))

    straight, split = train_straight_and_interrupted(main, config, tmp_path)  # SIGINT in epoch 1, after its second batch
    assert split == straight
    capsys.readouterr()


# --- on a GPU (CPU twins above; the lent GPU machine has no DALI, so these skip there) --------------------
@pytest.mark.gpu
@needs_dali
def test_gpu_dali_mixed_decoder_crops_the_same_windows_as_torchvision(folder):
    dali = collect(loader(folder, "train", "dali", device="cuda").iter_from(1))
    tv = collect(loader(folder, "train", "torchvision", device="cuda").iter_from(1))
    assert torch.equal(dali[1], tv[1])
    assert min(correlations(dali[0].cpu(), tv[0].cpu())) > 0.995  # nvJPEG's IDCT differs a little more
