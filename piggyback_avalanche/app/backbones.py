"""Moved to :mod:`piggyback_avalanche.networks.backbones` (backbones belong
to the library). This module keeps code written against the earlier layout
(``from piggyback_avalanche.app.backbones import small_cnn``, the README's
quickstart until version 0.2) working, with a ``DeprecationWarning``."""

import warnings

from piggyback_avalanche.networks import backbones as _moved
from piggyback_avalanche.networks.backbones import *  # noqa: F403  (every public name, as it was)

__all__ = list(_moved.__all__)

warnings.warn(
    "piggyback_avalanche.app.backbones moved to piggyback_avalanche.networks.backbones; import from there "
    "(from piggyback_avalanche.networks import small_cnn).",
    DeprecationWarning,
    stacklevel=2,
)
