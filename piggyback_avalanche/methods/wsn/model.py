"""WSNModel: one network whose weights tasks select, train and reuse as
subnetworks."""

from typing import Any

from torch import nn

from piggyback_avalanche.methods.wsn.layers import SUBNETWORK_LAYER_TYPES, SubnetworkLayer
from piggyback_avalanche.task_aware.frozen_masks import check_density
from piggyback_avalanche.task_aware.models import TaskAwareModel

__all__ = ["WSNModel", "DEFAULT_WSN_DENSITY"]

DEFAULT_WSN_DENSITY = 0.5
"""The share of each layer's weights a task's subnetwork selects: WSN's
``c = 0.5`` (its code's default ``--sparsity 0.5``, the share kept)."""


class WSNModel(TaskAwareModel):
    """WSN (Kang et al., ICML 2022) over any backbone, with per-task heads
    and normalization: each task selects the ``density`` share of each
    layer's weights by learned scores, trains those no earlier task
    selected and reuses the rest frozen; a frozen task keeps a 1-bit mask
    per weight, and never changes again.

    :param backbone: the network; copied. Its weights are where new weights
        start (WSN trains from a random initialisation; a pretrained
        backbone gives the first task a head start).
    :param classifier: the ``nn.Linear`` replaced by per-task heads (see
        :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    :param density: the share of each layer's weights a task selects.
    :param task_batchnorm: each task learns its own normalization.
    :param feature_statistics: see
        :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`.
    """

    layer_types = SUBNETWORK_LAYER_TYPES  # type: ignore[assignment]

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: str | nn.Module | None = None,
        density: float = DEFAULT_WSN_DENSITY,
        task_batchnorm: bool = True,
        feature_statistics: bool = False,
    ) -> None:
        check_density(density)
        super().__init__(
            backbone,
            classifier=classifier,
            task_batchnorm=task_batchnorm,
            feature_statistics=feature_statistics,
            layer_settings={"density": float(density)},
        )

    def task_file_settings(self) -> dict[str, Any]:
        return {**super().task_file_settings(), "density": self._layer_settings["density"]}

    @property
    def subnetwork_layers(self) -> dict[str, SubnetworkLayer]:
        """The layers tasks select subnetworks of, by qualified name."""
        return self.task_layers  # type: ignore[return-value]
