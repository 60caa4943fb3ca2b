"""The one error for model-zoo weights that cannot be had: not in the zoo's cache, and no network to fetch them."""
from __future__ import annotations


class WeightsUnavailable(RuntimeError):
    """Weights a zoo (torchvision, timm) downloads on first use could not be loaded; the message names the cache
    it reads first and how to fill it."""

    def __init__(self, zoo: str, name: str, weights: str, cause: BaseException, cache: str) -> None:
        reason = getattr(cause, "reason", None) or cause  # urllib's URLError keeps the socket's error apart
        super().__init__(
            f"could not load {zoo}'s weights {weights!r} for {name!r} ({reason}). {cache}; they are downloaded on "
            "first use: fill the cache on a machine with network access, or give a checkpoint file instead")
