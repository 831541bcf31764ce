"""The commands' one guard: a user's mistake is one ``error:`` line, a bug in lstm-grad keeps its traceback.

The command runs in this process through ``lstm_grad.training.entry.run_command`` (the function every
command's ``main()`` calls); a library bug is simulated by making an internal function raise. One case
runs ``python -m lstm_grad.fit --debug`` in a fresh interpreter to see what the terminal shows.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys

import pytest

from lstm_grad.errors import ConfigError, DataError
from lstm_grad.training.entry import run_command
from lstm_grad.training.provenance import version

FAST = ["--data.last_n_days", "null", "--data.window", "8", "--data.batch_size", "16", "--model.hidden_sizes", "[4]",
        "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary",
        "false", "--time_probe.every_n_epochs", "0"]
BUG = "this is a bug in lstm-grad, not in your input; please report it with the command you ran: "


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.fixture()
def fit_main(tmp_path, monkeypatch):
    from lstm_grad.fit import fit_main

    monkeypatch.chdir(tmp_path)
    return fit_main


def test_a_library_bug_during_fit_shows_its_traceback_and_asks_for_a_report(fit_main, synthetic_csv, tmp_path,
                                                                             monkeypatch, capsys, caplog):
    from lstm_grad.data import datamodule

    def broken_window_maker(*args, **kwargs):
        raise ValueError("index 7 is out of range (a planted bug)")

    monkeypatch.setattr(datamodule, "index_windows", broken_window_maker)
    caplog.set_level(logging.INFO)  # as the command's main() sets it
    args = ["--data.source", str(synthetic_csv(tmp_path)), *FAST]
    assert run_command(fit_main, args) == 1
    lines = stderr_lines(capsys)
    assert lines[0] == "Traceback (most recent call last):"
    assert "ValueError: index 7 is out of range (a planted bug)" in lines
    assert any("broken_window_maker" in line for line in lines)  # the frame where it broke
    assert not any(line.startswith("error:") for line in lines)
    assert lines[-1].startswith(f"lstm-grad {version()} (commit ")
    assert lines[-1].endswith(f"{BUG}python -m lstm_grad.fit {shlex.join(args)}")  # "'[4]'": as a shell takes it
    assert "target 'price'" in caplog.text  # what the command said before it broke is kept, not discarded


def test_a_bug_in_a_helper_while_building_the_classes_is_not_called_a_setting(fit_main, monkeypatch, capsys):
    """Only a constructor's own argument check becomes a ConfigError; a helper failing under it stays a bug."""
    from lstm_grad.data import datamodule

    def broken_check(*args, **kwargs):
        raise ValueError("planted bug in a helper")

    monkeypatch.setattr(datamodule, "check_choice", broken_check)
    assert run_command(fit_main, FAST) == 1
    lines = stderr_lines(capsys)
    assert "ValueError: planted bug in a helper" in lines and BUG in lines[-1]


@pytest.mark.parametrize("extra, expected", [
    (["--data.source", "nowhere.csv"], "error: nowhere.csv: file not found; check data.source"),
    (["--data.target", "Gold"], "error: {csv}: target column 'Gold' not found; available: ['price']"),
    (["--model.loss", "l7"], "error: loss='l7' is unknown; use one of"),  # a constructor refusing its argument
])
def test_a_user_error_is_one_error_line(fit_main, synthetic_csv, tmp_path, capsys, extra, expected):
    csv = synthetic_csv(tmp_path)
    assert run_command(fit_main, ["--data.source", str(csv), *FAST, *extra]) == 1
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(expected.format(csv=csv)), lines


@pytest.mark.slow  # a fresh interpreter importing Lightning
def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lstm_grad.fit", "--data.source", "nowhere.csv", "--debug"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert "Traceback (most recent call last):" in lines
    assert lines[-1].startswith("lstm_grad.errors.DataError: nowhere.csv: file not found")
    assert not any(line.startswith("error:") or BUG in line for line in lines)


def test_debug_reraises_a_bug_untouched():
    def entry(args):
        raise KeyError("planted")

    with pytest.raises(KeyError, match="planted"):
        run_command(entry, ["--debug"])


def _raise(error: BaseException):
    def entry(args):
        raise error

    return entry


@pytest.mark.parametrize("error, status, line", [
    (ConfigError("--folds 0 must be >= 1"), 1, "error: --folds 0 must be >= 1"),
    (DataError("a.csv: line 3:\n  cannot parse 'x'"), 1, "error: a.csv: line 3: cannot parse 'x'"),
    (argparse.ArgumentError(None, "unrecognized arguments: --x"), 2, "error: unrecognized arguments: --x; see --help"),
    (FloatingPointError("non-finite gradient at step 3"), 1, "error: non-finite gradient at step 3"),
])
def test_what_is_one_line_and_its_exit_status(capsys, error, status, line):
    assert run_command(_raise(error), []) == status
    assert stderr_lines(capsys) == [line]


def test_an_exit_status_from_the_command_or_the_error(capsys, tmp_path):
    from lstm_grad import diagnose

    assert run_command(lambda args: 3, []) == 3
    assert run_command(lambda args: None, []) == 0
    assert diagnose.main([str(tmp_path), "--no-png"]) == 2  # a folder that is not a run: a bad argument
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no TensorBoard event files" in lines[0]


def test_the_bug_line_names_the_command_as_typed(capsys):
    entry = _raise(ZeroDivisionError("planted"))
    entry.__module__ = "lstm_grad.backtest"
    assert run_command(entry, ["--output", "my runs", "--verbose"]) == 1
    lines = stderr_lines(capsys)
    assert lines[-2] == "ZeroDivisionError: planted"
    assert lines[-1].endswith(f"{BUG}python -m lstm_grad.backtest --output 'my runs' --verbose")
    assert lines[-1].startswith(f"lstm-grad {version()} (commit ")


def test_a_command_entry_point_exits_with_the_status(monkeypatch, capsys):
    from lstm_grad.training.entry import main_of

    monkeypatch.setattr(sys, "argv", ["tune", "--n_trials", "1"])

    def interrupted(args):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        main_of(_raise(ConfigError("bad")))()
    assert stop.value.code == 1
    with pytest.raises(SystemExit) as stop:
        main_of(interrupted, interrupted="rerun to resume")()
    assert stop.value.code == 130 and stderr_lines(capsys) == ["error: bad", "interrupted: rerun to resume"]
