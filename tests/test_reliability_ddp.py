"""DDP on 2 CPU processes (gloo) through the CLI: one epoch, one TensorBoard run, one checkpoint set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.mark.slow
def test_ddp_two_cpu_processes_write_one_run_and_one_checkpoint(tmp_path, tiny_csv):
    csv = tiny_csv(tmp_path)
    command = [sys.executable, "-m", "lstm_grad.cli", "fit", "--trainer.accelerator", "cpu",
               "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_epochs", "1",
               "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false", "--data.source", str(csv), "--data.last_n_days", "null",
               "--data.window", "8", "--data.batch_size", "16", "--model.hidden_sizes", "[8, 8]",
               "--time_probe.every_n_epochs", "0"]
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed_backend=gloo" in done.stderr and "All distributed processes registered" in done.stderr
    runs = sorted((tmp_path / "runs").glob("*/version_*"))
    assert [r.name for r in runs] == ["version_0"], runs  # one TensorBoard run, not one per rank
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1  # only rank 0 writes
    checkpoints = sorted(p.name for p in (runs[0] / "checkpoints").iterdir())
    assert checkpoints == ["best-epoch00.ckpt", "last.ckpt"]
    state = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=True)
    # 146 train windows split over 2 ranks: 73 each, batches of 16 -> 5 optimizer steps per rank
    assert state["epoch"] == 0 and state["global_step"] == 5
    accumulator = EventAccumulator(str(runs[0]), size_guidance={"scalars": 0})
    accumulator.Reload()
    norms = accumulator.Scalars("grad_norm/lstm_0")
    assert [e.step for e in norms] == list(range(5))  # logged once per step (rank zero), not twice
