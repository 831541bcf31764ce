"""The public names import from their public paths, and are the objects defined where the code now lives;
every command answers ``--help`` with its main flags."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

# (public module, name, the module that defines it)
PUBLIC = [
    ("lstm_grad", "GradientMonitor", "lstm_grad.diagnostics.monitor"),
    ("lstm_grad", "TimeGradientProbe", "lstm_grad.diagnostics.probe"),
    ("lstm_grad.diagnostics", "GradientMonitor", "lstm_grad.diagnostics.monitor"),
    ("lstm_grad.diagnostics", "TimeGradientProbe", "lstm_grad.diagnostics.probe"),
    ("lstm_grad.diagnostics", "layer_grad_norms", "lstm_grad.diagnostics.norms"),
    ("lstm_grad.diagnostics", "total_grad_norm", "lstm_grad.diagnostics.norms"),
    ("lstm_grad.diagnostics", "tag_scalars", "lstm_grad.diagnostics.norms"),
    ("lstm_grad.diagnostics", "time_grad_profile", "lstm_grad.diagnostics.timegrad"),
    ("lstm_grad.diagnostics", "read_run", "lstm_grad.diagnostics.events"),
    ("lstm_grad.data", "load_series", "lstm_grad.data.series"),
    ("lstm_grad.data", "GoldDataModule", "lstm_grad.data.datamodule"),
    ("lstm_grad.data", "DataError", "lstm_grad.errors"),
    ("lstm_grad.model", "ResidualLSTM", "lstm_grad.forecaster.model"),
    ("lstm_grad.module", "LSTMForecaster", "lstm_grad.forecaster.module"),
]


def test_public_names_are_the_objects_defined_where_they_live():
    from lstm_grad import GradientMonitor, TimeGradientProbe
    from lstm_grad.data import DataError, GoldDataModule, load_series
    from lstm_grad.diagnostics import (
        layer_grad_norms,
        read_run,
        tag_scalars,
        time_grad_profile,
        total_grad_norm,
    )
    from lstm_grad.model import ResidualLSTM
    from lstm_grad.module import LSTMForecaster

    home_of = {name: home for _, name, home in PUBLIC}
    for obj in (GradientMonitor, TimeGradientProbe, layer_grad_norms, total_grad_norm, tag_scalars, time_grad_profile,
                read_run, load_series, GoldDataModule, DataError, ResidualLSTM, LSTMForecaster):
        home = home_of[obj.__name__]
        assert obj is getattr(importlib.import_module(home), obj.__name__), f"{obj!r} is not {home}.{obj.__name__}"
    for public, name, home in PUBLIC:
        obj = getattr(importlib.import_module(public), name)
        assert obj is getattr(importlib.import_module(home), name), f"{public}.{name} is not {home}.{name}"
        assert obj.__module__ == home, f"{public}.{name} is defined in {obj.__module__}, not in {home}"


# command -> text its usage must name (its main flags, or the subcommands for the Lightning CLI)
COMMANDS = {
    "fit": ["--data.source", "--model.hidden_sizes", "--ckpt_path"],
    "cli": ["{fit,validate,test,predict}", "--config"],
    "forecast": ["--ckpt_path", "--data.source"],
    "backtest": ["--folds", "--test_days"],
    "tune": ["--n_trials", "--storage"],
    "diagnose": ["RUN_DIR", "--strict"],
}


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """``python -m lstm_grad.<command> --help`` for every command, all at once (each imports Lightning: ~5 s)."""
    folder = tmp_path_factory.mktemp("help")  # nothing may be written, and nothing read from the repository
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = {name: subprocess.Popen([sys.executable, "-m", f"lstm_grad.{name}", "--help"], cwd=folder, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name in COMMANDS}
    done = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


@pytest.mark.slow  # six fresh interpreters importing Lightning, in parallel
@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_0_and_names_the_main_flags(helps, command):
    result = helps[command]
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: "), result.stdout[:500]
    missing = [flag for flag in COMMANDS[command] if flag not in result.stdout]
    assert missing == [], result.stdout[:2000]
