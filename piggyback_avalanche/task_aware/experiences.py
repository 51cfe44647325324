"""The tasks and classes an Avalanche experience holds, whichever benchmark
API made it."""

import torch

from avalanche.benchmarks.scenarios import CLExperience

__all__ = ["experience_task_classes", "experience_classes", "experience_task_labels", "origin_experience_index"]


def experience_task_labels(experience: CLExperience) -> list[int]:
    """The task labels of an experience: its own ``task_labels``, or, for an
    experience that does not carry them (an online stream's sub-experience),
    those of its data.

    :raises ValueError: if neither the experience nor its data has task
        labels, naming how to give them.
    """
    task_labels = getattr(experience, "task_labels", None)
    if task_labels is None:
        dataset = getattr(experience, "dataset", None)
        task_labels = getattr(dataset, "targets_task_labels", None) if dataset is not None else None
        if task_labels is not None:
            task_labels = torch.unique(torch.as_tensor(list(task_labels))).tolist()
    if task_labels is None:
        raise ValueError(
            "The experience has no task labels (neither the experience nor its data carries them), but a "
            "task-aware model learns one set of task parameters per task label. Make the stream task-aware, "
            "e.g. with avalanche.benchmarks.scenarios.task_aware.task_incremental_benchmark(bm) or "
            "with_task_labels(bm), or learn it class-incrementally with task_inference='sample'."
        )
    return sorted({int(t) for t in task_labels})


def origin_experience_index(experience: CLExperience) -> int:
    """The index of the experience in its stream; for an online stream's
    sub-experience, that of the experience it was cut from."""
    origin = getattr(experience, "origin_experience", None)
    return int((origin if origin is not None else experience).current_experience)


def experience_task_classes(experience: CLExperience) -> dict[int, list[int]]:
    """The class labels of each task label in an experience.

    Works with the classic and the new Avalanche benchmark APIs: it reads
    ``classes_in_this_experience`` (a list or a set) when the experience has a
    single task and the attribute exists, and the dataset's targets otherwise.

    :param experience: an Avalanche experience with task labels.
    :return: ``{task_label: sorted class labels}``.
    :raises ValueError: if the experience has no task labels or no data.
    """
    dataset = getattr(experience, "dataset", None)
    tasks = experience_task_labels(experience)
    if dataset is not None and len(dataset) == 0:
        raise ValueError(
            f"Experience {getattr(experience, 'current_experience', '?')} (task(s) {tasks}) holds no samples: "
            "every experience needs at least one labelled sample per task. Drop it from the stream."
        )
    if len(tasks) == 1 and getattr(experience, "classes_in_this_experience", None) is not None:
        found = {tasks[0]: experience_classes(experience)}
    else:
        if dataset is None:
            raise ValueError("The experience has neither class labels nor a dataset.")
        targets = torch.as_tensor(list(dataset.targets))
        labels = torch.as_tensor(list(dataset.targets_task_labels))
        found = {t: torch.unique(targets[labels == t]).tolist() for t in tasks}
    empty = [t for t, c in found.items() if not c]
    if empty or not found:
        raise ValueError(
            f"The experience holds no samples for task(s) {empty or tasks}: "
            "every experience needs at least one labelled sample per task."
        )
    return found


def experience_classes(experience: CLExperience) -> list[int]:
    """The class labels of an experience, whatever its task labels (or
    none): ``classes_in_this_experience`` (a list or a set) if it has it,
    else its dataset's targets.

    :raises ValueError: if the experience has no samples.
    """
    dataset = getattr(experience, "dataset", None)
    classes = getattr(experience, "classes_in_this_experience", None)
    if classes is None and dataset is not None:
        classes = torch.unique(torch.as_tensor(list(dataset.targets))).tolist()
    if not classes or (dataset is not None and len(dataset) == 0):
        raise ValueError(
            f"Experience {getattr(experience, 'current_experience', '?')} holds no samples: every experience "
            "needs at least one labelled sample. Drop it from the stream."
        )
    return sorted(int(c) for c in classes)
