"""`train.accumulate`: N micro-batches of B make one optimizer step equal to one step on the 2B batch (for a model
without batch statistics: BatchNorm frozen here; in training mode BatchNorm normalises each micro-batch with its
own statistics, which no accumulation can undo); steps per epoch, the lr schedule, progress and the EMA count
optimizer steps; a signal mid-step stops after the step's last micro-batch, and resume is exact."""
from __future__ import annotations

import contextlib
import signal

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

from feed_fast.config import ConfigError
from feed_fast.engine import resume, train
from feed_fast.engine.checkpoint import CheckpointError
from feed_fast.engine.trainer import GenerationTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def frozen_batch_statistics(step):
    """BatchNorm of the student (and translators) in eval mode: each sample's output depends on itself only."""
    step.distiller.eval()
    return step


def test_two_micro_batches_of_b_are_one_step_on_2b(teacher):
    """pFEED (CE with label smoothing + FEED) and an EMA: 3 optimizer steps of accumulate=2 on halves of the
    batches equal 3 steps of accumulate=1 on the whole batches, within float32 rounding (1e-5: the halves' sums
    are added in another order), lr and EMA included. Two plain steps on the halves differ (the control)."""
    train_section = {"label_smoothing": 0.1, "ema": {"enabled": True, "decay": 0.5}}
    batches = training_batches(3, 8)
    with contextlib.ExitStack() as stack:
        accumulated = frozen_batch_statistics(build_step(run_config(accumulate=2, **train_section), stack))
        whole = frozen_batch_statistics(build_step(run_config(**train_section), stack))
        halves = frozen_batch_statistics(build_step(run_config(**train_section), stack))
        for images, labels in batches:
            first = accumulated(images[:4], labels[:4])
            assert not accumulated.at_boundary and accumulated.scheduler.last_epoch == whole.scheduler.last_epoch
            second = accumulated(images[4:], labels[4:])
            assert accumulated.at_boundary
            reference = whole(images, labels)
            torch.testing.assert_close((first.vector + second.vector) / 2, reference.vector, rtol=1e-5, atol=1e-6)
            assert accumulated.lr_used == whole.lr_used and accumulated.scheduler.last_epoch == whole.scheduler.last_epoch
            halves(images[:4], labels[:4])
            halves(images[4:], labels[4:])
        assert accumulated.ema.steps == whole.ema.steps == 3
        want, got, control = (s.distiller.state_dict() for s in (whole, accumulated, halves))
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)
        for key, value in whole.ema.model.state_dict().items():
            torch.testing.assert_close(accumulated.ema.model.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
        moved = [k for k, v in want.items() if v.is_floating_point() and not torch.allclose(control[k], v, 1e-3, 1e-4)]
        assert moved, "two plain steps on the halves should differ from one step on the whole batch"


def test_steps_per_epoch_schedule_and_progress_count_optimizer_steps(tmp_path, teacher, monkeypatch, capsys):
    """10 batches per epoch, accumulate=3: 3 optimizer steps of 3 micro-batches (the 10th batch is not used); the
    cosine schedule ends at its last optimizer step, progress lines and the EMA count optimizer steps."""
    calls = {"n": 0}
    original = GenerationTrainer.train_step

    def counted(self, images, labels):
        calls["n"] += 1
        return original(self, images, labels)

    monkeypatch.setattr(GenerationTrainer, "train_step", counted)
    cfg = run_config("pfeed", [teacher], accumulate=3, progress="lines", log_every=1, ema={"enabled": True})
    summary = train(cfg, tmp_path)
    assert calls["n"] == 2 * 9
    last = load(tmp_path / "last.pt")
    assert last["scheduler"]["last_epoch"] == 6 and last["ema"]["steps"] == 6
    assert (last["epoch"], last["next_batch"]) == (2, 0)
    assert summary["history"][-1]["lr"] == pytest.approx(0.05 * 0.5 * (1 + torch.cos(torch.tensor(5 / 6 * torch.pi))))
    err = capsys.readouterr().err
    assert "epoch 2 step 3/3" in err and "step 4/" not in err and "step 9/" not in err

    capped = train(run_config("baseline", epochs=1, accumulate=2, max_steps_per_epoch=2), tmp_path / "capped")
    assert load(tmp_path / "capped" / "last.pt")["scheduler"]["last_epoch"] == 2  # the cap counts optimizer steps
    assert capped["history"][0]["loss"]["ce"] > 0


def test_a_signal_mid_step_stops_after_the_step_and_resume_is_exact(tmp_path, teacher):
    cfg = run_config("pfeed", [teacher], accumulate=2, label_smoothing=0.1,
                     ema={"enabled": True, "decay": 0.7, "every": 2})
    straight = train(cfg, tmp_path / "straight")
    # epoch 2, its 3rd micro-batch: the first half of an optimizer step
    with signal_after_step(13, signal.SIGTERM) as calls:
        stopped = train(cfg, tmp_path / "split")
    assert stopped["interrupted"] and stopped["resume_at"] == {"epoch": 1, "batch": 4}  # after the step's 2nd half
    assert calls["n"] == 14
    last = load(tmp_path / "split" / "last.pt")
    assert (last["epoch"], last["next_batch"], last["scheduler"]["last_epoch"]) == (1, 4, 7)
    resumed = resume(tmp_path / "split")
    a, b = load(tmp_path / "straight" / "last.pt"), load(tmp_path / "split" / "last.pt")
    for part in ("student", "extras"):
        assert_same_tensors(a[part], b[part], part)
    assert_same_tensors(a["ema"]["state_dict"], b["ema"]["state_dict"], "ema")
    assert [(r["loss"], r["val"], r["lr"]) for r in straight["history"]] == [
        (r["loss"], r["val"], r["lr"]) for r in resumed["history"]]


def test_a_checkpoint_inside_an_optimizer_step_is_refused(tmp_path):
    """A last.pt stopped after batch 3 by a run of accumulate=1, resumed with accumulate=2: refused, one line."""
    cfg = run_config("baseline", epochs=1)
    with signal_after_step(3, signal.SIGINT):
        train(cfg, tmp_path)
    recorded = tmp_path / "config.yaml"
    recorded.write_text(recorded.read_text().replace("accumulate: 1", "accumulate: 2"))
    with pytest.raises(CheckpointError, match=r"stops after micro-batch 3, inside an optimizer step of "
                                              r"train.accumulate=2"):
        resume(tmp_path)


def test_accumulate_is_checked_and_must_fit_the_epoch(tmp_path):
    for bad, message in ((0, "must be >= 1"), (1.5, "must be int"), (True, "must be int")):
        with pytest.raises(ConfigError, match=f"train.accumulate {message}"):
            train(run_config("baseline", accumulate=bad), tmp_path / "refused")
    with pytest.raises(ConfigError, match=r"no full optimizer step \(train.accumulate=11 batches of "
                                          r"data.batch_size=8; 10 full batches"):
        train(run_config("baseline", accumulate=11), tmp_path / "too_many")


@pytest.mark.usefixtures("aot_eager_compiles")  # the traced step; Inductor: test_step_modes
def test_under_torch_compile_step_accumulation_matches_eager():
    """train.compile=step with accumulate=2, label smoothing and an EMA: fullgraph units, no recompile as the lr
    moves, within 1e-4 of the eager step after 3 optimizer steps (Inductor reorders float32 sums)."""
    from torch._dynamo.utils import counters

    train_section = {"accumulate": 2, "label_smoothing": 0.1, "ema": {"enabled": True, "decay": 0.5}}
    micro_batches = training_batches(6, 4)
    with contextlib.ExitStack() as stack:
        eager = build_step(run_config(**train_section), stack, teachers=2)
        compiled = build_step(run_config(compile="step", **train_section), stack, teachers=2)
        assert compiled.compiled is not None and compiled.compiled.graph is None
        counters.clear()
        for i, batch in enumerate(micro_batches):
            want, got = eager(*batch), compiled(*batch)
            torch.testing.assert_close(got.vector, want.vector, rtol=1e-4, atol=1e-4, msg=f"micro-batch {i}")
            assert compiled.at_boundary == eager.at_boundary == (i % 2 == 1)
            assert compiled.lr_used == eager.lr_used
        assert not counters["graph_break"]
        assert compiled.ema.steps == eager.ema.steps == 3
        for want, got in ((eager.distiller.state_dict(), compiled.distiller.state_dict()),
                          (eager.ema.model.state_dict(), compiled.ema.model.state_dict())):
            for key, value in want.items():
                torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-4, msg=key)


# --- on a GPU (CPU twins: the tests above) ----------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("accumulate", [1, 2])
def test_compiled_step_with_ema_and_accumulation_on_cuda_matches_eager(accumulate):
    """accumulate=1 replays the CUDA graph (the EMA update outside it); accumulate=2 runs the compiled units
    without a graph. fp32 with TF32 off: within 1e-3 of eager."""
    raw = {"accumulate": accumulate, "label_smoothing": 0.1, "ema": {"enabled": True, "decay": 0.5}}
    micro_batches = training_batches(8, 4, device="cuda")
    with contextlib.ExitStack() as stack:
        eager = build_step(run_config(device="cuda", **raw), stack)
        compiled = build_step(run_config(device="cuda", compile="step", **raw), stack)
        assert (compiled.compiled.graph is not None) == (accumulate == 1)
        for batch in micro_batches:
            torch.testing.assert_close(compiled(*batch).vector, eager(*batch).vector, rtol=1e-3, atol=1e-3)
        for key, value in eager.ema.model.state_dict().items():
            torch.testing.assert_close(compiled.ema.model.state_dict()[key], value, rtol=1e-3, atol=1e-3, msg=key)
