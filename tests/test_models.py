"""Models: feature taps (shape, position before pooling), logits from the same forward, name errors, the
torchvision wrapper's export loading into torchvision's own class, weights specs. Tiny inputs only."""
import pytest
import torch
import torchvision

from feed_fast.models import build_model, check_model_name, check_weights, count_parameters

CIFAR_TAPS = [  # name, kwargs, expected (C, H, W) of the tap at 32x32
    ("resnet20", {}, (64, 8, 8)),
    ("resnet8", {"widths": (4, 8, 16)}, (16, 8, 8)),
    ("wrn_16_2", {}, (128, 8, 8)),
    ("resnext29_2x4d", {"base_channels": 8}, (128, 8, 8)),
]


@pytest.mark.parametrize(("name", "kwargs", "tap"), CIFAR_TAPS)
def test_cifar_tap_shape_and_logits_from_one_forward(name, kwargs, tap):
    torch.manual_seed(0)
    model = build_model(name, 7, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    feature, logits = model.forward_features(x)
    assert tuple(feature.shape) == (2, *tap)
    assert model.feature_channels == tap[0]
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(feature, model.extract_features(x))
    # the tap is after the final activation: a ReLU output is non-negative
    assert feature.min() >= 0
    # and before pooling: the head is a mean over H, W then the linear layer
    torch.testing.assert_close(logits, model.head.fc(feature.mean(dim=(2, 3))))


def test_paper_sized_models_have_the_documented_taps_and_sizes():
    # FEED.md: ResNet-56 64x8x8, WRN-28-10 640x8x8, ResNeXt-29 16x64d 1024x8x8 (channels checked without a forward)
    assert build_model("resnet56", 100).feature_channels == 64
    wrn = build_model("wrn_28_10", 100)
    assert wrn.feature_channels == 640
    assert 36.0e6 < count_parameters(wrn) < 37.0e6  # 36.5M as published
    assert 0.85e6 < count_parameters(build_model("resnet56", 100)) < 0.87e6


def test_torchvision_model_tap_and_export_into_plain_class():
    torch.manual_seed(0)
    model = build_model("resnet18", 10).eval()
    x = torch.randn(1, 3, 64, 64)
    feature, logits = model.forward_features(x)
    assert tuple(feature.shape) == (1, 512, 2, 2)
    assert model.feature_channels == 512
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(feature, model.extract_features(x))
    plain = torchvision.models.resnet18(num_classes=10).eval()
    plain.load_state_dict(model.plain_module().state_dict())
    torch.testing.assert_close(plain(x), logits)
    # the extractors share the model's parameters: an update shows through both
    with torch.no_grad():
        model.net.fc.bias.add_(1.0)
    torch.testing.assert_close(model.forward_features(x)[1], logits + 1.0)


def test_unknown_model_names_raise_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet57'"):
        build_model("resnet57", 10)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        check_model_name("nope")
    with pytest.raises(ValueError, match="6n\\+4"):
        build_model("wrn_27_2", 10)
    with pytest.raises(ValueError, match="no torchvision weights"):
        build_model("resnet56", 10, weights="X")


def test_check_weights_follows_torchvision_builders_rule():
    check_weights("resnet18", None)
    for spec in ("ResNet18_Weights.IMAGENET1K_V1", "IMAGENET1K_V1", "DEFAULT"):  # what get_model accepts
        check_weights("resnet18", spec)
    with pytest.raises(ValueError, match=r"not a torchvision weights name for model 'resnet18'; "
                                         r"choices: ResNet18_Weights.IMAGENET1K_V1"):
        check_weights("resnet18", "ResNet34_Weights.IMAGENET1K_V1")  # another model's weights
    with pytest.raises(ValueError, match="not a torchvision weights name"):
        check_weights("resnet34", "nope")
    with pytest.raises(ValueError, match="must be a non-empty string"):
        check_weights("resnet34", "")
    with pytest.raises(ValueError, match="no torchvision weights; give a checkpoint"):
        check_weights("wrn_16_2", "DEFAULT")
    with pytest.raises(ValueError, match="unknown model 'resnet57'"):
        check_weights("resnet57", None)
