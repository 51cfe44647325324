"""Piggyback on an offline stream: three tasks made from scikit-learn's digits.

The stream has no pretrained backbone, so the first experience trains it; the
next two tasks are learned as binary masks over the frozen weights.

    python examples/quickstart.py
"""

import torch

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.benchmarks.offline import digits_task_stream
from piggyback_avalanche.networks.backbones import small_cnn

torch.manual_seed(0)
benchmark = digits_task_stream(["original", "rotated90", "inverted"])
model = PiggybackModel(small_cnn())  # the last nn.Linear becomes one head per task
strategy = Piggyback(
    model=model,
    train_epochs=3,
    train_backbone_on_first_experience=True,
)
for i, experience in enumerate(benchmark.train_stream):
    strategy.train(experience)
    results = strategy.eval(benchmark.test_stream[: i + 1])

for task in range(3):
    accuracy = results[f"Top1_Acc_Exp/eval_phase/test_stream/Task{task:03d}/Exp{task:03d}"]
    print(f"task {task}: accuracy {accuracy:.3f}")
print("frozen tasks:", model.frozen_tasks)
