"""HAT as an Avalanche strategy."""

from typing import Any

import torch

from piggyback_avalanche.checks import check_positive
from piggyback_avalanche.methods.hat.model import HATModel
from piggyback_avalanche.task_aware.strategy import TaskAwareStrategy

__all__ = ["HAT", "DEFAULT_HAT_LR", "DEFAULT_CAPACITY_WEIGHT", "DEFAULT_CLIP_GRADIENT"]

DEFAULT_HAT_LR = 0.05
"""HAT's learning rate, with plain SGD (its paper and code); on validation
data of the offline default stream (seeds 0, 1, 2) it was the best of 0.01,
0.05 and 0.2 (BENCHMARKS.md)."""

DEFAULT_CAPACITY_WEIGHT = 0.75
"""HAT's ``c``, the weight of its capacity regulariser, chosen in its paper
by a grid search (0.1 to 4)."""

DEFAULT_CLIP_GRADIENT = 10_000.0
"""HAT clips the gradient's norm at 10,000 (its code's ``clipgrad``)."""


class HAT(TaskAwareStrategy):
    """HAT (Serra et al., ICML 2018) as an Avalanche strategy.

    Each experience adds its task (unit embeddings, normalization copies,
    head) and trains them with the shared weights, by plain SGD as HAT
    does (``optimizer=`` changes it: Adam would rescale the gated gradients
    back to full steps, moving weights earlier tasks protect). The loss adds
    ``capacity_weight`` times HAT's capacity regulariser; the attention's
    scale anneals from ``1/s_max`` to ``s_max`` over every epoch; after each
    backward pass the weights' gradients are gated by what earlier tasks
    attend to and the embeddings' compensated, the gradient's norm is
    clipped at ``clip_gradient``, and after each step the embeddings are
    clamped.

    :param model: a :class:`~piggyback_avalanche.methods.hat.model.HATModel`.
    :param lr: the learning rate of everything the task trains.
    :param capacity_weight: HAT's ``c``.
    :param clip_gradient: the largest gradient norm.
    :param kwargs: :class:`~piggyback_avalanche.task_aware.strategy.TaskAwareStrategy`'s arguments.
    """

    model_type = HATModel
    model: HATModel
    # A unit whose attention at s_max is short of exactly 0 or 1 still takes a
    # little gradient, so earlier tasks' logits move within rounding.
    forgets_nothing = False
    recalibrates_norm_statistics = True  # 75.8 % against 70.0 on validation data (BENCHMARKS.md)

    def __init__(
        self,
        *,
        model: HATModel,
        lr: float = DEFAULT_HAT_LR,
        capacity_weight: float = DEFAULT_CAPACITY_WEIGHT,
        clip_gradient: float = DEFAULT_CLIP_GRADIENT,
        **kwargs: Any,
    ) -> None:
        check_positive("lr", lr)
        check_positive("clip_gradient", clip_gradient)
        if capacity_weight < 0:
            raise ValueError(f"capacity_weight must be at least 0, got {capacity_weight}.")
        self.lr = lr
        self.capacity_weight = capacity_weight
        self.clip_gradient = clip_gradient
        if kwargs.get("optimizer") is None and kwargs.get("optimizer_factory") is None:
            kwargs["optimizer"] = torch.optim.SGD
        super().__init__(model=model, **kwargs)

    def group_learning_rates(self) -> dict[str, float]:
        return {name: self.lr for name in self.model.trainable_parameters()}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "capacity_weight": self.capacity_weight, "clip_gradient": self.clip_gradient}

    def _before_training_iteration(self, **kwargs: Any) -> None:
        # HAT anneals the scale over each epoch, batch by batch.
        batches = max(len(self.dataloader) - 1, 1)
        self.model.attention_scale.current = self.model.attention_scale.at(self.clock.train_epoch_iterations / batches)
        super()._before_training_iteration(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        self.model.attention_scale.current = self.model.attention_scale.maximum
        super()._after_training_exp(**kwargs)

    def criterion(self) -> Any:
        loss = super().criterion()
        if self.is_training and self.capacity_weight:
            loss = loss + self.capacity_weight * self.model.capacity_regulariser()
        return loss

    def optimizer_step(self) -> None:
        self.model.gate_gradients()
        trained = [p for group in self.model.trainable_parameters().values() for p in group]
        torch.nn.utils.clip_grad_norm_(trained, self.clip_gradient)
        super().optimizer_step()
        self.model.clamp_embeddings()
