"""Networks: backbones by name (small ones that train on a CPU, and
torchvision's ImageNet models) and pretraining on a source task. The
library's examples and the benchmark runner build on them."""

from piggyback_avalanche.networks.backbones import (
    BACKBONES,
    BackboneBuilder,
    WeightsUnavailableError,
    mlp,
    small_cnn,
    small_resnet,
    small_vit,
    torchvision_backbone,
)
from piggyback_avalanche.networks.pretraining import pretrain

__all__ = [
    "small_cnn",
    "small_resnet",
    "mlp",
    "small_vit",
    "torchvision_backbone",
    "WeightsUnavailableError",
    "BACKBONES",
    "BackboneBuilder",
    "pretrain",
]
