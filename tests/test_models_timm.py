"""timm models by name (`timm/<arch>[.<tag>]`): the feature tap per family (ResNet, ConvNeXt, EfficientNet),
logits from the same forward, the student export loading into a plain `timm.create_model`, a checkpoint through
the teacher path, pretrained weights read from a Hugging Face cache offline, name/weights errors, and the
errors when timm is missing. Tiny timm models at 64 px; sockets are blocked and HF_HUB_OFFLINE=1: nothing is
ever downloaded."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub, which reads it once

import socket
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import yaml

from feed_fast.models import build_model, check_model_name, check_weights
from feed_fast.models.timm_models import TimmNotInstalledError, normalization_mismatch
from feed_fast.models.zoo_weights import WeightsUnavailable

needs_timm = pytest.mark.skipif(find_spec("timm") is None,
                                reason="timm is not installed: pip install 'feed-fast[timm]'")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "imagenet_resnet18_timm_resnet34_pfeed.yaml"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails loudly, and the hub stays in offline mode even if imported earlier."""
    def refuse(*args, **kwargs):
        raise OSError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    if constants := sys.modules.get("huggingface_hub.constants"):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def x64(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def check_common(model, x, channels, classes):
    """The interface every model has: tap shape, channels, logits of one forward == forward, extract_features."""
    feature, logits = model.forward_features(x)
    assert tuple(feature.shape) == (x.shape[0], channels, 2, 2)  # stride 32 at 64 px: before pooling
    assert model.feature_channels == channels
    assert logits.shape == (x.shape[0], classes)
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(feature, model.extract_features(x))
    return feature, logits


@needs_timm
def test_resnet_tap_is_layer4_after_its_relu():
    torch.manual_seed(0)
    model = build_model("timm/resnet10t", 7).eval()
    net, x = model.plain_module(), x64()
    feature, logits = check_common(model, x, 512, 7)
    with torch.no_grad():
        stem = net.maxpool(net.act1(net.bn1(net.conv1(x))))
        layer4 = net.layer4(net.layer3(net.layer2(net.layer1(stem))))
    torch.testing.assert_close(feature, layer4)
    assert feature.min() >= 0  # after the last block's ReLU
    torch.testing.assert_close(logits, net.fc(feature.mean(dim=(2, 3))))  # then average pooling and fc


@needs_timm
def test_convnext_tap_is_the_last_stage_before_the_head_norm():
    torch.manual_seed(0)
    model = build_model("timm/test_convnext.r160_in1k", 5).eval()
    net, x = model.plain_module(), x64()
    feature, logits = check_common(model, x, 64, 5)
    with torch.no_grad():
        torch.testing.assert_close(feature, net.stages(net.stem(x)))
        # the head: average pooling, LayerNorm, fc; the tap has no activation after the last residual sum
        pooled = net.head.norm(feature.mean(dim=(2, 3), keepdim=True)).flatten(1)
        torch.testing.assert_close(logits, net.head.fc(pooled))
    assert feature.min() < 0


@needs_timm
def test_efficientnet_tap_is_after_the_head_conv_bn_and_activation():
    torch.manual_seed(0)
    model = build_model("timm/test_efficientnet.r160_in1k", 3).eval()
    net, x = model.plain_module(), x64()
    feature, logits = check_common(model, x, 256, 3)
    with torch.no_grad():
        torch.testing.assert_close(feature, net.bn2(net.conv_head(net.blocks(net.bn1(net.conv_stem(x))))))
        torch.testing.assert_close(logits, net.classifier(feature.mean(dim=(2, 3))))


@needs_timm
def test_student_export_loads_into_plain_timm_create_model():
    import timm

    torch.manual_seed(0)
    student = build_model("timm/resnet10t", 7, drop_path_rate=0.0)  # kwargs reach timm.create_model
    with torch.no_grad():  # move away from any initialisation a fresh model could share
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    plain = timm.create_model("resnet10t", num_classes=7)
    plain.load_state_dict(student.plain_module().state_dict())  # strict: same keys, same shapes
    x = x64()
    torch.testing.assert_close(plain.eval()(x), student.eval()(x))
    # the wrapper adds nothing to the export: its state is the timm model's, under "net."
    assert {k.removeprefix("net.") for k in student.state_dict()} == set(plain.state_dict())


@needs_timm
def test_checkpoint_loads_through_the_teacher_path(tmp_path):
    torch.manual_seed(1)
    trained = build_model("timm/test_resnet.r160_in1k", 4).eval()
    path = tmp_path / "teacher.pt"
    torch.save(trained.plain_module().state_dict(), path)
    # what engine/teachers.py does: build by name (no weights), load the checkpoint into plain_module()
    torch.manual_seed(2)
    teacher = build_model("timm/test_resnet.r160_in1k", 4, weights=None)
    teacher.plain_module().load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    x = x64()
    torch.testing.assert_close(teacher.eval().forward_features(x)[0], trained.forward_features(x)[0])


@needs_timm
@pytest.mark.usefixtures("one_torch_thread")
def test_pfeed_run_with_timm_teacher_and_student_exports_a_plain_timm_model(tmp_path, capsys):
    """`feed-fast train` end to end: a timm ResNet teacher from a checkpoint teaches a timm ConvNeXt student
    (64 -> 96 channels: the translator's width rule at work), and the export loads into timm.create_model."""
    import timm

    from feed_fast.cli import main

    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.pt"
    torch.save(build_model("timm/test_resnet.r160_in1k", 5).plain_module().state_dict(), teacher_file)
    config = {
        "model": {"name": "timm/test_convnext.r160_in1k"},
        "teachers": [{"name": "timm/test_resnet.r160_in1k", "checkpoint": str(teacher_file)}],
        "method": {"name": "pfeed"},
        "data": {"dataset": "synthetic", "root": "", "num_classes": 5, "batch_size": 8, "eval_batch_size": 16,
                 "image_size": 64},
        "schedule": {"name": "cosine", "epochs": 1, "milestones": []},
        "optim": {"lr": 0.05},
        "train": {"device": "cpu", "progress": "lines", "log_every": 5, "max_steps_per_epoch": 3},
    }
    path = tmp_path / "timm.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    assert "feed_0=" in capsys.readouterr().err  # the FEED term ran
    export = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=True)
    plain = timm.create_model("test_convnext.r160_in1k", num_classes=5)
    plain.load_state_dict(export["state_dict"])  # strict: no translator keys, nothing missing
    student = build_model("timm/test_convnext.r160_in1k", 5)
    student.plain_module().load_state_dict(export["state_dict"])
    x = x64()
    torch.testing.assert_close(plain.eval()(x), student.eval()(x))


def fake_hub_cache(root, repo_id: str, state: dict) -> None:
    """A Hugging Face hub cache holding `state` as the repo's model.safetensors, as a download would leave it."""
    from safetensors.torch import save_file

    repo = root / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save_file({k: v.contiguous() for k, v in state.items()}, repo / "snapshots" / revision / "model.safetensors")


@needs_timm
def test_pretrained_weights_come_from_the_hub_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import timm

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    torch.manual_seed(3)
    cached = timm.create_model("test_resnet.r160_in1k").state_dict()
    fake_hub_cache(tmp_path, "timm/test_resnet.r160_in1k", cached)

    # this tag was trained on mean = std = 0.5 inputs: building it says so
    with pytest.warns(UserWarning, match=r"expect inputs normalized with mean=\(0.5, 0.5, 0.5\)"):
        teacher = build_model("timm/test_resnet.r160_in1k", 1000, weights="pretrained")
    loaded = teacher.plain_module().state_dict()
    assert loaded.keys() == cached.keys()
    assert all(torch.equal(loaded[k], cached[k]) for k in cached)

    with pytest.raises(ValueError, match="give 1000 classes, the data has 10"):
        build_model("timm/test_resnet.r160_in1k", 10, weights="pretrained")
    # not in the cache while offline: a clear error saying where the weights come from
    with pytest.raises(WeightsUnavailable, match="Hugging Face cache .*HF_HUB_OFFLINE=1.*or give a checkpoint file"):
        build_model("timm/test_convnext.r160_in1k", 1000, weights="pretrained")


@needs_timm
def test_names_and_weights_are_checked_offline():
    check_model_name("timm/resnet50.a1_in1k")  # arch and tag from timm's registry, nothing downloaded
    check_model_name("timm/convnext_tiny")
    check_weights("timm/resnet50.a1_in1k", "pretrained")
    check_weights("timm/resnet50", None)
    with pytest.raises(ValueError, match="no architecture 'resnet5'.*close names: resnet50"):
        check_model_name("timm/resnet5")
    with pytest.raises(ValueError, match="no tag 'bogus' for 'resnet50'; known: timm/resnet50.a1_in1k"):
        check_model_name("timm/resnet50.bogus")
    with pytest.raises(ValueError, match="expected timm/<architecture>"):
        check_model_name("timm/")
    with pytest.raises(ValueError, match="timm models take weights: pretrained"):
        check_weights("timm/resnet50", "IMAGENET1K_V1")
    with pytest.raises(ValueError, match="timm has no pretrained weights for 'timm/resnet50t'"):
        check_weights("timm/resnet50t", "pretrained")
    with pytest.raises(ValueError, match="unknown model 'timm/resnet5'"):
        build_model("timm/resnet5", 10)
    with pytest.raises(ValueError, match="feature_node is for torchvision models"):
        build_model("timm/resnet10t", 10, feature_node="layer4")


@needs_timm
def test_token_outputs_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match=r"forward_features gives shape \(1, \d+, 64\), not an \(N, C, H, W\) map"):
        build_model("timm/test_vit.r160_in1k", 5)


@needs_timm
def test_shipped_timm_config_passes_the_model_checks():
    """What config validation asks of models: every name and weights spec in the shipped timm config."""
    config = yaml.safe_load(CONFIG.read_text())
    assert any(t["name"].startswith("timm/") for t in config["teachers"])
    check_model_name(config["model"]["name"])
    for teacher in config["teachers"]:
        check_weights(teacher["name"], teacher.get("weights"))


def test_normalization_mismatch_names_both_conventions():
    assert normalization_mismatch({"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}) is None
    note = normalization_mismatch({"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})
    assert "mean=(0.5, 0.5, 0.5)" in note and "mean=(0.485, 0.456, 0.406)" in note
    assert normalization_mismatch({"mean": (0.5,), "std": (0.5,)}) is not None  # one-channel weights


def test_missing_timm_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    for call in (lambda: check_model_name("timm/resnet50"), lambda: build_model("timm/resnet50", 10),
                 lambda: check_weights("timm/resnet50", "pretrained")):
        with pytest.raises(TimmNotInstalledError, match=r"needs timm.*pip install 'feed-fast\[timm\]'") as info:
            call()
        assert isinstance(info.value, ImportError) and isinstance(info.value, ValueError)  # config errors too
    check_model_name("resnet18")  # other models do not need timm
    assert build_model("resnet8", 3, widths=(4, 8, 16)).feature_channels == 16


def test_importing_feed_fast_never_imports_timm():
    code = ("import sys, feed_fast, feed_fast.models as m; m.check_model_name('resnet18'); "
            "m.build_model('resnet8', 3, widths=(4, 8, 16)); assert 'timm' not in sys.modules, 'timm imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
