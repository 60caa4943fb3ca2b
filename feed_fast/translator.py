"""The translator (FEED's non-linear transformation layer, NTL): student feature -> teacher space."""
from __future__ import annotations

from torch import Tensor, nn


class Translator(nn.Module):
    """Three convs, FT's official translator shape: Conv3x3(C_in->C_in) LReLU, Conv3x3(C_in->width) LReLU,
    Conv(width->C_out, final_kernel) [LReLU]. Stride 1, "same" padding, bias.

    Width rule: `width=None` means width = C_out, as in FT's official translator (its second conv already
    maps to the output channels, its third keeps them): 64->32 has 64,640 parameters, FT's count. With
    C_in == C_out (every shipped config: same-architecture teachers) the rule makes no difference. Pass
    `width` to choose another middle width.

    The last conv (`self.head`) and its trailing activation are *not* run by `forward_body`: FEEDLoss hands
    them to the fused op, which never materialises their output. `forward` runs everything, for use
    outside the loss. BatchNorm (optional) applies to the two body convs only, so the head stays fusable.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int | None = None,
        *,
        final_kernel_size: int = 3,
        batch_norm: bool = False,
        final_activation: bool = True,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        if final_kernel_size not in (1, 3):
            raise ValueError(f"final_kernel_size must be 1 or 3, got {final_kernel_size}")
        width = out_channels if width is None else width
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.negative_slope = negative_slope
        self.final_activation = final_activation

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)
            norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
            return [conv, *norm, nn.LeakyReLU(negative_slope)]

        self.body = nn.Sequential(*block(in_channels, in_channels), *block(in_channels, width))
        self.head = nn.Conv2d(width, out_channels, final_kernel_size, padding=final_kernel_size // 2, bias=True)

    @property
    def head_slope(self) -> float | None:
        """The LeakyReLU slope after the head, or None when the head has no activation."""
        return self.negative_slope if self.final_activation else None

    def forward_body(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        y = self.head(self.body(x))
        return nn.functional.leaky_relu(y, self.negative_slope) if self.final_activation else y
