"""`train.ema`: the moving average follows its documented rule (warm-up copies, every `every` optimizer steps,
decay per update, BatchNorm statistics averaged, integer buffers copied); decay 0 is the raw student bit for bit;
each epoch evaluates it beside the student (metrics.jsonl holds both, "best" follows the student); it is
exported as model_ema.pt, which loads like model.pt and `feed-fast eval` reads; it lives in last.pt and
resumes exactly (2 epochs == 1 + resume + 1, also after a signal mid-epoch)."""
from __future__ import annotations

import json
import signal

import pytest
import torch
from _recipe import CLASSES, TINY, assert_same_tensors, load, run_config, save_teacher, signal_after_step

from feed_fast.cli import main
from feed_fast.config import ConfigError, EMAConfig, RunConfig
from feed_fast.engine import load_student, resume, train
from feed_fast.engine.api import run_files_in
from feed_fast.engine.ema import StudentEMA
from feed_fast.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def test_the_average_follows_its_rule_with_batchnorm_statistics_and_integer_buffers():
    """Against float64 arithmetic: steps 1-2 are warm-up (copies), then one update every 2 optimizer steps,
    ema = d * ema + (1 - d) * w for parameters and BatchNorm's running mean/var; num_batches_tracked copied."""
    torch.manual_seed(0)
    student = build_model("resnet8", CLASSES, **TINY)
    ema = StudentEMA(student, EMAConfig(enabled=True, decay=0.75, every=2, warmup_steps=2))
    tensors = lambda m: dict(m.named_parameters()) | dict(m.named_buffers())
    expected = {k: v.detach().double().clone() for k, v in tensors(student).items()}
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training
    for step in range(1, 9):
        with torch.no_grad():  # the optimizer and the forward move weights and statistics
            for name, value in tensors(student).items():
                if value.is_floating_point():
                    value.add_(torch.randn_like(value) * 0.1)
                else:
                    value.add_(3)
        ema.after_optimizer_step()
        if step % 2 == 0:
            for name, value in tensors(student).items():
                now = value.detach().double()
                copy = step <= 2 or not value.is_floating_point()
                expected[name] = now.clone() if copy else 0.75 * expected[name] + 0.25 * now
        for name, value in tensors(ema.model).items():
            torch.testing.assert_close(value.double(), expected[name], rtol=1e-6, atol=1e-6, msg=f"{name} @ {step}")
    assert ema.steps == 8
    mean = next(k for k, _ in student.named_buffers() if k.endswith("running_mean"))
    assert not torch.equal(dict(ema.model.named_buffers())[mean], dict(student.named_buffers())[mean])  # averaged


def test_the_config_refuses_a_decay_outside_0_1_and_is_off_by_default():
    assert RunConfig.from_dict(run_config("baseline")).train.ema == EMAConfig(enabled=False)
    for key, bad, message in (("decay", 1.0, "must be < 1"), ("decay", -0.5, "must be >= 0"),
                              ("every", 0, "must be >= 1"), ("warmup_steps", -1, "must be >= 0"),
                              ("enabled", "yes", "must be bool")):
        with pytest.raises(ConfigError, match=f"train.ema.{key} {message}"):
            RunConfig.from_dict(run_config("baseline", ema={"enabled": True, key: bad}))


def test_decay_zero_is_the_raw_student_bit_for_bit_and_eval_reads_the_ema_export(tmp_path, teacher, capsys):
    summary = train(run_config("pfeed", [teacher], ema={"enabled": True, "decay": 0.0}), tmp_path)
    for record in summary["history"]:
        assert record["val_ema"] == record["val"]
    student, averaged = load(tmp_path / "model.pt"), load(tmp_path / "model_ema.pt")
    assert {k: v for k, v in averaged.items() if k != "state_dict"} == {
        k: v for k, v in student.items() if k != "state_dict"}  # the same export format and metadata
    assert_same_tensors(averaged["state_dict"], student["state_dict"], "EMA with decay 0")  # BN buffers included
    assert summary["export_ema"] == str(tmp_path / "model_ema.pt")
    assert summary["final_top1_ema"] == summary["final_top1"]


def test_ema_is_evaluated_beside_the_student_exported_and_best_follows_the_student(tmp_path, teacher, capsys):
    summary = train(run_config("pfeed", [teacher], epochs=3, ema={"enabled": True, "decay": 0.6, "warmup_steps": 3}),
                    tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert all({"val", "val_ema"} <= set(r) for r in records)
    assert records[-1]["val_ema"] != records[-1]["val"]  # a real average, not the student
    best_epoch = max(range(3), key=lambda e: (records[e]["val"]["top1"], -e))
    best = load(tmp_path / "best.pt")
    assert best["epoch"] == best_epoch + 1  # best.pt: the raw student's best epoch, its EMA with it
    assert best["ema"]["steps"] == (best_epoch + 1) * 10
    assert "model_ema.pt" in run_files_in(tmp_path)  # a run's file: --overwrite removes it, a new run is refused
    assert summary["best_top1"] == records[best_epoch]["val"]["top1"]

    # model_ema.pt loads strictly into the plain model, and `feed-fast eval` reproduces val_ema
    averaged = load_student(tmp_path / "model_ema.pt")
    plain = build_model("resnet8", CLASSES, **TINY)
    plain.load_state_dict(averaged.state_dict())
    last = load(tmp_path / "last.pt")
    assert_same_tensors(last["ema"]["state_dict"], load(tmp_path / "model_ema.pt")["state_dict"], "last.pt's EMA")
    assert last["ema"]["steps"] == 3 * 10
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "model_ema.pt"), "--data", "", "--batch-size", "16"]) == 0
    top1 = float(capsys.readouterr().out.split()[1])
    assert top1 == pytest.approx(records[-1]["val_ema"]["top1"], abs=0.005)


def test_without_ema_nothing_of_it_is_written(tmp_path):
    summary = train(run_config("baseline", epochs=1, max_steps_per_epoch=2), tmp_path)
    assert not (tmp_path / "model_ema.pt").exists() and "ema" not in load(tmp_path / "last.pt")
    assert "val_ema" not in summary["history"][0] and summary["export_ema"] is None


def test_two_epochs_equal_one_plus_resume_plus_one_ema_included(tmp_path, teacher):
    cfg = run_config("pfeed", [teacher], ema={"enabled": True, "decay": 0.7, "every": 3, "warmup_steps": 2})
    straight = train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "split", max_epochs=1)
    resumed = resume(tmp_path / "split")
    a, b = load(tmp_path / "straight" / "last.pt"), load(tmp_path / "split" / "last.pt")
    assert a["ema"]["steps"] == b["ema"]["steps"] == 20
    assert_same_tensors(a["ema"]["state_dict"], b["ema"]["state_dict"], "EMA")
    assert_same_tensors(a["student"], b["student"], "student")
    assert_same_tensors(load(tmp_path / "straight" / "model_ema.pt")["state_dict"],
                        load(tmp_path / "split" / "model_ema.pt")["state_dict"], "model_ema.pt")
    assert [(r["loss"], r["val"], r["val_ema"]) for r in straight["history"]] == [
        (r["loss"], r["val"], r["val_ema"]) for r in resumed["history"]]


def test_a_signal_mid_epoch_keeps_the_ema_exact(tmp_path, teacher):
    cfg = run_config("pfeed", [teacher], ema={"enabled": True, "decay": 0.8})
    train(cfg, tmp_path / "straight")
    with signal_after_step(4, signal.SIGTERM):
        assert train(cfg, tmp_path / "split")["interrupted"]
    assert load(tmp_path / "split" / "last.pt")["ema"]["steps"] == 4
    resume(tmp_path / "split")
    assert_same_tensors(load(tmp_path / "straight" / "model_ema.pt")["state_dict"],
                        load(tmp_path / "split" / "model_ema.pt")["state_dict"], "model_ema.pt")


def test_resuming_a_run_without_ema_starts_the_average_from_the_resumed_student(tmp_path, capsys):
    cfg = run_config("baseline", epochs=2, max_steps_per_epoch=2)
    train(cfg, tmp_path, max_epochs=1)
    recorded = tmp_path / "config.yaml"
    recorded.write_text(recorded.read_text().replace("enabled: false", "enabled: true"))
    capsys.readouterr()
    resume(tmp_path)
    assert "holds no EMA (written with train.ema.enabled=false); the average starts from the resumed student" in (
        capsys.readouterr().err)
    assert load(tmp_path / "last.pt")["ema"]["steps"] == 4 and (tmp_path / "model_ema.pt").exists()


def test_an_ema_of_another_model_in_last_pt_is_refused_in_one_line(tmp_path):
    cfg = run_config("baseline", epochs=2, max_steps_per_epoch=2, ema={"enabled": True})
    train(cfg, tmp_path, max_epochs=1)
    last = load(tmp_path / "last.pt")
    last["ema"]["state_dict"] = {k: v for k, v in last["ema"]["state_dict"].items() if "fc" not in k}
    torch.save(last, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"last.pt' does not fit this run's EMA student \(resnet8\): \d+ missing"):
        resume(tmp_path)


def test_shipped_configs_carry_the_recipe_switches():
    """ImageNet ResNet-18 configs: torchvision's recipe (label smoothing 0.1, an EMA); CIFAR ones: FT's (neither)."""
    from pathlib import Path

    from feed_fast.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    imagenet = sorted(root.glob("imagenet_resnet18*.yaml"))
    assert len(imagenet) >= 3
    for path in imagenet:
        train_section = load_config(path, check_paths=False).train
        assert train_section.label_smoothing == 0.1 and train_section.ema.enabled, path.name
        assert train_section.accumulate == 1, path.name
    for path in sorted(root.glob("cifar100_*.yaml")):
        train_section = load_config(path, check_paths=False).train
        assert train_section.label_smoothing == 0.0 and not train_section.ema.enabled, path.name
