"""A run killed with SIGKILL mid-epoch resumes with ``--ckpt_path last`` and ends bit-identical."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

BEACON = '''
import time
from pathlib import Path

import lightning.pytorch as pl


class Beacon(pl.Callback):
    """Announce batch 2 of epoch ``hold_epoch`` in ``folder/inside`` and wait there to be killed."""

    def __init__(self, folder: str, hold_epoch: int = -1) -> None:
        self.folder, self.hold_epoch = folder, hold_epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.hold_epoch and batch_idx == 2:
            # written whole, then renamed: the test polls for the name and must never read an empty file
            Path(self.folder, "inside.tmp").write_text(f"{trainer.current_epoch} {trainer.global_step}")
            Path(self.folder, "inside.tmp").replace(Path(self.folder, "inside"))
            time.sleep(300)
'''


def fit_command(folder: Path, csv: Path, hold_epoch: int, *extra: str) -> list[str]:
    """``python -m lstm_grad.fit`` on a tiny model: 4 epochs of 10 batches, dropout on, deterministic."""
    (folder / "beacon.yaml").write_text(textwrap.dedent(f"""\
        trainer:
          callbacks:
            - class_path: beacon.Beacon
              init_args: {{folder: "{folder}", hold_epoch: {hold_epoch}}}
        """))
    return [sys.executable, "-m", "lstm_grad.fit", "--config", str(folder / "beacon.yaml"),
            "--seed_everything", "7", "--trainer.deterministic", "true", "--trainer.max_epochs", "4",
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--early_stopping.patience", "100",
            "--data.source", str(csv), "--data.last_n_days", "null", "--data.window", "8",
            "--data.batch_size", "16", "--model.hidden_sizes", "[8, 8]", "--model.dropout", "0.3",
            "--predictions.output_dir", str(folder / "predictions"), *extra]


def environment(folder: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()  # several event files: a step going backwards drops the killed run's orphans
    return {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_last_equals_uninterrupted_run(tmp_path, tiny_csv):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for folder in (reference, killed):
        folder.mkdir()
        (folder / "beacon.py").write_text(BEACON)
    csv = tiny_csv(tmp_path)
    uninterrupted = subprocess.Popen(fit_command(reference, csv, -1), cwd=reference, env=environment(reference),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(fit_command(killed, csv, 2), cwd=killed, env=environment(killed),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "inside").exists():
            assert victim.poll() is None, victim.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the run never reached epoch 2"
            time.sleep(0.1)
        last = killed / "runs/beacon-gold/version_0/checkpoints/last.ckpt"
        saved = torch.load(last, weights_only=True)
        assert saved["epoch"] == 1 and saved["global_step"] == 20  # epochs 0 and 1 done, 10 batches each
        assert (killed / "inside").read_text() == "2 22"  # the process is 2 steps into epoch 2
        victim.kill()  # SIGKILL: no handler, no teardown
        assert victim.wait(timeout=30) == -9
    finally:
        if victim.poll() is None:
            victim.kill()
    out, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err[-2000:]

    resumed = subprocess.run(fit_command(killed, csv, -1, "--ckpt_path", "last"), cwd=killed,
                             env=environment(killed), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Restoring states from the checkpoint path" in resumed.stderr
    assert not list((killed / "runs/beacon-gold").glob("version_1")), "the resumed run must continue version_0"

    run_a, run_b = reference / "runs/beacon-gold/version_0", killed / "runs/beacon-gold/version_0"
    final_a, final_b = weights(run_a / "checkpoints/last.ckpt"), weights(run_b / "checkpoints/last.ckpt")
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        assert torch.equal(final_a[name], final_b[name]), name  # bit for bit
    assert torch.load(run_b / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 40
    logged_a, logged_b = scalars(run_a), scalars(run_b)
    tests = sorted(k for k in logged_a if k.startswith("test/"))
    def exact(values: dict) -> dict:  # NaN (a metric with nothing to score, e.g. dir_acc of persistence) as text
        return {k: {step: "nan" if v != v else v for step, v in steps.items()} for k, steps in values.items()}

    assert tests and exact({k: logged_a[k] for k in tests}) == exact({k: logged_b[k] for k in tests})
    assert logged_a["grad_norm/total"] == logged_b["grad_norm/total"]  # every step, incl. redone epoch 2
    assert sorted(logged_b["grad_norm/total"]) == list(range(40))
    table_a = out[out.index("| forecaster"):].splitlines()[:4]
    assert table_a == resumed.stdout[resumed.stdout.index("| forecaster"):].splitlines()[:4]
