"""PiggybackModel: any backbone, one binary (or ternary) mask per task."""

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

from torch import nn

from piggyback_avalanche.checks import check_positive
from piggyback_avalanche.methods.piggyback.layers import MASKED_LAYER_TYPES, MaskedLayer
from piggyback_avalanche.methods.piggyback.masks import get_mask_kind
from piggyback_avalanche.methods.piggyback.task_files import load_tasks, save_tasks
from piggyback_avalanche.task_aware.models import TaskAwareModel

__all__ = ["PiggybackModel", "MASK_INITS"]

MASK_INITS = ("1s", "uniform")
"""Ways to initialise a new task's mask scores."""


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

    :param feature_statistics: each task also keeps its features' class
        means and covariance, for task inference by Mahalanobis distance
        (see :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    """

    layer_types = MASKED_LAYER_TYPES  # type: ignore[assignment]

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: Union[str, nn.Module, None] = None,
        threshold_fn: str = "binarizer",
        mask_init: str = "1s",
        mask_scale: float = 1e-2,
        threshold: float = 5e-3,
        task_batchnorm: bool = True,
        feature_statistics: bool = False,
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
            feature_statistics=feature_statistics,
            layer_settings=dict(
                mask_kind=mask_kind,
                threshold=self.threshold,
                mask_init=mask_init,
                mask_scale=self.mask_scale,
            ),
        )

    def settings(self) -> Dict[str, Any]:
        return {**super().settings(), "threshold_fn": self.threshold_fn}

    @property
    def threshold_fn(self) -> str:
        """The name of the threshold function."""
        return self.mask_kind.name

    @property
    def masked_layers(self) -> Dict[str, MaskedLayer]:
        """The masked layers by qualified name."""
        return self.task_layers  # type: ignore[return-value]

    # --- task files ------------------------------------------------------------

    def save_task(self, path: Union[str, Path], task: int) -> None:
        """Write one frozen task (its packed masks, normalization and head,
        with the mask settings, a format version and the backbone's
        fingerprint) to ``path``, atomically. See
        :mod:`~piggyback_avalanche.methods.piggyback.task_files`."""
        self.save_tasks(path, [task])

    def save_tasks(self, path: Union[str, Path], tasks: Optional[Iterable[int]] = None) -> None:
        """Write ``tasks`` (all frozen tasks by default) to one task file."""
        save_tasks(self, path, tasks)

    def load_task(self, path: Union[str, Path], task: int, *, as_task: Optional[int] = None) -> int:
        """Add ``task`` from a task file as a frozen task, under the label
        ``as_task`` (default: the same). The model is unchanged on error.

        :return: the task's label in this model.
        :raises TaskFileError: for a file that is truncated, corrupt, of
            another version, from another backbone or mask setting, or
            that does not fit the layers, and for a label already taken.
        """
        rename = None if as_task is None else {task: as_task}
        return self.load_tasks(path, [task], rename=rename)[0]

    def load_tasks(
        self,
        path: Union[str, Path],
        tasks: Optional[Iterable[int]] = None,
        *,
        rename: Optional[Dict[int, int]] = None,
    ) -> List[int]:
        """Add ``tasks`` (all of the file's by default) from a task file;
        ``rename`` maps the file's labels to this model's.

        :return: the labels added.
        """
        return load_tasks(self, path, tasks, rename=rename)


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
