"""Small backbones that train on a CPU."""

from torch import nn

__all__ = ["small_cnn"]


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
