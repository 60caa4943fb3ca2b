"""The FEED loss op, everything but the Triton kernels themselves (those are `feed_fast.kernels`).

One module per job, read top to bottom as a call flows:
- `functional.feed_loss`: the public op. Validates (`validation`), reads the caller's precision settings
  (`head`), picks a backend (`backend_choice`) and owns the reduction.
- `reference`: the eager torch twin, the math as written in docs/method.md; `numerics` holds its constants.
- `fused` (Triton kernels, head conv included) and `hybrid` (cuDNN head, fused epilogue): the two fused plans.
- `loss.FEEDLoss` and `translator.Translator`/`TranslatorGroup`: the nn.Module face of the op, used by the
  trainer's pFEED distiller and by users' own training loops.

`feed_loss`, `FEEDLoss` and `Translator` are also importable from `feed_fast` itself.
"""
from .functional import feed_loss
from .loss import FEEDLoss, FEEDLossOutput
from .translator import Translator, TranslatorGroup

__all__ = ["FEEDLoss", "FEEDLossOutput", "Translator", "TranslatorGroup", "feed_loss"]
