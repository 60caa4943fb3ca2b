"""The engine on the CPU with tiny models and the synthetic loader: every method trains and its loss falls,
the run directory holds what it should, the export has no translator keys and loads into the plain class,
resume is exact (2 epochs == 1 + resume + 1; and from the middle of an epoch after a real signal)."""
import json
import signal

import pytest
import torch
import yaml
from _recipe import signal_after_step
from feed_fast.loaders import build_loader

from feed_fast.engine import evaluate, load_student, resume, train
from feed_fast.engine.checkpoint import student_export
from feed_fast.models import build_model

TINY = {"widths": [4, 8, 16]}
TEACHER = {"widths": [4, 8, 32]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    """Two teacher checkpoints in the two accepted formats: a feed-fast export and a bare state dict."""
    root = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(11)
    a = build_model("resnet8", 5, **TEACHER)
    torch.save(student_export("resnet8", 5, TEACHER, a), root / "export.pt")
    b = build_model("resnet8", 5, **TEACHER)
    torch.save(b.state_dict(), root / "plain.pt")
    return [str(root / "export.pt"), str(root / "plain.pt")]


def tiny_config(method_name="pfeed", teachers=(), epochs=2, **sections):
    cfg = {
        "model": {"name": "resnet8", "kwargs": TINY},
        "teachers": [{"name": "resnet8", "checkpoint": path, "kwargs": TEACHER} for path in teachers],
        "method": {"name": method_name, "backend": "torch", "generations": 2},
        "data": {"dataset": "synthetic", "root": "", "num_classes": 5, "batch_size": 16, "eval_batch_size": 32,
                 "image_size": 16},
        "schedule": {"name": "cosine", "epochs": epochs, "milestones": []},
        "optim": {"lr": 0.05},
        "train": {"device": "cpu", "progress": "none", "log_every": 4},
    }
    for key, value in sections.items():
        cfg[key].update(value)
    return cfg


def params_of(path):
    return load_student(path).state_dict()


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(("method", "n_teachers", "expected_parts"), [
    ("baseline", 0, {"ce"}),
    ("kd", 2, {"ce", "kd"}),
    ("pfeed", 2, {"ce", "feed_0", "feed_1"}),
])
def test_each_method_trains_and_its_loss_falls(tmp_path, teacher_files, method, n_teachers, expected_parts):
    summary = train(tiny_config(method, teacher_files[:n_teachers], epochs=3), tmp_path)
    history = summary["history"]
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert set(history[0]["loss"]) == expected_parts | {"total"}
    assert history[-1]["loss"]["total"] < history[0]["loss"]["total"]
    assert history[-1]["loss"]["ce"] < history[0]["loss"]["ce"]
    if method == "pfeed":  # the translators learn: each FEED term falls
        assert history[-1]["loss"]["feed_0"] < history[0]["loss"]["feed_0"]
    for record in history:
        assert {"top1", "top5", "loss"} <= set(record["val"]) and 0 <= record["val"]["top1"] <= 100
        assert record["images_per_sec"] > 0 and 0 <= record["data_wait_fraction"] <= 1 and record["lr"] > 0
        assert set(record["step_ms"]) == {"data_wait", "teachers", "student_forward", "loss", "backward",
                                          "optimizer", "compiled_step"}
        assert record["step_ms"]["compiled_step"] == 0  # eager: the whole-step section is for train.compile=step
    assert (history[0]["step_ms"]["teachers"] > 0) == (n_teachers > 0)
    assert summary["best_top1"] == max(r["val"]["top1"] for r in history)
    assert summary["final_top1"] == history[-1]["val"]["top1"]
    assert summary["student_params"] == sum(p.numel() for p in build_model("resnet8", 5, **TINY).parameters())
    assert not summary["interrupted"]


def test_run_directory_and_student_export(tmp_path, teacher_files):
    summary = train(tiny_config("pfeed", teacher_files[:1]), tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "tensorboard", "last.pt", "best.pt", "model.pt", "summary.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert any((tmp_path / "tensorboard").iterdir())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert records == json.loads(json.dumps(summary["history"]))
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert resolved["method"]["beta"] == 500.0 and resolved["optim"]["momentum"] == 0.9  # defaults filled in

    export = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not [k for k in export["state_dict"] if "translator" in k or "feed" in k]
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert any("translators" in k for k in last["extras"])  # ...while last.pt keeps them for resume
    plain = build_model("resnet8", 5, **TINY)
    plain.load_state_dict(export["state_dict"])  # strict: exactly the plain model's keys
    val = build_loader("", "val", 32, dataset="synthetic", image_size=16, device="cpu", num_classes=5)
    assert evaluate(plain, val)["top1"] == pytest.approx(summary["final_top1"])


def test_two_epochs_equal_one_plus_resume_plus_one(tmp_path, teacher_files):
    cfg = tiny_config("pfeed", teacher_files, schedule={"name": "multistep", "milestones": [1], "gamma": 0.1})
    straight = train(cfg, tmp_path / "straight")
    first = train(cfg, tmp_path / "split", max_epochs=1)
    assert first["interrupted"] and len(first["history"]) == 1
    assert not (tmp_path / "split" / "model.pt").exists()
    resumed = resume(tmp_path / "split")
    assert not resumed["interrupted"]
    assert_same_params(params_of(tmp_path / "straight" / "model.pt"), params_of(tmp_path / "split" / "model.pt"))
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert_same_params(a["extras"], b["extras"])  # translators too
    for key in ("loss", "val", "lr"):
        assert [r[key] for r in straight["history"]] == [r[key] for r in resumed["history"]]


def test_signal_mid_epoch_writes_last_pt_and_resume_continues_at_next_batch(tmp_path, teacher_files):
    cfg = tiny_config("pfeed", teacher_files[:1])
    straight = train(cfg, tmp_path / "straight")

    with signal_after_step(13, signal.SIGTERM):  # epoch 1, batch 3 (10 batches per epoch)
        stopped = train(cfg, tmp_path / "split")
    assert stopped["interrupted"] and stopped["stopped_by"] == "SIGTERM"
    assert stopped["resume_at"] == {"epoch": 1, "batch": 3}
    last = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert (last["epoch"], last["next_batch"]) == (1, 3)
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    resumed = resume(tmp_path / "split")
    assert_same_params(params_of(tmp_path / "straight" / "model.pt"), params_of(tmp_path / "split" / "model.pt"))
    assert [r["loss"] for r in straight["history"]] == [r["loss"] for r in resumed["history"]]
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 2


def test_sfeed_trains_and_saves_every_generation_and_resumes_across_them(tmp_path):
    cfg = tiny_config("sfeed", epochs=1)
    summary = train(cfg, tmp_path / "straight")
    gens = summary["generations"]
    assert [g["generation"] for g in gens] == [0, 1]
    assert set(gens[0]["history"][0]["loss"]) == {"ce", "total"}  # generation 1: CE alone
    assert set(gens[1]["history"][0]["loss"]) == {"ce", "feed_0", "total"}  # then FEED from generation 1
    for g in (1, 2):
        assert load_student(tmp_path / "straight" / f"gen{g}" / "model.pt") is not None
        assert (tmp_path / "straight" / f"gen{g}" / "metrics.jsonl").exists()
    assert summary["export"].endswith("gen2/model.pt")

    with signal_after_step(14, signal.SIGINT):  # generation 2, batch 4
        first = train(cfg, tmp_path / "split")
    assert first["interrupted"] and first["stopped_by"] == "SIGINT" and len(first["generations"]) == 2
    assert (tmp_path / "split" / "gen1" / "model.pt").exists()
    assert not (tmp_path / "split" / "gen2" / "model.pt").exists()
    resumed = resume(tmp_path / "split")
    # generation 1 is not trained again: its recorded result is reused
    assert [(r["loss"], r["val"]) for r in resumed["generations"][0]["history"]] == [
        (r["loss"], r["val"]) for r in gens[0]["history"]]
    assert_same_params(params_of(tmp_path / "straight" / "gen2" / "model.pt"),
                       params_of(tmp_path / "split" / "gen2" / "model.pt"))


def test_pfeed_with_the_fused_backend_matches_the_torch_backend(tmp_path, teacher_files):
    # the fused Triton op runs in the interpreter on the CPU (tests/conftest.py): same training, same numbers
    runs = {}
    for backend in ("torch", "triton"):
        cfg = tiny_config("pfeed", teacher_files[:1], epochs=1, method={"backend": backend},
                          train={"max_steps_per_epoch": 2})
        cfg["data"]["batch_size"] = 4  # the interpreter runs every program of the grid in Python: keep it small
        runs[backend] = train(cfg, tmp_path / backend)["history"][0]["loss"]
    assert runs["torch"].keys() == runs["triton"].keys()
    for key in runs["torch"]:
        assert runs["triton"][key] == pytest.approx(runs["torch"][key], rel=1e-4), key


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_training_on_cuda_with_streams_autocast_and_channels_last(tmp_path, teacher_files, precision):
    cfg = tiny_config("pfeed", teacher_files, epochs=2, method={"backend": "auto", "kd": {"enabled": True}},
                      train={"device": "cuda", "precision": precision, "channels_last": "auto"})
    summary = train(cfg, tmp_path)
    history = summary["history"]
    assert history[-1]["loss"]["total"] < history[0]["loss"]["total"]
    assert all(torch.isfinite(v).all() for v in params_of(tmp_path / "model.pt").values())
    assert history[-1]["step_ms"]["teachers"] > 0


@pytest.mark.gpu
def test_resume_is_exact_on_cuda_in_deterministic_fp32(tmp_path, teacher_files):
    cfg = tiny_config("pfeed", teacher_files, method={"backend": "torch"},
                      train={"device": "cuda", "precision": "fp32", "deterministic": True, "channels_last": False})
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "split", max_epochs=1)
    resume(tmp_path / "split")
    assert_same_params(params_of(tmp_path / "straight" / "model.pt"), params_of(tmp_path / "split" / "model.pt"))


def test_adaptive_pooling_bridges_a_spatial_mismatch_when_asked(tmp_path, teacher_files):
    # a torchvision ResNet-18 teacher has a 1x1 map at 16 px, the tiny CIFAR student 4x4
    torch.manual_seed(0)
    torch.save(build_model("resnet18", 5).plain_module().state_dict(), tmp_path / "r18.pt")
    cfg = tiny_config("pfeed", epochs=1, train={"max_steps_per_epoch": 2})
    cfg["teachers"] = [{"name": "resnet18", "checkpoint": str(tmp_path / "r18.pt")}]
    with pytest.raises(ValueError, match=r"teacher 0 feature map is \(C, H, W\) = \(512, 1, 1\)"):
        train(cfg, tmp_path / "strict")
    cfg["method"]["feature_pool"] = "adaptive"
    summary = train(cfg, tmp_path / "pooled")
    assert "feed_0" in summary["history"][0]["loss"]


@pytest.mark.gpu
def test_training_with_torch_compile_on_cuda(tmp_path, teacher_files):
    cfg = tiny_config("pfeed", teacher_files[:1], epochs=1, train={"device": "cuda", "compile": True})
    summary = train(cfg, tmp_path)
    assert summary["history"][0]["loss"]["total"] > 0
    load_student(tmp_path / "model.pt")  # the export is the plain module, not the compiled wrapper
