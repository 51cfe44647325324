"""Piggyback next to LoRA, BitFit and prompt tuning on a vision transformer.

Offline, a small torchvision ViT is pretrained on half of the bundled MNIST
images, then each method learns the five new tasks of the offline stream
(rotated, inverted, flipped, permuted MNIST and scikit-learn's digits), one
per experience, through Avalanche's loop. The table gives what the question
"which method, at what cost per task" needs: average accuracy and the bytes
each task adds. With internet access (or the weights in torch hub's cache),
--pretrained starts from torchvision's ImageNet ViT-B/16 instead, on the same
images resized to 224x224 RGB (a GPU helps).

    python examples/vision_transformer.py --epochs 2
    python examples/vision_transformer.py --pretrained --device cuda
"""

import argparse
import sys

import torch

from piggyback_avalanche import make_strategy
from piggyback_avalanche.benchmarks.offline import mnist_transfer_stream
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.evaluation import default_evaluator
from piggyback_avalanche.networks.backbones import small_vit, torchvision_backbone
from piggyback_avalanche.networks.pretraining import pretrain

parser = argparse.ArgumentParser(description="Piggyback, LoRA, BitFit and prompts on a vision transformer")
parser.add_argument("--pretrained", action="store_true", help="torchvision's ImageNet ViT-B/16 (downloads once)")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--pretrain-epochs", type=int, default=20, help="of the small ViT on the source task")
parser.add_argument("--tasks", type=int, default=5, help="learn the first TASKS tasks of the stream")
parser.add_argument("--device", default="cpu")
args = parser.parse_args()

torch.manual_seed(0)
source, benchmark = mnist_transfer_stream(seed=0)
if args.pretrained:
    backbone = torchvision_backbone("vit_b_16", pretrained=True)

    def rgb224(images):
        return torch.nn.functional.interpolate(images, size=224, mode="bilinear").repeat(1, 3, 1, 1)

    tasks = []
    for train, test in zip(benchmark.train_stream, benchmark.test_stream):
        train_x, train_y = (torch.stack(t) for t in zip(*[train.dataset[i][:2] for i in range(len(train.dataset))]))
        test_x, test_y = (torch.stack(t) for t in zip(*[test.dataset[i][:2] for i in range(len(test.dataset))]))
        tasks.append((rgb224(train_x), train_y, rgb224(test_x), test_y))
    benchmark = tensor_task_stream(tasks)
else:
    backbone = small_vit(in_channels=1, image_size=16)
    print(
        f"pretraining the small ViT on the source task ({args.pretrain_epochs} epochs)...", file=sys.stderr, flush=True
    )
    pretrain(backbone, source, epochs=args.pretrain_epochs, lr=1e-3, mb_size=32, device=args.device, seed=0)

print("| method | avg accuracy (%) | bytes per task |")
print("|---|---|---|")
for name, settings in [
    ("piggyback", {}),
    ("lora", {"rank": 1}),
    ("lora", {"rank": 8}),
    ("bitfit", {}),
    ("prompt", {}),
    ("classifier_only", {}),
]:
    torch.manual_seed(0)
    strategy = make_strategy(
        name,
        backbone,
        train_epochs=args.epochs,
        device=args.device,
        evaluator=default_evaluator(interactive=False),
        **settings,
    )
    label = name + "".join(f" {k}={v}" for k, v in settings.items())
    for number, experience in enumerate(benchmark.train_stream[: args.tasks], start=1):
        strategy.train(experience)
        # Progress on stderr, so that stdout stays the table.
        print(f"{label}: task {number}/{args.tasks} learned", file=sys.stderr, flush=True)
    results = strategy.eval(benchmark.test_stream[: args.tasks])
    accuracy = [v for k, v in results.items() if k.startswith("Top1_Acc_Exp/eval_phase/test_stream/")]
    print(f"| {label} | {100 * sum(accuracy) / len(accuracy):.1f} | {strategy.model.bytes_per_task():,.0f} |")
