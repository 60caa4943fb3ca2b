"""Setting teachers as a user does (issue #17 item 2): `--set teachers.N.checkpoint=FILE` over a config entry that
names weights replaces them (and the reverse), both in one entry stays an error with a hint; `--set teachers.N.*`
with N the current count adds a teacher; `--teacher NAME=SOURCE` (repeatable) sets the whole list, telling a file
from a weights name; a method that uses no teachers (baseline) says so and records none; runs export model.pt,
and an earlier release's student.pt is still read wherever a checkpoint is (a teacher, `feed-fast eval`, a
finished sFEED generation). The commands users type run as subprocesses; the rules behind them in process."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from _recipe import TINY, run_config, save_teacher

from feed_fast.cli import main
from feed_fast.config import ConfigError, RunConfig
from feed_fast.config.teachers import teacher_flags_override, teacher_source
from feed_fast.engine import resume, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WEIGHTS = "ResNet18_Weights.IMAGENET1K_V1"  # torchvision's: checked by name, never downloaded here


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    return save_teacher(tmp_path_factory.mktemp("teacher") / "model.pt")


def config(*teachers: dict, method: str = "pfeed") -> dict:
    raw = run_config(method, epochs=1, max_steps_per_epoch=2)
    raw["teachers"] = list(teachers)
    return raw


def feed_fast(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "feed_fast.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


# --- --set on a teacher's source ------------------------------------------------------------------------------
def test_a_checkpoint_set_over_a_config_naming_weights_replaces_them_and_the_reverse(teacher):
    cfg = RunConfig.from_dict(config({"name": "resnet18", "weights": WEIGHTS}),
                              [f"teachers.0.checkpoint={teacher}"])
    assert (cfg.teachers[0].checkpoint, cfg.teachers[0].weights) == (teacher, None)
    cfg = RunConfig.from_dict(config({"name": "resnet18", "checkpoint": teacher}), [f"teachers.0.weights={WEIGHTS}"])
    assert (cfg.teachers[0].checkpoint, cfg.teachers[0].weights) == (None, WEIGHTS)


@pytest.mark.parametrize("given", ["config", "set"])
def test_both_sources_in_one_entry_stay_an_error_with_a_hint(teacher, given):
    both = {"name": "resnet18", "weights": WEIGHTS, "checkpoint": teacher}
    raw, overrides = ((config(both), []) if given == "config" else
                      (config({"name": "resnet18"}), [f"teachers.0.checkpoint={teacher}", f"teachers.0.weights={WEIGHTS}"]))
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(raw, overrides)
    assert str(err.value) == (
        f"teachers.0 (resnet18): give checkpoint or weights, not both (checkpoint {teacher!r}, weights {WEIGHTS!r}): "
        "remove one of them (a `--set teachers.0.checkpoint=FILE` alone over a config entry that names weights "
        "replaces them, and the reverse)")


def test_the_index_after_the_last_teacher_adds_one(teacher):
    one = {"name": "resnet8", "checkpoint": teacher, "kwargs": TINY}
    cfg = RunConfig.from_dict(config(one), ["teachers.1.name=resnet8", f"teachers.1.checkpoint={teacher}",
                                            "teachers.1.kwargs={widths: [4, 8, 16]}"])
    assert [t.checkpoint for t in cfg.teachers] == [teacher, teacher] and cfg.teachers[1].kwargs == TINY
    # a config without teachers gets its first one the same way
    raw = config()
    del raw["teachers"]
    cfg = RunConfig.from_dict(raw, ["teachers.0.name=resnet8", f"teachers.0.checkpoint={teacher}"])
    assert [(t.name, t.checkpoint) for t in cfg.teachers] == [("resnet8", teacher)]


@pytest.mark.parametrize(("overrides", "message"), [
    (["teachers.1.checkpoint={teacher}"], "teachers.1.name is missing (a model name such as resnet56 or resnet34)"),
    (["teachers.1.name=resnet8"], "teachers.1 (resnet8) needs a checkpoint (local file) or weights"),
    (["teachers.2.name=resnet8"], ("--set 'teachers.2.name=resnet8': teachers has 1 entries, got index '2' (index 1 "
                                  "adds one)")),
])
def test_a_teacher_added_incomplete_or_past_the_end_is_refused_naming_what_it_needs(teacher, overrides, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        RunConfig.from_dict(config({"name": "resnet8", "checkpoint": teacher}),
                            [text.format(teacher=teacher) for text in overrides])


def test_a_missing_teacher_checkpoint_says_where_one_comes_from(tmp_path):
    missing = tmp_path / "runs" / "seed1" / "model.pt"
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(config({"name": "resnet8", "checkpoint": str(missing), "kwargs": TINY}))
    assert str(err.value) == (
        f"teachers.0.checkpoint {str(missing)!r} does not exist: a teacher's checkpoint is a local file, a finished "
        "run's model.pt (train the teacher first: the shipped configs say how in their header) or a "
        "torchvision/timm state dict; --teacher resnet8=FILE points at another")


def test_a_missing_model_pt_beside_an_earlier_student_pt_says_so(tmp_path, teacher):
    old = tmp_path / "student.pt"
    shutil.copy(teacher, old)
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(config({"name": "resnet8", "checkpoint": str(tmp_path / "model.pt"), "kwargs": TINY}))
    assert str(err.value) == (f"teachers.0.checkpoint {str(tmp_path / 'model.pt')!r} does not exist (but {str(old)!r} "
                              "does: a run's export was student.pt before feed-fast named it model.pt; either loads)")


# --- --teacher NAME=SOURCE ------------------------------------------------------------------------------------
def test_teacher_flags_tell_a_file_from_a_weights_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher_ckpt").write_bytes(b"")  # a file here, without a suffix
    assert [teacher_source(v) for v in ("teacher_ckpt", "runs/r34/model.pt", "r34.pth", "missing.pt",
                                        WEIGHTS, "DEFAULT", "pretrained")] == ["checkpoint"] * 4 + ["weights"] * 3
    override = teacher_flags_override([f"resnet18={WEIGHTS}", "timm/resnet34.a1_in1k=pretrained", "resnet8=a/b.pt"])
    assert yaml.safe_load(override.split("=", 1)[1]) == [
        {"name": "resnet18", "weights": WEIGHTS}, {"name": "timm/resnet34.a1_in1k", "weights": "pretrained"},
        {"name": "resnet8", "checkpoint": "a/b.pt"}]
    with pytest.raises(ConfigError, match=r"^--teacher expects NAME=CHECKPOINT_OR_WEIGHTS \(e\.g\. resnet34="):
        teacher_flags_override(["resnet34"])


def test_teacher_flags_set_the_whole_list_of_a_run(tmp_path, teacher):
    """`feed-fast train CONFIG --teacher ... --teacher ...` replaces the config's teachers (whose checkpoint does not
    even exist here); a --set after them completes an entry. The run distils from both and records them."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config({"name": "resnet56", "checkpoint": "runs/absent/model.pt"})))
    out = tmp_path / "run"
    proc = feed_fast("train", path, "--out", out, "--teacher", f"resnet8={teacher}", "--teacher", f"resnet8={teacher}",
                     "--set", "teachers.0.kwargs={widths: [4, 8, 16]}", "--set", "teachers.1.kwargs={widths: [4, 8, 16]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = yaml.safe_load((out / "config.yaml").read_text())["teachers"]
    assert [(t["name"], t["checkpoint"], t["weights"], t["kwargs"]) for t in recorded] == [("resnet8", teacher, None,
                                                                                           TINY)] * 2
    assert len(json.loads((out / "summary.json").read_text())["teacher_check"]["teachers"]) == 2
    assert (out / "model.pt").is_file() and not (out / "student.pt").exists()


# --- a method without teachers --------------------------------------------------------------------------------
def test_baseline_says_its_teachers_are_ignored_and_records_none(tmp_path, capsys):
    """The config's teachers (a checkpoint that is not even there) are left out, in one line; --auto-resume with the
    same command then finds the recorded run the same."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config({"name": "resnet56", "checkpoint": "runs/absent/model.pt"},
                                          method="baseline")))
    out = tmp_path / "run"
    proc = feed_fast("train", path, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[0] == ("feed-fast train: method baseline uses no teachers: the 1 configured "
                                           "(resnet56) are ignored and left out of the run's config.yaml")
    assert yaml.safe_load((out / "config.yaml").read_text())["teachers"] == []
    assert not (out / "teachers.json").exists()
    capsys.readouterr()
    assert main(["train", str(path), "--out", str(out), "--auto-resume"]) == 0  # nothing left to train


# --- the export's name ----------------------------------------------------------------------------------------
def test_an_earlier_student_pt_is_read_as_a_teacher_by_eval_and_as_a_finished_sfeed_generation(tmp_path, capsys):
    raw = run_config("sfeed", epochs=1, max_steps_per_epoch=2)
    raw["method"]["generations"] = 2
    run = tmp_path / "run"
    train(raw, run)
    assert {p.name for p in (run / "gen1").iterdir()} >= {"model.pt", "last.pt"}
    # as an earlier release left it: gen1 finished with student.pt, gen2 to train again
    os.rename(run / "gen1" / "model.pt", run / "gen1" / "student.pt")
    shutil.rmtree(run / "gen2")
    (run / "summary.json").unlink()
    done = resume(run)
    assert done["generations"][0]["export"] == str(run / "gen1" / "student.pt")
    assert [r["epoch"] for r in done["history"]] == [0] and (run / "gen2" / "model.pt").is_file()

    old = run / "gen1" / "student.pt"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(old), "--data", "", "--batch-size", "16"]) == 0
    assert capsys.readouterr().out.startswith("top1 ")
    cfg = RunConfig.from_dict(config({"name": "resnet8", "checkpoint": str(old), "kwargs": TINY}))
    assert train(cfg, tmp_path / "distilled")["teacher_check"]["teachers"][0]["source"] == str(old)


def test_zoo_weights_that_cannot_be_downloaded_are_one_line_naming_the_cache(tmp_path, monkeypatch, capsys):
    """No network and nothing in torch's cache: the run stops before any work, in one line naming the teacher,
    the weights and the folder to copy the file into (not urllib's traceback)."""
    import socket
    import urllib.error

    import torch

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    raw = run_config(method="kd")
    raw["teachers"] = [{"name": "resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"}]
    raw["data"] = {**raw["data"], "dataset": "synthetic", "num_classes": 1000}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [(f"feed-fast train: error: teachers.0 (resnet18): could not load torchvision's weights "
                   f"'ResNet18_Weights.IMAGENET1K_V1' for 'resnet18' ([Errno -2] Name or service not known). "
                   f"torchvision reads them from {tmp_path / 'hub' / 'checkpoints'} (TORCH_HOME); they are "
                   "downloaded on first use: fill the cache on a machine with network access, or give a checkpoint "
                   "file instead")]
