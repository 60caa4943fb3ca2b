"""`train.mixup_alpha` / `train.cutmix_alpha` (engine/mix.py): torchvision's v2 MixUp and CutMix on the device
after the loader. The mixed images and soft labels equal torchvision's transforms for the same parameters and a
float64 reference; the draws follow torchvision's (Beta(alpha, alpha), even odds between the two, CutMix's box
rule) from a generator seeded by the global step; the teachers and the student see the same mixed batch, CE takes
the soft labels (label smoothing on top), KD the teachers' outputs on the mixed images; a run stopped mid-epoch
and resumed equals the uninterrupted run."""
from __future__ import annotations

import contextlib
import random
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _recipe import (
    CLASSES,
    assert_same_tensors,
    build_step,
    load,
    run_config,
    save_teacher,
    signal_after_step,
    training_batches,
)
from torchvision.transforms import v2

from feed_fast.config import ConfigError, RunConfig
from feed_fast.engine import resume, train
from feed_fast.engine.mix import BatchMix, MixDraw, draw_mix, mix_batch
from feed_fast.methods.losses import cross_entropy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def batch(n=6, classes=CLASSES, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size + 2, generator=g), torch.randint(classes, (n,), generator=g)


def reference_float64(images, labels, draw: MixDraw, classes):
    """torchvision's formulas in float64: the partner of sample i is sample i - 1 (the batch rolled by one)."""
    x, partner = images.double(), images.double().roll(1, 0)
    one_hot = F.one_hot(labels, classes).double()
    if draw.box is None:
        mixed = draw.weight * x + (1 - draw.weight) * partner
    else:
        x1, y1, x2, y2 = draw.box
        mixed = x.clone()
        mixed[..., y1:y2, x1:x2] = partner[..., y1:y2, x1:x2]
    return mixed, draw.weight * one_hot + (1 - draw.weight) * one_hot.roll(1, 0)


def test_mixup_and_cutmix_equal_torchvisions_transforms_and_a_float64_reference():
    images, labels = batch()
    mixup, cutmix = v2.MixUp(alpha=0.2, num_classes=CLASSES), v2.CutMix(alpha=1.0, num_classes=CLASSES)
    rng = random.Random(3)
    for _ in range(20):
        draw = draw_mix(rng, 0.2, 1.0, images.shape[2], images.shape[3])
        mixed, soft = mix_batch(images, labels, draw, CLASSES)
        assert mixed.dtype == images.dtype and soft.dtype == torch.float32 and soft.shape == (6, CLASSES)
        if draw.box is None:
            transform, params = mixup, {"lam": draw.weight}
        else:
            transform, params = cutmix, {"box": draw.box, "lam_adjusted": draw.weight}
        params |= {"labels": labels, "batch_size": len(labels)}
        assert torch.equal(mixed, transform.transform(images, params))  # torchvision's own expression, bit for bit
        assert torch.equal(soft, transform.transform(labels, params))
        want_images, want_soft = reference_float64(images, labels, draw, CLASSES)
        torch.testing.assert_close(mixed.double(), want_images, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(soft.double(), want_soft, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(soft.sum(1), torch.ones(6))


def test_the_draws_follow_torchvisions_rules():
    """Both alphas on: MixUp or CutMix at even odds (torchvision's RandomChoice); lam ~ Beta(alpha, alpha); CutMix's
    box centred on a uniform pixel with sides sqrt(1 - lam) of the image's (halves truncated, clipped), its label
    weight 1 - box area / image area; one alpha on: that one only."""
    rng = random.Random(0)
    draws = [draw_mix(rng, 0.2, 1.0, 20, 30) for _ in range(4000)]
    kinds = [d.kind for d in draws]
    assert 1850 < kinds.count("mixup") < 2150
    mixup = np.array([d.weight for d in draws if d.kind == "mixup"])
    assert abs(mixup.mean() - 0.5) < 0.03 and np.mean((mixup < 0.1) | (mixup > 0.9)) > 0.5  # Beta(0.2, 0.2): U-shaped
    for d in draws:
        if d.kind == "cutmix":
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 <= x2 <= 30 and 0 <= y1 <= y2 <= 20
            assert d.weight == pytest.approx(1 - (x2 - x1) * (y2 - y1) / 600, abs=1e-12)
    assert {d.kind for d in (draw_mix(rng, 0.0, 1.0, 8, 8) for _ in range(50))} == {"cutmix"}
    assert {d.kind for d in (draw_mix(rng, 0.4, 0.0, 8, 8) for _ in range(50))} == {"mixup"}
    # CutMix's box rule, replayed from the same generator
    rng, again = random.Random(5), random.Random(5)
    d = draw_mix(rng, 0.0, 1.0, 20, 30)
    lam, r_x, r_y = again.betavariate(1.0, 1.0), again.randrange(30), again.randrange(20)
    half_w, half_h = int(0.5 * np.sqrt(1 - lam) * 30), int(0.5 * np.sqrt(1 - lam) * 20)
    assert d.box == (max(r_x - half_w, 0), max(r_y - half_h, 0), min(r_x + half_w, 30), min(r_y + half_h, 20))


def test_a_draw_hangs_on_the_micro_batchs_place_in_the_run():
    """Seeded by (seed, optimizer step, micro-batch, rank): the same place draws the same; another step, micro-batch,
    rank or seed draws anew; 1 process x accumulate 2 numbers its micro-batches as 2 processes x 1 do."""
    mix = BatchMix(mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=10, seed=3)
    assert mix.draw(7, 0, 16, 16) == mix.draw(7, 0, 16, 16)
    assert len({mix.draw(step, 0, 16, 16) for step in range(30)}) == 30
    assert mix.draw(7, 0, 16, 16) != BatchMix(mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=10, seed=4).draw(7, 0, 16, 16)
    accumulated = BatchMix(mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=10, seed=3, accumulate=2)
    for rank in (0, 1):
        process = BatchMix(mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=10, seed=3, rank=rank, world_size=2)
        assert accumulated.draw(5, rank, 16, 16) == process.draw(5, 0, 16, 16)
    with pytest.raises(ValueError, match="one of them > 0"):
        BatchMix(mixup_alpha=0.0, cutmix_alpha=0.0, num_classes=10, seed=0)


def test_cross_entropy_takes_the_soft_labels_with_label_smoothing_as_torchvision_does():
    """CE(logits, soft target) with smoothing e: the target (1 - e) * soft + e / C, as CrossEntropyLoss does for
    the soft labels torchvision's MixUp/CutMix hand it; linear in the target, so the mixed CE is the weighted sum
    of the two samples' CEs."""
    g = torch.Generator().manual_seed(0)
    logits, (images, labels) = 3 * torch.randn(6, CLASSES, generator=g), batch()
    draw = MixDraw("mixup", 0.3, None)
    _, soft = mix_batch(images, labels, draw, CLASSES)
    logp = F.log_softmax(logits.double(), 1)
    for eps in (0.0, 0.1):
        target = (1 - eps) * soft.double() + eps / CLASSES
        want = -(target * logp).sum(1).mean()
        torch.testing.assert_close(cross_entropy(logits, soft, eps).double(), want, rtol=1e-6, atol=1e-6)
        weighted = 0.3 * cross_entropy(logits, labels, eps) + 0.7 * cross_entropy(logits, labels.roll(1, 0), eps)
        torch.testing.assert_close(cross_entropy(logits, soft, eps), weighted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["kd", "pfeed"])
def test_the_teachers_and_the_student_see_the_same_mixed_batch(method, monkeypatch):
    """In the step: the images the teachers run on and the ones the student runs on are the mixed batch of the
    step's draw; the method's losses get the soft labels and the teachers' outputs on the mixed images (KD: their
    logits, FEED: their feature maps); the loss is CE on the soft labels plus the method's term on those."""
    raw = run_config(method, mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1)
    if method == "pfeed":
        raw["method"]["kd"] = {"enabled": True, "weight": 0.5}
    seen = {}
    with contextlib.ExitStack() as stack:
        step = build_step(raw, stack)
        launch, losses = step.teachers.launch, step.distiller.losses
        teacher_model = step.teachers.teachers[0]

        def record_launch(images, *args, **kwargs):
            seen["teachers"] = images.clone()
            return launch(images, *args, **kwargs)

        def record_losses(feature, logits, labels, teachers, **kwargs):
            seen["labels"], seen["teacher_logits"] = labels, teachers.logits[0]
            seen["teacher_features"] = teachers.features[0] if teachers.features else None
            return losses(feature, logits, labels, teachers, **kwargs)

        monkeypatch.setattr(step.teachers, "launch", record_launch)
        monkeypatch.setattr(step.distiller, "losses", record_losses)
        student_forward = step.distiller.run_student

        def record_student(images):
            seen["student"] = images.clone()
            return student_forward(images)

        monkeypatch.setattr(step.distiller, "run_student", record_student)
        for n, (images, labels) in enumerate(training_batches(3, 8)):
            draw = step.mix.draw(n, 0, 16, 16)
            mixed, soft = mix_batch(images, labels, draw, CLASSES)
            step(images, labels)
            assert torch.equal(seen["teachers"], mixed) and torch.equal(seen["student"], mixed)
            assert torch.equal(seen["labels"], soft)
            with torch.no_grad():
                features, logits = teacher_model.forward_features(mixed)
            torch.testing.assert_close(seen["teacher_logits"], logits)  # KD distils the teacher on the mixed image
            if method == "pfeed":  # FEED matches the teacher's features of the mixed image
                torch.testing.assert_close(seen["teacher_features"], features)


def test_a_run_with_mixing_stopped_mid_epoch_and_resumed_equals_the_uninterrupted_run(tmp_path, teacher):
    cfg = run_config("pfeed", [teacher], mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1)
    straight = train(cfg, tmp_path / "straight")
    with signal_after_step(13, signal.SIGTERM):  # epoch 2, after its third step
        assert train(cfg, tmp_path / "split")["interrupted"]
    resumed = resume(tmp_path / "split")
    assert_same_tensors(load(tmp_path / "straight" / "model.pt")["state_dict"],
                        load(tmp_path / "split" / "model.pt")["state_dict"], "student")
    assert [r["loss"] for r in straight["history"]] == [r["loss"] for r in resumed["history"]]
    unmixed = train(run_config("pfeed", [teacher], label_smoothing=0.1), tmp_path / "unmixed")
    assert unmixed["history"][0]["loss"] != straight["history"][0]["loss"]  # the control: mixing changed the run


def test_the_config_names_a_bad_alpha():
    assert RunConfig.from_dict(run_config("baseline")).train.mixup_alpha == 0.0  # off by default
    for key in ("mixup_alpha", "cutmix_alpha"):
        with pytest.raises(ConfigError, match=f"train.{key} must be >= 0"):
            RunConfig.from_dict(run_config("baseline", **{key: -0.2}))
