"""A dead rank under torchrun (2 gloo processes on the CPU): `kill -9` of one worker mid-epoch ends the whole job
within a bounded time instead of hanging, and `feed-fast train --resume` on the same folder finishes with the
parameters of an uninterrupted run.

The bound: the surviving rank's next collective fails at once (the dead peer's sockets close), and torchrun's
agent, polling every --monitor-interval (0.1 s by default), stops the remaining workers with SIGTERM and then
SIGKILL after 30 s; a peer that hangs without dying fails collectives after the process group's timeout
(feed_fast.runtime.distributed.PROCESS_GROUP_TIMEOUT). Seen here: about 1-2 s from the kill to torchrun's exit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _cluster import params, worker_of_rank

from feed_fast.engine.checkpoint import student_export
from feed_fast.models import build_model

pytestmark = pytest.mark.slow  # torchrun, a killed rank, a resume
BOUND_S = 60  # the agent's 30 s SIGTERM grace plus start-up noise on a loaded 2-core machine
STEPS = 10  # per epoch and rank (the synthetic data's epoch length)


def torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "feed_fast.cli", "train", *map(str, args)]


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_kill_9_of_one_rank_ends_the_job_quickly_and_resume_repeats_the_uninterrupted_run(tmp_path):
    torch.manual_seed(3)
    teacher = build_model("resnet8", 5, widths=(4, 8, 32))
    torch.save(student_export("resnet8", 5, {"widths": [4, 8, 32]}, teacher), tmp_path / "teacher.pt")
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "resnet8", "kwargs": {"widths": [4, 8, 16]}},
        "teachers": [{"name": "resnet8", "checkpoint": str(tmp_path / "teacher.pt"), "kwargs": {"widths": [4, 8, 32]}}],
        "method": {"name": "pfeed", "backend": "torch"},
        "data": {"dataset": "synthetic", "root": "", "num_classes": 5, "batch_size": 8, "eval_batch_size": 16,
                 "image_size": 32},  # ~0.1 s steps: the kill lands well inside the epoch
        "schedule": {"name": "cosine", "epochs": 3, "milestones": []},
        "optim": {"lr": 0.05},
        "train": {"device": "cpu", "progress": "lines", "log_every": 1, "max_steps_per_epoch": STEPS},
    }))

    straight = tmp_path / "straight"
    proc = subprocess.run(torchrun(config, "--out", straight), check=False, capture_output=True, text=True,
                          env=environment(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    run = tmp_path / "killed"
    job = subprocess.Popen(torchrun(config, "--out", run), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=environment())
    try:
        for line in job.stderr:  # rank 0's progress lines; rank 1 is in lockstep with it (DDP)
            if line.startswith(f"epoch 2 step 1/{STEPS}"):
                break
        os.kill(worker_of_rank(job.pid, 1), signal.SIGKILL)
        killed_at = time.monotonic()
        _, rest = job.communicate(timeout=BOUND_S)
        ended_after = time.monotonic() - killed_at
        print(f"torchrun ended {ended_after:.2f} s after the kill")
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0 and ended_after < BOUND_S, rest[-4000:]
    assert "exitcode  : -9" in rest  # torchrun names the killed worker as the root cause
    last = torch.load(run / "last.pt", weights_only=True)
    assert (last["epoch"], last["next_batch"]) == (1, 0)  # killed mid-epoch 2: the checkpoint of epoch 1 stands
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0]
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]

    proc = subprocess.run(torchrun("--resume", run), check=False, capture_output=True, text=True,
                          env=environment(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected, resumed = params(straight / "last.pt"), params(run / "last.pt")
    assert expected.keys() == resumed.keys() and any("translators" in k for k in resumed)
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    done = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["loss"], r["val"]) for r in done] == [(r["epoch"], r["loss"], r["val"]) for r in reference]
