"""The fused op as PyTorch sees it: a registered custom op (`torch.library.opcheck`), one node under
`torch.compile(fullgraph=True)`, a launch count independent of K, nothing feature-map sized saved but the
inputs (and, for the hybrid plan, the conv output in its own dtype), and, on a GPU, no host sync and a CUDA
graph that replays to eager's values. On the CPU the kernels run in Triton's interpreter.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")
from feed_fast.kernels import feed_loss as kernels

import feed_fast.ops.fused  # noqa: F401 -- registers the ops
from feed_fast import FEEDLoss, feed_loss

LAUNCHERS = kernels.KERNEL_NAMES


def small_case(seed=0, dtype=torch.float32, device="cpu"):
    """K=2: a 3x3 head without bias, and an identity head with a bias (odd sizes). Weights and biases as the op
    takes them: the present ones only (`as_feed_loss_args` gives feed_loss's one-per-teacher lists)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype)

    head_inputs = [rand(2, 3, 4, 5).requires_grad_(), rand(2, 6, 4, 4).requires_grad_()]
    teachers = [rand(2, 5, 4, 5), rand(2, 6, 4, 4)]
    weights = [rand(5, 3, 3, 3, scale=0.3).requires_grad_()]
    biases = [rand(6, scale=0.1).requires_grad_()]
    return head_inputs, teachers, weights, biases


def as_feed_loss_args(head_inputs, teachers, weights, biases):
    return head_inputs, teachers, [weights[0], None], [None, biases[0]]


def test_opcheck_forward_and_backward_ops():
    head_inputs, teachers, weights, biases = small_case()
    options = ([True, False], [False, True], [0.5, 0.25], 0.1, 1e-12, None, False)
    forward = (head_inputs, teachers, weights, biases, *options)
    torch.library.opcheck(torch.ops.feed_fast.feed_terms.default, forward)

    _, stats = torch.ops.feed_fast.feed_terms(*forward)
    detached = [[x.detach() for x in group] for group in (head_inputs, teachers, weights, biases)]
    grad_terms = torch.randn(2, 2, generator=torch.Generator().manual_seed(1))
    torch.library.opcheck(torch.ops.feed_fast.feed_terms_backward.default,
                          (grad_terms, stats.detach(), *detached, *options))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_feed_loss_module_compiles_into_one_graph_and_matches_eager(backend):
    torch.manual_seed(0)
    module = FEEDLoss(4, [3, 5], width=4, backend=backend)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    teachers = [torch.randn(2, 3, 3, 3), torch.randn(2, 5, 3, 3)]
    graphs = []

    def recording_inductor(gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        graphs.append(gm)
        return compile_fx(gm, example_inputs)

    def step(x, teachers):
        return module(x, teachers).total

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=recording_inductor, fullgraph=True)  # a graph break raises
    got = compiled(x, teachers)
    (got_grad,) = torch.autograd.grad(got, [x])
    want = step(x, teachers)
    (want_grad,) = torch.autograd.grad(want, [x])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    assert len(graphs) == 1
    fused_nodes = [n for n in graphs[0].graph.nodes if n.target is torch.ops.feed_fast.feed_terms.default]
    assert len(fused_nodes) == (1 if backend == "triton" else 0)


class CountingLauncher:
    """Counts launches of one Triton kernel and forwards them."""

    def __init__(self, kernel, counter):
        self.kernel, self.counter = kernel, counter

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def counted(*args, **kwargs):
            self.counter["launches"] += 1
            return launch(*args, **kwargs)

        return counted


class CountingMode(TorchDispatchMode):
    """Counts the device work PyTorch dispatches outside the custom ops: compute ops, not allocations or views.
    (Ops a custom op runs inside its implementation are not seen: its kernels are counted by CountingLauncher.)"""

    FREE = ("empty", "empty_like", "empty_strided", "new_empty", "view", "_unsafe_view", "expand", "alias",
            "detach", "t", "as_strided", "unsqueeze", "squeeze", "slice", "select", "permute", "transpose")

    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in self.FREE:
            self.counter["ops"] += 1
        return func(*args, **(kwargs or {}))


def launches_for(num_teachers: int, backend: str) -> dict:
    gen = torch.Generator().manual_seed(num_teachers)
    head_inputs = [torch.randn(2, 4, 3, 3, generator=gen).requires_grad_() for _ in range(num_teachers)]
    teachers = [torch.randn(2, 5, 3, 3, generator=gen) for _ in range(num_teachers)]
    # Channels-last 3x3 weights, as FEEDLoss keeps them (an OIHW 3x3 weight is repacked: one copy each).
    weights = [torch.randn(5, 4, 3, 3, generator=gen).to(memory_format=torch.channels_last).requires_grad_()
               for _ in range(num_teachers)]
    biases = [torch.randn(5, generator=gen).requires_grad_() for _ in range(num_teachers)]
    counter = {"launches": 0, "ops": 0}
    with pytest.MonkeyPatch.context() as patch:
        for name in LAUNCHERS:
            patch.setattr(kernels, name, CountingLauncher(getattr(kernels, name), counter))
        with CountingMode(counter):
            loss = feed_loss(head_inputs, teachers, weights, biases, negative_slope=0.1, backend=backend)
            torch.autograd.grad(loss, [*head_inputs, *weights, *biases])
    return counter


def test_launch_count_does_not_grow_with_the_number_of_teachers():
    counts = {k: launches_for(k, "triton") for k in (1, 2, 3, 4)}
    # 1 forward + 4 backward: dz, input gradient, weight gradient, and the reduce pass (bias, split partials)
    assert counts[1]["launches"] == 5, counts
    assert all(c == counts[1] for c in counts.values()), counts


def test_hybrid_launches_the_fused_rest_once_whatever_k():
    """cuDNN's convs are per head by nature; the fused part stays 1 forward + 2 backward launches (dz, and the
    reduce pass that sums the bias gradient)."""
    counts = {k: launches_for(k, "hybrid") for k in (1, 3)}
    assert counts[1]["launches"] == counts[3]["launches"] == 3, counts


def saved_by(run) -> list[tuple]:
    saved = []

    def pack(x):
        saved.append((tuple(x.shape), x.dtype, x.data_ptr()))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        run()
    return saved


def test_fused_plan_saves_only_its_inputs_and_per_sample_scalars():
    head_inputs, teachers, weights, biases = small_case(seed=2)
    args = as_feed_loss_args(head_inputs, teachers, weights, biases)
    saved = saved_by(lambda: feed_loss(*args, backend="triton", reduction="none"))
    inputs = {x.data_ptr() for x in (*head_inputs, *teachers, *weights, *biases)}
    extra = [s for s in saved if s[2] not in inputs]
    assert extra == [((2, 2, kernels.STATS), torch.float32, extra[0][2])], extra


def test_hybrid_plan_saves_no_float32_copy_of_a_bf16_map():
    args = as_feed_loss_args(*small_case(seed=3, dtype=torch.bfloat16))
    saved = saved_by(lambda: feed_loss(*args, backend="hybrid", reduction="none"))
    per_sample = 2 * 2 * kernels.STATS  # the stats: K x B x 3
    big_fp32 = [s for s in saved if s[1] == torch.float32 and torch.Size(s[0]).numel() > per_sample]
    assert big_fp32 == [], saved
    conv_output = [s for s in saved if s[0] == (2, 5, 4, 5)]
    assert conv_output and all(s[1] == torch.bfloat16 for s in conv_output), saved


def test_triton_path_follows_the_matmul_tf32_flag_at_call_time(monkeypatch):
    """Compiled, the flag selects IEEE or TF32 GEMMs (tests/test_kernels_compile_for_gpu.py checks the PTX);
    here: feed_loss reads torch's flag on every call and hands it to the kernels."""
    seen = []
    forward = kernels.feed_forward

    def spy(*args):
        seen.append(args[6])  # tf32
        return forward(*args)

    monkeypatch.setattr(kernels, "feed_forward", spy)
    args = as_feed_loss_args(*small_case(seed=4))
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        for flag in (False, True, False):
            torch.backends.cuda.matmul.allow_tf32 = flag
            feed_loss(*args, backend="triton")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert seen == [False, True, False]


def test_pinned_config_replaces_every_autotuned_kernels_configs():
    """The compiled kernels only exist outside the interpreter: checked in a subprocess (no GPU needed)."""
    code = textwrap.dedent("""
        import feed_fast.kernels.feed_loss as k
        tuned = k._AUTOTUNED
        assert len(tuned) == len(k.KERNEL_NAMES), tuned
        for t in tuned:
            # Every constexpr that changes the code is in the key (block sizes follow from the shapes in it).
            constexprs = {t.fn.arg_names[i] for i in t.fn.constexprs} - {"NUM_TEACHERS", "SINGLE_TILE"}
            assert {c for c in constexprs if not c.startswith("BLOCK_")} | {"batch"} <= set(t.keys), t.keys
            assert any(key.startswith("s_") for key in t.keys), t.keys
        before = [list(t.configs) for t in tuned]
        with k.pinned_config(4):
            assert all([c.num_warps for c in t.configs] == [4] for t in tuned)
        assert [list(t.configs) for t in tuned] == before
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------
# On a GPU (CPU twins: the opcheck and compile tests above)
# ---------------------------------------------------------------------------------------------------------
def cuda_module_and_inputs(backend: str):
    torch.manual_seed(5)
    module = FEEDLoss(16, [32, 64], width=16, backend=backend).cuda()
    x = torch.randn(8, 16, 8, 8, device="cuda", requires_grad=True)
    teachers = [torch.randn(8, 32, 8, 8, device="cuda"), torch.randn(8, 64, 8, 8, device="cuda")]
    return module, x, teachers


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "hybrid", "auto"])
def test_forward_and_backward_never_sync_with_the_host(backend):
    module, x, teachers = cuda_module_and_inputs(backend)
    with kernels.pinned_config():
        module(x, teachers).total.backward()  # compiles outside the checked region
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            module(x, teachers).total.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "hybrid"])
def test_cuda_graph_replays_forward_and_backward_to_eager_values(backend):
    module, x, teachers = cuda_module_and_inputs(backend)
    params = [x, *module.parameters()]

    def step():
        for p in params:
            p.grad = None
        out = module(x, teachers)
        out.total.backward()
        return out.total

    with kernels.pinned_config():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        for p in params:
            p.grad = None
        with torch.cuda.graph(graph):
            static_total = step()
        static_grads = [p.grad for p in params]

        new_x, new_teachers = torch.randn_like(x), [torch.randn_like(t) for t in teachers]
        with torch.no_grad():
            x.copy_(new_x)
            for t, n in zip(teachers, new_teachers):
                t.copy_(n)
        graph.replay()
        torch.cuda.synchronize()
        replayed = static_total.clone(), [g.clone() for g in static_grads]

        eager_total = step()
        torch.testing.assert_close(replayed[0], eager_total, rtol=0, atol=0)
        for g_graph, p in zip(replayed[1], params):
            torch.testing.assert_close(g_graph, p.grad, rtol=0, atol=0)
