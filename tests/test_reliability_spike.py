"""A price spike plus a huge learning rate, end to end through ``python -m lstm_grad.fit``.

Measured on our stack: with Adam every step moves a weight by at most ~lr, so lr=100 on a CSV with a
1e6 spike gives an *exploding* (finite) gradient, never NaN; the run ends with the GradientMonitor's
warning and a finite ``last.ckpt``. The second step's total norm was 637-2,000 over seeds 0-4 and 42,
far above the warning's 100; lr=10 gave 106-302 or no explosion at all, depending on the seed and the
dropout masks, so a change of random stream could turn the test red. A non-finite loss needs far more (lr=1e30: weights of 1e30 make
the squared error overflow float32 at the second step); then the run stops with one message naming
the step and the layers, skips that update, and ``last.ckpt`` holds finite weights.
``on_nonfinite: raise`` turns it into one ``error:`` line and exit status 1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch


def spike_csv(folder: Path, rows: int = 200) -> Path:
    price = 100 + np.cumsum(np.random.default_rng(0).normal(size=rows))
    price[60] = 1e6  # a fat-finger row inside the train span
    path = folder / "spike.csv"
    pd.DataFrame({"date": pd.bdate_range("2020-01-01", periods=rows).strftime("%Y-%m-%d"),
                  "price": price.round(3)}).to_csv(path, index=False)
    return path


def start(folder: Path, csv: Path, lr: str, *extra: str) -> subprocess.Popen:
    folder.mkdir()
    command = [sys.executable, "-m", "lstm_grad.fit", "--data.source", str(csv), "--data.last_n_days", "null",
               "--data.window", "8", "--data.batch_size", "16", "--model.hidden_sizes", "[8, 8]",
               "--data.target_mode", "level", "--data.price_levels", "true", "--model.weight_decay", "0",  # raw spike
               "--model.lr", lr, "--trainer.gradient_clip_val", "null", "--trainer.max_epochs", "3",
               "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false", "--time_probe.every_n_epochs", "0", *extra]
    return subprocess.Popen(command, cwd=folder, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def last_checkpoint(folder: Path) -> dict:
    return torch.load(folder / "runs/default-spike/version_0/checkpoints/last.ckpt", weights_only=True)


def finite(checkpoint: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in checkpoint["state_dict"].values())


@pytest.mark.slow
def test_spike_with_huge_learning_rates_ends_clearly_with_finite_checkpoints(tmp_path):
    csv = spike_csv(tmp_path)
    runs = {"lr100": start(tmp_path / "lr100", csv, "100"),
            "nonfinite": start(tmp_path / "nonfinite", csv, "1e30"),
            "raise": start(tmp_path / "raise", csv, "1e30", "--gradient_monitor.on_nonfinite", "raise")}
    done = {name: (p, *p.communicate(timeout=300)) for name, p in runs.items()}

    process, out, err = done["lr100"]
    assert process.returncode == 0, err[-2000:]
    assert re.search(r"exploding gradient at step \d+: total norm [\d.e+]+ > 100", err)
    assert "non-finite" not in err  # lr=100 does not reach NaN with Adam
    checkpoint = last_checkpoint(tmp_path / "lr100")
    assert checkpoint["epoch"] == 2 and finite(checkpoint)

    process, out, err = done["nonfinite"]
    assert process.returncode == 1, err[-2000:]  # no results table after a non-finite stop
    last_line = err.rstrip().splitlines()[-1]
    assert last_line.startswith("error: training stopped early on a non-finite gradient (step ")
    assert re.search(r"the last finite weights are in \S+last\.ckpt \(epoch 0, step \d+\)", last_line), last_line
    assert "| model" not in out
    messages = [line for line in err.splitlines() if "non-finite gradient at step" in line]
    assert len(messages) == 1, err[-2000:]  # one message, not one per step
    assert re.search(r"non-finite gradient at step \d+ \(epoch 0\) in group lstm_0 \(parameter model\.", messages[0])
    assert "training stops" in messages[0] and "checkpoint" not in messages[0]  # fit's last line names it
    checkpoint = last_checkpoint(tmp_path / "nonfinite")
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] < 10  # stopped in the first epoch
    assert finite(checkpoint)

    process, out, err = done["raise"]
    assert process.returncode == 1
    assert "Traceback" not in err
    assert err.rstrip().splitlines()[-1].startswith("error: non-finite gradient at step")
