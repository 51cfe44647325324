"""The paper's published results, to print beside ours."""

__all__ = ["PUBLISHED_ERRORS", "PAPER_TASK_NAMES"]

PUBLISHED_ERRORS: dict[str, dict[str, float]] = {
    "resnet50": {"cub200": 18.23, "stanford_cars": 10.19, "flowers102": 4.77, "wikiart": 28.57, "sketch": 19.75},
    "vgg16": {"cub200": 20.75, "stanford_cars": 11.78, "flowers102": 6.93, "wikiart": 29.80, "sketch": 22.30},
}
"""Top-1 test errors (%) of Piggyback published in the original repository
(single runs, ImageNet-pretrained backbone, binary masks)."""

PAPER_TASK_NAMES = ("CUBS", "Stanford Cars", "Flowers", "WikiArt", "Sketch")
"""The paper's fine-grained tasks, in its order."""
