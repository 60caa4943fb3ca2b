"""One command for the first start and every restart, as a cluster job runs it: `feed-fast train CONFIG --out DIR
--auto-resume` stopped by SIGUSR1 (SLURM's --signal=USR1@T) or by the config's own stop signal exits 128 + N
after writing last.pt at a step boundary, and the same command run again finishes with the parameters of an
uninterrupted run. A resume may change what leaves the steps taken unchanged (a moved data.root, more loader
threads, a longer multistep schedule) and refuses everything else in one line naming the key; the changes are
recorded in the run folder."""
from __future__ import annotations

import shutil
import signal

import pytest
import torch
import yaml
from _cluster import (
    Watched,
    assert_same,
    feed_fast_command,
    last_position,
    outcome,
    params,
    records,
    run,
    tiny_config,
)
from _loader_data import write_cifar
from _recipe import signal_after_step

from feed_fast.cli import main
from feed_fast.engine import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """(config file, uninterrupted run folder) of a 3-epoch run that also stops on SIGUSR2 (train.stop_signal),
    run in this process with one thread, as the subprocesses below run (OMP_NUM_THREADS=1)."""
    root = tmp_path_factory.mktemp("straight")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(stop_signal="SIGUSR2")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", str(config), "--out", str(root / "run"), "--auto-resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    return config, root / "run"


def one_line_error(capsys, *args) -> str:
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_sigusr1_then_the_same_command_again_finishes_as_uninterrupted(straight, tmp_path):
    """As SLURM's --signal=USR1@120 and a requeue do it, in separate processes."""
    config, done = straight
    out = tmp_path / "run"
    command = feed_fast_command("train", config, "--out", out, "--auto-resume")
    job = Watched(command)
    job.wait_for("feed-fast train: new run in")
    job.wait_for("epoch 2 step 2/10")
    job.proc.send_signal(signal.SIGUSR1)
    code, err = job.finish()
    assert code == 128 + signal.SIGUSR1, err[-3000:]  # 138
    assert "stopped by SIGUSR1 after step " in err and "Traceback" not in err
    assert "  batch      16 per process x accumulate 1 x 1 process = global batch 16 per optimizer step" in err
    epoch, step = last_position(out)
    assert epoch == 1 and 2 <= step < 10  # inside epoch 2, at an optimizer-step boundary

    again = run(command)  # the same command, as torchrun --max-restarts or a requeued job runs it
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing {out} from last.pt at epoch 2, after step {step} of 10" in again.stderr
    assert_same(params(done / "last.pt"), params(out / "last.pt"))
    assert [outcome(r) for r in records(out)] == [outcome(r) for r in records(done)]
    attempts = records(out, "attempts.jsonl")
    assert [a.get("started") or a.get("ended") for a in attempts] == [
        "new", "stopped by SIGUSR1", "continued", "finished"]
    assert attempts[2]["from"]["step"] == step


def test_the_configured_stop_signal_stops_at_a_step_boundary_and_auto_resume_finishes(straight, tmp_path, capsys):
    config, done = straight
    out = tmp_path / "run"
    with signal_after_step(13, signal.SIGUSR2):  # train.stop_signal: SIGUSR2; epoch 2, step 3
        code = main(["train", str(config), "--out", str(out), "--auto-resume"])
    assert code == 128 + signal.SIGUSR2 and last_position(out) == (1, 3)
    assert "stopped by SIGUSR2 after step 3 of epoch 2" in capsys.readouterr().err
    assert main(["train", str(config), "--out", str(out), "--auto-resume"]) == 0
    assert_same(params(done / "last.pt"), params(out / "last.pt"))


def test_the_same_command_on_a_finished_run_trains_nothing_and_a_changed_config_is_refused(straight, tmp_path,
                                                                                          capsys):
    config, done = straight
    out = tmp_path / "run"
    shutil.copytree(done, out)
    before = (out / "last.pt").read_bytes()
    assert main(["train", str(config), "--out", str(out), "--auto-resume"]) == 0
    assert (out / "last.pt").read_bytes() == before
    line = one_line_error(capsys, "train", config, "--out", out, "--auto-resume", "--set", "optim.lr=0.1",
                          "--set", "train.log_every=3", "--set", "model.kwargs.widths=[4,8,32]")
    assert "differs from the run's recorded config in model.kwargs.widths ([4, 8, 16] -> [4, 8, 32])" in line
    assert "optim.lr (0.05 -> 0.1): changes the math of the steps taken" in line
    assert "train.log_every" not in line.split(". A resume may change only")[0]  # allowed: not named as refused
    assert (out / "last.pt").read_bytes() == before
    assert one_line_error(capsys, "train", config, "--auto-resume").endswith(
        "--auto-resume needs --out DIR (the run folder to continue) and takes no --overwrite")


def test_resume_takes_a_moved_data_root_and_more_threads_and_records_them(tmp_path, capsys):
    """A CIFAR run stopped mid-epoch, its data moved: --resume names the fix, which then finishes the run as an
    uninterrupted one; the changes land in config.yaml and attempts.jsonl."""
    write_cifar(str(tmp_path / "cifar"), "cifar10", train=64, test=16)
    cfg = tiny_config(epochs=2, data={"dataset": "cifar10", "root": str(tmp_path / "cifar"), "num_classes": None},
                      progress="none", image_size=16)
    straight = train(cfg, tmp_path / "straight")
    with signal_after_step(3, signal.SIGTERM):
        stopped = train(cfg, tmp_path / "run")
    assert stopped["interrupted"] and stopped["resume_at"] == {"epoch": 0, "batch": 3}
    (tmp_path / "cifar").rename(tmp_path / "moved")

    line = one_line_error(capsys, "train", "--resume", tmp_path / "run")
    assert f"data.root '{tmp_path / 'cifar'}' does not exist" in line
    assert f"`feed-fast train --resume {tmp_path / 'run'} --set data.root=PATH`" in line
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", f"data.root={tmp_path / 'moved'}",
                 "--set", "data.num_threads=4", "--set", "train.log_every=2"]) == 0
    assert_same(params(tmp_path / "straight" / "last.pt"), params(tmp_path / "run" / "last.pt"))
    assert [outcome(r) for r in records(tmp_path / "run")] == [outcome(r) for r in straight["history"]]
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["data"]["root"] == str(tmp_path / "moved") and recorded["data"]["num_threads"] == 4
    changed = [a["changed"] for a in records(tmp_path / "run", "attempts.jsonl") if "changed" in a]
    assert changed == [{"data.root": [str(tmp_path / "cifar"), str(tmp_path / "moved")],
                        "data.num_threads": [2, 4], "train.log_every": [1, 2]}]

    line = one_line_error(capsys, "train", "--resume", tmp_path / "run", "--set", "data.batch_size=8")
    assert "--set differs from the run's recorded config in data.batch_size (16 -> 8)" in line


def test_a_longer_multistep_schedule_continues_a_finished_run_and_a_cosine_one_is_refused(tmp_path, capsys):
    """multistep's lr at a step does not depend on the epoch count: 2 epochs + 1 more == 3 straight."""
    cfg = tiny_config(epochs=2, schedule="multistep", progress="none", max_steps_per_epoch=3, image_size=16)
    longer = train({**cfg, "schedule": {**cfg["schedule"], "epochs": 3}}, tmp_path / "three")
    train(cfg, tmp_path / "run")
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", "schedule.epochs=3"]) == 0
    assert_same(params(tmp_path / "three" / "last.pt"), params(tmp_path / "run" / "last.pt"))
    assert [outcome(r) for r in records(tmp_path / "run")] == [outcome(r) for r in longer["history"]]
    assert len(yaml.safe_load((tmp_path / "run" / "summary.json").read_text())["history"]) == 3

    line = one_line_error(capsys, "train", "--resume", tmp_path / "run", "--set", "schedule.epochs=2")
    assert "schedule.epochs (3 -> 2): only a longer schedule can continue a run" in line
    train(tiny_config(epochs=1, progress="none", max_steps_per_epoch=2, image_size=16), tmp_path / "cosine")
    line = one_line_error(capsys, "train", "--resume", tmp_path / "cosine", "--set", "schedule.epochs=2")
    assert "schedule.epochs (1 -> 2): a cosine schedule's lr depends on the epoch count" in line
