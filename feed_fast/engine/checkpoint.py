"""The files of a run folder that hold weights, and reading them back safely.

A run writes last.pt (everything training needs to continue, the EMA of `train.ema` included), last.prev.pt
(the last.pt before it, so a damaged newest copy is never the only one), best.pt (last.pt's content at the raw
student's best validation epoch; while the newest epoch is the best, best.pt and last.pt are hard links to
one file), model.pt (the trained model alone: what a later run names as a teacher's
`checkpoint`, and what `feed-fast eval` scores) and, with `train.ema`, model_ema.pt (the averaged model, the same
format). Writes go through `feed_fast.atomic_files`. Earlier releases called the exports student.pt and
student_ema.pt: every reader takes a file by its content, whatever its name, and the run-folder code still knows
those names (LEGACY_EXPORTS: a finished sFEED generation's student.pt, --overwrite, the files listed beside a
damaged one).

Writing while training goes on: `to_host` copies the state to host memory (what the step loop waits for), and a
`CheckpointWriter` writes the files in one background thread, one checkpoint at a time; a failed write is
raised on the training thread at the next checkpoint or at the end of the run.

Reading: every checkpoint is loaded with `weights_only=True` (tensors, numbers and plain containers only). A file
that cannot be used (missing, empty, truncated, not a checkpoint, the wrong model) raises `CheckpointError`: one
line naming the file, what is wrong with it and which readable checkpoints lie beside it. The file is left as
it is."""
from __future__ import annotations

import os
import pickle
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import build_model

LAST, LAST_PREVIOUS, BEST, EXPORT = "last.pt", "last.prev.pt", "best.pt", "model.pt"
EMA_EXPORT = "model_ema.pt"  # train.ema: the averaged model, in the export's format (loads like model.pt)
LEGACY_EXPORTS = {EXPORT: "student.pt", EMA_EXPORT: "student_ema.pt"}  # what earlier runs wrote
CHECKPOINT_NAMES = (LAST, LAST_PREVIOUS, BEST, EXPORT, EMA_EXPORT, *LEGACY_EXPORTS.values())
EXPORT_FORMAT = "feed-fast-student-v1"
TRAINING_KEYS = ("student", "extras", "optimizer", "scheduler", "scaler", "epoch", "next_batch", "epoch_sums",
                 "best_top1", "history", "rng_cpu")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6 is a zip archive


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file."""

    def __init__(self, path: str | os.PathLike, problem: str, *, look_beside: bool = True,
                 use_instead: str | None = None) -> None:
        self.path, self.problem = Path(path), problem
        message = f"checkpoint {str(path)!r} {problem}"
        if look_beside:
            others = readable_checkpoints_beside(self.path)
            if others:
                message += f"; readable beside it: {', '.join(others)}"
                if use_instead:
                    message += f" ({use_instead})"
            else:
                message += "; no other readable checkpoint beside it"
        super().__init__(message)


def to_host(obj: Any) -> Any:
    """A copy of a checkpoint's state in host memory, every tensor copied (training goes on changing the
    originals): CUDA tensors through pinned memory, all copies queued before one wait."""
    pending_cuda = []

    def copy(node):
        if isinstance(node, torch.Tensor):
            node = node.detach()
            if node.device.type == "cuda":
                host = torch.empty_like(node, device="cpu", pin_memory=True)  # same strides (channels-last)
                host.copy_(node, non_blocking=True)
                pending_cuda.append(node.device)
                return host
            return node.to("cpu", copy=True)
        if isinstance(node, dict):
            return {key: copy(value) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(copy(value) for value in node)
        return node  # numbers, strings, None: immutable

    result = copy(obj)
    for device in set(pending_cuda):
        torch.cuda.synchronize(device)
    return result


class CheckpointWriter:
    """Runs checkpoint writes (a function each) in a background thread, one at a time: `submit` first waits
    for the write before it. An error in a write is raised by the next `submit` or `wait` on the caller's
    thread. The thread is not a daemon, so a write under way finishes before the process exits."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(write,), name="feed-fast-checkpoint")
        self._thread.start()

    def _run(self, write: Callable[[], None]) -> None:
        try:
            write()
        except BaseException as err:  # noqa: BLE001 -- handed to the training thread
            self._error = err

    def wait(self) -> None:
        """Until the write under way (if any) is done; raises its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def student_export(model_name: str, num_classes: int, model_kwargs: dict, student: nn.Module,
                   data: dict | None = None) -> dict:
    """The deployable student: the plain model's state dict (no translators, no teachers) plus what it takes
    to rebuild it. `state_dict` loads into `build_model(name, num_classes, **kwargs).plain_module()`, which for
    torchvision names is `torchvision.models.get_model(name, num_classes=num_classes)`. `data` (dataset,
    image_size, seed) records what the student was trained on, for `feed-fast eval`."""
    state = {k: v.detach().cpu().clone() for k, v in student.plain_module().state_dict().items()}
    return {"format": EXPORT_FORMAT, "model": model_name, "num_classes": num_classes,
            "model_kwargs": dict(model_kwargs), "data": dict(data or {}), "state_dict": state}


# --- reading ---------------------------------------------------------------------------------------
def export_in(folder: str | os.PathLike, name: str = EXPORT) -> Path:
    """`folder/name` (model.pt or model_ema.pt); the name an earlier release wrote when only that file is there."""
    path = Path(folder) / name
    legacy = path.with_name(LEGACY_EXPORTS[name])
    return legacy if not path.exists() and legacy.exists() else path


def why_unreadable(path: Path, error: BaseException) -> str:
    """What is wrong with a file torch.load failed on, in our words (torch's own message may suggest unsafe
    loading, which we never pass on)."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(len(ZIP_MAGIC))
    if head == ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            return f"is truncated: its zip archive ends early ({size} bytes)"
        if isinstance(error, pickle.UnpicklingError):
            return ("holds Python objects other than tensors, numbers and plain containers; feed-fast reads only "
                    "checkpoints made of those (as it writes them)")
        return f"is damaged: its zip archive is complete but its records cannot be read ({size} bytes)"
    return f"is not a torch checkpoint ({size} bytes that torch.load cannot read)"


def read_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu", look_beside: bool = True,
                    use_instead: str | None = None, mmap: bool = False) -> Any:
    """torch.load with weights_only=True; any failure becomes a CheckpointError naming the file and the problem
    (and, with `look_beside`, the readable checkpoints in the same folder; `use_instead` says how to use them)."""
    path = Path(path)
    refuse = {"look_beside": look_beside, "use_instead": use_instead}
    if not path.exists():
        raise CheckpointError(path, "does not exist", **refuse)
    if not path.is_file():
        raise CheckpointError(path, "is not a file", look_beside=False)
    if path.stat().st_size == 0:
        raise CheckpointError(path, "is empty (0 bytes)", **refuse)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 -- torch.load raises many types for a damaged file
        raise CheckpointError(path, why_unreadable(path, err), **refuse) from None


def readable_checkpoints_beside(path: Path) -> list[str]:
    """The run-folder checkpoints next to `path` that load, each with what it holds: `best.pt (after epoch 2)`."""
    found = []
    for name in CHECKPOINT_NAMES:
        other = path.parent / name
        if other.name == path.name or not other.is_file():
            continue
        try:
            obj = read_checkpoint(other, look_beside=False, mmap=True)  # structure only: tensors stay on disk
        except CheckpointError:
            continue
        found.append(f"{name} ({describe_contents(obj)})")
    return found


def describe_contents(obj: Any) -> str:
    if isinstance(obj, dict) and obj.get("format") == EXPORT_FORMAT:
        return f"the exported {obj.get('model', 'student')}"
    if isinstance(obj, dict) and isinstance(obj.get("epoch"), int):
        batch = obj.get("next_batch") or 0
        if not batch:
            return f"after epoch {obj['epoch']}"
        step = obj.get("step_in_epoch")
        return (f"epoch {obj['epoch'] + 1}, after step {step}" if isinstance(step, int)
                else f"epoch {obj['epoch'] + 1}, after batch {batch}")
    return "a state dict"


def plain_state_dict(obj: Any, path: str | os.PathLike) -> dict:
    """The plain model state dict inside any checkpoint we accept: our export, our last.pt/best.pt, or a bare
    state dict (torchvision's included)."""
    if isinstance(obj, dict) and obj.get("format") == EXPORT_FORMAT and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and isinstance(obj.get("student"), dict):
        return obj["student"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(path, "is neither a feed-fast export/checkpoint nor a plain state dict (a dict of "
                                "tensors)")


extract_state_dict = plain_state_dict  # the name earlier releases used


def state_mismatch(expected: dict, given: dict) -> str | None:
    """How `given` differs from the state dict `expected` (keys, then shapes), in one line; None if it fits."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [k for k, v in expected.items() if k in given and isinstance(given[k], torch.Tensor)
                and isinstance(v, torch.Tensor) and given[k].shape != v.shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) such as {missing[0]!r}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) such as {unexpected[0]!r}")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} tensor(s) of another shape such as {k!r} "
                     f"({tuple(given[k].shape)} in the file, {tuple(expected[k].shape)} in the model)")
    return ", ".join(parts) or None


def load_fitting(module: nn.Module, state: dict, path: str | os.PathLike, what: str, *,
                 ignore: Callable[[str], bool] | None = None) -> None:
    """`module.load_state_dict(state)` after checking that it fits; a mismatch is a CheckpointError naming
    `what` (e.g. "model resnet8"). Keys of the module for which `ignore(key)` holds are neither compared nor
    loaded (the student inside a Distiller, loaded on its own)."""
    expected = {k: v for k, v in module.state_dict().items() if ignore is None or not ignore(k)}
    problem = state_mismatch(expected, state)
    if problem:
        raise CheckpointError(path, f"does not fit {what}: {problem}", look_beside=False)
    try:
        module.load_state_dict(state, strict=ignore is None)
    except (RuntimeError, ValueError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(path, f"does not fit {what}: {first}", look_beside=False) from None


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a teacher's (or any plain model's) weights from our export, last.pt/best.pt or a plain state dict."""
    state = plain_state_dict(read_checkpoint(path), path)
    load_fitting(model.plain_module(), state, path, f"model {type(model).__name__}")
    return model


def load_exported_student(path: str | os.PathLike, *, use_instead: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the student recorded in an export (or in last.pt/best.pt) and load its weights. `use_instead`:
    how the caller could use a readable checkpoint beside a damaged one."""
    obj = read_checkpoint(path, use_instead=use_instead)
    if isinstance(obj, dict) and obj.get("format") == EXPORT_FORMAT:
        meta = obj
    elif isinstance(obj, dict) and isinstance(obj.get("export_meta"), dict):
        meta = obj["export_meta"]
    else:
        raise CheckpointError(path, "does not record its model; it is not a feed-fast export, last.pt or best.pt")
    if not isinstance(meta.get("model"), str) or not isinstance(meta.get("num_classes"), int):
        raise CheckpointError(path, "records no model name and class count; it is not a feed-fast export")
    try:
        model = build_model(meta["model"], meta["num_classes"], **meta.get("model_kwargs", {}))
    except (ValueError, TypeError) as err:
        raise CheckpointError(path, f"records a model this install cannot build: {err}", look_beside=False) from None
    load_fitting(model.plain_module(), plain_state_dict(obj, path), path, f"model {meta['model']}")
    return model, meta


def check_training_checkpoint(obj: Any, path: str | os.PathLike, use_instead: str) -> dict:
    """`obj` is a last.pt/best.pt as the trainer writes it (not an export or a bare state dict)."""
    if isinstance(obj, dict) and obj.get("format") == EXPORT_FORMAT:
        raise CheckpointError(path, "is a student export, not a training checkpoint (last.pt or best.pt)",
                              use_instead=use_instead)
    missing = [k for k in TRAINING_KEYS if not (isinstance(obj, dict) and k in obj)]
    if missing:
        raise CheckpointError(path, f"is not a feed-fast training checkpoint (no {missing[0]!r} entry)",
                              use_instead=use_instead)
    return obj
