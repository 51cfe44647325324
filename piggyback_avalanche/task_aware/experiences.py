"""The tasks and classes an Avalanche experience holds, whichever benchmark
API made it."""

from typing import Dict, List

import torch

from avalanche.benchmarks.scenarios import CLExperience

__all__ = ["experience_task_classes", "experience_classes"]


def experience_task_classes(experience: CLExperience) -> Dict[int, List[int]]:
    """The class labels of each task label in an experience.

    Works with the classic and the new Avalanche benchmark APIs: it reads
    ``classes_in_this_experience`` (a list or a set) when the experience has a
    single task and the attribute exists, and the dataset's targets otherwise.

    :param experience: an Avalanche experience with task labels.
    :return: ``{task_label: sorted class labels}``.
    :raises ValueError: if the experience has no task labels or no data.
    """
    dataset = getattr(experience, "dataset", None)
    # Avalanche's templates pass task labels to the model only when the
    # experience itself has them, so the dataset's labels are not enough.
    task_labels = getattr(experience, "task_labels", None)
    if task_labels is None:
        raise ValueError(
            "The experience has no task labels, but Piggyback learns one mask per "
            "task. Make the stream task-aware, e.g. with "
            "avalanche.benchmarks.scenarios.task_aware.task_incremental_benchmark(bm) "
            "or with_task_labels(bm)."
        )
    tasks = sorted({int(t) for t in task_labels})
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


def experience_classes(experience: CLExperience) -> List[int]:
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
