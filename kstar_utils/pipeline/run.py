"""Running the task grid: in this process, on a ``distributed.LocalCluster`` sized to the machine, or on an existing
Dask cluster (``--scheduler tcp://HOST:8786``; SLURM/PBS through dask-jobqueue, see README).

Dask is the engine: tasks are submitted with their dependencies (a zoo model's training before its evaluation and
k* tasks), extraction and training need a ``GPU`` resource when the cluster has GPUs (one worker per GPU), and a task
whose worker dies is re-run elsewhere by the scheduler. Every task writes its own result file (see
:mod:`kstar_utils.pipeline.results`), so a killed worker or a killed run loses only the tasks in flight, and a rerun
skips what is finished.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin
from tqdm import tqdm

from ..errors import KStarInputError
from ..plumbing import cuda_device_count, usable_cpus
from .tasks import Task, run_task

IN_PROCESS = ("inprocess", "in-process", "none", "sync")
# Dask settings for the clusters kstar starts. On a laptop every core is doing torch work, so what the scheduler and
# the workers do beside the tasks is taken from them:
# - the worker's statistical profiler samples every thread's stack each 10 ms, taking the GIL from tasks that are
#   mostly Python (training and attacks of small CNNs); measured here, it cost 13% of a run. It only feeds the
#   dashboard's profile tab.
# - the event loops' 20 ms tick (which only detects a blocked loop), the 100 ms memory monitor, the 500 ms system
#   monitor and the 100 ms work-stealing check took 10% of one core on an idle one-worker cluster; at the intervals
#   below, under 2%. Memory limits are still enforced, within a second.
# Workers you start yourself: see README (SLURM, PBS).
CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.scheduler.work-stealing-interval": "1s",
}


class TorchThreads(WorkerPlugin):
    """Dask worker plugin: each worker's torch uses its share of the cores, and its own GPU when there are GPUs.

    A worker named ``i`` (LocalCluster names them 0, 1, ...) takes GPU ``i % n_gpus``; torch's threads are set to
    ``threads`` so that workers do not oversubscribe the CPU.
    """

    name = "kstar-torch-threads"

    def __init__(self, threads: int):
        self.threads = threads

    def setup(self, worker: Any) -> None:
        import torch

        torch.set_num_threads(max(1, self.threads))
        if torch.cuda.is_available():
            try:
                index = int(str(worker.name).rsplit("-", 1)[-1])
            except ValueError:
                index = 0
            torch.cuda.set_device(index % torch.cuda.device_count())


def local_cluster_size(n_workers: int | None = None) -> dict:
    """LocalCluster arguments for this machine: one worker per GPU with a ``GPU`` resource, else one worker per core
    (at most 8), each worker's torch on its share of the cores."""
    cores = usable_cpus()
    gpus = cuda_device_count()
    if gpus:
        workers = n_workers or gpus
        return {"n_workers": workers, "threads_per_worker": 1, "resources": {"GPU": 1},
                "torch_threads": max(1, cores // workers)}
    workers = n_workers or min(cores, 8)  # small CPU tasks scale better as processes than as torch threads
    return {"n_workers": workers, "threads_per_worker": 1, "torch_threads": max(1, cores // workers)}


@contextmanager
def open_client(scheduler: str | None = "local", n_workers: int | None = None) -> Iterator[Any]:
    """A Dask client for ``scheduler`` ("local": a new LocalCluster; "tcp://HOST:PORT": an existing cluster), or
    None for in-process execution."""
    if scheduler is None or str(scheduler).lower() in IN_PROCESS:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler == "local":
        import dask

        size = local_cluster_size(n_workers)
        threads = size.pop("torch_threads")
        # Dask's nanny starts workers with OMP/MKL/OpenBLAS at one thread and an aggressive malloc trim threshold;
        # both slow torch down. Each worker gets its share of the cores instead, and glibc's default allocator.
        environ = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **CLUSTER_CONFIG}), \
                LocalCluster(processes=True, dashboard_address=None, silence_logs=logging.ERROR, **size) as cluster, \
                Client(cluster) as client:
            client.register_plugin(TorchThreads(threads))
            yield client
        return
    if not str(scheduler).startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        raise KStarInputError(f"--scheduler {scheduler!r}: give 'local', 'inprocess' or an address such as "
                              "tcp://HOST:8786.")
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as err:
        raise KStarInputError(f"cannot reach the Dask scheduler at {scheduler} ({err}); start it with "
                              "`dask scheduler` or check the address.") from None
    with client:
        yield client


def _resources(client: Any, task: Task) -> dict | None:
    if not task.gpu:
        return None
    info = client.scheduler_info()
    if any(w.get("resources", {}).get("GPU") for w in info.get("workers", {}).values()):
        return {"GPU": 1}
    return None


def run_grid(tasks: Sequence[Task], store_root: str | os.PathLike, client: Any = None,
             progress: bool = True) -> dict[str, dict]:
    """Run every task (dependencies first) and return ``{task key: status}``. Failures are statuses, not raises."""
    root = str(Path(store_root).resolve())
    bar = tqdm(total=len(tasks), desc="tasks", unit="task", disable=not progress)
    statuses: dict[str, dict] = {}
    if client is None:
        for task in tasks:
            statuses[task.key] = run_task(task, root, *(statuses[k] for k in task.needs))
            bar.update(1)
        bar.close()
        return statuses
    from distributed import as_completed

    futures: dict[str, Any] = {}
    for task in tasks:
        futures[task.key] = client.submit(run_task, task, root, *(futures[k] for k in task.needs), key=task.key,
                                          pure=False, resources=_resources(client, task))
    for future in as_completed(list(futures.values())):
        status = future.result()
        statuses[status["key"]] = status
        bar.update(1)
    bar.close()
    return statuses


def run_jobs(function: Callable[..., Any], jobs: Sequence[tuple], client: Any = None, progress: bool = True,
             desc: str = "jobs") -> list[Any]:
    """``[function(*job) for job in jobs]``, on the cluster when there is one (the report's notebooks)."""
    if client is None:
        return [function(*job) for job in tqdm(jobs, desc=desc, disable=not progress)]
    from distributed import as_completed

    futures = [client.submit(function, *job, pure=False) for job in jobs]
    order = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    for future in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=not progress):
        results[order[future.key]] = future.result()
    return results
