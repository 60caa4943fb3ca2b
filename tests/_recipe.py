"""Shared by the tests of the recipe switches (tests/test_recipe_*.py): a tiny pFEED/KD/baseline run config on
the synthetic loader (10 training batches per epoch) or on an image folder, a teacher export, a TrainStep
assembled as the trainer does, exact comparisons of checkpoints, and a signal sent after a given training step
(the engine's tests of stop-and-resume use it too)."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import signal

import torch

from feed_fast.config import RunConfig
from feed_fast.engine.checkpoint import student_export
from feed_fast.engine.step import TrainStep
from feed_fast.engine.trainer import GenerationTrainer
from feed_fast.methods import build_method
from feed_fast.models import build_model
from feed_fast.runtime import open_runtime

TINY = {"widths": [4, 8, 16]}
CLASSES = 5


def save_teacher(path, seed: int = 7, classes: int = CLASSES) -> str:
    torch.manual_seed(seed)
    torch.save(student_export("resnet8", classes, TINY, build_model("resnet8", classes, **TINY)), path)
    return str(path)


def run_config(method: str = "pfeed", teachers=(), *, epochs: int = 2, batch_size: int = 8, device: str = "cpu",
               **train) -> dict:
    """A nested config dict; `train` entries go to the train section (e.g. accumulate=2, ema={...})."""
    return {
        "model": {"name": "resnet8", "kwargs": TINY},
        "teachers": [{"name": "resnet8", "checkpoint": str(path), "kwargs": TINY} for path in teachers],
        "method": {"name": method, "backend": "torch"},
        "data": {"dataset": "synthetic", "root": "", "num_classes": CLASSES, "batch_size": batch_size,
                 "eval_batch_size": 16, "image_size": 16},
        "schedule": {"name": "cosine", "epochs": epochs, "milestones": []},  # the lr moves every step
        "optim": {"lr": 0.05},
        "train": {"device": device, "precision": "fp32", "progress": "none", "log_every": 4, **train},
    }


def folder_run_config(root, backend: str, method: str = "baseline", teachers=(), **recipe) -> dict:
    """`run_config` on an image folder (tests/_loader_data.py's: 4 classes) read by `backend`, 16 px, batches of 4;
    `recipe` entries go to the section that holds them (augment to data, the optim keys to optim, the rest to
    train)."""
    raw = run_config(method, teachers, batch_size=4)
    raw["data"] = {"dataset": "imagefolder", "root": str(root), "backend": backend, "batch_size": 4,
                   "eval_batch_size": 8, "image_size": 16, "num_threads": 1}
    for key, value in recipe.items():
        if key == "augment":
            raw["data"]["augment"] = value
        elif key in ("norm_weight_decay", "bias_weight_decay", "clip_grad_norm"):
            raw["optim"][key] = value
        else:
            raw["train"][key] = value
    return raw


def build_step(raw: dict, stack, *, teachers: int = 1, steps_per_epoch: int = 6) -> TrainStep:
    """A TrainStep as the trainer assembles it, teachers randomly initialised from a fixed seed."""
    raw = copy.deepcopy(raw)
    raw["teachers"] = [{"name": "resnet8", "checkpoint": "<random init>", "kwargs": TINY}] * teachers
    cfg = RunConfig.from_dict(raw, check_paths=False)
    runtime = stack.enter_context(open_runtime(cfg.train, handle_signals=False))
    torch.manual_seed(7)
    models = [build_model(t.name, CLASSES, **t.kwargs) for t in cfg.teachers]
    return TrainStep.from_config(cfg, runtime, build_method(cfg.method), models, num_classes=CLASSES, image_size=16,
                                 steps_per_epoch=steps_per_epoch, seed=0)


def training_batches(n: int, batch: int, seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 16, 16, generator=g).to(device), torch.randint(CLASSES, (batch,), generator=g).to(device))
            for _ in range(n)]


def assert_same_tensors(a: dict, b: dict, what: str = "") -> None:
    assert a.keys() == b.keys(), what
    for key, value in a.items():
        assert torch.equal(value, b[key]), f"{what} {key}"


def load(path) -> dict:
    return torch.load(path, weights_only=True)


@contextlib.contextmanager
def signal_after_step(n: int, sig: int):
    """While open, the trainer's n-th micro-batch (counted from 1, over every `train` call inside) sends `sig`
    to this process once it is done, as a user or torchrun would. Yields the count so far: {"n": micro-batches}."""
    original = GenerationTrainer.train_step
    calls = {"n": 0}

    def step_then_signal(self, images, labels):
        losses = original(self, images, labels)
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), sig)
        return losses

    GenerationTrainer.train_step = step_then_signal
    try:
        yield calls
    finally:
        GenerationTrainer.train_step = original


def epoch_records(run) -> list[tuple]:
    """(epoch, loss, val) of each line of a run's metrics.jsonl."""
    return [(r["epoch"], r["loss"], r.get("val"))
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def train_straight_and_interrupted(main, config, out, stop_after: int = 6) -> tuple[list, list]:
    """`feed-fast train config` twice under `out`: straight through ("straight"), and SIGINTed after micro-batch
    `stop_after` then resumed ("split"; checked to have stopped with 130 and one epoch on record). Returns both
    runs' epoch records, for the caller to compare."""
    assert main(["train", str(config), "--out", str(out / "straight")]) == 0
    with signal_after_step(stop_after, signal.SIGINT):
        assert main(["train", str(config), "--out", str(out / "split")]) == 130
    assert len(epoch_records(out / "split")) == 1
    assert main(["train", "--resume", str(out / "split")]) == 0
    return epoch_records(out / "straight"), epoch_records(out / "split")
