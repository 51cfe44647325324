"""SupSupModel: a random network, never trained, one supermask per task."""

from typing import Any

import torch
from torch import nn

from piggyback_avalanche.methods.supsup.layers import SUPERMASK_LAYER_TYPES, SupermaskLayer
from piggyback_avalanche.task_aware.frozen_masks import check_density, signed_constant_
from piggyback_avalanche.task_aware.models import TaskAwareModel
from piggyback_avalanche.task_aware.task_norm import TaskNorm

__all__ = ["SupSupModel", "WEIGHT_INITS", "DEFAULT_DENSITY"]

WEIGHT_INITS = ("signed_constant", "backbone")
"""Where the shared weights come from: SupSup's random signed constants, or
the backbone as given (SupSup's "transfer" setting)."""

DEFAULT_DENSITY = 0.5
"""The share of each layer's weights a supermask keeps: SupSup's default
(``--sparsity 0.5`` in its code, where it is the share kept)."""


class SupSupModel(TaskAwareModel):
    """SupSup (Wortsman et al., "Supermasks in Superposition", NeurIPS
    2020): a randomly initialised network that is never trained; each task
    learns a supermask over it (edge-popup's top-k of learned scores), and
    its own normalization and head.

    :param backbone: the network; copied, and with
        ``weight_init="signed_constant"`` its convolutions' and linear
        layers' weights replaced by SupSup's signed constants
        (``±sqrt(2 / fan_in)``), their biases zeroed and its normalization
        layers reset: nothing of a pretrained backbone is used but its
        architecture.
    :param classifier: the ``nn.Linear`` replaced by per-task heads (see
        :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    :param density: the share of each layer's weights every supermask keeps.
    :param weight_init: ``"signed_constant"`` (SupSup) or ``"backbone"``
        (the backbone's weights as they are).
    :param weight_seed: the seed of the signed constants' signs; ``None``:
        torch's global generator. The same seed gives the same network.
    :param task_batchnorm: each task learns its own normalization
        parameters and statistics (SupSup keeps per-task batch-norm
        statistics); ``False`` shares the reset ones, frozen.
    :param feature_statistics: see
        :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`.

    Every module computes tasks in superposition, so the model offers
    SupSup's ``"one_shot"`` task-inference score.
    """

    layer_types = SUPERMASK_LAYER_TYPES  # type: ignore[assignment]

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: str | nn.Module | None = None,
        density: float = DEFAULT_DENSITY,
        weight_init: str = "signed_constant",
        weight_seed: int | None = None,
        task_batchnorm: bool = True,
        feature_statistics: bool = False,
    ) -> None:
        check_density(density)
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"Unknown weight_init {weight_init!r}; choose one of {list(WEIGHT_INITS)}.")
        self.weight_init = weight_init
        self.weight_seed = weight_seed
        super().__init__(
            backbone,
            classifier=classifier,
            task_batchnorm=task_batchnorm,
            feature_statistics=feature_statistics,
            layer_settings={"density": float(density)},
        )
        if weight_init == "signed_constant":
            self._randomise(weight_seed)
            self.shared_weight_checksum.record()

    @torch.no_grad()
    def _randomise(self, seed: int | None) -> None:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        for layer in self.supermask_layers.values():
            layer.weight.copy_(signed_constant_(torch.empty_like(layer.weight, device="cpu"), generator=generator))
            if layer.bias is not None:
                layer.bias.zero_()
        for module in self.backbone.modules():
            reset = getattr(module.base, "reset_parameters", None) if isinstance(module, TaskNorm) else None
            if callable(reset):
                reset()

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "weight_init": self.weight_init, "weight_seed": self.weight_seed}

    def task_file_settings(self) -> dict[str, Any]:
        # A mask means something only over its density's selection of the same weights
        # (which the backbone's fingerprint checks).
        return {**super().task_file_settings(), "density": self._layer_settings["density"]}

    @property
    def supermask_layers(self) -> dict[str, SupermaskLayer]:
        """The supermasked layers by qualified name."""
        return self.task_layers  # type: ignore[return-value]
