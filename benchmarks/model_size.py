"""Model size after T tasks on a torchvision backbone, for the
parameter-isolation strategies: what storing everything learned costs.

Sizes do not depend on what the tasks learned, so the tasks are added and
frozen without data (PackNet prunes each at the given ratio).

    python benchmarks/model_size.py --backbone resnet18 --tasks 5 --classes 10
"""

import argparse

import torch
import torchvision

from piggyback_avalanche import (
    ClassifierOnlyModel,
    IndividualNetworksModel,
    PackNetModel,
    PiggybackModel,
)
from piggyback_avalanche.evaluation.model_size import stored_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    args = parser.parse_args()
    backbone = getattr(torchvision.models, args.backbone)(weights=None)
    models = {
        "piggyback": PiggybackModel(backbone),
        "piggyback_ternary": PiggybackModel(backbone, threshold_fn="ternarizer", mask_init="uniform"),
        "packnet": PackNetModel(backbone),
        "individual": IndividualNetworksModel(backbone),
        "classifier_only": ClassifierOnlyModel(backbone),
    }
    classes = list(range(args.classes))
    print(f"{args.backbone}, {args.tasks} tasks of {args.classes} classes, float32 weights")
    print("| strategy | MB after 1 task | MB after T tasks | MB per extra task | × T individual networks |")
    print("|---|---|---|---|---|")
    for name, model in models.items():
        sizes = []
        for task in range(args.tasks):
            model.add_task(task, classes=classes)
            if isinstance(model, PackNetModel):
                model.prune(args.prune_ratio)
            model.freeze_task(task)
            sizes.append(stored_bytes(model))
        individual = sum(model.network_bytes(t) for t in model.tasks)
        per_task = (sizes[-1] - sizes[0]) / max(1, args.tasks - 1)
        print(
            f"| {name} | {sizes[0] / 1e6:.2f} | {sizes[-1] / 1e6:.2f} | {per_task / 1e6:.3f} "
            f"| {sizes[-1] / individual:.3f} |"
        )


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
