"""The run configuration: nested dict defaults, YAML loading, `--set key=value` overrides and validation.
Every config error raises `ConfigError` naming the key and what was expected, before any work starts."""
from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..validation import BACKENDS

# None means "no value"; keys whose default is None accept the types in NULLABLE_TYPES.
DEFAULTS: dict[str, Any] = {
    "model": {"name": "resnet56", "kwargs": {}},
    # each teacher: {name, checkpoint (local file) or weights (torchvision weights name), kwargs}
    "teachers": [],
    "method": {
        "name": "pfeed",
        "beta": 500.0,
        "backend": "auto",  # FEED loss backend: auto (fused on CUDA) | torch | triton | hybrid
        "generations": 2,  # sfeed only
        "feature_pool": "none",  # none | adaptive: pool teacher features to the student's spatial size
        "translator": {"width": None, "final_kernel_size": 3, "batch_norm": False, "final_activation": True,
                       "negative_slope": 0.1},
        "kd": {"enabled": False, "weight": 1.0, "temperature": 4.0},
    },
    "data": {
        "dataset": "cifar100",  # cifar100 | cifar10 | imagefolder | synthetic
        "root": "data/cifar100",
        "backend": "auto",
        "batch_size": 128,  # per process
        "eval_batch_size": 256,
        "image_size": 32,
        "num_threads": 2,
        "download": False,
        "num_classes": None,  # synthetic data: number of classes
        "skip_corrupt": False,
    },
    "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "apex": False},
    # FT's official train_student.py: lr 0.1, x0.1 after epochs 82 and 123, its `for epoch in
    # range(0, 163 + 1)` loop runs 164 epochs
    "schedule": {"name": "multistep", "epochs": 164, "milestones": [82, 123], "gamma": 0.1,
                 "warmup_epochs": 0, "min_lr": 0.0},
    "train": {
        "seed": 0,
        "device": "auto",  # auto | cpu | cuda
        "precision": "auto",  # auto (bf16 on CUDA when supported, fp32 on CPU) | bf16 | fp16 | fp32
        "channels_last": "auto",  # auto (on CUDA) | true | false
        "compile": False,
        "deterministic": False,
        "log_every": 50,
        "max_steps_per_epoch": None,  # cap on steps per epoch (smoke runs, benchmarks)
        "eval_every": 1,
        "progress": "auto",  # auto (bar on a TTY, plain lines otherwise) | bar | lines | none
    },
}
TEACHER_DEFAULTS = {"name": None, "checkpoint": None, "weights": None, "kwargs": {}}
NULLABLE_TYPES = {
    ("method", "translator", "width"): (int,),
    ("data", "num_classes"): (int,),
    ("train", "max_steps_per_epoch"): (int,),
}
CHOICES = {
    ("method", "name"): ("baseline", "kd", "pfeed", "sfeed"),
    ("method", "backend"): BACKENDS,
    ("method", "feature_pool"): ("none", "adaptive"),
    ("data", "dataset"): ("cifar100", "cifar10", "imagefolder", "synthetic"),
    ("schedule", "name"): ("multistep", "cosine", "constant"),
    ("train", "device"): ("auto", "cpu", "cuda"),
    ("train", "precision"): ("auto", "bf16", "fp16", "fp32"),
    ("train", "progress"): ("auto", "bar", "lines", "none"),
}
BOOL_OR_AUTO = {("train", "channels_last")}


class ConfigError(ValueError):
    pass


def _merge(defaults: Any, given: Any, path: tuple[str, ...]) -> Any:
    key = ".".join(path) or "<root>"
    if path == ("teachers",):
        if not isinstance(given, list):
            raise ConfigError(f"teachers must be a list of {{name, checkpoint|weights}} mappings, got {given!r}")
        return [_merge(TEACHER_DEFAULTS, t, ("teachers", str(i))) for i, t in enumerate(given)]
    if isinstance(defaults, dict) and not (path and path[-1] == "kwargs"):
        if not isinstance(given, dict):
            raise ConfigError(f"{key} must be a mapping, got {given!r}")
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ConfigError(f"unknown key {'.'.join(path + (unknown[0],))!r}; {key} takes {sorted(defaults)}")
        return {k: _merge(v, given[k], path + (k,)) if k in given else copy.deepcopy(v) for k, v in defaults.items()}
    return _check_type(defaults, given, path)


def _check_type(default: Any, value: Any, path: tuple[str, ...]) -> Any:
    key = ".".join(path)
    schema_path = tuple("*" if p.isdigit() else p for p in path)
    if path in BOOL_OR_AUTO:
        if value == "auto" or isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true, false or 'auto', got {value!r}")
    if path and path[-1] == "kwargs":
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of keyword arguments, got {value!r}")
        return value
    if default is None:
        if value is None:
            return None
        allowed = NULLABLE_TYPES.get(path, (str,))
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ConfigError(f"{key} must be null or {'/'.join(t.__name__ for t in allowed)}, got {value!r}")
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{key} must be {type(default).__name__}, got {value!r} ({type(value).__name__})")
    choices = CHOICES.get(schema_path)
    if choices and value not in choices:
        raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. optim.lr=0.05), got {text!r}")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for i, k in enumerate(keys[:-1]):
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(f"--set {text!r}: {'.'.join(keys[:i])} has {len(node)} entries, got index {k!r}")
                node = node[int(k)]
            else:
                node = node.setdefault(k, {})
        if isinstance(node, list):
            node[int(keys[-1])] = value
        else:
            node[keys[-1]] = value
    return raw


def resolve(raw: dict | None, overrides: Iterable[str] = (), *, check_paths: bool = True) -> dict:
    """Defaults + `raw` + overrides, type-checked, then cross-field checks. Returns a new nested dict."""
    raw = apply_overrides(raw or {}, overrides)
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping at top level, got {type(raw).__name__}")
    cfg = _merge(DEFAULTS, raw, ())
    validate(cfg, check_paths=check_paths)
    return cfg


def bundled_config(name: str) -> Path | None:
    """The YAML of that name shipped in the package (the repository's configs/, as feed_fast.configs)."""
    from importlib import resources

    stem = Path(name).name
    candidate = resources.files("feed_fast.configs") / (stem if stem.endswith(".yaml") else f"{stem}.yaml")
    return Path(str(candidate)) if candidate.is_file() else None


def load_config(path: str | os.PathLike, overrides: Iterable[str] = (), *, check_paths: bool = True) -> dict:
    path = Path(path)
    if not path.is_file():
        # Not a file here: maybe a config shipped with the package, named as in configs/.
        path = bundled_config(str(path)) or path
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (nor is it one of the configs shipped "
                          "in feed_fast.configs)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    return resolve(raw, overrides, check_paths=check_paths)


def validate(cfg: dict, *, check_paths: bool = True) -> None:
    from ..models import check_model_name

    def model_ok(key: str, name) -> None:
        try:
            check_model_name(name)
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None

    model_ok("model.name", cfg["model"]["name"])
    method = cfg["method"]
    for i, t in enumerate(cfg["teachers"]):
        if t["name"] is None:
            raise ConfigError(f"teachers.{i}.name is missing (a model name such as resnet56 or resnet34)")
        model_ok(f"teachers.{i}.name", t["name"])
        if t["checkpoint"] and t["weights"]:
            raise ConfigError(f"teachers.{i}: give checkpoint or weights, not both")
        if t["checkpoint"] is None and t["weights"] is None:
            raise ConfigError(f"teachers.{i} ({t['name']}) needs a checkpoint (local file) or weights "
                              "(a torchvision weights name); an untrained teacher teaches nothing")
        if t["weights"]:
            import torchvision

            try:  # resolves the name offline; the download happens when the teacher is built
                torchvision.models.get_weight(t["weights"])
            except (ValueError, KeyError, AttributeError):
                raise ConfigError(f"teachers.{i}.weights {t['weights']!r} is not a torchvision weights name "
                                  "(e.g. ResNet34_Weights.IMAGENET1K_V1)") from None
        if check_paths and t["checkpoint"] and not Path(t["checkpoint"]).is_file():
            raise ConfigError(f"teachers.{i}.checkpoint {t['checkpoint']!r} does not exist")
    if method["name"] in ("kd", "pfeed") and not cfg["teachers"]:
        raise ConfigError(f"method.name={method['name']!r} needs at least one entry in teachers")
    if method["generations"] < 1:
        raise ConfigError(f"method.generations must be >= 1, got {method['generations']}")
    if method["translator"]["final_kernel_size"] not in (1, 3):
        raise ConfigError(f"method.translator.final_kernel_size must be 1 or 3, "
                          f"got {method['translator']['final_kernel_size']}")
    for key in ("beta",):
        if method[key] < 0:
            raise ConfigError(f"method.{key} must be >= 0, got {method[key]}")
    if method["kd"]["temperature"] <= 0:
        raise ConfigError(f"method.kd.temperature must be > 0, got {method['kd']['temperature']}")
    data = cfg["data"]
    for key in ("batch_size", "eval_batch_size", "image_size", "num_threads"):
        if data[key] < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {data[key]}")
    if data["dataset"] == "synthetic":
        if data["num_classes"] is None:
            raise ConfigError("data.num_classes is required for data.dataset=synthetic")
    elif data["num_classes"] is not None:
        raise ConfigError(f"data.num_classes is for data.dataset=synthetic only; {data['dataset']} reads its "
                          "classes from the data")
    elif check_paths and not data["download"] and not Path(data["root"]).exists():
        raise ConfigError(f"data.root {data['root']!r} does not exist (dataset {data['dataset']}); "
                          "point data.root at the data or set data.download=true for CIFAR")
    sched = cfg["schedule"]
    if sched["epochs"] < 1:
        raise ConfigError(f"schedule.epochs must be >= 1, got {sched['epochs']}")
    if sched["warmup_epochs"] < 0 or sched["warmup_epochs"] > sched["epochs"]:
        raise ConfigError(f"schedule.warmup_epochs must be in [0, epochs], got {sched['warmup_epochs']}")
    if sorted(sched["milestones"]) != sched["milestones"]:
        raise ConfigError(f"schedule.milestones must be increasing, got {sched['milestones']}")
    if cfg["optim"]["lr"] <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg['optim']['lr']}")
    train = cfg["train"]
    if train["log_every"] < 1 or train["eval_every"] < 1:
        raise ConfigError("train.log_every and train.eval_every must be >= 1")
    if train["max_steps_per_epoch"] is not None and train["max_steps_per_epoch"] < 1:
        raise ConfigError(f"train.max_steps_per_epoch must be >= 1 or null, got {train['max_steps_per_epoch']}")
