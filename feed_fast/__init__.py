"""feed-fast: fused FEED (feature-level ensemble knowledge distillation) ops, loaders and trainer."""
from .functional import feed_loss
from .loss import FEEDLoss, FEEDLossOutput
from .translator import Translator, TranslatorGroup

__version__ = "0.1.0"
__all__ = ["FEEDLoss", "FEEDLossOutput", "Translator", "TranslatorGroup", "__version__", "feed_loss"]
