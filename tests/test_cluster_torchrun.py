"""torchrun restarts (2 gloo processes on the CPU): `kill -9` of one worker mid-epoch under `torchrun
--nproc_per_node 2 --max-restarts 1 ... --auto-resume` ends with exit 0, the restarted workers continuing from
the latest (mid-epoch) last.pt to the parameters of an uninterrupted run; the surviving worker reports the lost
peer in one line instead of gloo's traceback. Also what rank 0 prints at start (processes, global batch, lr), once,
and progress lines and epoch lines reporting the same images/s (the total over the processes)."""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import torch
import yaml
from _cluster import (
    Watched,
    assert_same,
    outcome,
    params,
    records,
    run,
    tiny_config,
    torchrun_command,
    worker_of_rank,
)
from torch.nn.modules.batchnorm import _BatchNorm

from feed_fast.config import MethodConfig, TranslatorConfig
from feed_fast.engine.trainer import WithSyncBatchNorm
from feed_fast.methods import build_method
from feed_fast.models import build_model
from feed_fast.runtime.distributed import DistInfo


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """(config file, run folder, stderr) of an uninterrupted 2-process run checkpointing at about every step."""
    root = tmp_path_factory.mktemp("straight")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(batch_size=8, checkpoint_minutes=1e-4)))
    proc = run(torchrun_command("train", config, "--out", root / "run"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return config, root / "run", proc.stderr


@pytest.mark.slow
def test_rank_0_prints_the_layout_once_and_progress_reports_the_total_rate(straight):
    _, _, err = straight
    assert err.count("feed-fast train: new run in") == 1  # rank 0 only
    assert "  processes  2 processes (torchrun, gloo), device cpu, precision fp32" in err
    assert "  batch      8 per process x accumulate 1 x 2 processes = global batch 16 per optimizer step" in err
    assert "  lr         0.05 for the global batch 16 (cosine schedule, 10 steps per epoch, 3 epochs)" in err
    progress = re.findall(r"^epoch 1 step 10/10 ([\d.]+) img/s", err, re.MULTILINE)
    epoch = re.findall(r"^gen 1 epoch 1/3 .* ([\d.]+) img/s", err, re.MULTILINE)
    assert len(progress) == len(epoch) == 1
    assert 0.75 < float(progress[0]) / float(epoch[0]) < 1.33  # both the total of the two processes


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_kill_9_of_a_worker_under_max_restarts_continues_from_the_latest_checkpoint(straight, tmp_path):
    config, done, _ = straight
    out = tmp_path / "run"
    job = Watched(torchrun_command("train", config, "--out", out, "--auto-resume",
                                   launcher=("--standalone", "--max-restarts", "1")))
    job.wait_for("last.pt written: epoch 2, step ")
    os.kill(worker_of_rank(job.proc.pid, 1), signal.SIGKILL)
    code, err = job.finish(timeout=300)
    assert code == 0, err[-4000:]
    lost = [line for line in err.splitlines() if "lost another process of the run" in line]
    assert len(lost) == 1 and lost[0].startswith("feed-fast train: error: lost another process of the run (gloo: ")
    assert "Traceback" not in err and "gloo/transport" not in err.replace(lost[0], "")
    resumed = re.search(r"continuing \S+ from last.pt at epoch 2, after step (\d+) of 10", err)
    assert resumed, err[-4000:]
    attempts = [a.get("started") or a.get("ended") for a in records(out, "attempts.jsonl")]
    assert attempts == ["new", "continued", "finished"]  # the killed attempt wrote no end

    assert_same(params(done / "last.pt"), params(out / "last.pt"))
    assert [outcome(r) for r in records(out)] == [outcome(r) for r in records(done)]


@pytest.mark.slow
def test_sigusr1_to_torchrun_and_its_workers_stops_at_a_step_and_the_same_command_finishes(straight, tmp_path):
    """What SLURM's --signal=USR1@T does to a job step (every process gets the signal): with SIGUSR1 among
    torchrun's --signals-to-handle the agent waits for its workers (up to --shutdown-timeout), which finish the step,
    write last.pt and exit 138; the same command (a requeued job) then finishes as the uninterrupted run."""
    config, done, _ = straight
    out = tmp_path / "run"
    launcher = ("--standalone", "--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                "--shutdown-timeout", "120")
    command = torchrun_command("train", config, "--out", out, "--auto-resume", launcher=launcher)
    job = Watched(command)
    job.wait_for("epoch 2 step 3/10")
    os.killpg(job.proc.pid, signal.SIGUSR1)  # the agent and both workers
    code, err = job.finish(timeout=300)
    assert code != 0 and "stopped by SIGUSR1 after step" in err, err[-4000:]
    assert "got signal: 10" in err  # torchrun itself ends on its SignalException (exit 1), after its workers
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and 3 <= ckpt["step_in_epoch"] < 10

    proc = run(command)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same(params(done / "last.pt"), params(out / "last.pt"))
    assert [outcome(r) for r in records(out)] == [outcome(r) for r in records(done)]


def test_sync_bn_turns_the_students_and_translators_batchnorm_into_syncbatchnorm_under_torchrun():
    """The conversion (torch's SyncBatchNorm itself runs on GPUs only; under torchrun on the CPU train.sync_bn is
    refused): the student's and translators' BatchNorm layers, with their state-dict keys unchanged."""
    method = build_method(MethodConfig(name="pfeed", backend="torch", translator=TranslatorConfig(batch_norm=True)))
    student = build_model("resnet8", 5, widths=(4, 8, 16))
    wrapped = WithSyncBatchNorm(method, DistInfo(rank=0, world_size=2))
    assert wrapped.num_generations() == method.num_generations()  # everything else is the method's
    distiller = wrapped.build(student, [32])
    norms = {name: type(m).__name__ for name, m in distiller.named_modules() if isinstance(m, _BatchNorm)}
    assert set(norms.values()) == {"SyncBatchNorm"} and any("translator" in name for name in norms)
    plain = build_model("resnet8", 5, widths=(4, 8, 16)).plain_module().state_dict().keys()
    assert student.plain_module().state_dict().keys() == plain  # checkpoints and exports load into BatchNorm
    alone = WithSyncBatchNorm(method, DistInfo()).build(build_model("resnet8", 5, widths=(4, 8, 16)), [32])
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in alone.modules())  # a world of one: unchanged


@pytest.mark.slow
def test_sync_bn_under_torchrun_on_the_cpu_is_refused_in_one_line_per_rank(straight, tmp_path):
    config, _, _ = straight
    proc = run(torchrun_command("train", config, "--out", tmp_path / "run", "--set", "train.sync_bn=true"))
    refusals = [line for line in proc.stderr.splitlines() if "train.sync_bn needs CUDA devices" in line]
    assert proc.returncode != 0 and len(refusals) == 2, proc.stderr[-3000:]  # rank 0's and rank 1's line
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before any work
