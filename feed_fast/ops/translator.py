"""The translator (FEED's non-linear transformation layer, NTL): student feature -> teacher space.

`Translator` is one translator; `TranslatorGroup` is K of them fed the same input, computed with grouped convs
(what `FEEDLoss` runs)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _body_block(c_in: int, c_out: int, groups: int, batch_norm: bool, negative_slope: float) -> list[nn.Module]:
    """One body conv (3x3, "same"; no bias under BatchNorm, whose shift makes it redundant), its optional
    BatchNorm and its LeakyReLU: the layout `Translator.body` and `GroupedBody.layers` share."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups, bias=not batch_norm)
    norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
    return [conv, *norm, nn.LeakyReLU(negative_slope)]


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
        self.body = nn.Sequential(*_body_block(in_channels, in_channels, 1, batch_norm, negative_slope),
                                  *_body_block(in_channels, width, 1, batch_norm, negative_slope))
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


class GroupedBody(nn.Module):
    """The two body convs of `n` translators that share an input and a middle width, run as two convs: the n
    first convs as one conv (C -> n*C), the n second convs as one grouped conv (n*C -> n*width, groups=n).
    `layers` has the layout of `Translator.body` (same indices), so each teacher's state is a slice of it.
    BatchNorm is per channel, so every teacher keeps its own statistics."""

    def __init__(self, in_channels: int, width: int, n: int, *, batch_norm: bool, negative_slope: float) -> None:
        super().__init__()
        self.n, self.width = n, width
        self.layers = nn.Sequential(*_body_block(in_channels, n * in_channels, 1, batch_norm, negative_slope),
                                    *_body_block(n * in_channels, n * width, n, batch_norm, negative_slope))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """The n head inputs (channel slices of one tensor: views, no copy)."""
        return self.layers(x).split(self.width, dim=1)


class TranslatorGroup(nn.Module):
    """K translators fed the same input (pFEED: the student's map), computed together: the same math as K
    separate `Translator`s, in 2 body convs per forward instead of 2K (teachers that share a middle width, i.e.
    all of them with same-architecture teachers, share one `GroupedBody`; each other width gets its own).
    The K heads stay separate convs: `FEEDLoss` hands them to the fused op.

    Checkpoints hold per-teacher keys, exactly those of K separate Translators (`{k}.body.{i}.*`,
    `{k}.head.*`): the state dict is written that way and either layout loads, so checkpoints from before the
    grouping load unchanged. `group[k]` is a read-only view of teacher k (shapes, its head, its forward);
    `group.translator(k)` a standalone `Translator` holding a copy of teacher k's weights.

    Built from K Translators made one after another (the same initial weights, and the same random draws, as
    K separate Translators)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: Sequence[int],
        width: int | None = None,
        *,
        final_kernel_size: int = 3,
        batch_norm: bool = False,
        final_activation: bool = True,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        out_channels = list(out_channels)
        if not out_channels:
            raise ValueError("out_channels must name at least one teacher")
        options = {"final_kernel_size": final_kernel_size, "batch_norm": batch_norm,
                   "final_activation": final_activation, "negative_slope": negative_slope}
        separate = [Translator(in_channels, c, width, **options) for c in out_channels]
        self.options, self.in_channels = options, in_channels
        self.out_channels = [t.out_channels for t in separate]
        self.widths = [t.width for t in separate]
        self.final_activation, self.negative_slope = final_activation, negative_slope
        by_width: dict[int, list[int]] = {}
        for k, w in enumerate(self.widths):
            by_width.setdefault(w, []).append(k)
        self.members = list(by_width.values())  # teacher indices per body, in teacher order
        self.where = {k: (g, j) for g, ks in enumerate(self.members) for j, k in enumerate(ks)}
        with torch.random.fork_rng(devices=[]):  # the grouped convs' own init draws nothing from the caller's RNG
            self.bodies = nn.ModuleList(
                GroupedBody(in_channels, self.widths[ks[0]], len(ks), batch_norm=batch_norm,
                            negative_slope=negative_slope)
                for ks in self.members
            )
        self.heads = nn.ModuleList(t.head for t in separate)
        per_teacher = {}
        for k, t in enumerate(separate):
            per_teacher.update({f"{k}.body.{name}": v for name, v in t.body.state_dict().items()})
        self.load_state_dict({**self._grouped(per_teacher, ""), **{f"heads.{k}.{n}": v for k, t in enumerate(separate)
                                                                 for n, v in t.head.state_dict().items()}})
        self.register_state_dict_post_hook(_write_per_teacher)
        self.register_load_state_dict_pre_hook(_read_per_teacher)

    def __len__(self) -> int:
        return len(self.heads)

    def __getitem__(self, k: int) -> TranslatorView:
        if not -len(self) <= k < len(self):
            raise IndexError(f"translator index {k} out of range for {len(self)} teachers")
        return TranslatorView(self, k % len(self))

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    @property
    def head_slope(self) -> float | None:
        """The LeakyReLU slope after every head, or None when the heads have no activation."""
        return self.negative_slope if self.final_activation else None

    def head_inputs(self, x: Tensor) -> list[Tensor]:
        """The input of each teacher's head (its body's output), in teacher order."""
        out: list = [None] * len(self)
        for ks, body in zip(self.members, self.bodies):
            for k, h in zip(ks, body(x)):
                out[k] = h
        return out

    def forward(self, x: Tensor) -> list[Tensor]:
        """Every translator's full output (heads and their activation included), for use outside the loss."""
        return [view.run_head(h) for view, h in zip(self, self.head_inputs(x))]

    def translator(self, k: int) -> Translator:
        """A standalone Translator with a copy of teacher k's weights and statistics."""
        view = self[k]
        single = Translator(self.in_channels, view.out_channels, view.width, **self.options)
        prefix = f"{view.index}."
        state = {name[len(prefix):]: v.clone() for name, v in self.state_dict().items() if name.startswith(prefix)}
        single.load_state_dict(state)
        return single.to(self.heads[view.index].weight.device)

    # --- per-teacher state <-> grouped state -------------------------------------------------------
    def _grouped(self, state: dict, prefix: str) -> dict:
        """Per-teacher body entries `{prefix}{k}.body.{name}` -> grouped `{prefix}bodies.{g}.layers.{name}`
        (concatenated along the output channels), for every body whose teachers are all present. The
        per-teacher entries used are removed from `state`."""
        grouped = {}
        for g, ks in enumerate(self.members):
            for name in self.bodies[g].layers.state_dict():
                keys = [f"{prefix}{k}.body.{name}" for k in ks]
                if not all(key in state for key in keys):
                    continue
                parts = [state.pop(key) for key in keys]
                grouped[f"{prefix}bodies.{g}.layers.{name}"] = parts[0] if parts[0].dim() == 0 else torch.cat(parts)
        return grouped


class TranslatorView:
    """Teacher k of a TranslatorGroup, read-only: its shapes, its head, and its own forward (the grouped
    weights' slices, so gradients reach the group's parameters). Training runs the group, not views."""

    def __init__(self, group: TranslatorGroup, k: int) -> None:
        self.group, self.index = group, k
        self.in_channels = group.in_channels
        self.out_channels, self.width = group.out_channels[k], group.widths[k]
        self.negative_slope, self.final_activation = group.negative_slope, group.final_activation
        self.head = group.heads[k]

    @property
    def head_slope(self) -> float | None:
        return self.group.head_slope

    def forward_body(self, x: Tensor) -> Tensor:
        g, j = self.group.where[self.index]
        body = self.group.bodies[g]
        for layer in body.layers:
            if isinstance(layer, nn.Conv2d):
                weight = layer.weight.chunk(body.n)[j]
                bias = None if layer.bias is None else layer.bias.chunk(body.n)[j]
                x = nn.functional.conv2d(x, weight, bias, padding=1)
            elif isinstance(layer, nn.BatchNorm2d):
                stats = [None if t is None else t.chunk(body.n)[j]
                         for t in (layer.running_mean, layer.running_var, layer.weight, layer.bias)]
                x = nn.functional.batch_norm(x, *stats, training=layer.training or stats[0] is None,
                                             momentum=layer.momentum, eps=layer.eps)
            else:
                x = layer(x)
        return x

    def run_head(self, head_input: Tensor) -> Tensor:
        y = self.head(head_input)
        return nn.functional.leaky_relu(y, self.negative_slope) if self.final_activation else y

    def forward(self, x: Tensor) -> Tensor:
        return self.run_head(self.forward_body(x))

    __call__ = forward


def _write_per_teacher(group: TranslatorGroup, state: dict, prefix: str, _metadata) -> None:
    """state_dict post-hook: grouped entries -> the per-teacher entries of K separate Translators."""
    for g, ks in enumerate(group.members):
        body_prefix = f"{prefix}bodies.{g}.layers."
        for key in [key for key in state if key.startswith(body_prefix)]:
            name, value = key[len(body_prefix):], state.pop(key)
            parts = [value] * len(ks) if value.dim() == 0 else value.detach().chunk(len(ks))
            for k, part in zip(ks, parts):
                state[f"{prefix}{k}.body.{name}"] = part
    for k in range(len(group)):
        head_prefix = f"{prefix}heads.{k}."
        for key in [key for key in state if key.startswith(head_prefix)]:
            state[f"{prefix}{k}.head.{key[len(head_prefix):]}"] = state.pop(key)


def _read_per_teacher(group: TranslatorGroup, state: dict, prefix: str, *_args) -> None:
    """load_state_dict pre-hook: per-teacher entries (K separate Translators' keys, what state_dict writes) ->
    the grouped entries. Grouped entries load as they are."""
    state.update(group._grouped(state, prefix))
    for k in range(len(group)):
        head_prefix = f"{prefix}{k}.head."
        for key in [key for key in state if key.startswith(head_prefix)]:
            state[f"{prefix}heads.{k}.{key[len(head_prefix):]}"] = state.pop(key)
