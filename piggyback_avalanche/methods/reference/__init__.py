"""The paper's reference points: separately fine-tuned networks (the upper
bound) and a frozen backbone with trained heads only (the lower bound)."""

from piggyback_avalanche.methods.reference.models import ClassifierOnlyModel, IndividualNetworksModel
from piggyback_avalanche.methods.reference.strategies import ClassifierOnly, IndividualNetworks

__all__ = ["IndividualNetworksModel", "IndividualNetworks", "ClassifierOnlyModel", "ClassifierOnly"]
