"""Data-parallel training over several processes (``torchrun``) for every
Avalanche strategy: ours, and the registry's baselines.

Avalanche's ``DistributedHelper`` starts the process group and gives every
rank its share of each experience, but its templates never wrap the model in
``DistributedDataParallel`` and its metrics are computed per rank.
:class:`DistributedDataParallelPlugin` adds what is missing:

- after each experience's model adaptation (the model has grown the task's
  masks, norms and head), the strategy's forward pass runs through DDP, which
  synchronises the gradients of exactly the parameters that train: the
  current task's scores, norms and head (frozen tasks hold no parameters that
  require gradients);
- batch-norm running statistics, which DDP leaves per rank, are averaged over
  the ranks after every epoch and the trained parameters broadcast from rank
  0, so every replica freezes the same task;
- before metrics are emitted, their running sums (Avalanche's ``Mean``) are
  summed over the ranks, so every rank reports the metrics of the whole test
  set.

Logging and files belong to rank 0 (:func:`is_main_process`)::

    init_distributed(seed=0)
    evaluator = default_evaluator(tb_dir=... if is_main_process() else None, interactive=False)
    strategy = Piggyback(model=model, device=distributed_device(), evaluator=evaluator,
                         plugins=[DistributedDataParallelPlugin()])

and launch with ``torchrun --nproc_per_node=N script.py``.
"""

import inspect
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from avalanche.distributed import DistributedHelper
from avalanche.evaluation.metrics.mean import Mean
from avalanche.models import MultiTaskModule
from avalanche.training.plugins import SupervisedPlugin

from piggyback_avalanche.task_aware.models import TaskAwareModel
from piggyback_avalanche.task_aware.task_norm import TaskNorm

__all__ = [
    "init_distributed",
    "is_main_process",
    "distributed_device",
    "barrier",
    "DistributedDataParallelPlugin",
]


def init_distributed(*, seed: int, backend: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes (a no-op when the
    script runs as a single process) and seed every rank alike, so that all
    replicas start from the same model.

    :param seed: the random seed of every rank.
    :param backend: ``"nccl"`` on GPUs and ``"gloo"`` on CPUs by default.
    :return: whether the process is part of a distributed run.
    """
    return DistributedHelper.init_distributed(seed, backend=backend, use_cuda=torch.cuda.is_available())


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only one): the one that logs
    and writes files."""
    return DistributedHelper.is_main_process


def distributed_device() -> torch.device:
    """This rank's device: ``cuda:<local rank>`` when GPUs are used, else the CPU."""
    return DistributedHelper.make_device()


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    DistributedHelper.barrier()


class _DataParallelModel(MultiTaskModule):
    """The strategy's model seen through ``DistributedDataParallel`` for the
    forward pass; every other attribute is the model's own."""

    def __init__(self, model: nn.Module, data_parallel: DistributedDataParallel) -> None:
        # nn.Module's, not MultiTaskModule's: its task bookkeeping must come
        # from the wrapped model, through __getattr__.
        nn.Module.__init__(self)
        object.__setattr__(self, "inner", model)  # not a submodule: no double registration
        self.data_parallel = data_parallel

    def forward(self, x: torch.Tensor, task_labels: Any) -> torch.Tensor:
        return self.data_parallel(x, task_labels)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "inner"), name)


def _learning_norms(model: nn.Module) -> list[nn.Module]:
    """Batch-norm layers whose running statistics change in this experience:
    the learning tasks' copies in a task-aware model, all of them otherwise."""
    task_norms = [m for m in model.modules() if isinstance(m, TaskNorm)]
    norms = [n for t in task_norms for n in t.learning_norms()] if task_norms else list(model.modules())
    return [n for n in norms if isinstance(n, nn.modules.batchnorm._BatchNorm) and n.track_running_stats]


def _means(obj: Any, depth: int = 0) -> Iterator[Mean]:
    """Every Avalanche ``Mean`` inside a metric, in an order that is the
    same on every rank."""
    if isinstance(obj, Mean):
        yield obj
    elif depth < 5 and isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _means(obj[key], depth + 1)
    elif depth < 5 and isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _means(item, depth + 1)
    elif depth < 5 and type(obj).__module__.startswith(("avalanche.evaluation", "piggyback_avalanche")):
        yield from _means(vars(obj), depth + 1)


def _no_forward_buffer_sync() -> dict:
    # Frozen tasks' buffers never change and norms are averaged per epoch,
    # so buffers are not sent before every forward pass.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class DistributedDataParallelPlugin(SupervisedPlugin, supports_distributed=True):  # type: ignore[call-arg]
    """Data-parallel training of any strategy under ``torchrun`` (see the
    module's documentation). Without a process group it does nothing, so the
    same script runs as one process too.

    Place it in ``plugins``: it must run before the evaluator, which
    Avalanche always adds last.

    :param find_unused_parameters: passed to ``DistributedDataParallel``;
        ``None`` decides per model: not needed by this package's task-aware
        models, whose trainable parameters all take part in every forward
        pass; needed by the baselines' multi-head models, whose earlier
        heads still train but sit out of other tasks' batches.
    """

    def __init__(self, *, find_unused_parameters: bool | None = None) -> None:
        super().__init__()
        self.find_unused_parameters = find_unused_parameters
        self._model: nn.Module | None = None

    @staticmethod
    def _active() -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if not self._active():
            return
        # Avalanche has adapted the model and built the optimizer by now, so
        # DDP sees exactly the parameters this experience trains.
        model = strategy.model
        device = next(model.parameters()).device
        unused = self.find_unused_parameters
        data_parallel = DistributedDataParallel(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            **_no_forward_buffer_sync(),
            find_unused_parameters=not isinstance(model, TaskAwareModel) if unused is None else unused,
        )
        self._model = model
        strategy.model = _DataParallelModel(model, data_parallel)

    def after_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        if not self._active():
            return
        model = self._model
        if model is None:  # a process group appeared after this experience started
            return
        world = dist.get_world_size()
        with torch.no_grad():
            for norm in _learning_norms(model):
                for buffer in (norm.running_mean, norm.running_var):
                    dist.all_reduce(buffer)  # type: ignore[arg-type]  # batch norm's running statistics
                    buffer.div_(world)  # type: ignore[operator]
            # Averaged gradients keep replicas equal up to rounding; make them bit-equal.
            for parameter in model.parameters():
                if parameter.requires_grad:
                    dist.broadcast(parameter, src=0)
        self._reduce_metrics(strategy)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self._model is not None:
            strategy.model, self._model = self._model, None

    def after_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self._active():
            self._reduce_metrics(strategy)

    @staticmethod
    def _reduce_metrics(strategy: Any) -> None:
        """Sum every metric's running sums and weights over the ranks."""
        means = [m for metric in strategy.evaluator.metrics for m in _means(metric)]
        if not means:
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        totals = torch.tensor([[float(m.summed), float(m.weight)] for m in means], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        for mean, (summed, weight) in zip(means, totals.tolist()):
            mean.summed, mean.weight = summed, weight
