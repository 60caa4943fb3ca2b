"""feed-fast: fused FEED (feature-level ensemble knowledge distillation) ops, loaders and trainer.

Packages: `ops` (the FEED loss op), `kernels` (its Triton kernels), `loaders`, `models`, `methods` (one
distiller per method), `engine` (the trainer), `config`, `runtime`, `demo`.
"""
from .ops import FEEDLoss, FEEDLossOutput, Translator, TranslatorGroup, feed_loss

__version__ = "0.1.0"
__all__ = ["FEEDLoss", "FEEDLossOutput", "Translator", "TranslatorGroup", "__version__", "feed_loss"]
