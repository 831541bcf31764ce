"""``python -m lstm_grad.diagnose`` prints the numbers its run's event files hold."""

from __future__ import annotations

import statistics
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from test_module import synthetic_csv

from lstm_grad import diagnose
from lstm_grad.diagnostics import GradientMonitor, TimeGradientProbe
from lstm_grad.data import GoldDataModule
from lstm_grad.module import LSTMForecaster


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diagnose")
    pl.seed_everything(0)
    data = GoldDataModule(source=str(synthetic_csv(tmp)), last_n_days=None, window=12, batch_size=16,
                          split=(0.6, 0.2, 0.2))
    model = LSTMForecaster(n_features=data.n_features, hidden_sizes=(6, 5, 4), dropout=0.0, horizon=data.horizon)
    logger = TensorBoardLogger(tmp / "runs", name="tiny", default_hp_metric=False)
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, log_every_n_steps=1,
                         gradient_clip_val=2.0, logger=logger, callbacks=[GradientMonitor(), TimeGradientProbe()],
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    return logger.log_dir


def raw_scalars(folder) -> dict[str, dict[int, float]]:
    """Read the event file record by record (not through EventAccumulator, which diagnose uses)."""
    from pathlib import Path

    values: dict[str, dict[int, float]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    values.setdefault(value.tag, {})[event.step] = float(value.tensor.float_val[0])
                elif value.HasField("simple_value"):
                    values.setdefault(value.tag, {})[event.step] = value.simple_value
    return values


def test_diagnose_prints_the_event_files_numbers(run_dir, capsys, tmp_path):
    raw = raw_scalars(run_dir)
    assert diagnose.main([run_dir, "--png", str(tmp_path / "norms.png")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.split("summary")[0].splitlines()[2:] if line.strip()}
    for layer in ("lstm_0", "lstm_1", "lstm_2", "proj_2", "head", "total", "total_clipped"):
        series = [raw[f"grad_norm/{layer}"][s] for s in sorted(raw[f"grad_norm/{layer}"])]
        expected = [f"{series[0]:.3e}", f"{statistics.median(series):.3e}", f"{series[-1]:.3e}", "0"]
        assert rows[layer] == expected, (layer, rows[layer], expected)
    summary = {line[:26].strip(): line[26:].strip() for line in out.split("summary", 1)[1].splitlines()[1:]}
    medians = {k: statistics.median(raw[f"grad_norm/{k}"].values()) for k in ("lstm_0", "lstm_2")}
    assert summary["depth ratio (first/last)"] == f"{medians['lstm_0'] / medians['lstm_2']:.3g}"
    clipped = list(raw["grad_health/clipped"].values())
    assert 0 < sum(clipped) < len(clipped) and summary["clip rate"] == f"{sum(clipped) / len(clipped):.1%}"
    reach = [raw["grad_time/reach"][s] for s in sorted(raw["grad_time/reach"])]
    assert summary["time reach (steps)"] == f"{reach[0]:.0f} -> {reach[-1]:.0f}" and len(reach) == 3
    assert summary["non-finite steps"] == "0" and summary["steps < threshold (any)"] == "0"
    assert (tmp_path / "norms.png").stat().st_size > 1000


def test_probe_profiles_come_back_for_the_heat_map(run_dir):
    report = diagnose.read_run(run_dir)
    assert [label for _, label, _ in report.profiles] == ["before training", "epoch 0", "epoch 1"]
    raw = raw_scalars(run_dir)
    for step, _, profile in report.profiles:
        assert len(profile) == 12  # the window
        assert profile[-1] == pytest.approx(raw["grad_time/lag_1"][step], rel=1e-6)
        assert profile[-10] == pytest.approx(raw["grad_time/lag_10"][step], rel=1e-6)


class LightningGradNorm(pl.LightningModule):
    """A user's module that logs Lightning's own per-parameter norms, as Lightning's docs show."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.head = torch.nn.GRU(3, 4, num_layers=2, batch_first=True), torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.net(x)[0][:, -1])

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self(batch[0]), batch[1])

    def on_before_optimizer_step(self, optimizer):
        if self.log_grad_norm:
            self.log_dict(grad_norm(self, norm_type=2))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def user_run(tmp_path, name: str, monitor: bool) -> str:
    pl.seed_everything(0)
    module = LightningGradNorm()
    module.log_grad_norm = not monitor
    x = torch.randn(32, 5, 3, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, -1, :1]), batch_size=8)
    logger = TensorBoardLogger(tmp_path, name=name, default_hp_metric=False)
    trainer = pl.Trainer(max_epochs=1, log_every_n_steps=1, logger=logger, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[GradientMonitor()] if monitor else [])
    trainer.fit(module, loader)
    return logger.log_dir


def test_lightning_grad_norm_tags_are_summed_into_the_same_groups(tmp_path, capsys):
    theirs, ours = user_run(tmp_path, "lightning", monitor=False), user_run(tmp_path, "ours", monitor=True)
    raw = raw_scalars(theirs)
    by_hand: dict[str, dict[int, float]] = {}
    for tag, points in raw.items():
        if tag.startswith("grad_2.0_norm/"):
            param = tag.split("/", 1)[1]
            group = "head" if param.startswith("head") else "net.l" + param.split("_l")[-1][0]
            for step, value in points.items():
                by_hand.setdefault(group, {}).setdefault(step, 0.0)
                by_hand[group][step] += value * value
    report, reference = diagnose.read_run(theirs), diagnose.read_run(ours)
    assert report.source.startswith("lightning") and set(report.norms) == {"net.l0", "net.l1", "head", "total"}
    for group, steps in by_hand.items():
        assert [s for s, _ in report.norms[group]] == sorted(steps) == [0, 1, 2, 3]
        for step, value in report.norms[group]:
            assert value == pytest.approx(steps[step] ** 0.5, rel=1e-9)
            assert value == pytest.approx(dict(reference.norms[group])[step], rel=1e-5)  # = our monitor's
    assert diagnose.main([theirs, "--no-png"]) == 0
    assert "from lightning grad_2.0_norm (summed per group)" in capsys.readouterr().out


def test_strict_fails_on_vanishing_and_runs_compare_side_by_side(run_dir, capsys, tmp_path):
    assert diagnose.main([run_dir, "--no-png", "--strict"]) == 0
    assert diagnose.main([run_dir, run_dir, "--threshold", "1e3", "--strict", "--png", str(tmp_path / "x.png")]) == 1
    captured = capsys.readouterr()
    summary = captured.out.split("summary")[-1]
    assert summary.count("tiny/version_0") == 2 and "strict: vanishing" in captured.err


def test_folder_without_event_files_is_one_line_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lstm_grad.diagnose", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "no TensorBoard event files" in done.stderr
