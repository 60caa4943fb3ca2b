"""Methods: each returns the documented named losses, the FEED term comes from FEEDLoss, gradients reach the
student and translators only, and the method registry (generations, teachers per generation) is data-driven."""
import copy

import pytest
import torch
import torch.nn.functional as F

from feed_fast import FEEDLoss
from feed_fast.config import MethodConfig
from feed_fast.config.parse import from_mapping
from feed_fast.methods import KD, PFEED, Baseline, TeacherOutputs, build_method
from feed_fast.methods.losses import hinton_kd
from feed_fast.models import build_model

TINY = {"widths": (4, 8, 16)}


class Ready:
    def __init__(self, outputs):
        self.outputs = outputs

    def wait(self):
        return self.outputs


def method_cfg(name, **kw):
    cfg = {"name": name, "beta": 500.0, "backend": "torch", "generations": 3, "feature_pool": "none",
           "translator": {"width": None, "final_kernel_size": 3, "batch_norm": False, "final_activation": True,
                          "negative_slope": 0.1},
           "kd": {"enabled": False, "weight": 1.0, "temperature": 4.0}}
    cfg.update(kw)
    return from_mapping(MethodConfig, cfg, "method")


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 16, 16, generator=g), torch.randint(5, (4,), generator=g)


def test_baseline_is_cross_entropy():
    torch.manual_seed(0)
    student = build_model("resnet8", 5, **TINY)
    images, labels = batch()
    logits, losses = Baseline(student)(images, labels)
    assert set(losses) == {"ce"}
    torch.testing.assert_close(losses["ce"], F.cross_entropy(logits, labels))


def test_hinton_kd_matches_kl_of_mean_teacher_distribution():
    g = torch.Generator().manual_seed(1)
    s, t1, t2 = (torch.randn(6, 5, generator=g) for _ in range(3))
    temp = 3.0
    p = (F.softmax(t1 / temp, 1) + F.softmax(t2 / temp, 1)) / 2
    expected = (p * (p.log() - F.log_softmax(s / temp, 1))).sum(1).mean() * temp**2
    torch.testing.assert_close(hinton_kd(s, [t1, t2], temp), expected)
    assert hinton_kd(t1, [t1], temp).abs() < 1e-6  # a student equal to its teacher has nothing to learn


def test_kd_method_losses_and_flags():
    torch.manual_seed(0)
    student = build_model("resnet8", 5, **TINY)
    method = KD(student, temperature=2.0, weight=0.5)
    assert method.needs_teacher_logits and not method.needs_teacher_features
    images, labels = batch()
    teacher_logits = [torch.randn(4, 5)]
    logits, losses = method(images, labels, Ready(TeacherOutputs(None, teacher_logits)))
    assert set(losses) == {"ce", "kd"}
    torch.testing.assert_close(losses["kd"], 0.5 * hinton_kd(logits, teacher_logits, 2.0))


def test_pfeed_terms_come_from_feed_loss_and_gradients_reach_student_and_translators():
    torch.manual_seed(0)
    student = build_model("resnet8", 5, **TINY)
    method = PFEED(student, [16, 32], beta=500.0, backend="torch")
    assert method.needs_teacher_features and not method.needs_teacher_logits
    images, labels = batch()
    teachers = [torch.randn(4, 16, 4, 4), torch.randn(4, 32, 4, 4)]
    reference = copy.deepcopy(method.feed)
    _, losses = method(images, labels, Ready(TeacherOutputs(teachers, None)))
    assert set(losses) == {"ce", "feed_0", "feed_1"}
    expected = reference(student.extract_features(images), teachers).per_teacher
    torch.testing.assert_close(torch.stack([losses["feed_0"], losses["feed_1"]]), expected)
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.feed.translators.parameters())
    assert student.stages[0][0].conv1.weight.grad.abs().sum() > 0
    # translators are the extras dropped at export
    extra_ids = {id(p) for p in method.trainable_extras()}
    assert extra_ids == {id(p) for p in method.feed.parameters()}
    assert not extra_ids & {id(p) for p in student.parameters()}


def test_pfeed_with_kd_asks_for_teacher_logits():
    torch.manual_seed(0)
    student = build_model("resnet8", 5, **TINY)
    method = build_method(method_cfg("pfeed", kd={"enabled": True, "weight": 0.3, "temperature": 4.0})).build(
        student, [16])
    assert method.needs_teacher_logits and method.needs_teacher_features
    images, labels = batch()
    _, losses = method(images, labels, Ready(TeacherOutputs([torch.randn(4, 16, 4, 4)], [torch.randn(4, 5)])))
    assert set(losses) == {"ce", "feed_0", "kd"}


def test_translator_options_reach_feed_loss():
    student = build_model("resnet8", 5, **TINY)
    cfg = method_cfg("pfeed", translator={"width": 6, "final_kernel_size": 1, "batch_norm": True,
                                          "final_activation": False, "negative_slope": 0.2})
    method = build_method(cfg).build(student, [12])
    translator = method.feed.translators[0]
    assert translator.head.kernel_size == (1, 1) and translator.width == 6 and translator.head_slope is None
    assert isinstance(method.feed, FEEDLoss) and method.feed.beta == 500.0


def test_generations_and_teachers_per_generation():
    given = [object(), object()]
    previous = object()
    for name in ("kd", "pfeed"):
        method = build_method(method_cfg(name))
        assert method.num_generations() == 1
        assert method.teachers_for(0, given, None) == given
    baseline = build_method(method_cfg("baseline"))
    assert baseline.teachers_for(0, given, None) == [] and not baseline.uses_given_teachers
    sfeed = build_method(method_cfg("sfeed", generations=3))
    assert sfeed.num_generations() == 3
    assert sfeed.teachers_for(0, [], None) == []
    assert sfeed.teachers_for(0, given, None) == given
    assert sfeed.teachers_for(2, given, previous) == [previous]
    student = build_model("resnet8", 5, **TINY)
    assert isinstance(sfeed.build(student, []), Baseline)  # generation 1 without a teacher: CE alone
    assert isinstance(sfeed.build(student, [16]), PFEED)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method.name must be one of"):
        build_method(method_cfg("fitnet"))
