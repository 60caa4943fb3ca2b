"""CIFAR networks written for 32x32 inputs: ResNet-20/32/56/110 (the 16/32/64-channel family of He et al.),
Wide ResNets (WRN-d-k) and ResNeXt-29. Each returns logits from `forward` and its last-stage feature map
(after the final activation, before pooling) from `extract_features` / `forward_features`."""
from __future__ import annotations

from torch import Tensor, nn


class FeatureTapMixin:
    """The interface every feed-fast model offers; `stem_and_stages` and `head` are defined per model."""

    feature_channels: int

    def extract_features(self, x: Tensor) -> Tensor:
        """Last-stage feature map only: the head is not computed (teachers without KD need no logits)."""
        return self.stem_and_stages(x)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.stem_and_stages(x)
        return feature, self.head(feature)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stem_and_stages(x))

    def plain_module(self) -> nn.Module:
        """The module whose state dict is the deployable export (the model itself for our own classes)."""
        return self


class PooledLinearHead(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, feature: Tensor) -> Tensor:
        return self.fc(feature.mean(dim=(2, 3)))


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            # option B (1x1 projection), as in most KD codebases' CIFAR ResNets
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(FeatureTapMixin, nn.Module):
    """ResNet-(6n+2) for CIFAR; `widths` (16, 32, 64) is the paper's family, smaller widths serve tests."""

    def __init__(self, depth: int, num_classes: int = 100, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 20, 32, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        stages, c_in = [], widths[0]
        for i, c_out in enumerate(widths):
            blocks = [BasicBlock(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.feature_channels = widths[-1]
        self.head = PooledLinearHead(widths[-1], num_classes)
        init_weights(self)

    def stem_and_stages(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


class WideBlock(nn.Module):
    """Pre-activation wide block (Zagoruyko & Komodakis)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None if (stride == 1 and c_in == c_out) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(pre)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(FeatureTapMixin, nn.Module):
    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (16, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        stages, c_in = [], widths[0]
        for i, c_out in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[WideBlock(c_in if j == 0 else c_out, c_out, stride if j == 0 else 1, dropout)
                                          for j in range(n)]))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        # the block output is pre-activation: the tap is after the final BN + ReLU
        self.final = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True))
        self.feature_channels = widths[-1]
        self.head = PooledLinearHead(widths[-1], num_classes)
        init_weights(self)

    def stem_and_stages(self, x: Tensor) -> Tensor:
        return self.final(self.stages(self.stem(x)))


class ResNeXtBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, cardinality: int, group_width: int) -> None:
        super().__init__()
        inner = cardinality * group_width
        self.body = nn.Sequential(
            nn.Conv2d(c_in, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(inplace=True),
            nn.Conv2d(inner, inner, 3, stride, 1, groups=cardinality, bias=False), nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class CifarResNeXt(FeatureTapMixin, nn.Module):
    """ResNeXt-29 (Xie et al.): 3 stages of 3 bottleneck blocks, outputs 256/512/1024 channels, `cardinality`
    groups of `base_width` channels in the first stage (doubling each stage)."""

    def __init__(self, depth: int = 29, cardinality: int = 8, base_width: int = 64, num_classes: int = 100,
                 base_channels: int = 64) -> None:
        super().__init__()
        if (depth - 2) % 9 != 0:
            raise ValueError(f"ResNeXt depth must be 9n+2 (11, 29, ...), got {depth}")
        n = (depth - 2) // 9
        self.stem = nn.Sequential(nn.Conv2d(3, base_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(base_channels),
                                  nn.ReLU(inplace=True))
        stages, c_in = [], base_channels
        for i in range(3):
            c_out = base_channels * 4 * 2**i
            width = base_width * 2**i
            stages.append(nn.Sequential(*[ResNeXtBlock(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1,
                                                       cardinality, width) for j in range(n)]))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.feature_channels = c_in
        self.head = PooledLinearHead(c_in, num_classes)
        init_weights(self)

    def stem_and_stages(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))
