"""`feed-fast train` / `feed-fast eval`: a run from a YAML file with --set overrides, clear config errors with
exit code 2 before any work, evaluation of an export, and a real SIGINT to a training process followed by
`--resume`."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from feed_fast.cli import main

TINY_RUN = {
    "model": {"name": "resnet8", "kwargs": {"widths": [4, 8, 16]}},
    "method": {"name": "baseline"},
    "data": {"dataset": "synthetic", "root": "", "num_classes": 5, "batch_size": 16, "eval_batch_size": 32,
             "image_size": 16},
    "schedule": {"name": "cosine", "epochs": 2, "milestones": []},
    "optim": {"lr": 0.05},
    "train": {"device": "cpu", "progress": "lines", "log_every": 5},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_RUN))
    return path


def test_train_then_eval(tmp_path, config_file, capsys):
    out = tmp_path / "run"
    assert main(["train", str(config_file), "--out", str(out), "--set", "optim.lr=0.02",
                 "--set", "train.max_steps_per_epoch=4"]) == 0
    printed = capsys.readouterr()
    assert "done; best top-1" in printed.out
    assert "epoch 1 step 4/4" in printed.err  # plain progress lines when stderr is not a TTY
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["optim"]["lr"] == 0.02 and resolved["train"]["max_steps_per_epoch"] == 4
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

    # the export records the dataset (synthetic here); with the run's eval batch size it sees the run's val set
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--data", "unused", "--batch-size", "32"]) == 0
    line = capsys.readouterr().out
    final_top1 = json.loads((out / "summary.json").read_text())["final_top1"]
    assert line.startswith(f"top1 {final_top1:.2f} ") and "(320 images, resnet8)" in line


@pytest.mark.parametrize(("argv_tail", "message"), [
    (["--set", "optim.lr=fast"], "optim.lr must be float"),
    (["--set", "model.name=resnet57"], "unknown model 'resnet57'"),
    (["--set", "data.dataset=cifar100", "--set", "data.num_classes=null", "--set", "data.root=/no/such/dir"],
     "data.root '/no/such/dir' does not exist"),
    (["--set", "data.dataset=cifar100"], "data.num_classes is for data.dataset=synthetic only"),
    (["--set", "method.nme=kd"], "unknown key 'method.nme'"),
])
def test_config_errors_exit_2_before_any_work(tmp_path, config_file, capsys, argv_tail, message):
    out = tmp_path / "run"
    assert main(["train", str(config_file), "--out", str(out), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert err.startswith("feed-fast train: error:") and message in err
    assert not out.exists()  # nothing was started


def test_cli_argument_errors(tmp_path, config_file, capsys):
    assert main(["train"]) == 2
    assert "give a CONFIG file" in capsys.readouterr().err
    assert main(["train", str(config_file), "--resume", str(tmp_path)]) == 2
    assert "--resume RUN_DIR takes no CONFIG" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a feed-fast run directory" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_describes_each_command_in_whole_sentences(capsys):
    described = {}
    for command in ("train", "eval"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        described[command] = " ".join(capsys.readouterr().out.split())
    assert ("or continue a stopped run with --resume RUN_DIR (--set may change what a resume allows, e.g. "
            "data.root). With --auto-resume the same command starts the run and continues it after every stop"
            in described["train"])
    assert "exits 128 + the signal's number (130, 143, 138)." in described["train"]
    assert "at the same image size as in training unless told otherwise." in described["eval"]


def test_sigint_finishes_the_step_writes_last_pt_and_resume_completes(tmp_path, config_file):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "feed_fast.cli", "train", str(config_file), "--out", str(out),
         "--set", "schedule.epochs=50", "--set", "train.log_every=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stderr:  # wait until training is under way
            if " step " in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopped by SIGINT" in err and f"--resume {out}" in err
    last = torch.load(out / "last.pt", weights_only=True)
    stopped_at = last["epoch"] * 10 + last["next_batch"]
    assert 0 < stopped_at < 500
    assert not (out / "model.pt").exists()
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]

    # `--resume` takes the recorded config and finishes the run
    assert main(["train", "--resume", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(50))  # the interrupted epoch completed, none repeated
    assert (out / "model.pt").exists()
