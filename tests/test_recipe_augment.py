"""`data.augment`: torchvision's TrivialAugmentWide / RandAugment and RandomErasing on both image-folder backends.
The ops and boxes are drawn on the host from each sample's seed with torchvision's distributions; the torchvision
backend applies them with torchvision's own op code (equal to torchvision's transforms bit for bit when they draw
the same), DALI's suite means the same op and magnitude (each op checked against torchvision's); both backends
serve the same ops and erase the same pixels; val is never augmented; an augmented epoch resumed from any batch
repeats the uninterrupted one on both backends; the config names a bad key."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from _loader_data import make_image_folder
from feed_fast.loaders import build_loader, dali_available
from feed_fast.loaders.torchvision_backend import apply_auto_augment
from feed_fast.loaders.transforms import (
    AUTO_AUGMENTS,
    NUM_MAGNITUDE_BINS,
    Augment,
    AugmentOp,
    augment_space,
    train_augment,
    train_crop,
)
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from feed_fast.config import ConfigError, RunConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed (make test installs it)")
BACKENDS = ["torchvision", pytest.param("dali", marks=needs_dali)]
TORCHVISION = {"ta_wide": v2.TrivialAugmentWide, "ra": v2.RandAugment}
SIZE = 32
# every switch on; RandAugment at a magnitude that moves things
RECIPES = {"ta_wide": Augment("ta_wide", random_erase=0.5), "ra": Augment("ra", ra_magnitude=15, random_erase=0.5)}


def loader(root, split, backend, augment, batch_size=5, **kwargs):
    kwargs = {"image_size": SIZE, "device": "cpu", "num_threads": 0 if backend == "torchvision" else 1,
              "seed": 11} | kwargs
    return build_loader(root, split, batch_size, backend=backend, augment=augment, **kwargs)


def collect(batches):
    images, labels = zip(*batches)
    return torch.cat(images), torch.cat(labels)


def correlations(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [torch.corrcoef(torch.stack([x.flatten().double(), y.flatten().double()]))[0, 1].item()
            for x, y in zip(a, b)]


def photo(size: int = 48) -> Image.Image:
    from skimage import data as photos

    return Image.fromarray(photos.chelsea()).resize((size, size), Image.BILINEAR)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("augment"))
    make_image_folder(root)  # 20 training images of 4 classes, odd sizes, a grayscale and a CMYK one
    return root


# --- the draws -----------------------------------------------------------------------------------------------
def test_the_draws_follow_torchvisions_distributions():
    """TrivialAugmentWide: one op of torchvision's 14 (its own table and order), a bin of 31, a coin for the sign,
    all uniform; RandAugment: ra_num_ops ops at bin ra_magnitude. A seed always draws the same; the crop is drawn
    on a stream of its own, so it is what it was without the switches."""
    assert [name for name, _, _ in augment_space("ta_wide")] == list(v2.TrivialAugmentWide._AUGMENTATION_SPACE)
    assert [name for name, _, _ in augment_space("ra")] == list(v2.RandAugment._AUGMENTATION_SPACE)
    ta = [train_augment(seed, Augment("ta_wide"), 224) for seed in range(4200)]
    assert ta == [train_augment(seed, Augment("ta_wide"), 224) for seed in range(4200)]
    assert all(len(d.ops) == 1 and d.erase is None for d in ta)
    ops, bins = Counter(d.ops[0].op for d in ta), Counter(d.ops[0].bin for d in ta)
    assert sorted(ops) == list(range(14)) and min(ops.values()) > 230 and max(ops.values()) < 370  # 300 expected
    assert sorted(bins) == list(range(NUM_MAGNITUDE_BINS)) and min(bins.values()) > 90  # 135 expected
    assert 1900 < sum(d.ops[0].negate for d in ta) < 2300
    ra = [train_augment(seed, Augment("ra", ra_num_ops=3, ra_magnitude=7), 224) for seed in range(600)]
    assert all(len(d.ops) == 3 and {op.bin for op in d.ops} == {7} for d in ra)
    assert len(Counter(op.op for d in ra for op in d.ops)) == 14
    assert [train_crop(seed, 45, 61) for seed in range(50)] == [train_crop(seed, 45, 61) for seed in range(50)]


def test_random_erasing_boxes_follow_torchvisions_rule():
    """RandomErasing(p): erased with probability p; the box from torchvision's get_params (area 0.02-0.33 of the
    image, ratio 0.3-3.3, inside it); its mean area agrees with torchvision's own draws."""
    drawn = [train_augment(seed, Augment(random_erase=0.3), SIZE).erase for seed in range(3000)]
    boxes = [box for box in drawn if box is not None]
    assert 800 < len(boxes) < 1000  # 900 expected
    for top, left, height, width in boxes:
        assert 0 <= top <= SIZE - height and 0 <= left <= SIZE - width and 0 < height < SIZE and 0 < width < SIZE
        assert 0.015 <= height * width / SIZE**2 <= 0.36 and 0.2 <= height / width <= 4.5  # rounding to pixels
    ours = np.mean([h * w for _, _, h, w in (train_augment(s, Augment(random_erase=0.9999), SIZE).erase
                                             for s in range(2000)) if h])
    erasing, image = v2.RandomErasing(p=1.0), torch.zeros(3, SIZE, SIZE)
    torch.manual_seed(0)
    theirs = np.mean([p["h"] * p["w"] for p in (erasing.make_params([image]) for _ in range(2000)) if p["v"] is not None])
    assert abs(ours - theirs) / theirs < 0.06


@pytest.mark.parametrize("policy", AUTO_AUGMENTS)
def test_the_torchvision_backend_applies_torchvisions_own_transform_bit_for_bit(policy):
    """For a torch seed, replay torchvision's own draws (op, then bin, then the sign's coin, as its forward takes
    them) into an AugmentOp: the backend's application equals torchvision's transform under that seed."""
    image, space = photo(), augment_space(policy)
    transform = TORCHVISION[policy](interpolation=InterpolationMode.BILINEAR)
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        ops = []
        for _ in range(1 if policy == "ta_wide" else transform.num_ops):
            op = int(torch.randint(len(space), ()))
            name, magnitudes, signed = space[op]
            has_magnitude = magnitudes(NUM_MAGNITUDE_BINS, image.height, image.width) is not None
            magnitude_bin = int(torch.randint(NUM_MAGNITUDE_BINS, ())) if policy == "ta_wide" and has_magnitude else (
                transform.magnitude if policy == "ra" else 0)
            negate = bool(torch.rand(()) <= 0.5) if has_magnitude and signed else False
            ops.append(AugmentOp(op, magnitude_bin, negate))
            seen.add(name)
        torch.manual_seed(seed)
        assert np.array_equal(np.asarray(apply_auto_augment(image, policy, tuple(ops))),
                              np.asarray(transform(image))), (seed, ops)
    assert len(seen) >= 12


@needs_dali
@pytest.mark.parametrize("policy", AUTO_AUGMENTS)
def test_each_op_means_the_same_on_both_backends(policy):
    """Every op of the policy at three bins (one negated) on the same uint8 image: DALI's suite against
    torchvision's op code. Exact: identity, translations, posterize, solarize. Within a grey level: brightness,
    colour, contrast, autocontrast (rounding). Close: shears and rotations (the two bilinear warps differ at
    edges), sharpness (PIL leaves the border unsharpened), equalize (OpenCV's and PIL's formulas)."""
    from feed_fast.loaders.dali_backend import auto_augment_suite, select_op
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.auto_aug.core import signed_bin

    image, space = np.asarray(photo()), augment_space(policy)
    draws = [AugmentOp(op, b, negate) for op in range(len(space)) for b, negate in ((9, False), (20, True), (30, False))]

    @pipeline_def(enable_conditionals=True, batch_size=len(draws), num_threads=1, device_id=None,
                  exec_dynamic=False)
    def pipe():
        data, op, magnitude_bin, negate = fn.external_source(
            source=lambda: ([image] * len(draws), *(np.array([d[i] for d in draws], np.int32) for i in range(3))),
            num_outputs=4, batch=True, layout=["HWC", "", "", ""])
        return select_op(auto_augment_suite(policy, image.shape[0]), op, 0, len(space) - 1, data=data,
                         magnitude_bin=signed_bin(magnitude_bin, random_sign=negate),
                         num_magnitude_bins=NUM_MAGNITUDE_BINS, fill_value=0, interp_type=types.INTERP_LINEAR)

    dali = pipe()
    dali.build()
    outputs = dali.run()[0].as_array().astype(np.int64)
    for draw, out in zip(draws, outputs):
        name = space[draw.op][0]
        ref = np.asarray(apply_auto_augment(photo(), policy, (draw,))).astype(np.int64)
        diff = np.abs(out - ref)
        corr = np.corrcoef(out.ravel(), ref.ravel())[0, 1]
        if name in ("Identity", "TranslateX", "TranslateY", "Posterize", "Solarize"):
            assert diff.max() == 0, (name, draw)
        elif name in ("Brightness", "Color", "Contrast", "AutoContrast"):
            assert diff.max() <= 2 and diff.mean() < 1, (name, draw)
        elif name in ("Sharpness", "Equalize"):
            assert corr > 0.999 and diff.mean() < 2.5, (name, draw)
        else:  # shears and rotations
            assert corr > 0.985 and diff.mean() < 2.5, (name, draw, corr)


# --- the loaders ---------------------------------------------------------------------------------------------
@needs_dali
@pytest.mark.parametrize("policy", AUTO_AUGMENTS)
def test_both_backends_apply_the_same_ops_and_erase_the_same_pixels(folder, policy):
    recipe = RECIPES[policy]
    dali, tv = loader(folder, "train", "dali", recipe), loader(folder, "train", "torchvision", recipe)
    plain = loader(folder, "train", "dali", None)
    dali_images, dali_labels = collect(dali.iter_from(1))
    tv_images, tv_labels = collect(tv.iter_from(1))
    assert torch.equal(dali_labels, tv_labels)
    order = dali.shard_indices(1)[: len(dali_labels)].tolist()
    # what the DALI pipeline is handed: each sample's own draw, the one the torchvision workers apply
    op_index, op_bin, op_negate, erase_anchor, erase_shape = dali.augment_inputs(1, order)
    for position, index in enumerate(order):
        drawn = train_augment(tv.sample_seed(1, index), recipe, SIZE)
        assert [tuple(op) for op in drawn.ops] == list(zip(op_index[position], op_bin[position],
                                                             op_negate[position]))
        box = drawn.erase or (0, 0, 0, 0)
        assert tuple(erase_anchor[position]) + tuple(erase_shape[position]) == box
        # erased to exactly 0 (a normalized pixel of the image is never exactly 0): the same pixels on both
        erased = (dali_images[position] == 0).all(0)
        assert torch.equal(erased, (tv_images[position] == 0).all(0))
        assert int(erased.sum()) == box[2] * box[3]
    assert [tuple(a) for a in plain.crop_windows(1, order)[0]] == [tuple(a) for a in dali.crop_windows(1, order)[0]]
    corr = correlations(dali_images, tv_images)
    assert np.median(corr) > 0.98 and min(corr) > 0.75  # two JPEG decoders, two resizers, then up to 2 warps


@pytest.mark.parametrize("backend", BACKENDS)
def test_val_is_never_augmented_and_training_is(folder, backend):
    recipe = RECIPES["ta_wide"]
    assert torch.equal(collect(loader(folder, "val", backend, recipe))[0], collect(loader(folder, "val", backend, None))[0])
    augmented, plain = (collect(loader(folder, "train", backend, a).iter_from(0))[0] for a in (recipe, None))
    assert not torch.equal(augmented, plain)
    assert (augmented == 0).all(1).any()  # random erasing at p 0.5 erased something


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_memory_format_the_runtime_asks_for_is_kept(folder, backend):
    recipe = RECIPES["ra"]
    contiguous = collect(loader(folder, "train", backend, recipe).iter_from(0))[0]
    batches = [images for images, _ in loader(folder, "train", backend, recipe,
                                              memory_format=torch.channels_last).iter_from(0)]
    assert all(images.is_contiguous(memory_format=torch.channels_last) for images in batches)
    assert torch.equal(torch.cat(batches), contiguous)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_augmented_epoch_resumed_from_any_batch_repeats_the_uninterrupted_one(folder, backend):
    """A new loader (a new process) iterating epoch 2 from batch 1 or 3 serves the uninterrupted batches bit for
    bit, every switch on; with DataLoader workers on the torchvision backend too (the draws do not hang on the
    worker)."""
    recipe = RECIPES["ra"]
    uninterrupted = list(loader(folder, "train", backend, recipe, batch_size=4).iter_from(2))
    assert len(uninterrupted) == 5
    threads = {"num_threads": 2} if backend == "torchvision" else {}
    for start in (1, 3):
        resumed = list(loader(folder, "train", backend, recipe, batch_size=4, **threads).iter_from(2, start))
        assert len(resumed) == len(uninterrupted) - start
        for (images, labels), (again, again_labels) in zip(uninterrupted[start:], resumed):
            assert torch.equal(images, again) and torch.equal(labels, again_labels)


def test_the_config_takes_the_switches_and_names_a_bad_key(folder):
    def config(**augment):
        return {"method": {"name": "baseline"}, "data": {"dataset": "imagefolder", "root": folder, "augment": augment},
                "train": {"device": "cpu"}}

    cfg = RunConfig.from_dict(config(auto_augment="ta_wide", random_erase=0.1))
    assert cfg.data.augment.auto_augment == "ta_wide" and cfg.data.augment.random_erase == 0.1
    assert RunConfig.from_dict(config()).data.augment.auto_augment is None  # off by default
    for key, value, message in (("auto_augment", "augmix", "must be 'ta_wide', 'ra' or null"),
                                ("ra_magnitude", 31, "must be < 31"), ("ra_num_ops", 0, "must be >= 1"),
                                ("random_erase", 1.0, "must be < 1"), ("random_erase", -0.1, "must be >= 0")):
        with pytest.raises(ConfigError, match=f"data.augment.{key} {message}"):
            RunConfig.from_dict(config(**{key: value}))
    with pytest.raises(ConfigError, match="data.augment is for data.dataset=imagefolder"):
        RunConfig.from_dict({"method": {"name": "baseline"}, "train": {"device": "cpu"},
                             "data": {"dataset": "synthetic", "num_classes": 5, "augment": {"random_erase": 0.1}}})
    with pytest.raises(ValueError, match="augment is only for dataset='imagefolder'"):
        build_loader("", "train", 4, dataset="synthetic", num_classes=5, image_size=8, device="cpu",
                     augment=Augment(random_erase=0.1))
    with pytest.raises(ValueError, match="auto_augment must be None or one of"):
        Augment("augmix")


# --- a training run ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torchvision", pytest.param("dali", marks=[needs_dali, pytest.mark.slow])])
def test_feed_fast_train_with_the_recipe_stopped_mid_epoch_and_resumed_matches_the_uninterrupted_run(
        tmp_path, backend, capsys):
    """`feed-fast train` on an image folder with every switch of the torchvision recipe (TrivialAugmentWide, random
    erasing, MixUp/CutMix, label smoothing, norm weight decay 0, clipping), pFEED with a teacher, SIGINT in the
    middle of epoch 2, then --resume: the same losses, top-1 and student as the run that was not stopped."""

    import yaml
    from _recipe import folder_run_config, load, save_teacher, train_straight_and_interrupted

    from feed_fast.cli import main

    root = tmp_path / "data"
    make_image_folder(str(root), per_class=4)  # 16 training images: 4 batches of 4 per epoch
    teacher = save_teacher(tmp_path / "teacher.pt", classes=4)
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(folder_run_config(
        root, backend, "pfeed", [teacher], augment={"auto_augment": "ta_wide", "random_erase": 0.5},
        mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1, norm_weight_decay=0.0, clip_grad_norm=1.0)))

    straight, split = train_straight_and_interrupted(main, config, tmp_path)  # SIGINT in epoch 2, after its second batch
    assert split == straight
    straight, split = (load(tmp_path / run / "model.pt")["state_dict"] for run in ("straight", "split"))
    assert all(torch.equal(value, split[key]) for key, value in straight.items())
    capsys.readouterr()
