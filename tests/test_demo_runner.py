"""The demo's wiring, without training: CLI arguments, settings checks, the engine configs it writes, the
ensemble model and the throughput it reports."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from feed_fast.cli import build_parser
from feed_fast.demo.cli import settings_from_args
from feed_fast.demo.ensemble import SoftmaxEnsemble
from feed_fast.demo.plan import student_plan
from feed_fast.demo.results import BASELINE, FT, KD, PFEED
from feed_fast.demo.runner import check_configs, engine_config, student_config, training_rate
from feed_fast.demo.settings import DEFAULT_BETA_SWEEP, DemoSettings, equivalent_command
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

    for settings in (
        DemoSettings(seeds=3, lr=0.02, student_kwargs={"widths": [8, 16, 32]}, out=tmp_path / "a run",
                     extra={"train.log_every": "5"}),
        DemoSettings(compare=("kd", "ft", "pfeed"), beta_sweep=(0.25, 50, 1500)),
        DemoSettings(compare=("ft",), beta=100.0),
        DemoSettings(compare=()),
    ):
        command = equivalent_command(settings)
        assert command.startswith("feed-fast demo ") and "#" not in command
        again = settings_from_args(build_parser().parse_args(shlex.split(command)[1:]))
        assert again.to_dict() == settings.to_dict(), command
    assert equivalent_command(DemoSettings(compare=("pfeed", "kd", "ft"))) == "feed-fast demo --compare all"
    assert equivalent_command(DemoSettings()) == "feed-fast demo"
    assert "weight_decay=0.0001" in equivalent_command(DemoSettings(weight_decay=1e-4))


@pytest.mark.parametrize("argv", [["demo", "--seeds", "0"], ["demo", "--student-kwargs", "[8, 16]"],
                                  ["demo", "--epochs", "two"], ["demo", "--device", "tpu"],
                                  ["demo", "--set", "no-equals-sign"], ["demo", "--compare", "kd,fitnet"],
                                  ["demo", "--beta-sweep", "0,500"], ["demo", "--beta-sweep", "50,lots"],
                                  ["demo", "--beta-sweep", ","]])
def test_bad_command_lines_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert argv[1] in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, name", [({"epochs": 0}, "epochs"), ({"val_fraction": 1.0}, "val_fraction"),
                                          ({"device": "gpu"}, "device"), ({"lr": -1.0}, "lr"),
                                          ({"compare": ("kd", "crd")}, "compare"),
                                          ({"beta_sweep": (50.0, -1.0)}, "beta_sweep"),
                                          ({"beta_sweep": (float("nan"),)}, "beta_sweep"),
                                          ({"extra": {"method.beta": "5"}}, "method.beta"),
                                          ({"extra": {"teachers": "[]"}}, "teachers")])
def test_bad_settings_name_the_setting(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DemoSettings(**kwargs)


def test_engine_configs_are_valid_engine_configs(tmp_path):
    """What the demo hands to `feed_fast.engine.train` passes the engine's own validation."""
    settings = DemoSettings(epochs=3, extra={"train.log_every": "7"})
    checkpoint = tmp_path / "student.pt"
    checkpoint.write_bytes(b"")
    teachers = [{"name": "resnet20", "checkpoint": str(checkpoint), "kwargs": {}}] * 3
    pfeed = RunConfig.from_dict(engine_config(settings, tmp_path, model="resnet8", model_kwargs={}, seed=1, epochs=3,
                                              method="pfeed", teachers=teachers, beta=250.0))
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


def test_compare_and_sweep_flags_parse_into_settings():
    parse = build_parser().parse_args
    assert settings_from_args(parse(["demo"])).compare == ("pfeed",)
    assert settings_from_args(parse(["demo", "--compare", "all"])).compare == ("kd", "ft", "pfeed")
    assert settings_from_args(parse(["demo", "--compare", "pfeed, kd"])).compare == ("kd", "pfeed")
    assert settings_from_args(parse(["demo", "--compare", "none"])).compare == ()
    assert settings_from_args(parse(["demo", "--beta-sweep"])).beta_sweep == DEFAULT_BETA_SWEEP
    assert settings_from_args(parse(["demo", "--beta-sweep", "500,20,20"])).beta_sweep == (20.0, 500.0)
    assert settings_from_args(parse(["demo"])).beta_sweep == ()


def rows_of(settings):
    return [(s.role, s.method, s.num_teachers, s.beta, s.folder) for s in student_plan(settings)]


def test_plan_default_is_the_baseline_and_pfeed():
    assert rows_of(DemoSettings()) == [(BASELINE, "baseline", 0, None, "baseline"), (PFEED, "pfeed", 3, 500.0, "pfeed")]


def test_plan_all_rows_share_the_budget_and_differ_in_method_teachers_and_beta():
    settings = DemoSettings(compare=("kd", "ft", "pfeed"), num_teachers=4, beta=200.0)
    assert rows_of(settings) == [(BASELINE, "baseline", 0, None, "baseline"), (KD, "kd", 4, None, "kd"),
                                 (FT, "pfeed", 1, 200.0, "ft"), (PFEED, "pfeed", 4, 200.0, "pfeed")]
    labels = [s.label for s in student_plan(settings)]
    assert len(set(labels)) == 4 and "K=4, β=200" in labels[-1] and "teacher 1" in labels[2]


def test_plan_sweep_trains_one_pfeed_row_per_beta():
    settings = DemoSettings(compare=("ft",), beta_sweep=(50.0, 500.0))
    assert rows_of(settings) == [(BASELINE, "baseline", 0, None, "baseline"), (FT, "pfeed", 1, 500.0, "ft"),
                                 (PFEED, "pfeed", 3, 50.0, "pfeed-beta50"), (PFEED, "pfeed", 3, 500.0, "pfeed-beta500")]
    assert rows_of(DemoSettings(compare=()))[1:] == []


def test_student_configs_give_each_row_its_teachers_and_beta(tmp_path):
    settings = DemoSettings(compare=("kd", "ft", "pfeed"), beta_sweep=(50.0, 500.0), epochs=2)
    checkpoints = []
    for k in range(3):
        (tmp_path / f"t{k}.pt").write_bytes(b"")
        checkpoints.append({"name": "resnet20", "checkpoint": str(tmp_path / f"t{k}.pt"), "kwargs": {}})
    configs = {spec.folder: RunConfig.from_dict(student_config(settings, tmp_path, spec, checkpoints, seed=4))
               for spec in student_plan(settings)}
    assert [len(c.teachers) for c in configs.values()] == [0, 3, 1, 3, 3]
    assert configs["ft"].teachers[0].checkpoint == str(tmp_path / "t0.pt")
    assert configs["kd"].method.name == "kd" and configs["ft"].method.name == "pfeed"
    assert [configs[f].method.beta for f in ("ft", "pfeed-beta50", "pfeed-beta500")] == [500.0, 50.0, 500.0]
    for config in configs.values():  # the same budget and seed for every row
        for key in ("data", "optim", "schedule", "train", "model"):
            assert getattr(config, key) == getattr(configs["baseline"], key), key
    assert configs["baseline"].train.seed == 4 and configs["baseline"].schedule.epochs == 2


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
    ({"compare": ("kd",), "extra": {"method.kd.temperature": "-1"}}, "temperature"),  # the KD row's config is checked
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
    code = main(["demo", "--set", "method.beta=5", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c")])
    assert code == 2 and "method.beta is set per row" in capsys.readouterr().err


def test_the_readme_demo_commands_parse():
    """Every `feed-fast demo` line in docs/demo.md (the README's demo page) is a valid command line with valid
    settings."""
    import shlex
    from pathlib import Path

    section = (Path(__file__).resolve().parents[1] / "docs" / "demo.md").read_text()
    commands = [line.split("#")[0].strip() for line in section.splitlines() if line.startswith("feed-fast demo")]
    assert len(commands) >= 5
    for command in commands:
        settings_from_args(build_parser().parse_args(shlex.split(command)[1:]))


def test_a_folder_holding_a_demo_run_is_refused_before_any_work(tmp_path, capsys):
    from feed_fast.cli import main

    run = tmp_path / "run"
    (run / "teachers").mkdir(parents=True)
    code = main(["demo", "--out", str(run), "--cache", str(tmp_path / "c")])
    assert code == 2
    err = capsys.readouterr().err
    assert "already holds a demo run (teachers)" in err and "another --out" in err
    assert not (tmp_path / "c").exists()  # nothing was built
