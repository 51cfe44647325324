"""Where the benchmark runner's jobs execute: one after another in this
process (:class:`SerialExecutor`, the default), or each as a task on a Ray
cluster (:class:`RayExecutor`, the ``[ray]`` extra), placed by Ray with the
resources it asks for and retried by Ray when the process or node running
it dies.

Both call the same function on the same jobs, so a job's result does not
depend on where it ran. A job is any picklable object; the function must be
importable by name on every node (a module-level function of an installed
package), which is how Ray sends it.
"""

import logging
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tqdm.auto import tqdm

from piggyback_avalanche.app.protocols import EXECUTORS

__all__ = [
    "JobFailure",
    "RayUnavailableError",
    "Executor",
    "SerialExecutor",
    "RayExecutor",
    "make_executor",
]

Job = TypeVar("Job")


class RayUnavailableError(ImportError):
    """The Ray executor needs Ray, an optional extra."""


@dataclass(frozen=True)
class JobFailure:
    """A job that raised where it ran: its label and the traceback."""

    label: str
    traceback: str


class Executor(Protocol):
    """What the runner needs of an executor."""

    @property
    def parallelism(self) -> int:
        """How many jobs run at once."""
        ...

    def run(
        self,
        function: Callable[[Any], Any],
        jobs: Iterable[Job],
        *,
        count: int,
        label: Callable[[Job], str],
        on_result: Callable[[Job, Any], None],
        description: str = "runs",
    ) -> list[JobFailure]:
        """Call ``function(job)`` for every job, and ``on_result(job,
        result)`` in this process as each finishes.

        :param jobs: the jobs; a serial executor takes each from the
            iterable only when the one before has finished, so work done to
            make a job (pretraining a backbone, say) happens in turn.
        :param count: how many jobs ``jobs`` yields, for the progress bar.
        :param label: a job's name in progress and failure reports.
        :param description: the progress bar's label.
        :return: the jobs that raised (a serial executor raises instead).
        """
        ...

    def close(self) -> None:
        """Release what the executor started."""
        ...

    def __enter__(self) -> "Executor":
        """The executor itself; leaving the ``with`` block closes it."""
        ...

    def __exit__(self, *exc_info: object) -> None: ...


class SerialExecutor:
    """Every job in turn, in this process. An exception stops the rest and
    reaches the caller, as a plain loop would."""

    parallelism = 1

    def run(
        self,
        function: Callable[[Any], Any],
        jobs: Iterable[Job],
        *,
        count: int,
        label: Callable[[Job], str],
        on_result: Callable[[Job, Any], None],
        description: str = "runs",
    ) -> list[JobFailure]:
        # On a terminal only (disable=None): a bar over the jobs, above each job's own bars.
        with tqdm(total=count, desc=description, unit="run", disable=None) as bar:
            for job in jobs:
                on_result(job, function(job))
                bar.update()
        return []

    def close(self) -> None:
        pass

    def __enter__(self) -> "SerialExecutor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
"""Ray colours the task's name in the tracebacks it sends back."""


def _check_listening(address: str, timeout: float = 10.0) -> None:
    """Refuse a cluster address where nothing listens (Ray itself would retry
    for minutes).

    :raises ValueError: naming the address and the fix.
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r}: give HOST:PORT, as `ray start --head` prints it, or auto.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ValueError(
            f"--ray-address {address}: nothing answers there ({error}); start the cluster's head with "
            "`ray start --head`, or give the address it printed."
        ) from None


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            "--executor ray needs Ray: pip install 'piggyback-avalanche[ray]' (or pip install ray)."
        ) from None
    return ray


def _call_with_threads(function: Callable[[Any], Any], job: Any, threads: int) -> Any:
    """Run ``function(job)`` in a Ray worker with as many torch threads as
    CPUs the task holds (Ray sets OMP_NUM_THREADS, which torch read before
    the task began only in a fresh worker)."""
    import torch

    torch.set_num_threads(threads)
    return function(job)


class RayExecutor:
    """Each job as one Ray task, with the CPUs, GPUs and memory it asks
    for; Ray places them on the cluster's nodes.

    A task whose worker process or node dies is retried by Ray up to
    ``max_retries`` times (a job that saves checkpoints resumes from its
    last one); a job that raises is not retried: its traceback comes back as
    a :class:`JobFailure` and the other jobs go on.

    :param address: a running cluster's address (``ray start --head``
        prints it; ``"auto"``: the one this node belongs to); ``None``
        starts a local Ray instance on this machine, shut down by
        :meth:`close`.
    :param cpus_per_job: CPUs each task holds, and its torch threads.
    :param gpus_per_job: GPUs each task holds (Ray sets the task's
        ``CUDA_VISIBLE_DEVICES``).
    :param memory_per_job: bytes of memory each task reserves (``None``: no
        reservation).
    :param max_retries: retries of a task whose worker died.
    :param log: where the cluster's description goes.
    :raises RayUnavailableError: without Ray installed.
    :raises ValueError: for resources below what a job needs, or a cluster
        Ray cannot connect to.
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        cpus_per_job: int = 1,
        gpus_per_job: float = 0,
        memory_per_job: int | None = None,
        max_retries: int = 3,
        log: Callable[[str], None] = tqdm.write,
    ) -> None:
        if cpus_per_job < 1:
            raise ValueError(f"cpus_per_job={cpus_per_job}: a job needs at least one CPU.")
        if gpus_per_job < 0 or (memory_per_job is not None and memory_per_job <= 0):
            raise ValueError(f"gpus_per_job={gpus_per_job}, memory_per_job={memory_per_job}: give positive values.")
        ray = _ray()
        self._ray = ray
        self._started_here = not ray.is_initialized() and address is None
        context = None
        if not ray.is_initialized():
            if address not in (None, "auto"):
                _check_listening(address)
            try:
                # Ray's own INFO lines and the workers' output (their progress bars) would bury the driver's.
                context = ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            except (ConnectionError, RuntimeError, ray.exceptions.RayError) as error:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise ValueError(
                    f"Could not connect to {where}: {error} (is the cluster up, with `ray status` answering "
                    "here, and this process given the cluster's RAY_AUTH_MODE and token?)"
                ) from None
        self._options = {
            "num_cpus": cpus_per_job,
            "num_gpus": gpus_per_job,
            "max_retries": max_retries,
            "retry_exceptions": False,
            **({"memory": memory_per_job} if memory_per_job is not None else {}),
        }
        self._threads = cpus_per_job
        resources = ray.cluster_resources()
        self.parallelism = max(1, int(resources.get("CPU", 0) // cpus_per_job))
        if gpus_per_job:
            self.parallelism = min(self.parallelism, max(1, int(resources.get("GPU", 0) // gpus_per_job)))
        where = address or "a local instance"
        dashboard = getattr(context, "dashboard_url", None)
        log(
            f"Ray: {where}, {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs; {self.parallelism} job(s) at a time; "
            + (f"dashboard http://{dashboard}" if dashboard else "no dashboard (pip install 'ray[default]' for one)")
        )

    def run(
        self,
        function: Callable[[Any], Any],
        jobs: Iterable[Job],
        *,
        count: int,
        label: Callable[[Job], str],
        on_result: Callable[[Job, Any], None],
        description: str = "runs",
    ) -> list[JobFailure]:
        ray = self._ray
        remote = ray.remote(_call_with_threads).options(name=description, **self._options)
        pending = {remote.remote(function, job, self._threads): job for job in jobs}
        failures: list[JobFailure] = []
        with tqdm(total=count, desc=description, unit="run", disable=None) as bar:

            def show() -> None:
                bar.set_postfix(running=min(len(pending), self.parallelism), failed=len(failures), refresh=True)

            show()
            while pending:
                (finished,), _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(finished)
                try:
                    result = ray.get(finished)
                except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError) as error:
                    # A job that raised, or whose worker died more often than it is retried.
                    failures.append(JobFailure(label(job), _ANSI_COLOUR.sub("", str(error))))
                else:
                    on_result(job, result)
                bar.update()
                show()
        return failures

    def close(self) -> None:
        """Shut down the local Ray instance this executor started (a cluster
        given by address stays up)."""
        if self._started_here and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def make_executor(
    name: str,
    *,
    address: str | None = None,
    cpus_per_job: int = 1,
    gpus_per_job: float = 0,
    memory_per_job: int | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> Executor:
    """The executor ``name`` (one of :data:`EXECUTORS`).

    :raises ValueError: for an unknown name, or Ray settings without Ray.
    """
    if name not in EXECUTORS:
        raise ValueError(f"Unknown executor {name!r}; choose one of {list(EXECUTORS)}.")
    if name == "serial":
        if address is not None:
            raise ValueError("--ray-address is for --executor ray; add it, or drop the address.")
        return SerialExecutor()
    return RayExecutor(
        address=address,
        cpus_per_job=cpus_per_job,
        gpus_per_job=gpus_per_job,
        memory_per_job=memory_per_job,
        log=log,
    )
