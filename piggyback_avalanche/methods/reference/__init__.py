"""The paper's reference points: separately fine-tuned networks (the upper
bound) and a frozen backbone with trained heads only (the lower bound)."""

from piggyback_avalanche.methods.reference.models import ClassifierOnlyModel, IndividualNetworksModel
from piggyback_avalanche.methods.reference.strategies import ClassifierOnly, IndividualNetworks
from piggyback_avalanche.task_aware.registration import MethodConfig, register_method

__all__ = ["IndividualNetworksModel", "IndividualNetworks", "ClassifierOnlyModel", "ClassifierOnly"]

register_method("individual", config=MethodConfig, model=IndividualNetworksModel, strategy=IndividualNetworks)
register_method("classifier_only", config=MethodConfig, model=ClassifierOnlyModel, strategy=ClassifierOnly)
