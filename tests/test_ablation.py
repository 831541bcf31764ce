"""experiments.ablation end to end on a tiny span: rows, columns, persistence by hand, resume."""

import csv
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lstm_grad.data import load_series

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["config", "seed", "horizon", "target_mode", "mae", "mase", "dir_acc", "epoch_time_s", "best_epoch"]


@pytest.fixture(scope="module")
def ablation():
    from experiments import ablation

    return ablation


def tiny_args(tmp_path: Path) -> list[str]:
    return ["--configs", "baseline", "residual", "--seeds", "1", "--max-epochs", "1", "--last-n-days", "300",
            "--set", "model.hidden_sizes=[8]", "--set", "data.window=20", "--workers", "1", "--threads", "1",
            "--config-dir", str(ROOT / "configs"), "--out", str(tmp_path / "results"),
            "--runs-dir", str(tmp_path / "runs"), "--allow-dirty"]


@pytest.mark.slow
def test_tiny_ablation_end_to_end(tmp_path, ablation):
    cpu = time.process_time()
    assert ablation.main(tiny_args(tmp_path)) == 0
    # CPU seconds, not wall: on a shared 2-core machine wall time measures the neighbours
    assert time.process_time() - cpu < 20
    out = tmp_path / "results"
    with (out / "runs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert set(REQUIRED) <= set(rows[0])
    assert sorted(r["config"] for r in rows) == ["baseline", "drift", "linear_ar", "persistence", "residual"]
    assert all(r["horizon"] == "1" and r["target_mode"] == "level" for r in rows)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert {r["commit"].removesuffix("-dirty") for r in rows} == {head}
    assert {r["torch"] for r in rows} == {torch.__version__}

    # persistence by hand: last 300 days, split 70/10/20 by target row -> test targets are rows 240..299
    gold = load_series("embedded")["gold"].to_numpy()[-300:]
    hand = np.mean(np.abs(gold[240:] - gold[239:-1]))
    by_config = {r["config"]: r for r in rows}
    assert math.isclose(float(by_config["persistence"]["mae"]), hand, rel_tol=1e-5)
    assert float(by_config["persistence"]["rel_mae"]) == 1.0  # "mase" before issue 23
    for name in ("baseline", "residual"):
        row = by_config[name]
        assert math.isclose(float(row["naive_mae"]), hand, rel_tol=1e-5)  # same test targets as the models
        assert math.isclose(float(row["rel_mae"]), float(row["mae"]) / hand, rel_tol=1e-4)  # "mase" before issue 23
        assert row["best_epoch"] == "1" and float(row["epoch_time_s"]) > 0 and float(row["val_rel_mae"]) > 0
        assert 0 <= float(row["dm_sq_p"]) <= 1 and Path(row["log_dir"], "predictions.csv").exists()
    page = (out / "ablation.md").read_text()
    assert "| persistence | 1 |" in page and "47.23 → 12.84" in page
    assert (out / "ablation.png").stat().st_size > 0

    # resumable: a second call finds every run in runs.csv and trains nothing
    before = (out / "runs.csv").read_text()
    assert ablation.main(tiny_args(tmp_path)) == 0
    assert (out / "runs.csv").read_text() == before


def test_atomic_rows_and_keys(tmp_path, ablation):
    table = ablation.RunTable(tmp_path / "runs.csv")
    row = {"config": "baseline", "seed": 0, "horizon": 1, "target_mode": "level", "last_n_days": 300,
           "max_epochs": 1, "mae": 1.5}
    assert row not in table
    table.add(row)
    again = ablation.RunTable(tmp_path / "runs.csv")
    assert row in again and {**row, "seed": 1} not in again
    assert not (tmp_path / "runs.csv.tmp").exists()


# columns that depend on the machine's speed or the output folder, not on the training itself
TIMING = {"epoch_time_s", "wall_s", "log_dir"}


@pytest.mark.slow
def test_joblib_and_dask_cluster_give_identical_rows(tmp_path, ablation):
    """The same tiny ablation through the local joblib pool and a 2-worker LocalCluster, 1 thread each."""
    distributed = pytest.importorskip("distributed")

    def rows(folder: str, where: list[str]) -> dict[str, dict[str, str]]:
        args = tiny_args(tmp_path / folder)
        args[args.index("--workers") + 1] = "2"  # two jobs at once; "--threads 1" stays
        assert ablation.main(args + ["--set", "trainer.log_every_n_steps=1", *where]) == 0  # grad columns too
        with (tmp_path / folder / "results" / "runs.csv").open() as handle:
            return {r["config"]: {k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(handle)}

    local = rows("joblib", [])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = rows("dask", ["--cluster", cluster.scheduler_address])
    assert sorted(local) == ["baseline", "drift", "linear_ar", "persistence", "residual"]
    assert local == remote
    assert float(local["residual"]["mae"]) > 0 and local["residual"]["grad_lstm_0_epoch1"] not in ("", "nan")


def test_bad_worker_count_is_one_error_line(tmp_path, ablation, capsys):
    args = tiny_args(tmp_path)
    args[args.index("--threads") + 1] = "64"
    assert ablation.main(args + ["--part", "ablation"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 workers x 64 threads = 64 CPU threads >")


def test_uncommitted_code_is_refused_and_results_do_not_count(tmp_path, ablation):
    code_commit = ablation.code_commit

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "lstm_grad").mkdir()
    (tmp_path / "lstm_grad" / "a.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "runs.csv").write_text("config\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    (tmp_path / "results" / "runs.csv").write_text("config\nbaseline\n")  # results being written: still clean
    assert code_commit(tmp_path) == head
    (tmp_path / "lstm_grad" / "a.py").write_text("x = 2\n")
    with pytest.raises(ValueError, match="uncommitted changes in lstm_grad/a.py"):
        code_commit(tmp_path)
    assert code_commit(tmp_path, allow_dirty=True) == f"{head}-dirty"
