"""The student-only export, and loading teachers/students from our checkpoints or from plain state dicts
(torchvision's included). Checkpoints are written with `feed_fast.atomic_files.atomic_save`."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..models import build_model

EXPORT_FORMAT = "feed-fast-student-v1"


def student_export(model_name: str, num_classes: int, model_kwargs: dict, student: nn.Module,
                   data: dict | None = None) -> dict:
    """The deployable student: the plain model's state dict (no translators, no teachers) plus what it takes
    to rebuild it. `state_dict` loads into `build_model(name, num_classes, **kwargs).plain_module()`, which for
    torchvision names is `torchvision.models.get_model(name, num_classes=num_classes)`. `data` (dataset,
    image_size, seed) records what the student was trained on, for `feed-fast eval`."""
    state = {k: v.detach().cpu().clone() for k, v in student.plain_module().state_dict().items()}
    return {"format": EXPORT_FORMAT, "model": model_name, "num_classes": num_classes,
            "model_kwargs": dict(model_kwargs), "data": dict(data or {}), "state_dict": state}


def extract_state_dict(obj: Any, path: str) -> dict:
    """The plain model state dict inside any checkpoint we accept: our export, our last.pt/best.pt, or a bare
    state dict (torchvision's included)."""
    if isinstance(obj, dict) and obj.get("format") == EXPORT_FORMAT:
        return obj["state_dict"]
    if isinstance(obj, dict) and "student" in obj and isinstance(obj["student"], dict):
        return obj["student"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"checkpoint {path!r} is neither a feed-fast export/checkpoint nor a plain state dict")


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = extract_state_dict(obj, path)
    try:
        model.plain_module().load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path!r} does not fit model {type(model).__name__}: {err}") from None
    return model


def load_exported_student(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the student recorded in an export (or in last.pt/best.pt) and load its weights."""
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj.get("format") == EXPORT_FORMAT:
        meta = obj
    elif isinstance(obj, dict) and "export_meta" in obj:
        meta = obj["export_meta"]
    else:
        raise ValueError(f"checkpoint {str(path)!r} does not record its model; it is not a feed-fast export, "
                         "last.pt or best.pt")
    model = build_model(meta["model"], meta["num_classes"], **meta.get("model_kwargs", {}))
    model.plain_module().load_state_dict(extract_state_dict(obj, str(path)))
    return model, meta
