"""BitFit (Ben Zaken, Ravfogel & Goldberg, ACL 2022) per task: a frozen
backbone whose biases and normalization each task learns."""

from piggyback_avalanche.methods.bitfit.layers import BIAS_TUNED_LAYER_TYPES, BiasTunedLayer
from piggyback_avalanche.methods.bitfit.model import BitFitModel
from piggyback_avalanche.methods.bitfit.strategy import BitFit

__all__ = ["BitFitModel", "BitFit", "BiasTunedLayer", "BIAS_TUNED_LAYER_TYPES"]
