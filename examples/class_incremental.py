"""Piggyback without task labels at test time: a class-incremental split of the
bundled MNIST images, the task of every test sample inferred.

Five experiences of two digits each, no task labels; a small CNN pretrained on
other images of the same digits. Each experience becomes a task (a mask, batch
norm and head); evaluation picks, for every sample, the task whose feature
statistics claim it most, and answers with that task's logits over all ten
classes, so Avalanche's accuracy and forgetting metrics work as usual.

    python examples/class_incremental.py
"""

import torch

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.benchmarks.offline import class_incremental_stream
from piggyback_avalanche.evaluation import default_evaluator
from piggyback_avalanche.networks.backbones import small_cnn
from piggyback_avalanche.networks.pretraining import pretrain

torch.manual_seed(0)
source, benchmark = class_incremental_stream("mnist")
backbone = pretrain(small_cnn(), source, epochs=3, lr=1e-3, mb_size=64, device="cpu", seed=0)
model = PiggybackModel(backbone)
strategy = Piggyback(
    model=model,
    # The strategy makes the model keep the feature statistics the best task score reads.
    task_inference="sample",  # or "batch": all samples of an evaluation batch from one task
    train_epochs=2,  # the mask learning rate follows the 22 steps this gives each experience
    evaluator=default_evaluator(interactive=False),  # with the task-inference accuracy
)
for experience in benchmark.train_stream:
    strategy.train(experience)
    results = strategy.eval(benchmark.test_stream)  # the whole stream, no task labels read

print(f"accuracy over all ten digits: {results['Top1_Acc_Stream/eval_phase/test_stream']:.3f}")
print(f"samples whose task was inferred right: {results['TaskInference_Acc_Stream/eval_phase/test_stream']:.3f}")
print(f"stored: {model.stored_bytes() / 1024:.0f} KiB, no exemplar")
