"""Many tasks on one backbone: masks in a task store on disk, read on demand.

The first run learns tasks with a task store attached: each task is
appended to the store (masks entropy-coded) when it freezes, and its masks
leave memory. Run it again and it attaches the same store to a fresh model:
the tasks come back without training, and evaluating them through
Avalanche's loop reads each task's masks from disk when it is used.

    python examples/task_store.py --store runs/task_store
"""

import argparse
from pathlib import Path

import torch

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.benchmarks.offline import mnist_transfer_stream
from piggyback_avalanche.evaluation import default_evaluator
from piggyback_avalanche.networks.backbones import small_cnn
from piggyback_avalanche.networks.pretraining import pretrain
from piggyback_avalanche.task_aware import TaskStore

parser = argparse.ArgumentParser(description="Piggyback with its tasks in a task store")
parser.add_argument("--store", type=Path, default=Path("runs/task_store"))
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()

# The same pretrained backbone every run (pretraining on the CPU is
# deterministic): the store's tasks were learned on it, and it checks.
source, benchmark = mnist_transfer_stream(seed=0)
torch.manual_seed(0)
backbone = pretrain(small_cnn(), source, epochs=3, lr=1e-3, mb_size=64, device="cpu", seed=0)
model = PiggybackModel(backbone)
found = model.attach_task_store(args.store)
model.frozen_weight_cache.budget_bytes = 0  # keep the effective weights of the task in use only
strategy = Piggyback(model=model, train_epochs=args.epochs, evaluator=default_evaluator(interactive=False))
if found:
    print(f"tasks {found} found in {args.store}; nothing to train")
else:
    for experience in benchmark.train_stream:
        strategy.train(experience)

results = strategy.eval(benchmark.test_stream)
for task in range(len(benchmark.test_stream)):
    accuracy = results[f"Top1_Acc_Exp/eval_phase/test_stream/Task{task:03d}/Exp{task:03d}"]
    print(f"task {task}: accuracy {accuracy:.3f}")
store = TaskStore(args.store)
on_disk = sum(store.file_bytes(t) for t in store.tasks)
in_memory = sum(t.nbytes for t in model.state_dict().values())
print(f"stored: {len(store.tasks)} tasks, {on_disk / 1024:.1f} KiB on disk; the model holds {in_memory / 1024:.1f} KiB")
