"""The Translator's default shape against FT's official translator (Conv3x3 in->in, in->out, out->out, each
followed by LeakyReLU(0.1), bias, no BatchNorm), and the shipped configs it leaves unchanged."""
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from feed_fast import Translator
from feed_fast.models import build_model, count_parameters, is_cifar_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def ft_translator(in_planes: int, planes: int) -> nn.Sequential:
    """FT's official `Translator(in_planes, planes)` (Models/FeatureProjection.py), written as a Sequential."""
    return nn.Sequential(
        nn.Conv2d(in_planes, in_planes, 3, padding=1), nn.LeakyReLU(0.1),
        nn.Conv2d(in_planes, planes, 3, padding=1), nn.LeakyReLU(0.1),
        nn.Conv2d(planes, planes, 3, padding=1), nn.LeakyReLU(0.1),
    )


def test_default_width_is_ft_shape_64_to_32():
    translator = Translator(64, 32)
    assert translator.width == 32
    assert count_parameters(translator) == count_parameters(ft_translator(64, 32)) == 64_640  # FT's count
    convs = [m for m in translator.modules() if isinstance(m, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(64, 64, 3, 3), (32, 64, 3, 3), (32, 32, 3, 3)]


@pytest.mark.parametrize(("c_in", "c_out"), [(5, 3), (3, 7), (4, 4)])
def test_default_translator_computes_what_ft_computes(c_in, c_out):
    torch.manual_seed(0)
    ours, ft = Translator(c_in, c_out), ft_translator(c_in, c_out)
    # same parameter order (conv0, conv1, conv2; weight then bias): FT's weights load one to one
    with torch.no_grad():
        for mine, theirs in zip(ours.parameters(), ft.parameters(), strict=True):
            mine.copy_(torch.randn_like(theirs))
            theirs.copy_(mine)
    x = torch.randn(2, c_in, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(ours.double()(x), ft.double()(x))


def test_in_equals_out_keeps_the_old_shape_and_width_overrides():
    assert Translator(16, 16).width == 16 and count_parameters(Translator(16, 16)) == 3 * (16 * 16 * 9 + 16)
    translator = Translator(64, 32, width=64)  # the pre-FT default, still available
    assert count_parameters(translator) == 92_320
    assert [c.out_channels for c in translator.modules() if isinstance(c, nn.Conv2d)] == [64, 64, 32]


@pytest.mark.parametrize("width", [0, -3, 2.5, True])
def test_bad_width_names_the_argument(width):
    with pytest.raises(ValueError, match=f"width must be a positive int, got {width!r}"):
        Translator(4, 8, width=width)


def teacher_specs(config: dict) -> list[tuple[str, dict]]:
    specs = [(t["name"], t.get("kwargs") or {}) for t in config.get("teachers") or []]
    if config.get("method", {}).get("name") == "sfeed":  # each generation teaches the next: same architecture
        specs.append((config["model"]["name"], config["model"].get("kwargs") or {}))
    return specs


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_are_unaffected_by_the_width_rule(path):
    """The rule changes nothing when a teacher's channels equal the student's; every shipped config is so."""
    config = yaml.safe_load(path.read_text())
    specs = teacher_specs(config)
    if any(name.startswith("timm/") for name, _ in specs):
        pytest.importorskip("timm")
    student_name = config["model"]["name"]
    classes = 100 if is_cifar_model(student_name) else 1000
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        student = build_model(student_name, classes, **config["model"].get("kwargs") or {})
        teachers = [build_model(name, classes, **kwargs) for name, kwargs in specs]
    assert all(t.feature_channels == student.feature_channels for t in teachers), (
        path.name, student.feature_channels, [t.feature_channels for t in teachers])
