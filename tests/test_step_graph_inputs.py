"""What a CUDA graph could freeze in `train.compile: step` (issue #15), tested on the CPU where it would be
wrong on a GPU: the lr the compiled update reads is the optimizer's own device tensor, also after a checkpoint
load replaced the optimizer's param groups, and it follows the schedule step by step across a resume; every
other host value the compiled units traced (TracedConstants) is refused when changed, naming it."""
from __future__ import annotations

import contextlib

import pytest
from test_step_modes import build_step, run_config

# What the traced step reads and guards on is Dynamo's and AOTAutograd's: no generated code needed (the GPU
# capture test below compiles with Inductor).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def record_update_lrs(step) -> list:
    """Wrap the compiled update: what each group's "lr" is while the update runs, and its value then."""
    seen, update = [], step.compiled.update

    def recorded():
        seen.append([(g["lr"], float(g["lr"])) for g in step.optimizer.param_groups])
        update()

    step.compiled.update = recorded
    return seen


@pytest.mark.usefixtures("aot_eager_compiles")
def test_the_update_reads_the_lr_tensor_after_a_checkpoint_load_and_follows_the_schedule():
    with contextlib.ExitStack() as stack:
        straight, batches = build_step(run_config("step"), stack)
        expected = []
        for batch in batches:
            expected.append(straight.optimizer.param_groups[0]["lr"])
            straight(*batch)

        first, _ = build_step(run_config("step"), stack)
        for batch in batches[:2]:
            first(*batch)
        saved = {"optimizer": first.optimizer.state_dict(), "scheduler": first.scheduler.state_dict()}

        resumed, _ = build_step(run_config("step"), stack)
        groups_before = resumed.optimizer.param_groups
        resumed.optimizer.load_state_dict(saved["optimizer"])  # what Trainer.load does: new group dicts
        resumed.scheduler.load_state_dict(saved["scheduler"])
        assert resumed.optimizer.param_groups is not groups_before
        seen = record_update_lrs(resumed)
        for batch in batches[2:]:
            resumed(*batch)
    assert len(seen) == len(batches) - 2
    for k, lrs in enumerate(seen):
        (lr, value), = lrs
        assert lr is resumed.compiled.lr.tensors[0], "the update read a Python float, not the lr tensor"
        assert value == pytest.approx(expected[k + 2], rel=1e-6)
    assert len(set(expected)) == len(expected)  # the schedule moved at every step
    for group in resumed.optimizer.param_groups:  # the optimizer keeps its floats (checkpoints, logs)
        assert isinstance(group["lr"], float)


@pytest.mark.usefixtures("aot_eager_compiles")
def test_a_traced_setting_changed_after_compiling_is_refused_naming_it():
    """Each setting in turn on one compiled step (compiling is the cost): changed, refused before the step runs
    (naming it, old and new value), put back; the step then runs again."""
    with contextlib.ExitStack() as stack:
        step, batches = build_step(run_config("step"), stack)
        step(*batches[0])
        changes = [
            (vars(step.distiller.feed), "beta", 1.0),
            (vars(step.distiller), "label_smoothing", 0.1),
            (step.optimizer.param_groups[0], "momentum", 0.5),
            (step.optimizer.param_groups[0], "weight_decay", 0.0),
            (vars(step.distiller), "kd_weight", 1.0),
        ]
        for target, key, value in changes:
            before = target[key]
            assert before != value, key
            target[key] = value
            with pytest.raises(RuntimeError, match=rf"train.compile=step: .*{key} changed from .* to {value}"):
                step(*batches[1])
            target[key] = before
        step(*batches[1])


@pytest.mark.usefixtures("aot_eager_compiles")
def test_the_engine_changes_no_traced_setting_over_an_epoch_and_a_checkpoint_load():
    with contextlib.ExitStack() as stack:
        step, batches = build_step(run_config("step"), stack)
        for batch in batches[:3]:
            step(*batch)
        state = step.optimizer.state_dict()
        step.optimizer.load_state_dict(state)
        step.distiller.eval()
        step.distiller.train()
        for batch in batches[3:]:
            step(*batch)  # TracedConstants.check() runs before each step
        assert step.compiled.constants.read() == step.compiled.constants.watched


def compiled_things() -> dict[str, int]:
    """What compiles on first use: Dynamo's graphs, the fused kernels' Triton specialisations and autotuned
    configurations (read from Triton's own caches; attributes that a Triton version lacks count as 0)."""
    import feed_fast.kernels.feed_loss as kernels
    from torch._dynamo.utils import counters

    specialisations = tuned = 0
    for obj in vars(kernels).values():
        tuned += len(getattr(obj, "cache", {}) or {}) if hasattr(obj, "configs") else 0
        jit = getattr(obj, "fn", obj)
        for cache in (getattr(jit, "device_caches", None) or {}).values():
            specialisations += len(cache[0]) if isinstance(cache, tuple) else 0
    return {"dynamo graphs": counters["stats"]["unique_graphs"], "triton specialisations": specialisations,
            "autotuned configs": tuned}


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_a_capture_and_its_replays_compile_nothing(backend):
    """The CUDA-graph capture happens after the warm-up steps; from the last warm-up step on, neither the capture
    nor the replays may compile (a first-time compile inside a capture would be recorded, not run)."""
    from feed_fast.engine.compiled_step import CUDA_WARMUP_STEPS

    raw = run_config("step", device="cuda")
    raw["train"]["precision"] = "bf16"
    raw["method"]["backend"] = backend  # auto: the plan is costed for a replayed graph from the first warm-up
    with contextlib.ExitStack() as stack:
        step, batches = build_step(raw, stack)
        for batch in batches[:CUDA_WARMUP_STEPS]:
            step(*batch)
        before = compiled_things()
        for batch in batches[CUDA_WARMUP_STEPS:]:  # the capture, then replays
            step(*batch)
        assert step.compiled.graph.graph is not None
        assert compiled_things() == before


def test_the_warmup_and_the_capture_cost_feed_loss_plans_for_a_replayed_graph(monkeypatch):
    """`auto` picks its fused plan while the step is traced, in the warm-up steps before the capture: they must
    already say "graph", or the plan costed for eager launches is the one the graph replays (and the capture,
    seeing "graph", would recompile). CPU twin of the CUDA path: streams and the capture are stand-ins."""
    import torch

    from feed_fast.engine import compiled_step
    from feed_fast.ops.backend_choice import current_launch_mode

    class Stream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: type("Graph", (), {"replay": lambda self: None})())
    monkeypatch.setattr(torch.cuda, "graph", lambda graph, **kw: contextlib.nullcontext())
    modes = []

    def run(images, labels, capturing=False):
        modes.append((capturing, current_launch_mode(torch.device("cuda"))))
        return ("ce",), torch.zeros(1)

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    replay = compiled_step.CudaGraphReplay(run, optimizer, warmup=2)
    for _ in range(4):
        replay(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    assert modes == [(False, "graph"), (False, "graph"), (True, "graph")]  # then replays: run is not called
    assert current_launch_mode(torch.device("cpu")) == "eager"
