"""Engine parts in isolation: config validation (clear errors before any work), frozen teachers that compute
only what is asked, feature-shape checks, optimizer choice, schedules, precision, atomic checkpoints, timers.
GPU-only paths (streams, fused SGD, fp16 + GradScaler) have `gpu` tests beside their CPU twins."""
import dataclasses
import os

import pytest
import torch

from feed_fast import FEEDLoss
from feed_fast.atomic_files import atomic_save
from feed_fast.config import ConfigError, OptimConfig, RunConfig, ScheduleConfig, TeacherConfig, load_config
from feed_fast.engine.checkpoint import load_weights, student_export
from feed_fast.engine.optim import build_optimizer, build_scheduler, lr_factor
from feed_fast.engine.teachers import TeacherRunner, check_feature_shapes, load_teacher
from feed_fast.models import build_model
from feed_fast.runtime import resolve_precision
from feed_fast.runtime.timing import SECTIONS, StepTimer

TINY = {"widths": [4, 8, 16]}
SYNTHETIC = {"dataset": "synthetic", "root": "", "num_classes": 5}


def ok_config(**sections):
    cfg = {"model": {"name": "resnet8", "kwargs": TINY}, "method": {"name": "baseline"}, "data": dict(SYNTHETIC)}
    cfg.update(sections)
    return cfg


# --- config ------------------------------------------------------------------------------------------
def test_defaults_are_filled_and_types_coerced():
    cfg = RunConfig.from_dict(ok_config(optim={"lr": 1}))
    assert cfg.optim == dataclasses.replace(OptimConfig(), lr=1.0) and isinstance(cfg.optim.lr, float)
    assert cfg.method.translator.final_kernel_size == 3 and cfg.schedule.epochs == 164 and cfg.schedule.milestones == [82, 123]
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # resolving a resolved config changes nothing


@pytest.mark.parametrize(("change", "message"), [
    ({"optim": {"lr": 0.1, "momentun": 0.9}}, "unknown key 'optim.momentun'"),
    ({"trian": {}}, "unknown key 'trian'"),
    ({"optim": {"lr": "fast"}}, "optim.lr must be float, got 'fast'"),
    ({"schedule": {"epochs": 2.5}}, "schedule.epochs must be int"),
    ({"train": {"compile": "yes"}}, "train.compile must be true, false or 'step'"),
    ({"model": {"name": "resnet57"}}, "model.name: unknown model 'resnet57'"),
    ({"method": {"name": "fitnet"}}, "method.name must be one of"),
    ({"method": {"name": "pfeed"}}, "needs at least one entry in teachers"),
    ({"method": {"name": "pfeed"}, "teachers": [{"name": "resnet8"}]}, "teachers.0 .resnet8. needs a checkpoint"),
    ({"method": {"name": "kd"}, "teachers": [{"name": "resnet8", "checkpoint": "/no/such.pt"}]},
     "teachers.0.checkpoint '/no/such.pt' does not exist"),
    # (a method that uses teachers: baseline drops configured teachers before checking them)
    ({"method": {"name": "kd"}, "teachers": [{"name": "vgg99", "weights": "X"}]}, "teachers.0.name: unknown model 'vgg99'"),
    ({"method": {"name": "kd"}, "teachers": [{"name": "resnet34", "weights": "ResNet34_Weights.NOPE"}]},
     "teachers.0.weights 'ResNet34_Weights.NOPE' is not a torchvision weights name"),
    ({"data": {"dataset": "cifar100", "root": "/no/such/dir"}}, "data.root '/no/such/dir' does not exist"),
    ({"data": {"dataset": "synthetic", "root": ""}}, "data.num_classes is required"),
    ({"data": {"dataset": "cifar10", "root": "", "num_classes": 3}}, "data.num_classes is for data.dataset=synth"),
    ({"method": {"name": "baseline", "translator": {"final_kernel_size": 5}}}, "final_kernel_size must be 1 or 3"),
    ({"schedule": {"milestones": [150, 100]}}, "milestones must be increasing"),
    ({"train": {"precision": "fp8"}}, "train.precision must be one of"),
    ({"train": {"channels_last": "maybe"}}, "channels_last must be true, false or 'auto'"),
])
def test_config_errors_are_clear(change, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(ok_config(**change))


def test_yaml_loading_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {name: resnet8, kwargs: {widths: [4, 8, 16]}}\nmethod: {name: baseline}\n"
                    "data: {dataset: synthetic, root: '', num_classes: 5}\n")
    cfg = load_config(path, ["optim.lr=0.05", "schedule.milestones=[1, 2]", "train.max_steps_per_epoch=3"])
    assert cfg.optim.lr == 0.05 and cfg.schedule.milestones == [1, 2]
    assert cfg.train.max_steps_per_epoch == 3
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(path, ["optim.lr"])
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        load_config(path, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_shipped_configs_are_valid():
    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    names = sorted(n for n in os.listdir(root) if n.endswith(".yaml"))
    assert {"cifar100_resnet56_pfeed.yaml", "cifar100_wrn28_10_pfeed.yaml", "cifar100_resnext29_pfeed.yaml",
            "imagenet_resnet18_pfeed.yaml"} <= set(names)
    for name in names:
        cfg = load_config(os.path.join(root, name), check_paths=False)
        assert cfg.optim.momentum == 0.9, name


# --- teachers ----------------------------------------------------------------------------------------
class CountingHead(torch.nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head, self.calls = head, 0

    def forward(self, x):
        self.calls += 1
        return self.head(x)


def test_teachers_are_frozen_and_compute_only_what_is_asked():
    torch.manual_seed(0)
    teacher = build_model("resnet8", 5, widths=(4, 8, 32))
    teacher.head = CountingHead(teacher.head)
    images = torch.randn(2, 3, 16, 16)
    runner = TeacherRunner([teacher], torch.device("cpu"), need_features=True, need_logits=False)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    out = runner.launch(images).wait()
    assert out.logits is None and teacher.head.calls == 0  # no logits without KD
    assert out.features[0].shape == (2, 32, 4, 4) and not out.features[0].requires_grad
    with_logits = TeacherRunner([teacher], torch.device("cpu"), need_features=False, need_logits=True)
    out = with_logits.launch(images).wait()
    assert out.features is None and out.logits[0].shape == (2, 5) and teacher.head.calls == 1


def test_teacher_features_can_feed_the_fused_loss_backward():
    # the fused op saves the teacher map for backward; inference tensors would be refused there
    torch.manual_seed(0)
    teacher = build_model("resnet8", 5, widths=(4, 8, 32))
    runner = TeacherRunner([teacher], torch.device("cpu"), need_features=True, need_logits=False)
    features = runner.launch(torch.randn(2, 3, 16, 16)).wait().features
    student_feature = torch.randn(2, 16, 4, 4, requires_grad=True)
    for backend in ("torch", "triton"):  # triton runs in the interpreter on the CPU (tests/conftest.py)
        FEEDLoss(16, [32], backend=backend)(student_feature, features).total.backward()
        assert student_feature.grad.abs().sum() > 0


def test_feature_shape_mismatch_names_both_shapes_unless_adaptive_pooling():
    student = build_model("resnet8", 5, **TINY)  # 16 x 4 x 4 at 16 px
    teacher = build_model("resnet18", 5)  # 512 x 1 x 1 at 16 px
    with pytest.raises(ValueError, match=r"\(512, 1, 1\).*\(16, 4, 4\).*feature_pool=adaptive"):
        check_feature_shapes(student, [teacher], 16, torch.device("cpu"), "none")
    assert check_feature_shapes(student, [teacher], 16, torch.device("cpu"), "adaptive") == ([512], (4, 4))
    runner = TeacherRunner([teacher], torch.device("cpu"), need_features=True, need_logits=False, pool_to=(4, 4))
    assert runner.launch(torch.randn(2, 3, 64, 64)).wait().features[0].shape == (2, 512, 4, 4)


def test_teacher_loads_torchvision_state_dict_and_our_export(tmp_path):
    torch.manual_seed(0)
    import torchvision

    plain = torchvision.models.resnet18(num_classes=5)
    torch.save(plain.state_dict(), tmp_path / "tv.pt")
    teacher = load_teacher(TeacherConfig(name="resnet18", checkpoint=str(tmp_path / "tv.pt"), weights=None,
                                         kwargs={}), 5)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(teacher.eval()(x), plain.eval()(x))
    cifar = build_model("resnet8", 5, **TINY)
    torch.save(student_export("resnet8", 5, TINY, cifar), tmp_path / "ours.pt")
    loaded = load_weights(build_model("resnet8", 5, **TINY), tmp_path / "ours.pt")
    torch.testing.assert_close(loaded.eval()(x), cifar.eval()(x))
    with pytest.raises(ValueError, match="does not fit model"):
        load_weights(build_model("resnet8", 7, **TINY), tmp_path / "ours.pt")


@pytest.mark.gpu
def test_teachers_on_their_own_cuda_streams_match_the_cpu():
    torch.manual_seed(0)
    teachers = [build_model("resnet8", 5, widths=(4, 8, 32)) for _ in range(3)]
    images = torch.randn(4, 3, 16, 16)
    cpu = TeacherRunner(teachers, torch.device("cpu"), need_features=True, need_logits=True).launch(images).wait()
    device = torch.device("cuda")
    gpu_runner = TeacherRunner([t.to(device) for t in teachers], device, need_features=True, need_logits=True)
    assert len(gpu_runner.streams) == 3 and len({s.cuda_stream for s in gpu_runner.streams}) == 3
    timer = StepTimer(device)
    out = gpu_runner.launch(images.to(device), timer).wait()
    for a, b in zip(out.features, cpu.features):
        torch.testing.assert_close(a.cpu(), b, atol=1e-3, rtol=1e-3)
    timer.step_done()
    assert timer.collect()["teachers"] > 0


# --- optimizer, schedule, precision ------------------------------------------------------------------
def test_optimizer_is_foreach_sgd_on_cpu_with_weight_decay_on_everything_trainable():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    model[1].weight.requires_grad_(False)
    cfg = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "apex": True}
    opt = build_optimizer(model, OptimConfig(**cfg), torch.device("cpu"))  # apex is for CUDA only: plain torch SGD here
    group = opt.param_groups[0]
    assert group["foreach"] and not group.get("fused") and group["nesterov"] and group["weight_decay"] == 5e-4
    assert len(group["params"]) == 3  # the frozen weight is left out


def test_apex_fused_sgd_is_used_only_when_importable_and_asked_for(monkeypatch):
    import sys
    import types

    class FakeFusedSGD(torch.optim.SGD):
        pass

    apex = types.ModuleType("apex")
    apex.optimizers = types.SimpleNamespace(FusedSGD=FakeFusedSGD)
    monkeypatch.setitem(sys.modules, "apex", apex)
    monkeypatch.setitem(sys.modules, "apex.optimizers", apex.optimizers)
    model = torch.nn.Linear(3, 3)
    cfg = {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "apex": True}
    # the choice is made from the device type alone; the parameters stay on the CPU here
    assert type(build_optimizer(model, OptimConfig(**cfg), torch.device("cuda"))) is FakeFusedSGD
    assert type(build_optimizer(model, OptimConfig(**{**cfg, "apex": False}), torch.device("cuda"))) is torch.optim.SGD
    assert type(build_optimizer(model, OptimConfig(**cfg), torch.device("cpu"))) is torch.optim.SGD  # apex is CUDA-only
    monkeypatch.setitem(sys.modules, "apex.optimizers", None)  # not importable: torch's fused SGD, with a warning
    with pytest.warns(UserWarning, match="apex.optimizers.FusedSGD is not importable"):
        opt = build_optimizer(model, OptimConfig(**cfg), torch.device("cuda"))
    assert type(opt) is torch.optim.SGD and opt.defaults["fused"]


@pytest.mark.gpu
def test_optimizer_is_fused_on_cuda():
    model = torch.nn.Linear(3, 3).cuda()
    cfg = {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "apex": False}
    assert build_optimizer(model, OptimConfig(**cfg), torch.device("cuda")).param_groups[0]["fused"]


def test_schedules_per_iteration():
    multistep = ScheduleConfig(name="multistep", epochs=10, milestones=[2, 4], gamma=0.1, warmup_epochs=0,
                               min_lr=0.0)
    assert [lr_factor(s, 10, multistep) for s in (0, 19, 20, 39, 40)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cosine = dataclasses.replace(multistep, name="cosine", warmup_epochs=1)
    assert lr_factor(0, 10, cosine) == pytest.approx(0.1)  # linear warmup over the first epoch
    assert lr_factor(9, 10, cosine) == pytest.approx(1.0)
    assert lr_factor(55, 10, cosine) == pytest.approx(0.5)  # halfway through the cosine part
    assert lr_factor(100, 10, cosine) == pytest.approx(0.0, abs=1e-12)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = build_scheduler(opt, 10, dataclasses.replace(cosine, min_lr=0.01), 0.2)
    for _ in range(100):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # floored at min_lr


def test_precision_choices():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == "fp32"
    assert not resolve_precision("auto", cpu).grad_scaler().is_enabled()
    bf16 = resolve_precision("bf16", cpu)
    with bf16.autocast():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)


@pytest.mark.gpu
def test_fp16_uses_a_grad_scaler_on_cuda():
    p = resolve_precision("fp16", torch.device("cuda"))
    assert p.grad_scaler().is_enabled() and p.dtype == torch.float16


# --- checkpoints and timers --------------------------------------------------------------------------
def test_atomic_save_replaces_whole_files_and_leaves_no_temp(tmp_path):
    atomic_save({"a": torch.ones(2)}, tmp_path / "x.pt")
    atomic_save({"a": torch.zeros(3)}, tmp_path / "x.pt")
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True)["a"], torch.zeros(3))
    assert os.listdir(tmp_path) == ["x.pt"]

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"bad": Unpicklable()}, tmp_path / "x.pt")
    assert os.listdir(tmp_path) == ["x.pt"]  # the old file is intact, the temp file is gone
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True)["a"], torch.zeros(3))


def test_step_timer_reports_mean_ms_per_section():
    timer = StepTimer(torch.device("cpu"))
    for _ in range(2):
        with timer("backward"):
            sum(range(10000))
        timer.add_ms("data_wait", 3.0)
        timer.step_done()
    result = timer.collect()
    assert set(result) == set(SECTIONS)
    assert result["data_wait"] == pytest.approx(3.0) and result["backward"] > 0 and result["loss"] == 0


def test_epoch_stats_are_sample_weighted_means_that_survive_a_checkpoint():
    from feed_fast.engine.epoch_stats import EpochStats
    from feed_fast.runtime import DistInfo

    timer = StepTimer(torch.device("cpu"))
    stats = EpochStats(torch.device("cpu"))
    stats.add({"ce": torch.tensor(2.0), "feed_0": torch.tensor(1.0)}, batch=4)
    resumed = EpochStats(torch.device("cpu"), stats.state())  # what last.pt carries mid-epoch
    resumed.add({"ce": torch.tensor(4.0), "feed_0": torch.tensor(0.0)}, batch=2)
    summary = resumed.summary(DistInfo(), timer)
    assert summary["loss"] == pytest.approx({"ce": (2 * 4 + 4 * 2) / 6, "feed_0": 4 / 6, "total": (16 + 4) / 6})
    assert resumed.images == 2 and summary["images_per_sec"] > 0 and summary["data_wait_fraction"] == 0
    with pytest.raises(ValueError, match="changed names"):
        resumed.add({"ce": torch.tensor(1.0)}, batch=1)
