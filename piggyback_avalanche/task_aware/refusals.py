"""What a task-aware strategy refuses before any work, each with the
problem and the fix: a model it cannot train, an online stream that never
says where a task ends, class labels a task's head lacks. (Unfit plugins:
:mod:`~piggyback_avalanche.task_aware.plugin_support`; experiences that
would train a frozen task again: the strategy's
:class:`~piggyback_avalanche.task_aware.task_sources.TaskSource`.)"""

from typing import Any

import torch
from torch import Tensor, nn

from avalanche.benchmarks.scenarios.online import OnlineCLExperience
from avalanche.models import DynamicModule

from piggyback_avalanche.task_aware.models import TaskAwareModel

__all__ = ["refuse_unfit_model", "refuse_online_without_boundaries", "refuse_labels_outside_heads"]


def refuse_unfit_model(strategy_name: str, model: nn.Module, model_type: type[TaskAwareModel]) -> None:
    """Refuse a model of another type than the strategy trains, or one that
    holds Avalanche dynamic modules of its own.

    :raises TypeError: for another type.
    :raises ValueError: for nested dynamic modules.
    """
    model_name = model_type.__name__
    if not isinstance(model, model_type):
        raise TypeError(
            f"{strategy_name} trains a {model_name}, got {type(model).__name__}. "
            f"Wrap your network: {strategy_name}(model={model_name}(backbone), ...)."
        )
    nested = [path for path, module in model.named_modules() if path and isinstance(module, DynamicModule)]
    if nested:
        raise ValueError(
            f"The {model_name} holds Avalanche dynamic modules of its own ({', '.join(nested)}): Avalanche "
            "would adapt them to every experience besides the model, adding every task twice. Give the "
            "strategy one task-aware model; keep other models outside it."
        )


def refuse_online_without_boundaries(strategy_name: str, experience: Any) -> None:
    """Refuse an online sub-experience of a stream without task boundaries:
    a task freezes when its data ends, and such a stream never says when."""
    if isinstance(experience, OnlineCLExperience) and not experience.access_task_boundaries:
        raise ValueError(
            f"{strategy_name} freezes each task when its data ends, but an online stream without task "
            "boundaries never says when (experience "
            f"{experience.current_experience}). Cut the stream with split_online_stream(..., "
            "access_task_boundaries=True)."
        )


def refuse_labels_outside_heads(
    model: TaskAwareModel, experience: Any, targets: Tensor, tasks: Tensor, *, training: bool
) -> None:
    """Refuse an experience whose samples carry class labels that their
    task's head lacks, before any step: the loss would be infinite (or, on
    CUDA, a device-side assert).

    :param targets: each sample's class label.
    :param tasks: the task each sample is computed under.
    :param training: the experience is being trained (else evaluated).
    """
    for task in torch.unique(tasks).tolist():
        if str(task) not in model.heads.heads:
            continue  # evaluated before it is learned: an untrained head over the experience's classes
        head = model.heads.head(str(task))
        extra = sorted(set(torch.unique(targets[tasks == task]).tolist()) - set(head.classes))
        if extra and training:
            raise ValueError(
                f"Experience {experience.current_experience}: task {task} has samples labelled "
                f"{extra}, but its head has classes {head.classes} (from the experience's "
                "classes_in_this_experience). Make that attribute list every label of the experience."
            )
        if extra:
            raise ValueError(
                f"Evaluating experience {experience.current_experience}: task {task} has samples "
                f"labelled {extra}, but the task was learned with classes {head.classes}; its head cannot "
                "predict the others. Evaluate each task on data of the classes it was trained on."
            )
