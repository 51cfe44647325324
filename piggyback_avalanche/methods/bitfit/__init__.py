"""BitFit (Ben Zaken, Ravfogel & Goldberg, ACL 2022) per task: a frozen
backbone whose biases and normalization each task learns."""

from piggyback_avalanche.methods.bitfit.layers import BIAS_TUNED_LAYER_TYPES, BiasTunedLayer
from piggyback_avalanche.methods.bitfit.model import BitFitModel
from piggyback_avalanche.methods.bitfit.strategy import BitFit
from piggyback_avalanche.task_aware.registration import MethodConfig, register_method

__all__ = ["BitFitModel", "BitFit", "BiasTunedLayer", "BIAS_TUNED_LAYER_TYPES"]

# Nothing to set but the common settings: biases and norms per task are the whole method.
register_method("bitfit", config=MethodConfig, model=BitFitModel, strategy=BitFit)
