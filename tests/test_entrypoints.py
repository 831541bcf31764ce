"""``python -m lstm_grad.fit`` end to end, every config, and a checkpoint round trip."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lstm_grad.cli import GoldCLI
from lstm_grad.data import GoldDataModule, load_series
from lstm_grad.module import LSTMForecaster

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
RESIDUAL = Path(__file__).parents[1] / "configs" / "residual.yaml"
FAST = ["--data.last_n_days", "300", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false"]


def event_scalars(run_dir: Path) -> dict[str, list[float]]:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.mark.slow
def test_fit_command_logs_true_norms_for_every_layer_and_writes_predictions(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lstm_grad.fit", "--config", str(RESIDUAL),  # the recipe's 4-layer network
         "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1", *FAST,
         "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| persistence |" in done.stdout and "tensorboard --logdir" in done.stdout
    run_dir = next((tmp_path / "runs").glob("*/version_0"))
    scalars = event_scalars(run_dir)
    for layer in ("lstm_0", "lstm_1", "lstm_2", "lstm_3", "proj_3", "head", "total", "total_clipped"):
        values = scalars[f"grad_norm/{layer}"]
        assert values and all(math.isfinite(v) and v > 0 for v in values), layer
    assert all(v <= 1.0 + 1e-5 for v in scalars["grad_norm/total_clipped"])  # clipnorm 1.0
    for key in ("test/mae", "test/mase", "test/dir_acc", "val/loss", "train/loss_epoch"):
        assert key in scalars, key
    predictions = pd.read_csv(run_dir / "predictions.csv", parse_dates=["date"])
    gold = load_series("embedded")["gold"]
    assert len(predictions) == 60  # 300 days: 20 % test span = 60 target days
    assert (predictions["actual"].to_numpy() == gold.loc[predictions["date"]].to_numpy()).all()  # full precision
    previous = gold.shift(1).loc[predictions["date"]].to_numpy()
    assert (predictions["persistence"].to_numpy() == previous).all()
    bounds = predictions[["lower_95", "lower_80", "predicted", "upper_80", "upper_95"]].to_numpy()
    assert (bounds[:, :-1] < bounds[:, 1:]).all()  # nested 80 % inside 95 %, around the forecast
    assert (run_dir / "predictions.png").stat().st_size > 10_000


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_each_config_parses_and_runs_one_step(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = yaml.safe_load(config.read_text())
    cli = GoldCLI(args=["--config", str(config), "--trainer.fast_dev_run", "1", *FAST], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    hp = cli.model.hparams
    assert list(hp["hidden_sizes"]) == settings["model"]["hidden_sizes"]
    for key in ("residual", "init", "dropout"):
        assert hp[key] == settings["model"][key], key
    assert hp["n_features"] == cli.datamodule.n_features == 5  # linked, never typed twice
    assert cli.trainer.gradient_clip_val == settings["trainer"]["gradient_clip_val"]
    lstm_names = [n for n, _ in cli.model.model.named_children() if n.startswith("lstm_")]
    assert len(lstm_names) == len(settings["model"]["hidden_sizes"])


def test_checkpoint_alone_rebuilds_the_model_and_the_scaler(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = GoldCLI(args=["--trainer.max_epochs", "1", "--model.hidden_sizes", "[16, 8]", *FAST], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    path = tmp_path / "model.ckpt"
    cli.trainer.save_checkpoint(path)
    x, y, anchor, _ = next(iter(cli.datamodule.test_dataloader()))
    cli.model.eval()
    with torch.no_grad():
        expected = cli.datamodule.inverse_transform(cli.model(x), anchor)

    restored = LSTMForecaster.load_from_checkpoint(path).eval()
    saved = torch.load(path, weights_only=True)["datamodule_hyper_parameters"]  # the data settings too
    data = GoldDataModule(**{k: v for k, v in saved.items() if not k.startswith("_")})
    data.setup("test")
    data.load_state_dict(torch.load(path, weights_only=True)["GoldDataModule"])  # the scaler
    x2, _, anchor2, _ = next(iter(data.test_dataloader()))
    with torch.no_grad():
        got = data.inverse_transform(restored(x2), anchor2)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert list(restored.hparams["hidden_sizes"]) == [16, 8]


def test_print_config_shows_every_section():
    done = subprocess.run([sys.executable, "-m", "lstm_grad.cli", "fit", "--print_config"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = yaml.safe_load(done.stdout)
    assert printed["model"]["hidden_sizes"] == [128, 64, 32]  # the default forecaster: LSTMForecaster's own defaults
    assert printed["data"]["target_mode"] == "log_return" and printed["data"]["price_levels"] is False
    assert printed["data"]["last_n_days"] == 1247 and printed["trainer"]["gradient_clip_val"] == 1.0
    assert printed["checkpoint"]["save_last"] is True
