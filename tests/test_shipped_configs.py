"""The configs we ship, run as users run them (issue #15): every YAML in configs/ and the demo's pFEED student
config, loaded by name with `--set` overrides only for what this machine lacks (the data's place, tiny images and
batches, two steps an epoch, teacher checkpoints instead of downloads), with its own models, method and settings.
Each run is stopped after its first epoch and resumed (`train --resume`), under every loader backend `make`
installs for its dataset; then step mode and `compile: true` for one config of each model family.

Data: CIFAR-100 pickles and a JPEG image folder written here. Teachers: random exports of the configured
architecture (an untrained teacher distils as well as a trained one for this purpose). Slow: the CIFAR-100
models are the paper's (ResNet-56, WRN-28-10, ResNeXt-29 16x64d) at 8 px."""
from __future__ import annotations

from functools import cache
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import yaml
from _loader_data import make_image_folder, write_cifar

from feed_fast.config import load_config
from feed_fast.engine import resume, train
from feed_fast.engine.checkpoint import load_exported_student, student_export
from feed_fast.models import build_model
from feed_fast.runtime.device import compile_backend

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
HAS_DALI = find_spec("nvidia") is not None and find_spec("nvidia.dali") is not None
HAS_TIMM = find_spec("timm") is not None
IMAGE_SIZE = {"cifar100": 8, "cifar10": 8, "imagefolder": 32, "synthetic": 16}


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("shipped-data")
    write_cifar(str(root / "cifar100"), "cifar100", train=8, test=4)
    make_image_folder(str(root / "imagenet"), per_class=2)
    return {"cifar100": str(root / "cifar100"), "imagefolder": str(root / "imagenet"), "synthetic": ""}


@cache
def teacher_file(folder: str, name: str, classes: int, kwargs: str) -> str:
    """A random export of the teacher's architecture (one file per architecture, shared by its entries)."""
    path = Path(folder) / f"{name.replace('/', '_')}-{classes}.pt"
    torch.manual_seed(1)
    model = build_model(name, classes, **yaml.safe_load(kwargs))
    torch.save(student_export(name, classes, yaml.safe_load(kwargs), model), path)
    return str(path)


def num_classes(dataset: str, root: str, raw: dict) -> int:
    if dataset == "cifar100":
        return 100
    if dataset == "imagefolder":
        return len(list((Path(root) / "train").iterdir()))
    return raw["data"].get("num_classes", 10)


def user_overrides(name: str, roots: dict, folder: Path, backend: str | None) -> list[str]:
    """What a user on this machine sets on the command line to run shipped config `name` for two short epochs."""
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    dataset = raw["data"]["dataset"]
    sets = [f"data.root={roots[dataset]}"] if roots[dataset] else []
    sets += [f"data.image_size={IMAGE_SIZE[dataset]}", "data.batch_size=2",
            "data.eval_batch_size=4", "schedule.epochs=2", "train.max_steps_per_epoch=2", "train.device=cpu",
            "train.progress=none"]
    if dataset == "imagefolder":
        sets += ["data.num_threads=1"]
    if raw.get("schedule", {}).get("warmup_epochs", 0) > 1:  # the warm-up fits the two epochs
        sets += ["schedule.warmup_epochs=1"]
    if "global_batch_size" in raw["data"]:
        sets += ["data.global_batch_size=2"]
    if backend is not None:
        sets += [f"data.backend={backend}"]
    classes = num_classes(dataset, roots[dataset], raw)
    for i, t in enumerate(raw.get("teachers") or []):  # one --set per teacher; it replaces the entry's weights
        path = teacher_file(str(folder), t["name"], classes, yaml.safe_dump(t.get("kwargs", {})))
        sets += [f"teachers.{i}.checkpoint={path}"]
    return sets


def backends_for(name: str) -> list:
    """The loader backends `make` installs for the config's dataset (None: the dataset has one loader)."""
    dataset = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["data"]["dataset"]
    return ["dali", "torchvision"] if dataset == "imagefolder" else [None]


def needs(name: str, backend: str | None = None) -> list:
    text = (CONFIGS / f"{name}.yaml").read_text()
    marks = [pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed")] if "timm/" in text else []
    if backend == "dali":
        marks.append(pytest.mark.skipif(not HAS_DALI, reason="DALI is not installed"))
    return marks


CASES = [pytest.param(name, backend, id=f"{name}-{backend or 'own'}", marks=needs(name, backend))
         for name in SHIPPED for backend in backends_for(name)]


def stop_and_resume(cfg, out: Path) -> tuple[dict, dict]:
    first = train(cfg, out, max_epochs=1)
    return first, resume(out)


def check_finished(first: dict, done: dict, out: Path) -> None:
    assert first["interrupted"] and not done["interrupted"]
    last = done if "history" in done else done["generations"][-1]
    history = last["history"]
    assert [r["epoch"] for r in history] == [0, 1]
    assert all(torch.isfinite(torch.tensor(r["loss"]["total"])) for r in history)
    assert "val" in history[-1] and 0 <= history[-1]["val"]["top1"] <= 100
    model, meta = load_exported_student(Path(last["export"]))
    assert meta["model"] and sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name, backend", CASES)
def test_shipped_config_runs_stops_and_resumes(name, backend, data_roots, tmp_path):
    cfg = load_config(name, user_overrides(name, data_roots, tmp_path, backend))
    first, done = stop_and_resume(cfg, tmp_path / "run")
    check_finished(first, done, tmp_path / "run")


def test_the_demo_student_config_runs_stops_and_resumes(data_roots, tmp_path):
    from feed_fast.config import RunConfig
    from feed_fast.demo.plan import student_plan
    from feed_fast.demo.runner import student_config
    from feed_fast.demo.settings import DemoSettings

    settings = DemoSettings(epochs=2, device="cpu", batch_size=2, extra={"train.max_steps_per_epoch": 2,
                                                                        "train.progress": "none"})
    spec = next(s for s in student_plan(settings) if s.method == "pfeed")
    classes = num_classes("imagefolder", data_roots["imagefolder"], {})
    teacher = {"name": settings.teacher_model, "kwargs": settings.teacher_kwargs,
               "checkpoint": teacher_file(str(tmp_path), settings.teacher_model, classes, "{}")}
    raw = student_config(settings, Path(data_roots["imagefolder"]), spec, [teacher] * settings.num_teachers, seed=0)
    first, done = stop_and_resume(RunConfig.from_dict(raw), tmp_path / "run")
    check_finished(first, done, tmp_path / "run")


# One config per model family, in the compiled modes: a torchvision ResNet-18 from a torchvision ResNet-34 (step and
# compile: true) and from timm ResNet-34s (step). The CIFAR family's classes run step mode in test_step_modes.py
# (ResNet-8, the same CifarResNet class); compiling ResNet-56 here cost minutes of the suite's budget.
# These runs check the config's way through the compiled modes (fullgraph units traced by Dynamo and AOTAutograd,
# stop and resume) with the aot_eager backend: Inductor's C++ build of three ResNet-34s cost minutes of a cold CI
# run. Each family's capture against eager is tests/test_step_mode_families.py's, Inductor's whole step
# tests/test_step_modes.py's.
FAMILY_RUNS = [("imagenet_resnet18_pfeed", "step"), ("imagenet_resnet18_pfeed", "true"),
               ("imagenet_resnet18_timm_resnet34_pfeed", "step")]


@pytest.mark.parametrize(("name", "compile_setting"),
                         [pytest.param(n, c, id=f"{n}-{c}", marks=needs(n)) for n, c in FAMILY_RUNS])
def test_one_config_per_family_in_the_compiled_modes(name, compile_setting, data_roots, tmp_path):
    sets = user_overrides(name, data_roots, tmp_path, "torchvision" if "imagenet" in name else None)
    cfg = load_config(name, [*sets, f"train.compile={compile_setting}", "train.ema.enabled=false"])
    with compile_backend("aot_eager"):
        first, done = stop_and_resume(cfg, tmp_path / "run")
    check_finished(first, done, tmp_path / "run")


@pytest.mark.parametrize("name", SHIPPED)
def test_a_config_whose_teachers_are_earlier_runs_says_how_to_train_them(name):
    """A new user's first run of a CIFAR pFEED config stops at its missing teacher checkpoints: the config's own
    header names the command that makes each one (runs/<name>/model.pt from a baseline config)."""
    text = (CONFIGS / f"{name}.yaml").read_text()
    from_runs = [t["checkpoint"] for t in yaml.safe_load(text).get("teachers") or []
                 if str(t.get("checkpoint", "")).startswith("runs/")]
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    if from_runs:
        assert "train them first with" in header and "_baseline.yaml" in header, name
        for checkpoint in from_runs:
            assert "--out runs/" + checkpoint.split("/")[1].rsplit("seed", 1)[0] in header, (name, checkpoint)
