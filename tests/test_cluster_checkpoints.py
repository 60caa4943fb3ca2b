"""Checkpoints inside the epoch (`train.checkpoint_minutes`): last.pt at the first optimizer-step boundary after
that long, written by a background thread while training goes on, never two at once. A `kill -9` after such a
checkpoint costs only the steps since it: the resume starts from that step and finishes with the parameters of
an uninterrupted run (one that wrote no mid-epoch checkpoint at all, so writing them changes nothing)."""
from __future__ import annotations

import os
import signal
import threading
import time

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
    tiny_config,
)

from feed_fast.cli import main
from feed_fast.engine import train
from feed_fast.engine import trainer as trainer_module
from feed_fast.engine.checkpoint import CheckpointWriter, to_host

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EVERY_STEP = 1e-4  # minutes: a checkpoint at nearly every step boundary (when the previous one is written)


def test_kill_9_after_a_mid_epoch_checkpoint_costs_only_the_steps_since(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(checkpoint_minutes=EVERY_STEP)))
    straight = train(tiny_config(progress="none"), tmp_path / "straight")  # no mid-epoch checkpoints

    run = tmp_path / "run"
    job = Watched(feed_fast_command("train", config, "--out", run))
    line = job.wait_for("last.pt written: epoch 2, step ")
    job.proc.send_signal(signal.SIGKILL)
    code, _ = job.finish()
    assert code == -signal.SIGKILL
    written = int(line.split("step ")[1].split(" ")[0])
    epoch, step = last_position(run)  # that checkpoint, or one written after it before the kill
    assert epoch == 1 and written <= step < 10, line
    assert "the step loop waited" in line

    assert main(["train", "--resume", str(run), "--set", "train.checkpoint_minutes=0"]) == 0  # as a restart would
    assert_same(params(tmp_path / "straight" / "last.pt"), params(run / "last.pt"))
    assert [outcome(r) for r in records(run)] == [outcome(r) for r in straight["history"]]
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]


def test_writes_run_in_the_background_one_at_a_time(tmp_path, monkeypatch):
    """With a slow disk (each write takes 0.2 s), checkpoints due meanwhile are put off, never overlapped, and
    training does not wait for the writes; the run still ends with every file written."""
    active, most, writes, held = [0], [0], [], {}
    real_save, real_copy = trainer_module.atomic_save, trainer_module.atomic_copy

    def slow(write, path, obj):
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.2)
        write()
        held[path.name] = obj
        writes.append((path.name, obj.get("epoch"), obj.get("step_in_epoch")))
        active[0] -= 1

    def slow_save(obj, path, **kw):
        slow(lambda: real_save(obj, path, **kw), path, obj)

    def slow_copy(source, path, **kw):  # a best epoch's last.pt: a link to the best.pt just written
        slow(lambda: real_copy(source, path, **kw), path, held[source.name])

    monkeypatch.setattr(trainer_module, "atomic_save", slow_save)
    monkeypatch.setattr(trainer_module, "atomic_copy", slow_copy)
    summary = train(tiny_config(epochs=2, image_size=16, progress="none", checkpoint_minutes=EVERY_STEP),
                    tmp_path / "run")
    assert most[0] == 1  # never two writes at once
    mid_epoch = [w for w in writes if w[0] == "last.pt" and w[2]]
    assert 1 <= len(mid_epoch) < 18  # some steps' checkpoints were put off while one was being written
    lasts = [w for w in writes if w[0] == "last.pt"]
    assert lasts[-1][1] == 2 and last_position(tmp_path / "run") == (2, 0)  # the epoch's own comes last
    assert len(summary["checkpoint_stall_ms"]) == len(lasts)
    assert summary["history"][-1]["loss"]["ce"] > 0


def test_to_host_copies_the_state_so_training_can_go_on():
    weights = torch.ones(3)
    state = {"student": {"w": weights}, "history": [{"epoch": 0}], "epoch": 1}
    copy = to_host(state)
    weights.add_(1)  # the next optimizer step
    assert torch.equal(copy["student"]["w"], torch.ones(3)) and copy["history"] == [{"epoch": 0}]


def test_a_failed_background_write_is_raised_on_the_training_thread():
    writer, started = CheckpointWriter(), threading.Event()

    def failing():
        started.set()
        raise OSError(28, "No space left on device")

    writer.submit(failing)
    started.wait(5)
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    writer.wait()  # reported once
