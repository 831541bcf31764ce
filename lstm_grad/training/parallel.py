"""Run independent jobs (sweep runs, folds, seeds) in this process, a joblib pool, or a Dask cluster.

One function for every command that trains several models that do not talk to each other:

- ``workers == 1`` and no ``cluster``: one job after another in this process (easy to debug).
- ``workers > 1``: joblib's ``loky`` process pool on this machine; each worker gets
  ``threads_per_worker`` torch threads (default ``cores // workers``), and
  ``workers x threads`` may not exceed the machine's cores (oversubscribed CPU threads make every
  run slower and its timings meaningless).
- ``cluster="tcp://host:8786"``: joblib's Dask backend on that scheduler (the optional extra
  ``pip install -e ".[cluster]"``). The workers need the installed package and the data source;
  the results come back to this process. Start Dask workers with ``--nthreads 1`` (torch's thread
  count is per process, two jobs in one worker process would share it); by default each job uses
  ``cores of its machine // task slots on that machine`` threads.

The function travels by reference, as pickle sends any top-level function: a worker imports it from
the same installed module, so that module must be installed there too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlparse

import torch

from lstm_grad.errors import ConfigError, MissingExtraError

J = TypeVar("J")
R = TypeVar("R")


def require_extra(modules: Sequence[str], what: str, extra: str) -> None:
    """Import ``modules`` or raise :class:`MissingExtraError` naming ``pip install -e ".[extra]"``.

    >>> require_extra(["no_such_module_xyz"], "--cluster", "cluster")
    Traceback (most recent call last):
    ...
    lstm_grad.errors.MissingExtraError: --cluster needs no_such_module_xyz, which is not installed: pip install -e ".[cluster]"
    """
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingExtraError(f'{what} needs {name}, which is not installed: pip install -e ".[{extra}]"') from None


def _with_threads(function: Callable[[Any], Any], job: Any, threads: int, index: int) -> tuple[int, Any]:
    """Run one job with ``threads`` torch threads; return ``(index, result)`` so order can be restored."""
    torch.set_num_threads(threads)
    return index, function(job)


def _on_worker(function: Callable[[Any], Any], job: Any, threads: int | dict[str, int], index: int) -> tuple[int, Any]:
    """Run one job on a Dask worker.

    ``threads`` is either a count or a map ``{worker address: threads}`` made by :func:`_cluster_threads`.
    """
    from distributed import get_worker

    if isinstance(threads, dict):
        threads = threads.get(get_worker().address, 1)
    return _with_threads(function, job, threads, index)


def _host(address: str) -> str:
    return urlparse(address).hostname or address


def _cluster_threads(client: Any) -> dict[str, int]:
    """Threads per job on each Dask worker: its machine's cores // task slots of all workers there."""
    cores = client.run(os.cpu_count)  # {worker address: cores of the machine it runs on}
    slots: dict[str, int] = {}
    for address, n in client.nthreads().items():
        slots[_host(address)] = slots.get(_host(address), 0) + n
    return {address: max(1, (n or 1) // slots.get(_host(address), 1)) for address, n in cores.items()}


def check_workers(workers: int, threads_per_worker: int | None, cores: int | None = None) -> int:
    """Return the torch threads per local worker, or raise ``ConfigError`` if they oversubscribe the CPU.

    >>> check_workers(2, None, cores=8)
    4
    >>> check_workers(3, 2, cores=4)
    Traceback (most recent call last):
    ...
    lstm_grad.errors.ConfigError: 3 workers x 2 threads = 6 CPU threads > 4 cores on this machine; lower --workers or --threads
    """
    cores = cores or os.cpu_count() or 1
    if workers < 1 or (threads_per_worker is not None and threads_per_worker < 1):
        raise ConfigError(f"workers ({workers}) and threads per worker ({threads_per_worker}) must be >= 1")
    threads = threads_per_worker or max(1, cores // workers)
    if workers * threads > cores:
        raise ConfigError(f"{workers} workers x {threads} threads = {workers * threads} CPU threads > {cores} cores "
                          f"on this machine; lower --workers or --threads")
    return threads


def run_jobs(function: Callable[[J], R], jobs: Sequence[J], workers: int = 1, threads_per_worker: int | None = None,
             cluster: str | None = None, on_result: Callable[[int, R], None] | None = None) -> list[R]:
    """Apply ``function`` to every job and return the results in job order.

    ``function`` must be a top-level (picklable) function; a job and its result must pickle too
    (plain dicts, numbers, strings). ``on_result(index, result)`` is called in this process as each
    job finishes (in finishing order), e.g. to write a resumable CSV row at once. An exception in a
    job stops the whole run and is raised here.

    Raises ``ConfigError`` when local ``workers x threads`` exceed the cores or ``cluster`` cannot be
    reached, and :class:`MissingExtraError` (naming the extra to install) when ``cluster`` is given without Dask.

    >>> run_jobs(abs, [-3, 2, -1])
    [3, 2, 1]
    """
    jobs = list(jobs)
    results: list[Any] = [None] * len(jobs)

    def collect(pairs: Any) -> list[R]:
        for index, result in pairs:
            results[index] = result
            if on_result is not None:
                on_result(index, result)
        return results

    if cluster is None:
        threads = check_workers(workers, threads_per_worker)
        if workers == 1 or len(jobs) <= 1:
            before = torch.get_num_threads()
            try:
                return collect(_with_threads(function, job, threads, i) for i, job in enumerate(jobs))
            finally:
                torch.set_num_threads(before)
        from joblib import Parallel, delayed

        pool = Parallel(n_jobs=min(workers, len(jobs)), backend="loky", batch_size=1,
                        return_as="generator_unordered")
        return collect(pool(delayed(_with_threads)(function, job, threads, i) for i, job in enumerate(jobs)))
    return _run_on_cluster(function, jobs, threads_per_worker, cluster, collect)


def _run_on_cluster(function: Callable[[Any], Any], jobs: list[Any], threads_per_worker: int | None, cluster: str,
                    collect: Callable[[Any], list[Any]]) -> list[Any]:
    require_extra(["distributed"], "--cluster", "cluster")
    import distributed
    from joblib import Parallel, delayed, parallel_config

    try:
        client = distributed.Client(cluster, timeout=30)
    except OSError as error:  # refused, timed out, unknown host
        raise ConfigError(f"--cluster {cluster}: cannot reach the Dask scheduler ({' '.join(str(error).split())}); "
                          "start it or check the address") from None
    with client:
        threads: int | dict[str, int] = threads_per_worker or _cluster_threads(client)
        with parallel_config(backend="dask"):
            pool = Parallel(n_jobs=-1, batch_size=1, return_as="generator_unordered")
            return collect(pool(delayed(_on_worker)(function, job, threads, i) for i, job in enumerate(jobs)))
