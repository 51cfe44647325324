"""HATModel: one network that every task trains, each task attending to
its own units."""

import torch
from torch import Tensor, nn

from piggyback_avalanche.checks import check_positive
from piggyback_avalanche.methods.hat.layers import UNIT_ATTENTION_LAYER_TYPES, AttentionScale, UnitAttentionLayer
from piggyback_avalanche.task_aware.models import TaskAwareModel

__all__ = ["HATModel", "DEFAULT_MAX_SCALE"]

DEFAULT_MAX_SCALE = 400.0
"""HAT's ``s_max``, chosen in its paper by a grid search (25 to 800)."""


class HATModel(TaskAwareModel):
    """HAT (Serra et al., ICML 2018) over any backbone, with per-task heads
    and normalization: every convolution and linear layer gates its output
    units by the task's attention, ``sigmoid(s * embedding)``, and trains
    its shared weight only where earlier tasks do not attend.

    :param backbone: the network; copied.
    :param classifier: the ``nn.Linear`` replaced by per-task heads (see
        :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    :param max_scale: ``s_max``, the sigmoid's scale at evaluation, where
        attention is all but binary.
    :param task_batchnorm: each task learns its own normalization.
    :param feature_statistics: see
        :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`.
    """

    layer_types = UNIT_ATTENTION_LAYER_TYPES  # type: ignore[assignment]

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: str | nn.Module | None = None,
        max_scale: float = DEFAULT_MAX_SCALE,
        task_batchnorm: bool = True,
        feature_statistics: bool = False,
    ) -> None:
        check_positive("max_scale", max_scale)
        self.attention_scale = AttentionScale(max_scale)
        super().__init__(
            backbone,
            classifier=classifier,
            task_batchnorm=task_batchnorm,
            feature_statistics=feature_statistics,
            layer_settings={"scale": self.attention_scale},
        )

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "max_scale": self.attention_scale.maximum}

    def task_file_settings(self) -> dict[str, object]:
        # A frozen task's attentions were taken at s_max.
        return {**super().task_file_settings(), "max_scale": self.attention_scale.maximum}

    def capacity_regulariser(self) -> Tensor:
        """HAT's regulariser: the learning tasks' attention on units no
        earlier task attends to, over how much of the network is free."""
        sums = [layer.capacity_regulariser() for layer in self.attention_layers.values()]
        return torch.stack([a for a, _ in sums]).sum() / torch.stack([f for _, f in sums]).sum().clamp_min(1e-12)

    def gate_gradients(self) -> None:
        """Apply every layer's :meth:`UnitAttentionLayer.gate_gradients`."""
        for layer in self.attention_layers.values():
            layer.gate_gradients()

    def clamp_embeddings(self) -> None:
        """Apply every layer's :meth:`UnitAttentionLayer.clamp_embeddings`."""
        for layer in self.attention_layers.values():
            layer.clamp_embeddings()

    @property
    def attention_layers(self) -> dict[str, UnitAttentionLayer]:
        """The layers whose units tasks attend to, by qualified name."""
        return self.task_layers  # type: ignore[return-value]
