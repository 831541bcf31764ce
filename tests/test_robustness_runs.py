"""Issue 10 end to end: bf16-mixed runs report float64 price metrics, a resumed run counts its epochs,
and the terminal shows our lines, not Lightning's chatter. Tiny model and data; still a few seconds each."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lstm_grad.data import GoldDataModule
from lstm_grad.fit import report, run
from lstm_grad.module import LSTMForecaster


def gold_csv(path, rows=140):
    """``Date,SPX,GLD,EUR/USD``: the target must be GLD, found by name."""
    rng = np.random.default_rng(2)
    gld = np.round(1650 * np.exp(np.cumsum(rng.normal(0, 0.01, rows))), 2)
    spx = np.round(1400 * np.exp(np.cumsum(rng.normal(0, 0.01, rows))), 2)
    fx = np.round(1.3 * np.exp(np.cumsum(rng.normal(0, 0.003, rows))), 4)
    days = pd.bdate_range("2012-01-02", periods=rows)
    path.write_text("Date,SPX,GLD,EUR/USD\n" + "".join(
        f"{d.month}/{d.day}/{d.year},{s},{g},{f}\n" for d, s, g, f in zip(days, spx, gld, fx)))
    return path


def fit_args(folder, csv, *extra):
    return ["--data.source", str(csv), "--data.last_n_days", "null", "--data.window", "8", "--data.batch_size", "16",
            "--model.hidden_sizes", "[8]", "--data.price_levels", "true",  # raw-price features, as named below
            "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(folder / "runs"),
            "--predictions.output_dir", str(folder / "predictions"), *extra]


def bf16_cell() -> str:
    """``lstm`` where oneDNN has a bf16 LSTM (CPUs with AVX-512 bf16), else ``gru``: either way the
    linear head runs in bf16 under CPU autocast, so the network's output is bf16."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(2, 2, batch_first=True)(torch.zeros(1, 2, 2))
    except RuntimeError:
        return "gru"
    return "lstm"


@pytest.mark.slow
@pytest.mark.parametrize("target_mode", ["level", "log_return"])
def test_bf16_mixed_metrics_equal_a_float64_recomputation_from_the_checkpoint(tmp_path, target_mode):
    csv = gold_csv(tmp_path / "gold.csv")
    result = run(fit_args(tmp_path, csv, "--trainer.precision", "bf16-mixed", "--data.target_mode", target_mode,
                          "--model.cell", bf16_cell(), "--model.shrink_prior", "null"))  # the network as trained: its moves get scored
    checkpoint = torch.load(result["best_checkpoint"], weights_only=True)
    settings = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if not k.startswith("_")}
    assert (settings["target"], settings["date_column"]) == ("GLD", "Date")  # resolved, not null
    assert settings["features"] == ["GLD", "SPX", "log_return:GLD", "log_return:SPX", "volatility:GLD:20"]
    data = GoldDataModule(**settings)  # the checkpoint alone says what was trained on
    data.setup("test")
    data.load_state_dict(checkpoint["GoldDataModule"])
    model = LSTMForecaster.load_from_checkpoint(result["best_checkpoint"]).eval()
    scaled = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the network as bf16-mixed ran it
        for x, *_ in data.test_dataloader():
            scaled.append(model(x))
    assert scaled[0].dtype == torch.bfloat16
    scaled = torch.cat(scaled).double().numpy()[:, 0]
    stats = checkpoint["GoldDataModule"]
    raw = pd.read_csv(csv, index_col="Date", parse_dates=True, date_format="%m/%d/%Y")["GLD"]
    rows = data.datasets["test"].start.numpy() + 8 - 1
    index = data._raw["index"]
    anchor, actual = raw.loc[index[rows]].to_numpy(), raw.loc[index[rows + 1]].to_numpy()
    level = scaled * stats["target_std"] + stats["target_mean"]
    pred = level if target_mode == "level" else anchor * np.exp(level)
    weight = checkpoint["forecaster_calibration"]["shrink"][0]  # issue 23: the move shrunk toward the last price
    pred = anchor + weight * (pred - anchor)
    scored = (actual != anchor) & (pred != anchor)  # moved, and predicted to move
    expected = {"mae": np.abs(pred - actual).mean(), "naive_mae": np.abs(anchor - actual).mean(),
                "mape": 100 * np.mean(np.abs(pred - actual) / actual),
                "dir_acc": np.mean((np.sign(pred - anchor) == np.sign(actual - anchor))[scored])}
    expected["rel_mae"] = expected["mae"] / expected["naive_mae"]  # "mase" before issue 23
    for key, value in expected.items():
        assert result["metrics"][f"test/{key}"] == pytest.approx(value, rel=1e-12), key
    printed = report(result)
    assert f"| model       | {expected['mae']:>11.3f} | {expected['rel_mae']:>8.3f} |" in printed
    written = pd.read_csv(tmp_path / "predictions" / "predictions.csv")
    np.testing.assert_allclose(written["predicted"].to_numpy(), pred, atol=5e-5, rtol=0)
    np.testing.assert_allclose(written["actual"].to_numpy(), actual, atol=5e-5, rtol=0)
    config = yaml.safe_load((tmp_path / "runs" / "default-gold" / "version_0" / "config.yaml").read_text())
    hparams = yaml.safe_load((tmp_path / "runs" / "default-gold" / "version_0" / "hparams.yaml").read_text())
    for saved in (config["data"], hparams):
        assert (saved["target"], saved["features"], saved["date_column"]) == ("GLD", settings["features"], "Date")


CHATTER = ("Seed set to", "GPU available", "TPU available", "Tip:", "LeafSpec", "litlogger", "litmodels")


@pytest.mark.slow
def test_resumed_run_counts_its_epochs_and_the_terminal_has_no_chatter(tmp_path):
    csv = gold_csv(tmp_path / "gold.csv")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lstm_grad.fit", *fit_args(tmp_path, csv)]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert [word for word in CHATTER if word in first.stderr + first.stdout] == []
    assert "gold.csv: target 'GLD' (log_return), features ['GLD', 'SPX'" in first.stderr
    assert "epochs: 2, median epoch time" in first.stdout
    resumed = subprocess.run([*command, "--ckpt_path", "last", "--trainer.max_epochs", "3"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "epochs: 3 (1 after resuming), median epoch time" in resumed.stdout
    bad = subprocess.run([*command, "--data.target", "Gold"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.splitlines() == [f"error: {csv}: target column 'Gold' not found; available: ['SPX', 'GLD', "
                                       "'EUR/USD']; fix data.target"]
    verbose = subprocess.run([*command, "--data.target", "Gold", "--verbose"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert "GPU available" in verbose.stderr and verbose.stderr.splitlines()[-1].startswith("error: ")
