"""WSN (Kang et al., "Forget-free Continual Learning with Winning
Subnetworks", ICML 2022): each task selects a subnetwork of one network's
weights, trains the weights no earlier task uses and reuses the others
frozen."""

from piggyback_avalanche.methods.wsn.config import WSNConfig
from piggyback_avalanche.methods.wsn.layers import SUBNETWORK_LAYER_TYPES, SubnetworkLayer
from piggyback_avalanche.methods.wsn.model import DEFAULT_WSN_DENSITY, WSNModel
from piggyback_avalanche.methods.wsn.strategy import DEFAULT_WSN_SCORE_LR, WSN
from piggyback_avalanche.task_aware.registration import register_method

__all__ = [
    "WSNModel",
    "WSN",
    "WSNConfig",
    "SubnetworkLayer",
    "SUBNETWORK_LAYER_TYPES",
    "DEFAULT_WSN_DENSITY",
    "DEFAULT_WSN_SCORE_LR",
]

register_method("wsn", config=WSNConfig, model=WSNModel, strategy=WSN)
