"""`optim.norm_weight_decay`, `optim.bias_weight_decay` (param groups by torchvision's `set_weight_decay` rule) and
`optim.clip_grad_norm` (engine/optim.py): without them the optimizer is the one group it always was; with them
each group decays as configured, through the compiled step's per-group lr and a resume from last.pt; clipping
bounds the total norm the update sees, keeps the gradients' direction, acts once per optimizer step and reads
nothing on the host; the compiled step with the switches matches eager within 1e-4."""
from __future__ import annotations

import contextlib
import signal
from types import SimpleNamespace

import pytest
import torch
from _recipe import (
    assert_same_tensors,
    build_step,
    load,
    run_config,
    save_teacher,
    signal_after_step,
    training_batches,
)
from torch import nn

from feed_fast.config import ConfigError, RunConfig
from feed_fast.engine import resume, train
from feed_fast.engine.optim import NORM_CLASSES, GradientClip, param_groups

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def optim(**switches):
    """The optim section's fields param_groups reads."""
    return SimpleNamespace(**({"weight_decay": 5e-4, "norm_weight_decay": None, "bias_weight_decay": None} | switches))


class Net(nn.Module):
    """Every kind of parameter owner: conv without bias, BatchNorm, GroupNorm, LayerNorm, Linear, a frozen
    parameter, and a norm layer shared by two paths (its parameters counted once)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4))
        self.norm = nn.LayerNorm(4)
        self.again = self.norm
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Parameter(torch.zeros(2), requires_grad=False)


def owners(module):
    """Parameter name -> (owning module, attribute name), for the expectations below."""
    modules = dict(module.named_modules())
    return {name: (modules[name.rpartition(".")[0]] if "." in name else module, name.rpartition(".")[2])
            for name, _ in module.named_parameters()}


@pytest.mark.parametrize(("norm", "bias"), [(0.0, None), (None, 0.0), (0.0, 1e-5), (2e-4, 0.0)])
def test_param_groups_follow_torchvisions_set_weight_decay(norm, bias):
    """A `bias` goes to the bias group when bias_weight_decay is set (norm layers' biases included), else a norm
    layer's parameter to the norm group when norm_weight_decay is set, else to the others'; groups in the order
    others, norm, bias, empty ones left out; every trainable parameter once, the frozen one nowhere."""
    net = Net()
    groups = param_groups(net, optim(norm_weight_decay=norm, bias_weight_decay=bias))
    named = dict(net.named_parameters())
    want = {"other": [], "norm": [], "bias": []}
    for name, (owner, attribute) in owners(net).items():
        if not named[name].requires_grad:
            continue
        if bias is not None and attribute == "bias":
            want["bias"].append(named[name])
        elif norm is not None and isinstance(owner, NORM_CLASSES):
            want["norm"].append(named[name])
        else:
            want["other"].append(named[name])
    decays = {"other": 5e-4, "norm": norm, "bias": bias}
    expected = [(want[k], decays[k]) for k in ("other", "norm", "bias") if want[k]]
    assert [(g["params"], g["weight_decay"]) for g in groups] == expected
    assert sum(len(g["params"]) for g in groups) == len([p for p in net.parameters() if p.requires_grad]) == 11


def test_without_the_switches_the_optimizer_is_the_one_group_it_was():
    with contextlib.ExitStack() as stack:
        step = build_step(run_config("pfeed"), stack)
        (group,) = step.optimizer.param_groups
        assert group["params"] == [p for p in step.distiller.parameters() if p.requires_grad]
        assert group["weight_decay"] == 5e-4


def test_each_group_decays_as_configured_translators_batchnorm_included():
    """pFEED with BatchNorm in its translator: one SGD update on zero gradients is weight decay alone, p * (1 - lr
    * wd): norm layers' weights (student's and translator's) at norm_weight_decay 0 stay put, biases at
    bias_weight_decay, the rest at weight_decay."""
    raw = run_config("pfeed")
    raw["method"]["translator"] = {"batch_norm": True}
    raw["optim"].update(norm_weight_decay=0.0, bias_weight_decay=1e-2, weight_decay=1e-3, momentum=0.0)
    with contextlib.ExitStack() as stack:
        step = build_step(raw, stack)
        optimizer, lr = step.optimizer, step.optimizer.param_groups[0]["lr"]
        assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-3, 0.0, 1e-2]
        names = {id(p): n for n, p in step.distiller.named_parameters()}
        norm_names = [names[id(p)] for p in optimizer.param_groups[1]["params"]]
        assert any(n.startswith("feed.") for n in norm_names) and any(n.startswith("student.") for n in norm_names)
        before = {n: p.detach().clone() for n, p in step.distiller.named_parameters()}
        for p in step.distiller.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = names[id(p)]
                if group["weight_decay"] == 0:
                    assert torch.equal(p.detach(), before[name]), name
                else:
                    torch.testing.assert_close(p.detach(), before[name] * (1 - lr * group["weight_decay"]), rtol=1e-6,
                                               atol=1e-9, msg=name)
                    assert not torch.equal(p.detach(), before[name]) or not before[name].any(), name


def test_clipping_bounds_the_total_norm_and_keeps_the_direction():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(7)), nn.Parameter(torch.randn(2, 2))]
    optimizer = torch.optim.SGD([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}], lr=0.1)
    grads = [torch.randn_like(p) * 3 for p in params]
    norm = torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in grads]))
    for max_norm in (0.5, 1000.0):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        total = GradientClip(optimizer, max_norm)()
        torch.testing.assert_close(total.double(), norm, rtol=1e-6, atol=0)  # the norm before clipping
        after = torch.linalg.vector_norm(torch.cat([p.grad.double().flatten() for p in params]))
        assert after <= max_norm * (1 + 1e-6)
        scale = min(1.0, max_norm / (norm.item() + 1e-6))
        for p, g in zip(params, grads):  # one factor for every gradient: the direction is kept
            torch.testing.assert_close(p.grad.double(), g.double() * scale, rtol=1e-6, atol=1e-7)
        if max_norm > norm:
            assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))  # under the bound: untouched


def record_update_norms(step, monkeypatch) -> list[float]:
    """The total gradient norm each optimizer update sees (eager: `optimizer.step`)."""
    norms, update = [], step.optimizer.step

    def recording(*args, **kwargs):
        grads = [p.grad.flatten() for g in step.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.cat(grads)).item())
        return update(*args, **kwargs)

    monkeypatch.setattr(step.optimizer, "step", recording)
    return norms


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")  # the recording wrapper
def test_the_step_clips_once_per_optimizer_step_what_the_update_sees(monkeypatch):
    raw = run_config("pfeed", accumulate=2)
    raw["optim"]["clip_grad_norm"] = 0.05
    with contextlib.ExitStack() as stack:
        step = build_step(raw, stack)
        clips = []
        clip = step.clip
        step.clip = lambda: clips.append(clip()) or clips[-1]
        norms = record_update_norms(step, monkeypatch)
        for images, labels in training_batches(6, 4):
            step(images, labels)
        assert len(clips) == len(norms) == 3  # accumulate 2: once per optimizer step, on the summed gradients
        assert all(float(c) > 0.05 for c in clips)  # they were over the bound, and the update saw them clipped
        assert all(n <= 0.05 * (1 + 1e-5) for n in norms)
    with contextlib.ExitStack() as stack:
        assert build_step(run_config("pfeed"), stack).clip is None  # off by default


SYNCS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def counting_host_reads():
    """Counts every call that reads a tensor's value on the host (what would sync with a GPU)."""
    calls, originals = {}, {name: getattr(torch.Tensor, name) for name in SYNCS}

    def counting(name, original):
        def counted(self, *args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return original(self, *args, **kwargs)
        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def test_a_step_with_the_switches_reads_nothing_on_the_host():
    """Clipping, mixing and the param groups in eager steps: no `.item()`, no `bool(tensor)`, nothing else that
    reads a tensor on the host (the CPU twin of the GPU test below, which runs with CUDA's sync check)."""
    raw = run_config("pfeed", mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1)
    raw["optim"].update(clip_grad_norm=0.5, norm_weight_decay=0.0, bias_weight_decay=0.0)
    with contextlib.ExitStack() as stack:
        step = build_step(raw, stack)
        batches = training_batches(4, 8)
        step(*batches[0])  # warm-up
        with counting_host_reads() as calls:
            for batch in batches[1:]:
                step(*batch)
            assert calls == {}
            assert float(torch.ones(())) == 1.0 and calls == {"__float__": 1}  # the count sees a host read


@pytest.mark.slow
@pytest.mark.usefixtures("aot_eager_compiles")  # the traced step; Inductor: test_step_modes
def test_compiled_step_with_param_groups_clipping_and_mixing_matches_eager():
    """train.compile=step with 3 param groups (one lr tensor each in StaticLR), clipping and mixing against eager
    over 4 steps with a moving lr: losses and parameters within 1e-4 (Inductor reorders float32 sums)."""
    raw = run_config("pfeed", mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1)
    raw["optim"].update(clip_grad_norm=0.5, norm_weight_decay=0.0, bias_weight_decay=0.0)
    with contextlib.ExitStack() as stack:
        eager = build_step(raw, stack)
        compiled = build_step({**raw, "train": {**raw["train"], "compile": "step"}}, stack)
        assert len(compiled.compiled.lr.tensors) == len(compiled.optimizer.param_groups) == 3
        for images, labels in training_batches(4, 8):
            want, got = eager(images, labels), compiled(images, labels)
            torch.testing.assert_close(got.vector, want.vector, rtol=1e-4, atol=1e-4)
            assert compiled.lr_used == eager.lr_used
        for (name, a), b in zip(eager.distiller.state_dict().items(), compiled.distiller.state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("compile_setting", ["step", False])
def test_gpu_a_step_with_the_switches_never_syncs(compile_setting):
    raw = run_config("pfeed", device="cuda", compile=compile_setting, mixup_alpha=0.2, cutmix_alpha=1.0,
                     label_smoothing=0.1, precision="bf16")
    raw["optim"].update(clip_grad_norm=0.5, norm_weight_decay=0.0, bias_weight_decay=0.0)
    with contextlib.ExitStack() as stack:
        step = build_step(raw, stack)
        batches = training_batches(8, 8, device="cuda")
        for batch in batches[:4]:  # warm-up (and capture) first: compiling and autotuning may sync
            step(*batch)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for batch in batches[4:]:
                losses = step(*batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(losses.vector).all()


def test_a_run_with_param_groups_and_clipping_resumes_exactly(tmp_path, teacher):
    """last.pt holds the three groups (their weight decays and momentum buffers): 2 epochs == stopped mid-epoch
    and resumed; a resume that would change the grouping is refused in one line naming the key."""
    cfg = run_config("pfeed", [teacher], label_smoothing=0.1)
    cfg["optim"].update(norm_weight_decay=0.0, bias_weight_decay=0.0, clip_grad_norm=0.5)
    train(cfg, tmp_path / "straight")
    with signal_after_step(14, signal.SIGTERM):
        assert train(cfg, tmp_path / "split")["interrupted"]
    last = load(tmp_path / "split" / "last.pt")
    assert [g["weight_decay"] for g in last["optimizer"]["param_groups"]] == [5e-4, 0.0, 0.0]
    resume(tmp_path / "split")
    assert_same_tensors(load(tmp_path / "straight" / "model.pt")["state_dict"],
                        load(tmp_path / "split" / "model.pt")["state_dict"], "student")
    with pytest.raises(ConfigError, match="optim.norm_weight_decay"):
        resume(tmp_path / "split", overrides=["optim.norm_weight_decay=0.1"])


def test_the_config_names_a_bad_value():
    defaults = RunConfig.from_dict(run_config("baseline")).optim
    assert defaults.norm_weight_decay is None and defaults.bias_weight_decay is None and defaults.clip_grad_norm is None
    for key, value, message in (("norm_weight_decay", -1.0, "must be >= 0"), ("bias_weight_decay", "none", "must be"),
                                ("clip_grad_norm", 0.0, "must be > 0")):
        raw = run_config("baseline")
        raw["optim"][key] = value
        with pytest.raises(ConfigError, match=f"optim.{key} {message}"):
            RunConfig.from_dict(raw)
