"""PiggybackModel: any backbone, one binary (or ternary) mask per task."""

from typing import Any

from torch import Tensor, nn

from piggyback_avalanche.checks import check_positive
from piggyback_avalanche.methods.piggyback.flat_masks import FlatMasks
from piggyback_avalanche.methods.piggyback.layers import MASKED_LAYER_TYPES, MaskedLayer
from piggyback_avalanche.methods.piggyback.masks import get_mask_kind
from piggyback_avalanche.task_aware.models import TaskAwareModel

__all__ = ["PiggybackModel", "MASK_INITS", "DEFAULT_THRESHOLD", "DEFAULT_MASK_SCALE"]

MASK_INITS = ("1s", "uniform")
"""Ways to initialise a new task's mask scores."""

DEFAULT_THRESHOLD = 5e-3
"""The paper's threshold tau: a score above it keeps its weight."""

DEFAULT_MASK_SCALE = 1e-2
"""The paper's initial score scale: twice the threshold, so every mask
starts at one with ``mask_init="1s"``."""


class PiggybackModel(TaskAwareModel):
    """Piggyback (Mallya, Davis & Lazebnik, ECCV 2018): a frozen backbone that
    learns one mask per task.

    The backbone is copied; the copy's convolutions and linear layers get
    per-task masks, its normalization layers per-task parameters and its
    classifier is replaced by one head per task. Its weights are never written
    again (except on the first task with
    ``Piggyback(train_backbone_on_first_experience=True)``).

    :param backbone: the (preferably pretrained) network. Supported layers
        with parameters: ``nn.Conv1d/2d/3d`` and ``nn.Linear`` (masked),
        ``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``, ``nn.LayerNorm``,
        ``nn.GroupNorm`` (per task).
    :param classifier: the ``nn.Linear`` replaced by per-task heads, as a
        module of the backbone or its qualified name; ``None``: the
        ``nn.Linear`` whose output is the backbone's output (see
        :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    :param threshold_fn: ``"binarizer"`` (masks in {0, 1}, 1 bit per weight)
        or ``"ternarizer"`` (masks in {-1, 0, 1}, 2 bits per weight).
    :param mask_init: ``"1s"``: every score starts at ``mask_scale``, so each
        task starts from the backbone; ``"uniform"``: scores uniform in
        ``[-mask_scale, mask_scale]``.
    :param mask_scale: initial score scale.
    :param threshold: the threshold tau above which a score keeps its weight.
    :param task_batchnorm: each task learns its own normalization parameters
        and statistics; ``False`` keeps the backbone's frozen for all tasks
        (trained only on the first experience with
        ``train_backbone_on_first_experience``).
    :param task_embeddings: each task learns its own copy of a
        transformer's class token and positional embedding (see
        :class:`~piggyback_avalanche.task_aware.models.TaskAwareModel`);
        ``False`` shares them frozen.

    :param feature_statistics: each task also keeps its features' class
        means and covariance, for task inference by Mahalanobis distance
        (see :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    :param flat_masks: compute a learning task's masked weights of every
        layer in one pass over flat buffers
        (:mod:`~piggyback_avalanche.methods.piggyback.flat_masks`), the
        faster path on GPUs; ``None`` (the default): on CUDA devices only, as
        the per-layer path is faster on CPUs. The same logits and gradients
        either way.
    """

    layer_types = MASKED_LAYER_TYPES  # type: ignore[assignment]

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: str | nn.Module | None = None,
        threshold_fn: str = "binarizer",
        mask_init: str = "1s",
        mask_scale: float = DEFAULT_MASK_SCALE,
        threshold: float = DEFAULT_THRESHOLD,
        task_batchnorm: bool = True,
        task_embeddings: bool = False,
        feature_statistics: bool = False,
        flat_masks: bool | None = None,
    ) -> None:
        mask_kind = get_mask_kind(threshold_fn)
        _check_mask_settings(mask_init=mask_init, mask_scale=mask_scale, threshold=threshold)
        self.mask_kind = mask_kind
        self.mask_init = mask_init
        self.mask_scale = float(mask_scale)
        self.threshold = float(threshold)
        super().__init__(
            backbone,
            classifier=classifier,
            task_batchnorm=task_batchnorm,
            task_embeddings=task_embeddings,
            feature_statistics=feature_statistics,
            layer_settings=dict(
                mask_kind=mask_kind,
                threshold=self.threshold,
                mask_init=mask_init,
                mask_scale=self.mask_scale,
            ),
        )
        self.flat_masks = flat_masks

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "threshold_fn": self.threshold_fn}

    def task_file_settings(self) -> dict[str, Any]:
        # The threshold function and threshold decide what a stored mask means.
        return {**super().task_file_settings(), "threshold_fn": self.threshold_fn, "threshold": self.threshold}

    def forward(self, x: Tensor, task_labels: int | Tensor | None = None) -> Tensor | dict[int, Tensor]:
        if self.task_state.learning and (x.is_cuda if self.flat_masks is None else self.flat_masks):
            self._prepare_flat_masks()
        return super().forward(x, task_labels)

    def _prepare_flat_masks(self) -> None:
        """Give every learning task (but one that trains the backbone) its
        flat buffers, or new ones where the model moved since."""
        layers = list(self.masked_layers.values())
        for task in self.task_state.learning:
            holding = [layer for layer in layers if task in layer.scores]
            if not holding or len({(layer.weight.device, layer.weight.dtype) for layer in holding}) > 1:
                continue
            current = holding[0].flat_masks.get(task)
            if current is not None and current[0].covers(holding[0].weight):
                continue
            flat = FlatMasks(
                [layer.weight for layer in holding],
                [layer.scores[task] for layer in holding],
                threshold=self.threshold,
                mask_kind=self.mask_kind,
            )
            for index, layer in enumerate(holding):
                layer.flat_masks[task] = (flat, index)

    @property
    def threshold_fn(self) -> str:
        """The name of the threshold function."""
        return self.mask_kind.name

    @property
    def masked_layers(self) -> dict[str, MaskedLayer]:
        """The masked layers by qualified name."""
        return self.task_layers  # type: ignore[return-value]


def _check_mask_settings(*, mask_init: str, mask_scale: float, threshold: float) -> None:
    if mask_init not in MASK_INITS:
        raise ValueError(f"Unknown mask_init {mask_init!r}; choose one of {list(MASK_INITS)}.")
    check_positive("threshold", threshold)
    check_positive("mask_scale", mask_scale)
    if mask_scale <= threshold:
        raise ValueError(
            f"mask_scale ({mask_scale}) must exceed threshold ({threshold}): "
            + (
                "with mask_init='1s' every score would start at or below the "
                "threshold, so every mask would start at zero."
                if mask_init == "1s"
                else "with mask_init='uniform' no score would start above the threshold."
            )
        )
