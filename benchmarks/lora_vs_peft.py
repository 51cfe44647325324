"""Does ``peft`` serve our LoRA baseline? Our ``LowRankLayer`` against
``peft``'s LoRA layers on the same backbone with the same factors: the
largest difference in the outputs, and the time of an evaluation pass per
task, side by side in one run.

    pip install peft   # not a dependency of the project
    python benchmarks/lora_vs_peft.py --backbone small_cnn
    python benchmarks/lora_vs_peft.py --backbone small_vit

``peft`` computes ``base(x) + B(A(x))`` per forward pass for the active
adapter (unless merged, which changes the shared weight); our layers fold a
frozen task's update into its weight once and keep it in the model's
frozen-weight cache, so a pass costs what the plain network costs.
"""

import argparse
import time

import torch
from torch import nn

from piggyback_avalanche.methods.lora import LoRAModel
from piggyback_avalanche.networks.backbones import small_cnn, small_vit

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--backbone", choices=["small_cnn", "small_vit"], default="small_cnn")
parser.add_argument("--rank", type=int, default=4)
parser.add_argument("--tasks", type=int, default=5)
parser.add_argument("--batch", type=int, default=256)
parser.add_argument("--repeats", type=int, default=20)
args = parser.parse_args()

try:
    from peft import LoraConfig, inject_adapter_in_model
except ImportError:
    raise SystemExit("This benchmark compares with peft, which the project does not need: pip install peft") from None

torch.manual_seed(0)
backbone = small_cnn() if args.backbone == "small_cnn" else small_vit()
backbone.eval()
ours = LoRAModel(backbone, rank=args.rank, task_batchnorm=False).eval()
classifier = ours._classifier_name
# torchvision's ViT starts its classifier at zero, which would hide any difference.
nn.init.normal_(backbone.get_submodule(classifier).weight, std=0.1)
# What our LoRA adapts: every convolution and nn.Linear but the classifier (the
# ViT's attention projections are not modules peft adapts the same way: left out).
targets = [
    name for name, module in backbone.named_modules() if type(module) in (nn.Conv2d, nn.Linear) and name != classifier
]
theirs = backbone
config = LoraConfig(r=args.rank, lora_alpha=8.0, target_modules=targets, lora_dropout=0.0)
for task in range(args.tasks):
    ours.add_task(task, classes=list(range(10)))
    inject_adapter_in_model(config, theirs, adapter_name=f"task{task}")
    with torch.no_grad():
        for name in targets:
            layer = ours.backbone.get_submodule(name)
            peft_layer = theirs.get_submodule(name)
            down = torch.randn_like(layer.learning_down[str(task)]) * 0.1
            up = torch.randn_like(layer.learning_up[str(task)]) * 0.1
            layer.learning_down[str(task)].copy_(down)
            layer.learning_up[str(task)].copy_(up)
            peft_layer.lora_A[f"task{task}"].weight.copy_(down.view_as(peft_layer.lora_A[f"task{task}"].weight))
            peft_layer.lora_B[f"task{task}"].weight.copy_(up.view_as(peft_layer.lora_B[f"task{task}"].weight))
    ours.freeze_task(task)
    # The same head for both: the backbone's classifier.
    ours.heads.head(str(task)).load_state_dict(backbone.get_submodule(classifier).state_dict(), strict=False)


def use_adapter(task: int) -> None:
    """Make ``task``'s adapter the active one in every peft layer."""
    for module in theirs.modules():
        if hasattr(module, "set_adapter") and hasattr(module, "lora_A"):
            module.set_adapter(f"task{task}")


shape = (args.batch, 1, 16, 16)
x = torch.randn(shape)
differences = []
with torch.no_grad():
    for task in range(args.tasks):
        use_adapter(task)
        differences.append((ours(x, task) - theirs(x)).abs().max().item())


def seconds_per_pass(run) -> float:
    with torch.no_grad():
        for task in range(args.tasks):
            run(task)  # warm up (our cache fills here)
        started = time.perf_counter()
        for _ in range(args.repeats):
            for task in range(args.tasks):
                run(task)
    return (time.perf_counter() - started) / (args.repeats * args.tasks)


def peft_pass(task: int) -> None:
    use_adapter(task)
    theirs(x)


ours_seconds = seconds_per_pass(lambda task: ours(x, task))
peft_seconds = seconds_per_pass(peft_pass)
print(f"torch {torch.__version__}, {args.backbone}, rank {args.rank}, {args.tasks} tasks, batch {args.batch}")
print(f"largest output difference over the tasks: {max(differences):.2e}")
print(f"evaluation pass per task: ours {1e3 * ours_seconds:.2f} ms, peft {1e3 * peft_seconds:.2f} ms")
print(f"peft / ours: {peft_seconds / ours_seconds:.2f}x")
