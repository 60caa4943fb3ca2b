"""The demo's wiring, without training: CLI arguments, settings checks, the engine configs it writes, the
ensemble model and the throughput it reports."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from feed_fast.cli import build_parser
from feed_fast.demo.cli import settings_from_args
from feed_fast.demo.ensemble import SoftmaxEnsemble
from feed_fast.demo.runner import check_configs, engine_config, training_rate
from feed_fast.demo.settings import DemoSettings, equivalent_command
from feed_fast.engine import ConfigError, RunConfig


def test_demo_command_parses_into_settings(tmp_path):
    args = build_parser().parse_args(["demo", "--seeds", "3", "--epochs", "4", "--teacher-epochs", "6",
                                      "--out", str(tmp_path / "run"), "--set", "train.log_every=5"])
    assert args.func.__name__ == "run_command"
    settings = settings_from_args(args)
    assert settings.student_seeds == [0, 1, 2] and settings.epochs == 4 and settings.epochs_for_teachers == 6
    assert len(set(settings.teacher_seeds)) == 3 and not set(settings.teacher_seeds) & set(settings.student_seeds)
    assert settings.out == tmp_path / "run" and settings.extra == {"train.log_every": "5"}


def test_the_report_command_reproduces_the_settings(tmp_path):
    import shlex

    settings = DemoSettings(seeds=3, lr=0.02, student_kwargs={"widths": [8, 16, 32]}, out=tmp_path / "a run",
                            extra={"train.log_every": "5"})
    command = equivalent_command(settings)
    assert command.startswith("feed-fast demo ") and "#" not in command
    again = settings_from_args(build_parser().parse_args(shlex.split(command)[1:]))
    assert again.to_dict() == settings.to_dict()
    assert equivalent_command(DemoSettings()) == "feed-fast demo"
    assert "weight_decay=0.0001" in equivalent_command(DemoSettings(weight_decay=1e-4))


@pytest.mark.parametrize("argv", [["demo", "--seeds", "0"], ["demo", "--student-kwargs", "[8, 16]"], ["demo", "--epochs", "two"], ["demo", "--device", "tpu"],
                                  ["demo", "--set", "no-equals-sign"]])
def test_bad_command_lines_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert argv[1] in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, name", [({"epochs": 0}, "epochs"), ({"val_fraction": 1.0}, "val_fraction"),
                                          ({"device": "gpu"}, "device"), ({"lr": -1.0}, "lr")])
def test_bad_settings_name_the_setting(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DemoSettings(**kwargs)


def test_engine_configs_are_valid_engine_configs(tmp_path):
    """What the demo hands to `feed_fast.engine.train` passes the engine's own validation."""
    settings = DemoSettings(epochs=3, beta=250.0, extra={"train.log_every": "7"})
    checkpoint = tmp_path / "student.pt"
    checkpoint.write_bytes(b"")
    teachers = [{"name": "resnet20", "checkpoint": str(checkpoint), "kwargs": {}}] * 3
    pfeed = RunConfig.from_dict(engine_config(settings, tmp_path, model="resnet8", model_kwargs={}, seed=1, epochs=3,
                                              method="pfeed", teachers=teachers))
    assert pfeed.method.name == "pfeed" and pfeed.method.beta == 250.0 and len(pfeed.teachers) == 3
    assert pfeed.data.dataset == "imagefolder" and pfeed.data.root == str(tmp_path)
    assert pfeed.schedule.epochs == 3 and pfeed.train.seed == 1 and pfeed.train.log_every == 7
    baseline = RunConfig.from_dict(engine_config(settings, tmp_path, model="resnet8",
                                                 model_kwargs={"widths": [8, 16, 32]}, seed=1, epochs=3,
                                                 method="baseline"))
    # Apart from the method and its teachers, the two students' runs are configured identically.
    for key in ("data", "optim", "schedule", "train"):
        assert getattr(baseline, key) == getattr(pfeed, key), key
    assert baseline.model.kwargs == {"widths": [8, 16, 32]}


def test_an_unknown_override_is_the_engines_config_error(tmp_path):
    settings = DemoSettings(extra={"train.no_such_key": "1"})
    with pytest.raises(ConfigError, match="no_such_key"):
        RunConfig.from_dict(engine_config(settings, tmp_path, model="resnet8", model_kwargs={}, seed=0, epochs=1,
                                          method="baseline"))


def test_training_rate_is_total_images_over_total_time():
    # 100 images at 100/s (1 s) and 100 images at 50/s (2 s): 200 images in 3 s.
    assert training_rate([{"images_per_sec": 100.0}, {"images_per_sec": 50.0}]) == pytest.approx(200 / 3)


def test_softmax_ensemble_predicts_the_mean_probability():
    torch.manual_seed(0)
    members = [nn.Linear(6, 4) for _ in range(3)]
    x = torch.randn(32, 6)
    out = SoftmaxEnsemble(members)(x)
    mean = torch.stack([m(x).softmax(dim=1) for m in members]).mean(dim=0)
    torch.testing.assert_close(out.exp(), mean)
    assert torch.equal(out.argmax(dim=1), mean.argmax(dim=1))
    single = SoftmaxEnsemble(members[:1])(x)
    torch.testing.assert_close(single, members[0](x).log_softmax(dim=1))
    with pytest.raises(ValueError, match="at least one"):
        SoftmaxEnsemble([])


@pytest.mark.parametrize("kwargs, message", [
    ({"student_model": "resnet9"}, "resnet9"),
    ({"extra": {"optim.no_such_key": "1"}}, "no_such_key"),
    ({"student_model": "wrn_16_1", "teacher_model": "resnet20", "image_size": 24}, None),  # shapes fit: no error
    ({"student_kwargs": {"widths": [8, 16]}}, "spatial sizes must match"),  # 2 stages: a 16x16 map
    ({"student_kwargs": {"depth_typo": 3}}, "student-kwargs"),
    pytest.param({"device": "cuda"}, "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")),
])
def test_mistakes_fail_before_any_work(tmp_path, kwargs, message):
    """Bad models, bad overrides, bad model arguments: errors before the data is built or anything trains."""
    from feed_fast.demo.runner import run_demo

    settings = DemoSettings(out=tmp_path / "run", cache=tmp_path / "cache", **kwargs)
    if message is None:
        check_configs(settings)
        return
    with pytest.raises(ValueError, match=message):
        run_demo(settings, write=lambda _: None)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_command_reports_a_bad_model_and_exits_2(tmp_path, capsys):
    from feed_fast.cli import main

    code = main(["demo", "--student-model", "resnet9", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c")])
    assert code == 2
    assert "feed-fast demo: model.name: unknown model 'resnet9'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
