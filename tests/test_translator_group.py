"""TranslatorGroup: K translators fed one input, computed with one conv and one grouped conv per shared width.
It must be K separate Translators in every observable way: forward and gradients (float64, odd sizes), per-teacher
BatchNorm statistics, initial weights and random draws, and checkpoint keys (both layouts load)."""
import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from feed_fast import FEEDLoss, Translator
from feed_fast.ops.translator import TranslatorGroup

OPTIONS = {
    "defaults": ({}, [5, 5, 5]),
    "batch_norm": ({"batch_norm": True}, [5, 5, 5]),
    "kernel1_width": ({"final_kernel_size": 1, "width": 3}, [4, 7, 2]),
    "mixed_widths": ({}, [3, 6, 3, 2]),  # widths 3, 6, 3, 2: three bodies
    "mixed_widths_bn_no_final_activation": ({"batch_norm": True, "final_activation": False,
                                             "negative_slope": 0.2}, [4, 2, 4]),
}


def separate_translators(in_channels, out_channels, options, seed):
    """K separate Translators with random weights and (BatchNorm) random running statistics, in float64."""
    torch.manual_seed(seed)
    translators = nn.ModuleList(Translator(in_channels, c, **options) for c in out_channels).double()
    with torch.no_grad():
        for name, tensor in translators.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if "running_var" in name else torch.randn_like(tensor) * 0.3)
    return translators


def group_like(translators, in_channels, out_channels, options):
    group = TranslatorGroup(in_channels, out_channels, **options).double()
    group.load_state_dict(translators.state_dict())  # per-teacher keys: the layout of K separate Translators
    return group


def grouped_grad(group, name, translators):
    """The gradient the group's parameter `name` should have: the separate translators' gradients in the group's
    layout (bodies: concatenated over the body's teachers along the output channels; heads: as they are)."""
    kind, index, rest = name.split(".", 2)
    if kind == "heads":
        return translators[int(index)].head.get_parameter(rest).grad
    layer_name = rest.removeprefix("layers.")
    return torch.cat([translators[k].body.get_parameter(layer_name).grad for k in group.members[int(index)]])


@pytest.mark.parametrize("case", list(OPTIONS))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_group_equals_separate_translators_forward_gradients_and_statistics(case, train):
    options, out_channels = OPTIONS[case]
    in_channels = 3
    translators = separate_translators(in_channels, out_channels, options, seed=0)
    group = group_like(translators, in_channels, out_channels, options)
    translators.train(train)
    group.train(train)
    x = torch.randn(3, in_channels, 5, 3, dtype=torch.float64, requires_grad=True)

    want = [t(x) for t in translators]
    got = group(x)
    assert len(got) == len(out_channels)
    for g, w, c in zip(got, want, out_channels, strict=True):
        assert g.shape == (3, c, 5, 3)
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)

    # the K head inputs alone (what FEEDLoss hands the fused op) match each translator's body
    for h, t in zip(group.head_inputs(x), translators, strict=True):
        torch.testing.assert_close(h, t.forward_body(x), rtol=1e-12, atol=1e-12)

    weights = [torch.randn_like(w) for w in want]
    loss_got = sum((g * r).sum() for g, r in zip(got, weights))
    loss_want = sum((w * r).sum() for w, r in zip(want, weights))
    grad_x_got, = torch.autograd.grad(loss_got, x)
    loss_want.backward(inputs=[x, *translators.parameters()])
    torch.testing.assert_close(grad_x_got, x.grad, rtol=1e-12, atol=1e-12)
    loss_got = sum((g * r).sum() for g, r in zip(group(x), weights))
    loss_got.backward(inputs=list(group.parameters()))
    for name, param in group.named_parameters():
        torch.testing.assert_close(param.grad, grouped_grad(group, name, translators), rtol=1e-12, atol=1e-12)

    assert group.state_dict().keys() == translators.state_dict().keys()


def test_group_batch_norm_statistics_match_step_by_step():
    options, out_channels = OPTIONS["mixed_widths_bn_no_final_activation"]
    translators = separate_translators(3, out_channels, options, seed=1)
    group = group_like(translators, 3, out_channels, options)
    for step in range(3):
        x = torch.randn(4, 3, 3, 5, dtype=torch.float64)
        group.head_inputs(x)
        for t in translators:
            t.forward_body(x)
        got, want = group.state_dict(), translators.state_dict()
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=1e-12, msg=f"step {step}: {key}")
    assert group.state_dict()["0.body.1.num_batches_tracked"].item() == 3


def count_convolutions(fn):
    class Count(TorchDispatchMode):
        convs = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
                Count.convs += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.convs


@pytest.mark.parametrize(("out_channels", "bodies"), [([5, 5, 5], 1), ([5, 5, 5, 5], 1), ([3, 6, 3, 2], 3)])
def test_body_convs_per_forward_and_backward_do_not_grow_with_teachers_of_one_width(out_channels, bodies):
    group = TranslatorGroup(4, out_channels)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    assert count_convolutions(lambda: group.head_inputs(x)) == 2 * bodies
    loss = sum(h.sum() for h in group.head_inputs(x))
    assert count_convolutions(loss.backward) == 2 * bodies
    assert len(group.bodies) == bodies and len(group.heads) == len(out_channels)


def test_initial_weights_and_random_draws_are_those_of_separate_translators():
    torch.manual_seed(3)
    translators = nn.ModuleList(Translator(6, c, batch_norm=True) for c in (4, 4, 2))
    after_separate = torch.rand(3)
    torch.manual_seed(3)
    group = TranslatorGroup(6, [4, 4, 2], batch_norm=True)
    after_group = torch.rand(3)
    assert torch.equal(after_separate, after_group)
    for key, value in translators.state_dict().items():
        assert torch.equal(group.state_dict()[key], value), key


def test_checkpoints_load_both_ways_and_feedloss_keeps_its_keys():
    """A FEEDLoss state dict written before the grouping (`translators.{k}.body.*` / `.head.*`) loads into
    today's FEEDLoss, and today's state dict loads into K separate Translators: the keys did not change."""
    torch.manual_seed(4)
    before = nn.ModuleDict({"translators": separate_translators(5, [3, 3, 7], {"batch_norm": True}, seed=4).float()})
    loss = FEEDLoss(5, [3, 3, 7], batch_norm=True, backend="torch")
    assert loss.state_dict().keys() == before.state_dict().keys()
    loss.load_state_dict(before.state_dict())  # strict
    for key, value in before.state_dict().items():
        assert torch.equal(loss.state_dict()[key], value), key
    heads = loss.translators.heads
    assert all(h.weight.is_contiguous(memory_format=torch.channels_last) for h in heads)  # layout kept by copy_

    again = nn.ModuleDict({"translators": nn.ModuleList(Translator(5, c, batch_norm=True) for c in (3, 3, 7))})
    again.load_state_dict(loss.state_dict())  # strict, the other way
    x = torch.randn(2, 5, 4, 4)
    loss.eval()
    again.eval()
    for got, want in zip(loss.translators(x), [t(x) for t in again["translators"]], strict=True):
        torch.testing.assert_close(got, want)

    # the grouped layout itself loads too (for example a state dict taken with the hooks bypassed)
    raw = {k: v.clone() for k, v in TranslatorGroup(5, [3, 3, 7], batch_norm=True)._grouped(
        dict(loss.translators.state_dict()), "").items()}
    fresh = TranslatorGroup(5, [3, 3, 7], batch_norm=True)
    fresh.load_state_dict({**raw, **{f"heads.{k}.{n}": v for k in range(3)
                                     for n, v in loss.translators.heads[k].state_dict().items()}})
    for key, value in loss.translators.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_mismatched_checkpoint_is_reported_by_key():
    group = TranslatorGroup(4, [3, 3])
    state = group.state_dict()
    del state["1.body.2.weight"]
    with pytest.raises(RuntimeError, match=r"bodies\.0\.layers\.2\.weight"):
        group.load_state_dict(state)


def test_views_and_standalone_translators():
    torch.manual_seed(5)
    group = TranslatorGroup(4, [6, 2], batch_norm=True).double()
    assert len(group) == 2 and [v.out_channels for v in group] == [6, 2] and [v.width for v in group] == [6, 2]
    assert group[-1].index == 1 and group[1].head is group.heads[1] and group[0].head_slope == 0.1
    with pytest.raises(IndexError, match="translator index 2 out of range for 2 teachers"):
        group[2]
    group.eval()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    single = group.translator(1)
    assert isinstance(single, Translator) and single.out_channels == 2
    torch.testing.assert_close(single.double().eval()(x), group[1](x))
    torch.testing.assert_close(group[1](x), group(x)[1])
    with torch.no_grad():
        single.head.weight.zero_()  # a copy: the group is untouched
    assert group.heads[1].weight.abs().sum() > 0


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"out_channels": []}, "out_channels must name at least one teacher"),
    ({"out_channels": [3, 0]}, "out_channels must be a positive int, got 0"),
    ({"out_channels": [3], "width": 0}, "width must be a positive int, got 0"),
    ({"out_channels": [3], "final_kernel_size": 2}, "final_kernel_size must be 1 or 3, got 2"),
])
def test_bad_configuration_names_the_argument(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TranslatorGroup(4, **kwargs)


@pytest.mark.parametrize("options", [{}, {"batch_norm": True, "width": 3}])
def test_a_last_pt_from_before_the_grouping_resumes_its_translators_and_their_momentum(options):
    """A distiller with K separate Translators (the layout before the grouping) trains a step; its module state
    and its SGD state (momentum buffers, in the old parameter order) load into today's distiller and optimizer,
    and the next step of both gives the same weights."""
    from feed_fast.engine.optimizer_state import accept_pre_grouping_state

    torch.manual_seed(6)
    student = nn.Conv2d(2, 5, 1)
    before = nn.ModuleDict({"student": student, "feed": nn.ModuleDict({
        "translators": nn.ModuleList(Translator(5, c, **options) for c in (4, 4, 6))})})
    today = nn.ModuleDict({"student": nn.Conv2d(2, 5, 1), "feed": FEEDLoss(5, [4, 4, 6], backend="torch", **options)})

    def sgd(module):
        return torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def loss(module, x):
        feature = module["student"](x)
        if isinstance(module["feed"], FEEDLoss):
            outputs = module["feed"].translators(feature)  # the grouped forward
        else:
            outputs = [t(feature) for t in module["feed"]["translators"]]
        return sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outputs)

    old_opt = sgd(before)
    x = torch.randn(3, 2, 4, 4)
    loss(before, x).backward()
    old_opt.step()
    assert len(old_opt.state_dict()["param_groups"][0]["params"]) != len(list(today.parameters()))

    today.load_state_dict(before.state_dict())  # the module state: per-teacher keys, unchanged
    new_opt = sgd(today)
    accept_pre_grouping_state(new_opt, today)
    new_opt.load_state_dict(copy.deepcopy(old_opt.state_dict()))  # as read back from last.pt
    momentum = [new_opt.state[p]["momentum_buffer"] for p in today.parameters()]
    assert len(momentum) == len(list(today.parameters()))

    for module, opt in ((before, old_opt), (today, new_opt)):
        opt.zero_grad()
        loss(module, x).backward()
        opt.step()
    for key, value in before.state_dict().items():
        torch.testing.assert_close(today.state_dict()[key], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    today_state = new_opt.state_dict()
    new_opt.load_state_dict(today_state)  # today's layout passes through the hook unchanged
