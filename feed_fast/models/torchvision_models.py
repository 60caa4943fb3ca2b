"""ImageNet students and teachers: any torchvision classification model by name, with its feature tap
taken by torchvision's feature extraction (no model code copied here).

The tap is the last feature map before global pooling: `layer4` for the ResNet/ResNeXt/Wide-ResNet/RegNet
families (RegNet: `trunk_output`), `features` for VGG, MobileNet, EfficientNet, ConvNeXt, DenseNet-style models.
Other models need `feature_node=` (a node name from `torchvision.models.feature_extraction.get_graph_node_names`)."""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import Tensor, fx, nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from .zoo_weights import WeightsUnavailable

DEFAULT_FEATURE_NODES = {
    "resnet": "layer4", "resnext": "layer4", "wide_resnet": "layer4",
    "regnet": "trunk_output",
    "vgg": "features", "mobilenet": "features", "efficientnet": "features", "convnext": "features",
    "densenet": "features", "mnasnet": "layers", "shufflenet": "conv5",
}


def torchvision_model_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def default_feature_node(name: str) -> str | None:
    for prefix, node in DEFAULT_FEATURE_NODES.items():
        if name.startswith(prefix):
            return node
    return None


class TorchvisionFeatureModel(nn.Module):
    """A torchvision classifier plus two feature-extraction views of the same parameters, from one traced graph
    per mode: `extract_features(x)` (the tap) and `forward_features(x)` (feature and logits from one forward). `plain_module()` is the torchvision model itself: its state dict is the export."""

    def __init__(self, name: str, num_classes: int, weights: str | None = None,
                 feature_node: str | None = None) -> None:
        super().__init__()
        node = feature_node or default_feature_node(name)
        if node is None:
            raise ValueError(
                f"model {name!r} has no known feature tap; pass feature_node= (one of the names printed by "
                "torchvision.models.feature_extraction.get_graph_node_names)"
            )
        kwargs = {"weights": weights} if weights else {"weights": None, "num_classes": num_classes}
        try:
            self.net = torchvision.models.get_model(name, **kwargs)
        except OSError as err:  # the weights' download: no network, a refused connection, a proxy's error page
            if not weights:
                raise
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise WeightsUnavailable("torchvision", name, weights, err,
                                     f"torchvision reads them from {cache} (TORCH_HOME)") from err
        if weights and self.net_num_classes() != num_classes:
            raise ValueError(f"weights {weights!r} give {self.net_num_classes()} classes, the data has {num_classes}")
        self.name, self.feature_node = name, node
        # The taps are traced once, here: a compiled step (`train.compile: step`) then runs plain fx module code,
        # with no tracing inside the compiled region. One fixed graph per mode: torchvision's
        # DualGraphModule swaps its graph (regenerating its code) on every train()/eval(), which would make
        # Dynamo recompile after each evaluation. The graphs share self.net's modules, so they follow its mode
        # and parameters; kept out of the module tree so the state dict stays the torchvision model's own.
        self._taps = self._trace_taps()
        self.feature_channels = self._probe_channels()

    def net_num_classes(self) -> int:
        last = [m for m in self.net.modules() if isinstance(m, nn.Linear)]
        return last[-1].out_features if last else -1

    def _trace_taps(self) -> dict[bool, fx.GraphModule]:
        """{training: graph module giving {"feature", "logits"}}: one tracing of each mode."""
        train_nodes, eval_nodes = get_graph_node_names(self.net)
        dual = create_feature_extractor(
            self.net, train_return_nodes={self.feature_node: "feature", train_nodes[-1]: "logits"},
            eval_return_nodes={self.feature_node: "feature", eval_nodes[-1]: "logits"})
        return {True: fx.GraphModule(dual, dual.train_graph), False: fx.GraphModule(dual, dual.eval_graph)}

    def _tap(self) -> fx.GraphModule:
        return self._taps[self.net.training]

    def _probe_channels(self) -> int:
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad():
            feature = self._tap()(torch.zeros(1, 3, 64, 64))["feature"]
        self.net.train(was_training)
        return feature.shape[1]

    def extract_features(self, x: Tensor) -> Tensor:
        # the head after the tap (pooling and one linear layer, about 0.01% of a ResNet's FLOPs) runs too in
        # eager mode; compiled, its unused output is dropped
        return self._tap()(x)["feature"]

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self._tap()(x)
        return out["feature"], out["logits"]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def plain_module(self) -> nn.Module:
        return self.net
