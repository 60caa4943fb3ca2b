"""The typed run config: every key of the schema, given a bad value through `feed-fast train --set`, is refused
with exit code 2 and a one-line error naming the key, before any work starts (the walk is generated from the
dataclasses, so a key added later is walked too); mistakes found only when the run's parts are built (a teacher
checkpoint of another shape, a model keyword the model does not take) exit 2 the same way; and the resolved
config round-trips through the nested dict that config.yaml holds."""
from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import torch
import yaml

from feed_fast.cli import main
from feed_fast.config import ConfigError, MethodConfig, RunConfig
from feed_fast.config.parse import Above, AtLeast
from feed_fast.engine.checkpoint import student_export
from feed_fast.methods import METHODS
from feed_fast.models import build_model

TINY = {"widths": [4, 8, 16]}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(student_export("resnet8", 5, TINY, build_model("resnet8", 5, **TINY)), path)
    return path


@pytest.fixture
def config_file(tmp_path, teacher_file):
    """A valid tiny run with one teacher entry, so that every teacher key is walked too."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": "resnet8", "kwargs": TINY},
        "teachers": [{"name": "resnet8", "checkpoint": str(teacher_file), "kwargs": TINY}],
        "method": {"name": "pfeed", "backend": "torch"},
        "data": {"dataset": "synthetic", "root": "", "num_classes": 5, "batch_size": 8, "eval_batch_size": 8,
                 "image_size": 16},
        "schedule": {"name": "cosine", "epochs": 1, "milestones": []},
        "train": {"device": "cpu", "progress": "none", "max_steps_per_epoch": 1},
    }))
    return path


def schema_keys(cls=RunConfig, prefix=""):
    """(dotted key, type) of every key in the schema, sections included; list entries as index 0."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        yield key, tp
        if dataclasses.is_dataclass(tp):
            yield from schema_keys(tp, key + ".")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            yield from schema_keys(typing.get_args(tp)[0], key + ".0.")


def members(tp):
    """The non-null types a key takes, with their Annotated bounds."""
    if typing.get_origin(tp) in (typing.Union, type(int | None)):
        return [m for m in typing.get_args(tp) if m is not type(None)]
    return [tp]


def bad_values(tp) -> list:
    """YAML texts of values the key must refuse: one of the wrong kind, one past each bound, NaN for floats."""
    kinds = [typing.get_args(m)[0] if typing.get_origin(m) is typing.Annotated else m for m in members(tp)]
    values = ["5" if str in kinds else "bogus"]
    for member in members(tp):
        if typing.get_origin(member) is typing.Annotated:
            base, *rules = typing.get_args(member)
            for rule in rules:
                step = 1 if base is int else 0.5
                values.append(str(rule.bound - step if isinstance(rule, AtLeast) else rule.bound))
        if member is float or (typing.get_origin(member) is typing.Annotated and typing.get_args(member)[0] is float):
            values.append(".nan")
    return values


WALK = [(key, value) for key, tp in schema_keys() for value in bad_values(tp)]


def test_the_walk_covers_every_section_and_bound():
    keys = {key for key, _ in WALK}
    assert {"model", "teachers", "teachers.0.checkpoint", "method.translator.final_kernel_size", "method.kd.weight",
            "data.backend", "data.image_size", "schedule.milestones", "train.channels_last"} <= keys
    assert ("data.batch_size", "0") in WALK and ("optim.lr", "0") in WALK and ("optim.lr", ".nan") in WALK
    assert len(keys) >= 55  # 7 sections' worth of keys


@pytest.mark.parametrize(("key", "value"), WALK, ids=[f"{k}={v}" for k, v in WALK])
def test_every_key_with_a_bad_value_exits_2_naming_the_key(tmp_path, config_file, capsys, key, value):
    out = tmp_path / "run"
    assert main(["train", str(config_file), "--out", str(out), "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("feed-fast train: error:") and key in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing was started


def test_the_baseline_run_is_valid(config_file):
    """The walk's failures come from its bad values alone."""
    from feed_fast.config import load_config

    cfg = load_config(config_file)
    assert cfg.method.name == "pfeed" and cfg.teachers[0].kwargs == TINY


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.backend=dail"], "data.backend must be one of ['auto', 'dali', 'torchvision'], got 'dail'"),
    (["model.kwargs={depth_typo: 3}"], "model.kwargs: "),
    (["teachers.0.kwargs={widths: [4, 8, 32]}"], "teachers.0 (resnet8): checkpoint "),  # another shape
    (["teachers.0.checkpoint=null"], "teachers.0 (resnet8) needs a checkpoint"),
    (["schedule.warmup_epochs=2"], "schedule.warmup_epochs must be in [0, epochs=1], got 2"),
    (["method.name=kd", "teachers=[]"], "method.name='kd' needs at least one entry in teachers"),
])
def test_mistakes_found_while_building_the_run_exit_2_too(tmp_path, config_file, capsys, overrides, message):
    args = [arg for text in overrides for arg in ("--set", text)]
    assert main(["train", str(config_file), "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_dali_asked_for_without_dali_is_a_config_error(monkeypatch):
    from feed_fast.config import schema

    monkeypatch.setattr(schema, "dali_available", lambda: False)
    with pytest.raises(ConfigError, match=r"data.backend=dali needs NVIDIA DALI"):
        RunConfig.from_dict({"method": {"name": "baseline"},
                             "data": {"dataset": "imagefolder", "root": "", "backend": "dali"}}, check_paths=False)


def test_typed_fields_defaults_and_the_round_trip():
    cfg = RunConfig.from_dict({"method": {"name": "baseline", "kd": {"weight": 2}},
                               "data": {"dataset": "synthetic", "root": "", "num_classes": 3, "image_size": None}})
    assert cfg.method.kd.weight == 2.0 and isinstance(cfg.method.kd.weight, float)
    assert cfg.data.image_size is None and cfg.train.seed == 0 and cfg.schedule.milestones == [82, 123]
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict())) == cfg.to_dict()  # config.yaml holds the nested dict
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.seed = 1  # type: ignore[misc]


def test_choices_come_from_the_registries_that_own_them():
    from feed_fast.loaders.build import BACKENDS, DATASETS

    from feed_fast.config import schema
    from feed_fast.ops.validation import BACKENDS as LOSS_BACKENDS
    from feed_fast.runtime import DEVICES, PRECISIONS

    hints = {cls: typing.get_type_hints(cls) for cls in (schema.MethodConfig, schema.DataConfig, schema.TrainConfig)}
    assert typing.get_args(hints[schema.MethodConfig]["name"]) == tuple(METHODS)
    assert typing.get_args(hints[schema.MethodConfig]["backend"]) == tuple(LOSS_BACKENDS)
    assert typing.get_args(hints[schema.DataConfig]["dataset"]) == tuple(DATASETS)
    assert typing.get_args(hints[schema.DataConfig]["backend"]) == tuple(BACKENDS)
    assert typing.get_args(hints[schema.TrainConfig]["device"]) == tuple(DEVICES)
    assert typing.get_args(hints[schema.TrainConfig]["precision"]) == tuple(PRECISIONS)


def test_whether_a_method_needs_teachers_is_the_methods_own_declaration(monkeypatch):
    assert {name for name, method in METHODS.items() if method.requires_teachers} == {"kd", "pfeed"}
    no_teachers = {"method": {"name": "kd"}, "data": {"dataset": "synthetic", "root": "", "num_classes": 3}}
    with pytest.raises(ConfigError, match="needs at least one entry in teachers"):
        RunConfig.from_dict(no_teachers)
    monkeypatch.setattr(METHODS["kd"], "requires_teachers", False)
    assert RunConfig.from_dict(no_teachers).method == MethodConfig(name="kd")


def test_bounds_are_checked_where_they_are_declared():
    assert math.isclose(Above(0).bound, 0) and not Above(0).holds(0) and AtLeast(0).holds(0)
    with pytest.raises(ConfigError, match="method.translator.width must be >= 1, got 0"):
        RunConfig.from_dict({"method": {"name": "baseline", "translator": {"width": 0}},
                             "data": {"dataset": "synthetic", "root": "", "num_classes": 3}})
