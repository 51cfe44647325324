"""PiggybackModel: any backbone, one binary (or ternary) mask per task."""

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from piggyback_avalanche.checks import check_positive
from piggyback_avalanche.methods.piggyback.flat_masks import FlatMasks
from piggyback_avalanche.methods.piggyback.layers import MASKED_LAYER_TYPES, MaskedLayer
from piggyback_avalanche.methods.piggyback.masks import get_mask_kind
from piggyback_avalanche.methods.piggyback.task_files import load_tasks, save_tasks
from piggyback_avalanche.methods.piggyback.task_store import TaskStore, TaskStoreError
from piggyback_avalanche.task_aware.models import TaskAwareModel
from piggyback_avalanche.task_aware.task_state import task_key

__all__ = ["PiggybackModel", "MASK_INITS"]

MASK_INITS = ("1s", "uniform")
"""Ways to initialise a new task's mask scores."""

_TASKS_PER_LOAD = 32


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
        mask_scale: float = 1e-2,
        threshold: float = 5e-3,
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
        # Per stored task: the state-dict keys of its parts the store holds, with their bytes in memory.
        self._offloaded: dict[str, dict[str, int]] = {}
        self.flat_masks = flat_masks

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "threshold_fn": self.threshold_fn}

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

    # --- task files ------------------------------------------------------------

    def save_task(self, path: str | Path, task: int) -> None:
        """Write one frozen task (its packed masks, normalization and head,
        with the mask settings, a format version and the backbone's
        fingerprint) to ``path``, atomically. See
        :mod:`~piggyback_avalanche.methods.piggyback.task_files`."""
        self.save_tasks(path, [task])

    def save_tasks(self, path: str | Path, tasks: Iterable[int] | None = None) -> None:
        """Write ``tasks`` (all frozen tasks by default) to one task file."""
        save_tasks(self, path, tasks)

    def load_task(self, path: str | Path, task: int, *, as_task: int | None = None) -> int:
        """Add ``task`` from a task file as a frozen task, under the label
        ``as_task`` (default: the same). The model is unchanged on error.

        :return: the task's label in this model.
        :raises TaskFileError: for a file that is truncated, corrupt, of
            another version, from another backbone or mask setting, or
            that does not fit the layers, and for a label already taken.
        """
        rename = None if as_task is None else {task: as_task}
        return self.load_tasks(path, [task], rename=rename)[0]

    # --- the task store ----------------------------------------------------------

    @property
    def task_store(self) -> TaskStore | None:
        """The task store that holds this model's frozen tasks' masks, if any."""
        return self.task_state.stored_parts  # type: ignore[return-value]  # only attach_task_store sets it

    def attach_task_store(self, path: str | Path, *, cache_budget_bytes: int | None = None) -> list[int]:
        """Keep the frozen tasks' masks in the task store at ``path``
        (:mod:`~piggyback_avalanche.methods.piggyback.task_store`) instead of
        memory: the store's tasks join the model, the model's frozen tasks
        are appended to the store, and every task frozen from now on is
        appended when it freezes. A task's masks are read when the task is
        used and its effective weights not cached; memory holds the
        backbone, every task's normalization and head, and the
        :attr:`frozen_weight_cache`.

        Everything is checked first (the manifest, every task file against
        its SHA-256, the backbone fingerprint and mask settings, free
        labels); on any error the model is unchanged.

        :param path: the store's folder (made if new).
        :param cache_budget_bytes: set the :attr:`frozen_weight_cache`'s budget.
        :return: the tasks added from the store.
        :raises TaskStoreError: naming what does not fit and what to do.
        :raises ValueError: while a task learns, or if a store is attached.
        """
        if self.task_store is not None:
            raise ValueError(f"This model keeps its tasks in {self.task_store.path} already.")
        if self.task_state.learning:
            raise ValueError(
                f"Tasks {self.learning_tasks} are still being learned; attach a task store between experiences."
            )
        store = TaskStore(path)
        store.check_model(self)
        added = store.tasks
        clashing = sorted(set(added) & set(self.tasks))
        if clashing:
            raise TaskStoreError(
                f"Task label(s) {clashing} are in the model and in the task store {store.path}; attach the "
                "store to a model without them (a model built on the same backbone)."
            )
        for task in added:  # every file, checked before anything changes
            store.entries(self, task)
        # The model's own frozen tasks go to the store first, all or none: if
        # the folder cannot take them, neither the store nor the model changes.
        own = [t for t in self.frozen_tasks if task_key(t) not in self.task_state.stored_tasks]
        if own:
            store.append_tasks(self, own)
        if cache_budget_bytes is not None:
            self.frozen_weight_cache.budget_bytes = cache_budget_bytes
        self.task_state.stored_parts = store
        # A few tasks per load: each load visits the whole model, and each
        # task's masks leave memory right after.
        for start in range(0, len(added), _TASKS_PER_LOAD):
            chunk = added[start : start + _TASKS_PER_LOAD]
            self.load_state_dict(
                {**self.state_dict(), **{k: v for t in chunk for k, v in store.entries(self, t).items()}}
            )
            for task in chunk:
                self._offload(task)
        for task in own:
            self._offload(task)
        return added

    def _store(self, task: int) -> None:
        self.task_store.append(self, task)  # type: ignore[union-attr]
        self._offload(task)

    def _offload(self, task: int) -> None:
        key = task_key(task)
        parts = {
            prefix + k: tensor
            for prefix, module in self._named_task_modules()
            for k, tensor in module.offload_task(key).items()
        }
        self._offloaded[key] = {k: t.nbytes for k, t in parts.items()}
        self._frozen_parts.pop(key, None)  # it held the parts that just left memory
        self.task_state.stored_tasks.add(key)

    def stored_task_parts(self, task: int) -> dict[str, Tensor]:
        """The parts of ``task`` that its task store holds instead of memory,
        read from the store (none for a task in memory)."""
        key = task_key(task)
        store = self.task_store
        if key not in self.task_state.stored_tasks or store is None:
            return {}
        return {k: store.read_part(key, k) for k in self._offloaded[key]}

    def freeze_task(self, task: int) -> None:
        """Finish a task; with a task store attached, append it there and
        drop its masks from memory.

        :raises TaskStoreError: if the store cannot take the task (a full
            disk, a removed folder); the task stays frozen in memory, whole,
            and ``save_task`` can write it elsewhere.
        """
        super().freeze_task(task)
        if self.task_store is not None:
            self._store(task)

    def stored_bytes(self) -> int:
        """Bytes the model stores, in memory or in its task store (the
        stored tasks' masks counted as in memory, bit-packed)."""
        return super().stored_bytes() + sum(sum(parts.values()) for parts in self._offloaded.values())

    def load_tasks(
        self,
        path: str | Path,
        tasks: Iterable[int] | None = None,
        *,
        rename: dict[int, int] | None = None,
    ) -> list[int]:
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
