"""Backbones by name: small networks that train on a CPU, and torchvision's
ImageNet models, optionally with their pretrained weights."""

import math
from typing import Callable, Dict, Sequence

import torch
from torch import nn

__all__ = ["small_cnn", "mlp", "torchvision_backbone", "WeightsUnavailableError", "BACKBONES", "BackboneBuilder"]


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


BACKBONES: Dict[str, BackboneBuilder] = {
    "small_cnn": _pretraining_is_the_runners("small_cnn", lambda shape: small_cnn(in_channels=shape[0])),
    "mlp": _pretraining_is_the_runners("mlp", lambda shape: mlp(input_shape=shape)),
    **{name: _torchvision(name) for name in ("resnet18", "resnet50", "vgg16", "vgg16_bn", "densenet121")},
}
"""Backbone names and their builders."""
