"""HAT's layer: the shared weight trains with every task, each task gates
the layer's output units by its own attention, and the units earlier tasks
attend to take no further gradient."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from piggyback_avalanche.task_aware.task_layers import TaskWeightLayer, task_layer_types
from piggyback_avalanche.task_aware.task_module import TaskTensorDict

__all__ = [
    "AttentionScale",
    "UNIT_EMBEDDING_BOUND",
    "COSH_BOUND",
    "UnitAttentionLayer",
    "UnitAttentionConv1d",
    "UnitAttentionConv2d",
    "UnitAttentionConv3d",
    "UnitAttentionLinear",
    "UNIT_ATTENTION_LAYER_TYPES",
]

UNIT_EMBEDDING_BOUND = 6.0
"""HAT clamps task embeddings to ``[-6, 6]`` after every step (its code's
``thres_emb``), so that no gate saturates beyond recovery."""

COSH_BOUND = 50.0
"""HAT bounds ``s * e`` at ``±50`` inside the compensation's ``cosh``
(its code's ``thres_cosh``), against overflow."""


class AttentionScale:
    """The sigmoid's scale ``s`` that every layer of a HAT model reads: HAT
    anneals it from ``1 / maximum`` to ``maximum`` over each training epoch
    and evaluates, and freezes tasks, at ``maximum``.

    :param maximum: ``s_max`` (HAT: 400).
    """

    def __init__(self, maximum: float) -> None:
        self.maximum = float(maximum)
        self.current = self.maximum

    def at(self, progress: float) -> float:
        """The scale at ``progress`` (0 to 1) through an epoch, HAT's
        ``1/s_max + (s_max - 1/s_max) * progress``."""
        return 1 / self.maximum + (self.maximum - 1 / self.maximum) * progress


class UnitAttentionLayer(TaskWeightLayer):
    """HAT's layer (Serra et al., "Overcoming Catastrophic Forgetting with
    Hard Attention to the Task", ICML 2018).

    Each task being learned owns an ``embedding`` per output unit (channel);
    its attention is ``sigmoid(s * embedding)`` and the layer computes with
    ``weight`` and ``bias`` scaled per output unit by it (the same as gating
    the unit's output, which commutes with ReLU). The shared ``weight`` and
    ``bias`` train with every task, but their gradient at a unit is scaled
    by ``1 - cumulative``, the largest attention an earlier task gives the
    unit. A frozen task keeps its attention at ``s_max``, one float per unit.

    HAT scales a weight's gradient by ``1 - min(attention of its output
    unit, attention of its input unit)``, which needs to know which layer
    feeds which; a general backbone does not say (skip connections,
    reshapes), so this layer gates by the output unit alone: it protects
    every weight HAT protects, and more.
    """

    cumulative: Tensor
    changes_backbone_with_tasks = True  # every task trains the shared weight
    setting_names = ("scale",)
    sized_by_tasks = ("cumulative",)

    def _init_task_weights(self, *, scale: AttentionScale) -> None:  # type: ignore[override]
        self.scale = scale
        units = (self.weight.shape[0],)
        self.embeddings = TaskTensorDict(trainable=True, holds="learning", shape=units)
        self.attentions = TaskTensorDict(trainable=False, holds="frozen", shape=units)
        # Empty until the first task freezes: no unit is attended to yet.
        self.register_buffer("cumulative", torch.zeros(0, dtype=self.weight.dtype, device=self.weight.device))

    # --- tasks -----------------------------------------------------------

    def add_task(self, task: str, *, classes: Sequence[int] = ()) -> None:
        """Start learning ``task``: its embeddings drawn from N(0, 1), as
        HAT's ``nn.Embedding`` draws them; the shared weight trains."""
        self.embeddings.add(task, torch.randn(self.weight.shape[0], dtype=self.weight.dtype).to(self.weight.device))
        self._set_weight_trainable(True)

    def freeze_task(self, task: str) -> None:
        """Keep the task's attention at ``s_max``; its units join those that
        earlier tasks protect."""
        with torch.no_grad():
            attention = torch.sigmoid(self.scale.maximum * self.embeddings.pop(task))
        self.attentions.add(task, attention)
        self.cumulative = (
            attention.clone() if not self.cumulative.numel() else torch.maximum(self.cumulative, attention)
        )
        if not len(self.embeddings.keys()):
            self._set_weight_trainable(False)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"unit_embeddings": [...], "weights": [...]}``: the learning
        tasks' embeddings, and the shared weight and bias while a task learns."""
        return {
            "unit_embeddings": [self.embeddings[t] for t in self.embeddings.keys()],  # type: ignore[misc]
            "weights": [p for p in (self.weight, self.bias) if p is not None and p.requires_grad],
        }

    def task_tensor_bytes(self) -> int:
        return self.attentions.nbytes()

    def task_record_keys(self) -> list[str]:
        return ["cumulative"]

    def mask_counts(self, task: str) -> dict[str, int]:
        # The units the task gates off (attention below one half), by their weights.
        dropped = int((self.attention(task) < 0.5).sum())
        return {"zeros": dropped * self.weight[0].numel()}

    # --- attention -------------------------------------------------------

    def attention(self, task: str) -> Tensor:
        """``task``'s attention per output unit: at the current scale while
        it trains, at ``s_max`` when evaluated or frozen."""
        if task in self.embeddings:
            scale = self.scale.current if self.training else self.scale.maximum
            return torch.sigmoid(scale * self.embeddings[task])
        return self._frozen_tensor("attentions", task)

    def protection(self) -> Tensor:
        """Per output unit, the largest attention an earlier task gives it
        (0 where none does)."""
        if not self.cumulative.numel():
            return torch.zeros(self.weight.shape[0], dtype=self.weight.dtype, device=self.weight.device)
        return self.cumulative

    def capacity_used(self) -> float:
        """The share of the layer's weights whose gradient earlier tasks
        block, each weighed by its unit's :meth:`protection`."""
        return float(self.protection().mean())

    def capacity_regulariser(self) -> tuple[Tensor, Tensor]:
        """HAT's regulariser's sums over this layer, for every learning task:
        ``(sum of attention * (1 - protection), sum of (1 - protection))``."""
        free = 1 - self.protection()
        attended = sum((self.attention(task) * free).sum() for task in self.embeddings.keys())
        return torch.as_tensor(attended), free.sum() * len(self.embeddings.keys())

    @torch.no_grad()
    def gate_gradients(self) -> None:
        """Scale the shared weight's and bias's gradients by
        ``1 - protection`` per output unit, and compensate the embeddings'
        gradients for the annealed scale (HAT's ``s_max / s`` correction)."""
        free = 1 - self.protection()
        for parameter in (self.weight, self.bias):
            if parameter is not None and parameter.grad is not None:
                parameter.grad.mul_(free.view(-1, *[1] * (parameter.dim() - 1)))
        s, s_max = self.scale.current, self.scale.maximum
        for task in self.embeddings.keys():
            embedding = self.embeddings[task]
            if embedding.grad is not None:
                numerator = torch.cosh(torch.clamp(s * embedding, -COSH_BOUND, COSH_BOUND)) + 1
                embedding.grad.mul_(s_max / s * numerator / (torch.cosh(embedding) + 1))

    @torch.no_grad()
    def clamp_embeddings(self) -> None:
        """Clamp the learning tasks' embeddings to ``±UNIT_EMBEDDING_BOUND``."""
        for task in self.embeddings.keys():
            self.embeddings[task].clamp_(-UNIT_EMBEDDING_BOUND, UNIT_EMBEDDING_BOUND)

    # --- forward ---------------------------------------------------------

    def _gated(self, tensor: Tensor, attention: Tensor) -> Tensor:
        return tensor * attention.view(-1, *[1] * (tensor.dim() - 1))

    def task_weight(self) -> Tensor:
        """The shared weight, each output unit scaled by the task's attention."""
        task = self.task_state.key()
        if task in self.embeddings or (self.weight.requires_grad and torch.is_grad_enabled()):
            return self._gated(self.weight, self.attention(task))
        key = (self.weight._version, self.attentions[task]._version if task in self.attentions else -1)
        return self._frozen_weight(task, key, lambda: self._gated(self.weight, self.attention(task)))

    def task_bias(self) -> Tensor | None:
        if self.bias is None:
            return None
        return self._gated(self.bias, self.attention(self.task_state.key()))


UNIT_ATTENTION_LAYER_TYPES = task_layer_types(
    UnitAttentionLayer, prefix="UnitAttention", doc="whose output units each task gates by its own hard attention."
)
"""Layer types whose units HAT gates, and their twins."""

UnitAttentionConv1d, UnitAttentionConv2d, UnitAttentionConv3d, UnitAttentionLinear = UNIT_ATTENTION_LAYER_TYPES.values()
