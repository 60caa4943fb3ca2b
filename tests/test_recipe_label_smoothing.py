"""`train.label_smoothing`: one cross-entropy (methods/losses.py, through `Distiller.cross_entropy`) for every
method's CE term; 0 is the plain CE bit for bit (the expression every method used before the switch existed);
KD's soft-target term and the FEED terms are untouched; the engine hands the config's value to the Distiller;
validation loss stays plain CE."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from _recipe import CLASSES, TINY, build_step, run_config, save_teacher, training_batches
from feed_fast.loaders import build_loader

from feed_fast.config import ConfigError, MethodConfig, RunConfig
from feed_fast.config.parse import from_mapping
from feed_fast.engine import evaluate, load_student, train
from feed_fast.methods import TeacherOutputs, build_method
from feed_fast.methods.losses import cross_entropy
from feed_fast.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smoothed_ce_float64(logits, labels, eps):
    """(1 - eps) * NLL + eps * mean over classes of -log p: torchvision's --label-smoothing target."""
    logp = F.log_softmax(logits.double(), dim=1)
    nll = -logp.gather(1, labels[:, None]).squeeze(1)
    return ((1 - eps) * nll - eps * logp.mean(1)).mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_smooths_as_torchvision_and_zero_is_the_plain_call(dtype):
    g = torch.Generator().manual_seed(0)
    logits, labels = (4 * torch.randn(16, 7, generator=g)).to(dtype), torch.randint(7, (16,), generator=g)
    for eps in (0.1, 0.5, 0.9):
        got = cross_entropy(logits, labels, eps)
        assert got.dtype == torch.float32  # accumulated in float32 whatever the logits' dtype
        torch.testing.assert_close(got.double(), smoothed_ce_float64(logits.float(), labels, eps), rtol=1e-6, atol=1e-6)
    assert torch.equal(cross_entropy(logits, labels), F.cross_entropy(logits.float(), labels))
    assert torch.equal(cross_entropy(logits, labels, 0.0), F.cross_entropy(logits.float(), labels))
    assert not torch.equal(cross_entropy(logits, labels, 0.1), cross_entropy(logits, labels))


def method_cfg(name, **kw):
    return from_mapping(MethodConfig, {"name": name, "backend": "torch", **kw}, "method")


class Ready:
    def __init__(self, outputs):
        self.outputs = outputs

    def wait(self):
        return self.outputs


def distillers():
    """(label, distiller) for every method, sFEED's two generations included (one teacher of 16 channels)."""
    yield "baseline", build_method(method_cfg("baseline")).build(build_model("resnet8", CLASSES, **TINY), [])
    yield "kd", build_method(method_cfg("kd")).build(build_model("resnet8", CLASSES, **TINY), [16])
    yield "pfeed", build_method(method_cfg("pfeed")).build(build_model("resnet8", CLASSES, **TINY), [16])
    yield "pfeed+kd", build_method(method_cfg("pfeed", kd={"enabled": True, "weight": 0.5})).build(
        build_model("resnet8", CLASSES, **TINY), [16])
    sfeed = build_method(method_cfg("sfeed", generations=2))
    yield "sfeed gen 1", sfeed.build(build_model("resnet8", CLASSES, **TINY), [])
    yield "sfeed gen 2", sfeed.build(build_model("resnet8", CLASSES, **TINY), [16])


@pytest.mark.parametrize("label", [label for label, _ in distillers()])
def test_every_methods_ce_term_takes_the_smoothing_and_nothing_else_does(label):
    torch.manual_seed(0)
    distiller = dict(distillers())[label]
    teacher = build_model("resnet8", CLASSES, **TINY).eval()
    images, labels = training_batches(1, 4)[0]
    with torch.no_grad():
        maps, teacher_logits = teacher.forward_features(images)
    teachers = Ready(TeacherOutputs([maps], [teacher_logits]))

    def losses(smoothing):
        distiller.label_smoothing = smoothing
        logits, named = distiller(images, labels, teachers)
        return logits, named

    logits, plain = losses(0.0)
    # bit-identical to the expression every method's CE was before the switch existed
    assert torch.equal(plain["ce"], F.cross_entropy(logits.float(), labels))
    _, smoothed = losses(0.2)
    assert set(smoothed) == set(plain)
    torch.testing.assert_close(smoothed["ce"].double(), smoothed_ce_float64(logits, labels, 0.2), rtol=1e-6, atol=1e-6)
    assert not torch.equal(smoothed["ce"], plain["ce"])
    for name in set(plain) - {"ce"}:  # KD's soft targets and the FEED terms are untouched
        assert torch.equal(smoothed[name], plain[name]), name


def test_the_engine_hands_the_configs_smoothing_to_the_distiller():
    for smoothing in (0.0, 0.3):
        with contextlib.ExitStack() as stack:
            step = build_step(run_config(label_smoothing=smoothing), stack)
            assert step.distiller.label_smoothing == smoothing
            images, labels = training_batches(1, 8)[0]
            losses = step(images, labels)
            assert torch.isfinite(losses.vector).all()
    assert RunConfig.from_dict(run_config("baseline")).train.label_smoothing == 0.0  # the default: off
    for bad, message in ((1.0, "must be < 1"), (-0.1, "must be >= 0"), ("lots", "must be float")):
        with pytest.raises(ConfigError, match=f"train.label_smoothing {message}"):
            RunConfig.from_dict(run_config("baseline", label_smoothing=bad))


def test_a_smoothed_run_trains_and_validates_with_plain_ce(tmp_path):
    teacher = save_teacher(tmp_path / "teacher.pt")
    runs = {eps: train(run_config("kd", [teacher], epochs=1, label_smoothing=eps, max_steps_per_epoch=4),
                       tmp_path / f"ls{eps}")
            for eps in (0.0, 0.3)}
    plain, smoothed = (runs[eps]["history"][0] for eps in (0.0, 0.3))
    assert smoothed["loss"]["ce"] > plain["loss"]["ce"]  # the smoothed target's CE is bounded away from 0
    # validation: plain CE of the exported student, whatever the training smoothing
    val = build_loader("", "val", 16, dataset="synthetic", image_size=16, device="cpu", num_classes=CLASSES)
    student = load_student(tmp_path / "ls0.3" / "model.pt")
    assert smoothed["val"]["loss"] == pytest.approx(evaluate(student, val)["loss"], rel=1e-12)
