"""The training step's modes and its path through a datum (issue #11): `train.compile` false/true/step; the
compiled step (fullgraph units, CUDA-graph replay on a GPU) against the eager one over several steps with a
changing lr; exact resume with it; teachers without gradient, autograd graph or copies; the wait for the
teachers after the translator bodies; the losses as one vector. Compiled tests use one tiny pFEED setting, so
Inductor compiles it once per session (about a minute on 2 CPU cores, then its caches answer)."""
from __future__ import annotations

import contextlib
import itertools
from types import SimpleNamespace

import pytest
import torch

from feed_fast.config import ConfigError, RunConfig
from feed_fast.engine import train
from feed_fast.engine.data import build_loaders
from feed_fast.engine.epoch_stats import EpochStats
from feed_fast.engine.step import NamedLosses, TrainStep, check_step_mode, step_mode
from feed_fast.engine.teachers import TeacherRunner
from feed_fast.methods import build_method
from feed_fast.models import build_model
from feed_fast.ops.translator import TranslatorGroup
from feed_fast.runtime import open_runtime

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"widths": [4, 8, 16]}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def run_config(compile_setting, device="cpu", teachers=2, **train_section) -> dict:
    return {
        "model": {"name": "resnet8", "kwargs": TINY},
        "teachers": [{"name": "resnet8", "checkpoint": "<random init>", "kwargs": TINY}] * teachers,
        "method": {"name": "pfeed", "backend": "auto"},
        "data": {"dataset": "synthetic", "root": "", "num_classes": 5, "batch_size": 8, "eval_batch_size": 8,
                 "image_size": 16},
        "schedule": {"name": "cosine", "epochs": 1, "milestones": []},  # the lr changes every step
        "train": {"device": device, "precision": "fp32", "compile": compile_setting, "progress": "none",
                  **train_section},
    }


def build_step(raw: dict, stack):
    """A TrainStep as the trainer assembles it, with randomly initialised teachers (seeded), and its batches."""
    cfg = RunConfig.from_dict(raw, check_paths=False)
    runtime = stack.enter_context(open_runtime(cfg.train, handle_signals=False))
    loaders = build_loaders(cfg, runtime)
    torch.manual_seed(7)
    teachers = [build_model(t.name, 5, **t.kwargs) for t in cfg.teachers]
    step = TrainStep.from_config(cfg, runtime, build_method(cfg.method), teachers, num_classes=5, image_size=16,
                                 steps_per_epoch=6, seed=0)
    return step, list(itertools.islice(loaders.train.iter_from(0, 0), 6))


def test_train_compile_maps_to_a_step_mode():
    assert [step_mode(v) for v in (False, True, "step")] == ["eager", "modules", "step"]
    with pytest.raises(ValueError, match="train.compile must be true, false or 'step', got 'graph'"):
        step_mode("graph")
    with pytest.raises(ConfigError, match="train.compile must be true, false or 'step'"):
        RunConfig.from_dict(run_config("yes"), check_paths=False)
    assert RunConfig.from_dict(run_config("step"), check_paths=False).train.compile == "step"


def test_step_mode_refuses_what_a_graph_cannot_hold():
    cfg = RunConfig.from_dict(run_config("step"), check_paths=False)
    ddp = SimpleNamespace(dist=SimpleNamespace(enabled=True), precision=SimpleNamespace(name="bf16"))
    with pytest.raises(ConfigError, match="train.compile=step runs one process"):
        check_step_mode(cfg, ddp)
    fp16 = SimpleNamespace(dist=SimpleNamespace(enabled=False), precision=SimpleNamespace(name="fp16"))
    with pytest.raises(ConfigError, match="cannot use train.precision=fp16"):
        check_step_mode(cfg, fp16)


def test_teachers_give_plain_maps_without_gradient_graph_or_copy(monkeypatch):
    """no_grad, not inference_mode: the maps the teacher returned are handed on as they are (no clone), carry no
    autograd graph, can be saved for the FEED op's backward, and the teachers never get a gradient."""
    torch.manual_seed(0)
    teacher = build_model("resnet8", 5, **TINY)
    returned = []
    extract = teacher.extract_features
    monkeypatch.setattr(teacher, "extract_features", lambda x: returned.append(extract(x)) or returned[-1])
    runner = TeacherRunner([teacher], torch.device("cpu"), need_features=True, need_logits=False)
    feature = runner.launch(torch.randn(2, 3, 16, 16)).wait().features[0]
    assert feature is returned[0]  # no copy
    assert not feature.requires_grad and feature.grad_fn is None and not feature.is_inference()

    student = build_model("resnet8", 5, **TINY)
    pfeed = build_method(RunConfig.from_dict(run_config(False), check_paths=False).method).build(student, [16])
    loss = pfeed(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), SimpleNamespace(wait=runner.launch(
        torch.randn(2, 3, 16, 16)).wait))[1]
    sum(loss.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in pfeed.feed.parameters())


def test_the_step_waits_for_the_teachers_only_after_the_translator_bodies(monkeypatch):
    order = []
    head_inputs = TranslatorGroup.head_inputs
    monkeypatch.setattr(TranslatorGroup, "head_inputs", lambda self, x: order.append("bodies") or head_inputs(self, x))
    with contextlib.ExitStack() as stack:
        step, batches = build_step(run_config(False), stack)
        launch = step.teachers.launch

        def recorded_launch(images, timer=None):
            pending = launch(images, timer)
            wait = pending.wait
            pending.wait = lambda: order.append("wait") or wait()
            order.append("launch")
            return pending

        step.teachers.launch = recorded_launch
        step(*batches[0])
    assert order == ["launch", "bodies", "wait"]


def test_eager_step_hands_its_losses_as_one_vector():
    with contextlib.ExitStack() as stack:
        step, batches = build_step(run_config(False), stack)
        losses = step(*batches[0])
    assert isinstance(losses, NamedLosses) and list(losses) == ["ce", "feed_0", "feed_1"]
    assert losses.vector.shape == (3,) and not losses.vector.requires_grad
    for k, name in enumerate(losses):  # views of the vector: no copy per loss
        assert losses[name].data_ptr() == losses.vector[k].data_ptr()
    stats = EpochStats(torch.device("cpu"))
    stats.add(losses, 8)
    stats.add(losses, 8)
    assert stats.state() == pytest.approx({**{n: 16 * float(v) for n, v in losses.items()}, "samples": 16.0})


def assert_steps_match(reference, candidate, batches, *, rtol, atol):
    """The same batches through both steps: every step's losses, then every parameter and buffer."""
    for i, batch in enumerate(batches):
        want, got = reference(*batch), candidate(*batch)
        assert list(got) == list(want)
        torch.testing.assert_close(got.vector, want.vector, rtol=rtol, atol=atol, msg=f"losses of step {i}")
        assert reference.optimizer.param_groups[0]["lr"] == candidate.optimizer.param_groups[0]["lr"]
    want, got = reference.distiller.state_dict(), candidate.distiller.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=rtol, atol=atol, msg=key)


def test_compiled_step_is_fullgraph_and_matches_eager_over_several_steps():
    """Tolerances: losses and parameters within 1e-4 (relative and absolute) of eager after 6 steps, fp32 on the
    CPU: Inductor fuses and reorders float32 sums (seen: 8e-6 at most). Every unit compiles with
    fullgraph=True (a graph break would raise), once: the lr changes every step without a recompile."""
    from torch._dynamo.utils import counters

    with contextlib.ExitStack() as stack:
        eager, batches = build_step(run_config(False), stack)
        compiled, _ = build_step(run_config("step"), stack)
        assert compiled.mode == "step" and eager.mode == "eager"
        counters.clear()
        assert_steps_match(eager, compiled, batches[:2], rtol=1e-4, atol=1e-4)
        graphs = counters["stats"]["unique_graphs"]
        assert_steps_match(eager, compiled, batches[2:], rtol=1e-4, atol=1e-4)
        assert counters["stats"]["unique_graphs"] == graphs  # no recompile as the lr moves
        assert not counters["graph_break"]
        breakdown = compiled.timer.collect()
        assert breakdown["compiled_step"] > 0 and breakdown["backward"] == breakdown["teachers"] == 0


def test_compiled_step_resumes_exactly(tmp_path):
    """2 epochs straight == 1 epoch + resume + 1 epoch, with train.compile=step (CPU, fp32)."""
    from feed_fast.engine import resume
    from feed_fast.engine.checkpoint import student_export

    teacher_file = tmp_path / "teacher.pt"
    torch.manual_seed(7)
    torch.save(student_export("resnet8", 5, TINY, build_model("resnet8", 5, **TINY)), teacher_file)
    raw = run_config("step", max_steps_per_epoch=3, log_every=2)
    raw["teachers"] = [{"name": "resnet8", "checkpoint": str(teacher_file), "kwargs": TINY}] * 2
    raw["schedule"] = {"name": "cosine", "epochs": 2, "milestones": []}
    straight = train(raw, tmp_path / "straight")
    train(raw, tmp_path / "split", max_epochs=1)
    resumed = resume(tmp_path / "split")
    assert [r["loss"] for r in straight["history"]] == [r["loss"] for r in resumed["history"]]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    for part in ("student", "extras"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), key
    assert straight["history"][-1]["step_ms"]["compiled_step"] > 0


# --- on a GPU (CPU twins: the compiled-step tests above) ------------------------------------------------------
def cuda_config(compile_setting, precision="fp32"):
    raw = run_config(compile_setting, device="cuda")
    raw["train"]["precision"] = precision
    raw["method"]["backend"] = "auto"
    return raw


@pytest.mark.gpu
def test_graph_replayed_steps_equal_the_unreplayed_compiled_steps_and_eager():
    """fp32: the CUDA-graph replays run the compiled units' own kernels, so they match the compiled step run
    without a graph to 1e-6; eager (other kernels, TF32 off) within 1e-3. All three from the same start."""
    with contextlib.ExitStack() as stack:
        graphed, batches = build_step(cuda_config("step"), stack)
        plain, _ = build_step(cuda_config("step"), stack)
        plain.compiled.graph = None  # the same compiled units, launched one by one
        eager, _ = build_step(cuda_config(False), stack)
        for i, batch in enumerate(batches):
            got, same_units, reference = graphed(*batch), plain(*batch), eager(*batch)
            torch.testing.assert_close(got.vector, same_units.vector, rtol=1e-6, atol=1e-6, msg=f"step {i}")
            torch.testing.assert_close(got.vector, reference.vector, rtol=1e-3, atol=1e-3, msg=f"step {i}")
        assert graphed.compiled.graph.graph is not None  # warm-up steps done, the later ones replayed
        for key, value in plain.distiller.state_dict().items():
            torch.testing.assert_close(graphed.distiller.state_dict()[key], value, rtol=1e-6, atol=1e-6, msg=key)
            torch.testing.assert_close(eager.distiller.state_dict()[key], value, rtol=1e-3, atol=1e-3, msg=key)


@pytest.mark.gpu
@pytest.mark.parametrize("compile_setting", ["step", False])
def test_a_step_never_syncs_with_the_host(compile_setting):
    with contextlib.ExitStack() as stack:
        step, batches = build_step(cuda_config(compile_setting, precision="bf16"), stack)
        stats = EpochStats(step.runtime.device)
        for batch in batches[:4]:  # warm-up (and capture) first: compiling and autotuning may sync
            stats.add(step(*batch), 8)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for batch in batches[4:]:
                stats.add(step(*batch), 8)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert all(torch.isfinite(torch.tensor(list(stats.state().values()))))


@pytest.mark.gpu
def test_a_graph_replay_refuses_another_batch_shape():
    with contextlib.ExitStack() as stack:
        step, batches = build_step(cuda_config("step"), stack)
        for batch in batches[:5]:
            step(*batch)
        images, labels = batches[5]
        with pytest.raises(ValueError, match=r"captured for images \(8, 3, 16, 16\).*got \(4, 3, 16, 16\)"):
            step(images[:4], labels[:4])
