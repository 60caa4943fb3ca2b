"""Elastic determinism: an optimizer step takes the next (per-process batch x processes x train.accumulate)
samples of the epoch's global order, and process r's micro-step m reads a fixed micro-batch of that block
(loaders/sampling.py), so 2 processes x 1 and 1 process x accumulate 2 see the same samples in the same
micro-batches, with the same augmentation. A 2-process run stopped mid-epoch and continued on 1 process (accumulate
2, said in one line) or on 2 ends within 1e-5 of the uninterrupted 2-process run, with the same steps per epoch and
learning rates; BatchNorm's running statistics may differ (DDP keeps rank 0's, one process updates them with
every micro-batch), so only weights, translators and momentum are compared after a resize."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml
from _cluster import (
    Watched,
    assert_same,
    feed_fast_command,
    float_params,
    params,
    records,
    run,
    torchrun_command,
    worker_of_rank,
)
from _loader_data import write_cifar
from feed_fast.loaders import build_loader

from feed_fast.config import ConfigError, RunConfig
from feed_fast.engine.checkpoint import student_export
from feed_fast.engine.layout import Layout, new_layout, resumed_layout
from feed_fast.models import build_model

STEPS = 12  # per epoch: 96 CIFAR samples, global batch 8


def cifar_pfeed_config(root: Path, teacher: Path) -> dict:
    return {
        "model": {"name": "resnet8", "kwargs": {"widths": [4, 8, 16]}},
        "teachers": [{"name": "resnet8", "checkpoint": str(teacher), "kwargs": {"widths": [4, 8, 32]}}],
        "method": {"name": "pfeed", "backend": "torch"},
        "data": {"dataset": "cifar10", "root": str(root), "batch_size": 4, "eval_batch_size": 16},
        "schedule": {"name": "cosine", "epochs": 2, "milestones": []},
        "optim": {"lr": 0.05},
        "train": {"device": "cpu", "precision": "fp32", "progress": "lines", "log_every": 1,
                  "checkpoint_minutes": 0},
    }


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_a_run_stopped_on_2_processes_continues_on_1_or_2_as_if_uninterrupted(tmp_path):
    write_cifar(str(tmp_path / "cifar"), "cifar10", train=96, test=16)
    torch.manual_seed(3)
    torch.save(student_export("resnet8", 10, {"widths": [4, 8, 32]}, build_model("resnet8", 10, widths=(4, 8, 32))),
               tmp_path / "teacher.pt")
    config = tmp_path / "cifar.yaml"
    config.write_text(yaml.safe_dump(cifar_pfeed_config(tmp_path / "cifar", tmp_path / "teacher.pt")))

    straight = tmp_path / "straight"
    proc = run(torchrun_command("train", config, "--out", straight))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "  batch      4 per process x accumulate 1 x 2 processes = global batch 8 per optimizer step" in proc.stderr

    stopped = tmp_path / "stopped"  # SIGTERM to rank 1 alone: every rank stops after the same step
    job = Watched(torchrun_command("train", config, "--out", stopped, "--auto-resume"))
    job.wait_for("epoch 2 step 3/")
    os.kill(worker_of_rank(job.proc.pid, 1), signal.SIGTERM)
    _, err = job.finish()
    ckpt = torch.load(stopped / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and 3 <= ckpt["step_in_epoch"] < STEPS, err[-3000:]
    assert "stopped by SIGTERM (on another process) after step" in err or "stopped by SIGTERM after step" in err

    on_one, on_two = tmp_path / "on_one", tmp_path / "on_two"
    shutil.copytree(stopped, on_one)
    shutil.copytree(stopped, on_two)
    proc = run(feed_fast_command("train", "--resume", on_one))  # one process: accumulate 2
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert ("  note       continued on 1 process instead of 2: accumulate 2 (was 1) keeps the global batch 8"
            in proc.stderr)
    assert f"after step {ckpt['step_in_epoch']} of {STEPS} (sample {8 * ckpt['step_in_epoch']} of" in proc.stderr
    proc = run(torchrun_command("train", config, "--out", on_two, "--auto-resume"))  # the same command again
    assert proc.returncode == 0, proc.stderr[-4000:]

    assert_same(params(straight / "last.pt"), params(on_two / "last.pt"))  # the same layout: exact
    expected, resized = float_params(straight / "last.pt"), float_params(on_one / "last.pt")
    assert expected.keys() == resized.keys() and any("translators" in k for k in resized)
    for key, value in expected.items():
        torch.testing.assert_close(resized[key], value, rtol=1e-5, atol=1e-7, msg=key)
    done = torch.load(on_one / "last.pt", weights_only=True)
    assert done["layout"]["steps_per_epoch"] == STEPS and done["scheduler"]["last_epoch"] == 2 * STEPS
    reference = records(straight)
    for mine, theirs in zip(records(on_one), reference, strict=True):
        assert mine["lr"] == theirs["lr"]
        assert mine["loss"]["total"] == pytest.approx(theirs["loss"]["total"], rel=1e-5)


def test_two_processes_and_accumulate_two_see_the_same_micro_batches(tmp_path):
    """The loaders' layout: process r's n-th batch is global micro-batch n * P + r, images and augmentation
    alike, so [2 processes x 1] and [1 process x accumulate 2] cover each step's block the same way."""
    write_cifar(str(tmp_path), "cifar10", train=50, test=4)
    make = lambda shard, shards: build_loader(str(tmp_path), "train", 4, dataset="cifar10", device="cpu",
                                              seed=5, shard_id=shard, num_shards=shards)
    one = list(make(0, 1).iter_from(1))
    halves = [list(make(r, 2).iter_from(1)) for r in range(2)]
    assert len(one) == 12 and len(halves[0]) == len(halves[1]) == 6  # 50 samples: 6 steps of 8
    for n, (images, labels) in enumerate(one):
        theirs = halves[n % 2][n // 2]
        assert torch.equal(images, theirs[0]) and torch.equal(labels, theirs[1])
    resumed = list(make(1, 2).iter_from(1, start_batch=2))  # process 1 from step 2 on
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, halves[1][2:], strict=True))


def layout_config(**data) -> RunConfig:
    return RunConfig.from_dict({"method": {"name": "baseline"},
                                "data": {"dataset": "synthetic", "root": "", "num_classes": 3, **data}})


def test_the_global_batch_is_kept_or_the_change_said_in_one_line():
    # ImageNet's configs: global batch 256 at lr 0.1, at most 256 images per process
    imagenet = layout_config(batch_size=256, global_batch_size=256)
    assert new_layout(imagenet, 1) == (Layout(1, 256, 1), None)
    layout, note = new_layout(imagenet, 8)
    assert layout == Layout(8, 32, 1) and layout.global_batch == 256
    assert note == ("data.global_batch_size=256 on 8 processes: 32 images per micro-batch x accumulate 1 per "
                    "process (data.batch_size=256 is the most a micro-batch holds)")
    assert new_layout(layout_config(batch_size=96, global_batch_size=256), 1)[0] == Layout(1, 64, 4)
    with pytest.raises(ConfigError, match="data.global_batch_size=256 cannot be split over 3 processes"):
        new_layout(imagenet, 3)
    with pytest.raises(ConfigError, match="give data.global_batch_size or train.accumulate, not both"):
        RunConfig.from_dict({"method": {"name": "baseline"}, "train": {"accumulate": 2},
                             "data": {"dataset": "synthetic", "root": "", "num_classes": 3, "global_batch_size": 8}})

    per_process = layout_config(batch_size=16)  # no global batch given: 16 x processes x accumulate
    assert new_layout(per_process, 4) == (Layout(4, 16, 1), None)
    written = Layout(4, 16, 1)  # a run started on 4 processes, continued on 2, then 3
    note = "continued on 2 processes instead of 4: accumulate 2 (was 1) keeps the global batch 64"
    assert resumed_layout(per_process, 2, written) == (Layout(2, 16, 2), note)
    with pytest.raises(ConfigError, match=r"written by 4 processes x 16 per micro-batch x accumulate 1 = global batch "
                                          r"64; on 3 processes no whole train.accumulate keeps that global batch with "
                                          r"16 images per micro-batch: continue it on 1, 2, 4 process\(es\)"):
        resumed_layout(per_process, 3, written)
