"""Backbones by name: small networks that train on a CPU (convolutional,
residual, MLP, vision transformer), and torchvision's ImageNet models
(ResNets, VGG, DenseNet, ViT-B/16, Swin-T, MaxViT-T), optionally with their
pretrained weights."""

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "small_cnn",
    "small_resnet",
    "mlp",
    "small_vit",
    "torchvision_backbone",
    "WeightsUnavailableError",
    "BACKBONES",
    "BackboneBuilder",
]


def small_cnn(*, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> nn.Sequential:
    """A four-layer convolutional network with batch norm for small images.

    :param in_channels: input channels.
    :param num_classes: outputs of the final ``nn.Linear`` (the classifier).
    :param width: channels of the first layer; later layers have twice as many.
    """

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(in_channels, width),
        *block(width, 2 * width),
        nn.MaxPool2d(2),
        *block(2 * width, 2 * width),
        *block(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (a 1x1
    convolution where the shape changes), as in ResNet's basic block."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def small_resnet(*, in_channels: int = 1, num_classes: int = 10, width: int = 16, blocks: int = 2) -> nn.Sequential:
    """A residual network for small images: a stem convolution, then three
    stages of ``blocks`` basic blocks (``width``, 2 and 4 times ``width``
    channels, the last two halving the resolution), pooling and the
    classifier; 13 convolutions with the defaults.

    :param in_channels: input channels.
    :param num_classes: outputs of the final ``nn.Linear`` (the classifier).
    :param width: channels of the first stage.
    :param blocks: basic blocks per stage.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    channels = width
    for stage, multiple in enumerate((1, 2, 4)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(_ResidualBlock(channels, width * multiple, stride))
            channels = width * multiple
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def mlp(*, input_shape: Sequence[int], hidden: int = 256, num_classes: int = 10) -> nn.Sequential:
    """A two-hidden-layer perceptron over flattened inputs.

    :param input_shape: the shape of one input, e.g. ``(1, 28, 28)``.
    :param hidden: units per hidden layer.
    :param num_classes: outputs of the classifier.
    """
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def small_vit(
    *,
    in_channels: int = 1,
    image_size: int = 16,
    num_classes: int = 10,
    patch_size: int = 4,
    width: int = 64,
    depth: int = 4,
    heads: int = 4,
) -> nn.Module:
    """A small torchvision ``VisionTransformer`` for small images: the same
    family as ``vit_b_16`` (``nn.MultiheadAttention``, layer norm, class
    token, learned positional embedding), sized to train on a CPU.

    :param in_channels: input channels (torchvision's ViT takes 3; the patch
        embedding is rebuilt for others).
    :param image_size: the side of the square inputs.
    :param num_classes: outputs of the classifier ``heads.head``.
    :param patch_size: side of each patch (divides ``image_size``).
    :param width: the tokens' width; the MLP is twice as wide.
    :param depth: encoder blocks.
    :param heads: attention heads (divides ``width``).
    """
    from torchvision.models import VisionTransformer

    vit = VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=depth,
        num_heads=heads,
        hidden_dim=width,
        mlp_dim=2 * width,
        num_classes=num_classes,
    )
    patches = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
    # torchvision's initialisation of its own patch embedding.
    nn.init.trunc_normal_(patches.weight, std=math.sqrt(1 / (in_channels * patch_size**2)))
    nn.init.zeros_(patches.get_parameter("bias"))
    vit.conv_proj = patches
    return vit


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable from here."""


def torchvision_backbone(name: str, *, pretrained: bool) -> nn.Module:
    """A torchvision classification model, with its default ImageNet weights
    if ``pretrained``.

    :param name: a torchvision model name (``"resnet50"``, ``"vgg16"``,
        ``"densenet121"``...).
    :raises WeightsUnavailableError: if the weights are not in torch hub's
        cache and cannot be downloaded; the message names the file to place.
    """
    import torchvision

    if not pretrained:
        return torchvision.models.get_model(name, weights=None)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as error:
        cached = f"{torch.hub.get_dir()}/checkpoints/{weights.url.rsplit('/', 1)[-1]}"
        raise WeightsUnavailableError(
            f"Could not load the pretrained {name} weights ({weights}): {error}. Without internet "
            f"access, download {weights.url} elsewhere and place it at {cached} (or set TORCH_HOME), "
            "or run without --pretrained."
        ) from error


BackboneBuilder = Callable[[Sequence[int], bool], nn.Module]
"""``builder(input_shape, pretrained) -> network``."""


def _pretraining_is_the_runners(name: str, build: Callable[[Sequence[int]], nn.Module]) -> BackboneBuilder:
    def builder(input_shape: Sequence[int], pretrained: bool) -> nn.Module:
        if pretrained:
            raise ValueError(
                f"{name} has no published weights; streams with a source task (mnist_transfer) "
                "pretrain it. Drop --pretrained, or pick a torchvision backbone."
            )
        return build(input_shape)

    return builder


def _torchvision(name: str) -> BackboneBuilder:
    def builder(input_shape: Sequence[int], pretrained: bool) -> nn.Module:
        return torchvision_backbone(name, pretrained=pretrained)

    return builder


BACKBONES: dict[str, BackboneBuilder] = {
    "small_cnn": _pretraining_is_the_runners("small_cnn", lambda shape: small_cnn(in_channels=shape[0])),
    "mlp": _pretraining_is_the_runners("mlp", lambda shape: mlp(input_shape=shape)),
    "small_resnet": _pretraining_is_the_runners("small_resnet", lambda shape: small_resnet(in_channels=shape[0])),
    "small_vit": _pretraining_is_the_runners(
        "small_vit", lambda shape: small_vit(in_channels=shape[0], image_size=shape[-1])
    ),
    **{
        name: _torchvision(name)
        for name in ("resnet18", "resnet50", "vgg16", "vgg16_bn", "densenet121", "vit_b_16", "swin_t", "maxvit_t")
    },
}
"""Backbone names and their builders."""
