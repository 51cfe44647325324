"""Piggyback, PackNet and a baseline on several processes with torchrun.

Each rank trains on its share of every experience through
DistributedDataParallel; metrics are summed over the ranks; only rank 0
logs and writes files. The same script runs as one process without torchrun.

    torchrun --standalone --nproc_per_node=2 examples/distributed_training.py --out runs/ddp
    python examples/distributed_training.py --out runs/single

On GPUs, one process per GPU: torchrun --nproc_per_node=<GPUs> (NCCL).
"""

import argparse
import hashlib
import json
from pathlib import Path

import torch.distributed as dist

from avalanche.distributed import DistributedHelper

from piggyback_avalanche import make_strategy
from piggyback_avalanche.benchmarks.offline import digits_task_stream
from piggyback_avalanche.evaluation import default_evaluator
from piggyback_avalanche.networks.backbones import small_cnn
from piggyback_avalanche.training.checkpoints import save_experience_checkpoint, supports_experience_checkpoint
from piggyback_avalanche.training.distributed import (
    DistributedDataParallelPlugin,
    barrier,
    distributed_device,
    init_distributed,
    is_main_process,
)

parser = argparse.ArgumentParser(description="Data-parallel training under torchrun")
parser.add_argument("--strategies", nargs="+", default=["piggyback", "packnet", "naive"])
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--mb-size", type=int, default=32, help="global mini-batch, split over the ranks")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", type=Path, default=Path("runs/ddp"))
args = parser.parse_args()

init_distributed(seed=args.seed)
world = dist.get_world_size() if dist.is_initialized() else 1
rank = dist.get_rank() if dist.is_initialized() else 0
benchmark = digits_task_stream(["original", "rotated90", "inverted"])

results = {}
for name in args.strategies:
    DistributedHelper.set_random_seeds(args.seed)  # every rank, every strategy: the same start
    main = is_main_process()
    evaluator = default_evaluator(
        tb_dir=args.out / "tensorboard" / name if main else None,
        json_path=args.out / f"{name}.json" if main else None,
        interactive=False,
    )
    strategy = make_strategy(
        name,
        small_cnn(),
        train_mb_size=args.mb_size // world,  # the same global batch as one process
        train_epochs=args.epochs,
        device=distributed_device(),
        evaluator=evaluator,
        plugins=[DistributedDataParallelPlugin()],
        **({"train_backbone_on_first_experience": True} if name == "piggyback" else {}),
    )
    for i, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        metrics = strategy.eval(benchmark.test_stream[: i + 1])
        if main and supports_experience_checkpoint(strategy):
            save_experience_checkpoint(strategy, args.out / f"{name}.ckpt", next_experience=i + 1)
        barrier()
    accuracy = [metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"] for t in range(3)]
    results[name] = accuracy
    # Every replica must end with the same model: compare this digest across ranks.
    state = strategy.model.state_dict()
    digest = hashlib.sha256(b"".join(state[k].cpu().numpy().tobytes() for k in sorted(state))).hexdigest()[:16]
    print(
        f"rank {rank} of {world}: {name} final accuracy per task {[round(a, 4) for a in accuracy]}, model {digest}",
        flush=True,
    )

if is_main_process():
    (args.out / "results.json").write_text(json.dumps({"world_size": world, "accuracy": results}))
barrier()
