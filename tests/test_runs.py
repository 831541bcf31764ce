"""lstm_grad.training.parallel: job order, threads per worker, the core limit, and the missing-Dask message."""

import os
import sys

import pytest
import torch

from lstm_grad.errors import MissingExtraError, UserError
from lstm_grad.training import parallel as runs


def threads_and_square(job: int) -> tuple[int, int, int]:
    """A job: its square, the torch threads it saw and its process id."""
    return job * job, torch.get_num_threads(), os.getpid()


def test_in_process_keeps_order_reports_each_result_and_restores_threads():
    seen = []
    before = torch.get_num_threads()
    results = runs.run_jobs(threads_and_square, [3, -2, 5], threads_per_worker=1,
                            on_result=lambda index, result: seen.append((index, result[0])))
    assert [r[0] for r in results] == [9, 4, 25]
    assert [r[1] for r in results] == [1, 1, 1] and {r[2] for r in results} == {os.getpid()}
    assert seen == [(0, 9), (1, 4), (2, 25)]
    assert torch.get_num_threads() == before


def test_threads_default_to_cores_over_workers_and_may_not_oversubscribe():
    assert runs.check_workers(1, None, cores=6) == 6
    assert runs.check_workers(4, None, cores=6) == 1
    assert runs.check_workers(2, 3, cores=6) == 3
    with pytest.raises(ValueError, match="2 workers x 4 threads = 8 CPU threads > 6 cores"):
        runs.check_workers(2, 4, cores=6)
    with pytest.raises(ValueError, match="7 workers x 1 threads = 7 CPU threads > 6 cores"):
        runs.check_workers(7, None, cores=6)
    with pytest.raises(ValueError, match="must be >= 1"):
        runs.check_workers(0, None, cores=6)


def test_cluster_without_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(MissingExtraError, match=r'--cluster needs distributed.*pip install -e "\.\[cluster\]"'):
        runs.run_jobs(threads_and_square, [1, 2], cluster="tcp://127.0.0.1:8786")
    assert issubclass(MissingExtraError, UserError)  # so the command guard prints one error line


def test_cluster_threads_split_each_machines_cores_between_its_slots():
    class Client:  # two machines: a has 2 single-slot workers, b one worker with 2 slots
        def run(self, function):
            return {"tcp://a:1": 8, "tcp://a:2": 8, "tcp://b:1": 4}

        def nthreads(self):
            return {"tcp://a:1": 1, "tcp://a:2": 1, "tcp://b:1": 2}

    assert runs._cluster_threads(Client()) == {"tcp://a:1": 4, "tcp://a:2": 4, "tcp://b:1": 2}


@pytest.mark.slow
def test_loky_pool_keeps_job_order_and_sets_threads_in_each_worker():
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores for 2 workers x 1 thread")
    results = runs.run_jobs(threads_and_square, [4, 1, 3, 2], workers=2, threads_per_worker=1)
    assert [r[0] for r in results] == [16, 1, 9, 4]
    assert all(r[1] == 1 for r in results)
    assert os.getpid() not in {r[2] for r in results}


@pytest.mark.slow
def test_local_dask_cluster_returns_the_same_results_in_order():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        results = runs.run_jobs(threads_and_square, [4, 1, 3], cluster=cluster.scheduler_address)
    threads = max(1, os.cpu_count() // 2)  # this machine's cores split between its 2 single-slot workers
    assert [r[:2] for r in results] == [(16, threads), (1, threads), (9, threads)]
    assert os.getpid() not in {r[2] for r in results}
