"""Piggyback on a torchvision ResNet.

Offline, this trains ResNet-18 from scratch on the first task (the digits
stream, upsampled to 32x32 RGB) and learns a mask per later task. With
internet access (or the weights in torch hub's cache), --pretrained starts
from ImageNet weights and every task, the first included, is a mask:
the paper's setting.

    python examples/torchvision_resnet.py --epochs 3
    python examples/torchvision_resnet.py --pretrained --device cuda
"""

import argparse

import torch
import torchvision
from sklearn.datasets import load_digits

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.benchmarks.offline import DIGITS_TRANSFORMS
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.evaluation import default_evaluator

parser = argparse.ArgumentParser(description="Piggyback on a torchvision ResNet-18")
parser.add_argument("--pretrained", action="store_true", help="ImageNet weights (downloads once)")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--tasks", type=int, default=3)
parser.add_argument("--device", default="cpu")
args = parser.parse_args()


# scikit-learn's 8x8 digits as 32x32 RGB images, the smallest input ResNets take well;
# each task transforms them differently.
digits = load_digits()
images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
images = torch.nn.functional.interpolate(images, size=32, mode="bilinear").repeat(1, 3, 1, 1)
labels = torch.tensor(digits.target)
order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
train, test = order[:1300], order[1300:]
tasks = []
for name in ["original", "rotated90", "inverted", "flipped"][: args.tasks]:
    x = DIGITS_TRANSFORMS[name](images)
    tasks.append((x[train], labels[train], x[test], labels[test]))
benchmark = tensor_task_stream(tasks)

torch.manual_seed(0)
weights = torchvision.models.ResNet18_Weights.DEFAULT if args.pretrained else None
backbone = torchvision.models.resnet18(weights=weights)
model = PiggybackModel(backbone)  # resnet.fc -> one head per task; every conv masked, every BN per task
strategy = Piggyback(
    model=model,
    train_epochs=args.epochs,
    train_backbone_on_first_experience=not args.pretrained,
    device=args.device,
    evaluator=default_evaluator(interactive=False),
)
for i, experience in enumerate(benchmark.train_stream):
    strategy.train(experience)
    results = strategy.eval(benchmark.test_stream[: i + 1])

for task in range(len(tasks)):
    print(f"task {task}: accuracy {results[f'Top1_Acc_Exp/eval_phase/test_stream/Task{task:03d}/Exp{task:03d}']:.3f}")
size = results["ModelSize_Bytes/train_phase/train_stream"]
ratio = results["ModelSize_IndividualNetworksRatio/train_phase/train_stream"]
print(f"stored: {size / 1e6:.2f} MB for {len(tasks)} tasks, {ratio:.3f} of {len(tasks)} separate networks")
