"""What a run says on stderr (issue #17 item 5): `train.progress: epochs` keeps the start block and the epoch lines
without per-step progress, `none` stays silent; an EMA export that holds no average (no update at all, or every
update within the warm-up) is named in a one-line warning saying which setting to change."""
from __future__ import annotations

import pytest
from _recipe import run_config

from feed_fast.config import EMAConfig
from feed_fast.engine import train
from feed_fast.engine.ema import StudentEMA
from feed_fast.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stderr_of(capsys, tmp_path, **train_options) -> list[str]:
    """The stderr lines of a two-epoch baseline run (10 optimizer steps an epoch) with these train options."""
    capsys.readouterr()
    train(run_config("baseline", epochs=2, **{"log_every": 1, **train_options}), tmp_path / "run")
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("progress", ["lines", "epochs", "none"])
def test_progress_epochs_keeps_the_epoch_lines_without_the_step_lines(tmp_path, capsys, progress):
    lines = stderr_of(capsys, tmp_path, progress=progress)
    epoch_lines = [line for line in lines if line.startswith("gen 1 epoch ")]
    step_lines = [line for line in lines if line.startswith("epoch 1 step ")]
    if progress == "none":
        assert lines == []
        return
    assert lines[0] == f"feed-fast train: new run in {tmp_path / 'run'}"
    assert [line.split(" loss ")[0] for line in epoch_lines] == ["gen 1 epoch 1/2", "gen 1 epoch 2/2"]
    assert len(step_lines) == (10 if progress == "lines" else 0)


@pytest.mark.parametrize(("ema", "warning"), [
    ({"every": 25}, ("train.ema was never updated: it updates every 25 optimizer steps and this run took 20, so the "
                    "EMA export holds the student's initial weights; set train.ema.every to at most 20")),
    ({"warmup_steps": 20}, ("train.ema was never averaged: all its updates fell within train.ema.warmup_steps=20 (this "
                           "run took 20 optimizer steps), so the EMA export is a copy of the student; set "
                           "train.ema.warmup_steps below 20")),
    ({"warmup_steps": 19}, None),
])
def test_an_ema_export_without_an_average_is_named_with_the_setting_to_change(tmp_path, capsys, ema, warning):
    lines = stderr_of(capsys, tmp_path, progress="none", ema={"enabled": True, "decay": 0.5, **ema})
    assert lines == ([f"feed-fast train: warning: {warning}"] if warning else [])
    assert (tmp_path / "run" / "model_ema.pt").is_file()


def test_the_first_averaging_update_is_the_boundary():
    def after(steps: int, **cfg) -> str | None:
        ema = StudentEMA(build_model("resnet8", 5, widths=[4, 8, 16]), EMAConfig(enabled=True, **cfg))
        ema.steps = steps
        return ema.unaveraged()

    assert after(3, every=3) is None and "never updated" in after(2, every=3)
    assert after(9, every=3, warmup_steps=7) is None  # step 9 averages
    assert "set train.ema.warmup_steps below 6" in after(8, every=3, warmup_steps=7)
    assert after(1) is None and "at most 1" in after(0)
