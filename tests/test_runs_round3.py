"""Issue 22 D and E: runs that failed where they should work, and what tripped a new user.

D. bf16 without the CPU's bf16 LSTM kernel; several ``tune`` processes on one new storage.
E. run folders named by config and source; ``--ckpt_path last`` takes the newest fit; a refused run
leaves no folder; TensorBoard's HPARAMS and TEXT readable cold; importances only from enough trials;
the set-up block and the license field.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from lstm_grad.forecaster import model as model_module
from lstm_grad.forecaster.model import ResidualLSTM

ROOT = Path(__file__).resolve().parents[1]
ONEDNN = "could not create a primitive descriptor for the LSTM forward propagation primitive"
TINY = ["--data.window", "8", "--data.batch_size", "16", "--data.last_n_days", "null", "--model.hidden_sizes", "[4]",
        "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--time_probe.every_n_epochs", "0"]


def _runs(folder: Path) -> list[str]:
    """The run folders (``<name>/<version>``) under ``folder`` that hold an event file."""
    return sorted(str(p.parent.relative_to(folder)) for p in folder.rglob("events.out.tfevents.*"))


# ---- D: bf16 on a CPU without the bf16 LSTM kernel -------------------------------------------------
@pytest.fixture
def no_low_precision_lstm(monkeypatch):
    """Make ``nn.LSTM`` behave as on a CPU whose oneDNN has no bf16 LSTM: any 16-bit use raises oneDNN's error."""
    real = nn.LSTM.forward

    def forward(self, x, hx=None):
        if torch.is_autocast_enabled(x.device.type) or x.dtype != torch.float32 or self.weight_ih_l0.dtype != torch.float32:
            raise RuntimeError(ONEDNN)
        return real(self, x, hx)

    monkeypatch.setattr(nn.LSTM, "forward", forward)
    probe = getattr(model_module, "recurrent_kernel_ok", None)  # the kernel probe caches its answer per process
    if probe is not None:
        probe.cache_clear()
    yield
    if probe is not None:
        probe.cache_clear()


def test_without_the_kernel_the_lstm_runs_float32_under_bf16_autocast_and_the_head_in_bf16(no_low_precision_lstm):
    net = ResidualLSTM(3, hidden_sizes=(6, 6, 4), horizon=2)
    seen = {}
    for name in ("lstm_0", "lstm_2", "head"):
        getattr(net, name).register_forward_hook(
            lambda module, args, out, name=name: seen.update({name: (args[0].dtype, (out[0] if isinstance(out, tuple) else out).dtype)}))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.randn(4, 7, 3))
    assert seen["lstm_0"] == seen["lstm_2"] == (torch.float32, torch.float32)  # autocast off, input cast up
    assert seen["head"] == (torch.float32, torch.bfloat16)  # the head still runs in bf16
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.lstm_0.parameters())

    true_bf16 = ResidualLSTM(3, hidden_sizes=(6,), horizon=1).to(torch.bfloat16)  # bf16-true: 16-bit weights
    out = true_bf16(torch.randn(4, 7, 3, dtype=torch.bfloat16))
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and true_bf16.lstm_0.weight_hh_l0.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("kernel", [True, False])
def test_autocast_stays_on_for_the_lstm_only_where_the_kernel_exists(monkeypatch, kernel):
    monkeypatch.setattr(model_module, "recurrent_kernel_ok", lambda *args: kernel, raising=False)
    real, calls = nn.LSTM.forward, []

    def recording(self, x, hx=None):  # computes in float32 whatever it is asked: any CPU can run this test
        calls.append(torch.is_autocast_enabled("cpu"))
        with torch.autocast("cpu", enabled=False):
            return real(self, x.float(), hx)

    monkeypatch.setattr(nn.LSTM, "forward", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ResidualLSTM(3, hidden_sizes=(6, 6), horizon=1)(torch.randn(2, 5, 3))
    assert calls == [kernel, kernel]  # with the kernel, autocast runs the LSTM in bf16 as before


@pytest.mark.slow
def test_bf16_mixed_fit_trains_where_the_cpu_has_no_bf16_lstm(no_low_precision_lstm, tmp_path, synthetic_csv, caplog):
    from lstm_grad.cli import run_guarded
    from lstm_grad.fit import fit_main

    caplog.set_level(logging.INFO)
    csv = synthetic_csv(tmp_path)
    code = run_guarded(fit_main, ["--data.source", str(csv), *TINY, "--trainer.precision", "bf16-mixed",
                                  "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    assert code == 0
    said = [r.getMessage() for r in caplog.records if "recurrent layers run in float32" in r.getMessage()]
    assert len(said) == 1 and "bfloat16 autocast" in said[0] and "CPU has no bfloat16 LSTM kernel" in said[0]


# ---- D: several tune processes on one new storage ----------------------------------------------------
def test_a_schema_race_on_a_new_database_is_retried(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    from optuna import storages
    from sqlalchemy.exc import IntegrityError

    from lstm_grad.training import study

    real, calls = storages.RDBStorage, []

    def flaky(url, **kwargs):  # the other process stamped the schema version first
        calls.append(url)
        if len(calls) == 1:
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed: "
                                                                               "alembic_version.version_num"))
        return real(url, **kwargs)

    monkeypatch.setattr(storages, "RDBStorage", flaky)
    opened = study.open_storage(f"sqlite:///{tmp_path / 'new' / 'study.db'}")
    assert isinstance(opened, real) and len(calls) == 2
    with pytest.raises(ValueError, match=r"--storage sqlite:///.*: cannot open the study database \(.*unable to open"):
        study.open_storage(f"sqlite:///{tmp_path}")  # a folder: not a race, so no retries and one line


def test_run_until_leaves_the_last_place_to_the_trial_asked_first(tmp_path):
    optuna = pytest.importorskip("optuna")
    from lstm_grad.training import study as shared

    since = shared.process_started()
    study = optuna.create_study(storage=shared.open_storage(str(tmp_path / "s.journal")))
    study.ask()  # trial 0: another process's, running
    real_ask, trained = study.ask, []

    def ask_after_a_third_process():  # between our count (1 of 2 places taken) and our ask, a third process asks
        real_ask()  # trial 1
        return real_ask()  # trial 2: ours

    study.ask = ask_after_a_third_process
    assert shared.run_until(study, 2, lambda trial: trained.append(trial.number) or 1.0, since) == 0
    ours = study.trials[2]
    assert trained == [] and ours.state.name == "FAIL" and ours.user_attrs[shared.SURPLUS] is True  # closed unrun
    study.ask = real_ask
    study.tell(0, 1.0)
    study.tell(1, 2.0)
    assert shared.run_until(study, 3, lambda trial: trained.append(trial.number) or 0.5, since) == 1
    assert trained == [3] and shared.claimed(study, since) == 3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_three_processes_started_together_on_a_new_storage_stop_at_n(tmp_path, kind):
    optuna = pytest.importorskip("optuna")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    space = tmp_path / "space.yaml"
    space.write_text("model.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\nmodel.hidden_sizes: {choices: [[4]]}\n"
                     "model.dropout: null\nmodel.weight_decay: null\ndata.window: {choices: [8]}\n"
                     "data.target_mode: null\n")
    storage = f"sqlite:///{tmp_path / 'new' / 'study.db'}" if kind == "sqlite" else str(tmp_path / "new" / "study.journal")
    command = [sys.executable, "-m", "lstm_grad.tune", "--n_trials", "4", "--storage", storage, "--study_name", "s",
               "--space", str(space), "--out", str(tmp_path / "tune"), "--data.source", "embedded",
               "--data.last_n_days", "200", "--trainer.max_epochs", "1", "--time_probe.every_n_epochs", "0"]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-3000:] for _, err in outputs]
    assert not any("Traceback" in err for _, err in outputs)
    study = optuna.load_study(study_name="s", storage=storage if kind == "sqlite" else
                              JournalStorage(JournalFileBackend(storage)))
    finished = sorted(t.number for t in study.trials if t.state.name in ("COMPLETE", "PRUNED"))
    assert len(finished) == 4  # exactly N, not N plus what the others were still running
    ran = [int(m) for out, _ in outputs for m in re.findall(r"^trial +(\d+) \|", out, flags=re.M)]
    assert sorted(ran) == finished  # each trial trained once, in one of the processes
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state.name == "FAIL")


# ---- E: run folders, last / best, refused runs ----------------------------------------------------------
def test_runs_are_named_by_config_and_source(tmp_path, synthetic_csv):
    from lstm_grad.fit import FitCLI

    a = synthetic_csv(tmp_path)
    b = tmp_path / "silver prices.csv"
    b.write_text(a.read_text())
    config = tmp_path / "mine.yaml"
    config.write_text("model:\n  dropout: 0.1\n")
    save = ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]

    def folder(*args: str) -> str:
        return str(Path(FitCLI(args=[*args, *save, *TINY], run=False).trainer.log_dir).relative_to(tmp_path / "runs"))

    assert folder("--data.source", str(a)) == "default-gold/version_0"
    assert folder("--data.source", str(b)) == "default-silver_prices/version_0"
    assert folder("--config", str(config), "--data.source", str(b)) == "mine-silver_prices/version_0"
    assert folder("--trainer.logger.init_args.name", "mine", "--data.source", str(a)) == "mine/version_0"


def test_a_refused_run_leaves_no_folder(tmp_path, capsys):
    from lstm_grad.cli import run_guarded
    from lstm_grad.fit import fit_main

    short = tmp_path / "short.csv"
    short.write_text("date,price\n" + "".join(f"2024-01-{d:02d},{100 + d}\n" for d in range(1, 21)))
    code = run_guarded(fit_main, ["--data.source", str(short), *TINY,
                                  "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    assert code == 1 and capsys.readouterr().err.strip().startswith("error: ")
    assert not (tmp_path / "runs").exists()  # no empty version_N for TensorBoard to list


@pytest.fixture(scope="module")
def fit_then_trial(tmp_path_factory):
    """A tiny fit under runs/, then a one-trial tuning study under runs/tune (newer)."""
    pytest.importorskip("optuna")
    from lstm_grad.cli import run_guarded
    from lstm_grad.fit import fit_main
    from lstm_grad.tune import tune_main

    root = tmp_path_factory.mktemp("last")
    csv = root / "gold.csv"
    rows = [f"{d.date()},{100 + 0.1 * i + (i % 7) * 0.3:.3f}" for i, d in
            enumerate(__import__("pandas").bdate_range("2020-01-01", periods=220))]
    csv.write_text("date,price\n" + "\n".join(rows) + "\n")
    runs = root / "runs"
    assert run_guarded(fit_main, ["--data.source", str(csv), *TINY, "--trainer.log_every_n_steps", "1",
                                  "--trainer.logger.init_args.save_dir", str(runs)]) == 0
    assert run_guarded(tune_main, ["--n_trials", "1", "--out", str(runs / "tune"), "--study_name", "s",
                                   "--data.source", str(csv), *TINY]) == 0
    return {"root": root, "runs": runs, "csv": csv}


@pytest.mark.slow
def test_last_and_best_take_the_newest_fit_and_say_which(fit_then_trial, caplog):
    from lstm_grad.training.run_dirs import resolve_checkpoint

    runs = fit_then_trial["runs"]
    assert (runs / "tune" / "s" / "trial_0" / "checkpoints" / "last.ckpt").is_file()  # newer than the fit
    caplog.set_level(logging.INFO)
    last = resolve_checkpoint("last", runs)
    assert last == runs / "default-gold" / "version_0" / "checkpoints" / "last.ckpt"
    assert resolve_checkpoint("best", runs).parent == last.parent
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--ckpt_path last")]
    assert lines == [f"--ckpt_path last: taking {last}, from the newest fit run under {runs}, 1 newer tuning / "
                     "backtest run(s) passed over (pass a file to take another)"]


@pytest.mark.slow
def test_testing_the_best_trial_never_rewrites_its_config(fit_then_trial):
    from lstm_grad.tune import evaluate_on_test

    trial = fit_then_trial["runs"] / "tune" / "s" / "trial_0"
    config = trial / "config.yaml"
    config.write_text("# read by another process right now\n" + config.read_text())
    best = type("Trial", (), {"user_attrs": {"log_dir": str(trial),
                                             "best_checkpoint": str(next((trial / "checkpoints").glob("best-*.ckpt")))}})
    assert "test/mae" in evaluate_on_test(best)
    assert config.read_text().startswith("# read by another process right now\n")


# ---- E: TensorBoard readable cold -----------------------------------------------------------------------
@pytest.mark.slow
def test_hparams_are_flat_and_name_lr_hidden_sizes_and_source_first(fit_then_trial):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = fit_then_trial["runs"] / "default-gold" / "version_0"
    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = dict(plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams)
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in hparams.items()}
    # the five columns TensorBoard shows by default: the first five by name
    assert sorted(values)[:5] == ["run/hidden_sizes", "run/lr", "run/source", "run/target", "run/window"]
    assert values["run/source"] == "gold.csv" and values["run/hidden_sizes"] == "4" and values["run/lr"] == 0.001
    assert values["settings/data.dayfirst"] == "false" and not any("_instantiator" in k or "_class_path" in k for k in values)
    assert all(isinstance(v, (str, float)) for v in values.values())

    cards = [e.tensor_proto.string_val[0].decode() for e in events.Tensors("about/run/text_summary")]
    assert any("| data |" in card and "gold.csv" in card for card in cards)  # the settings, in words
    assert any("| persistence (tomorrow = today) |" in card for card in cards)  # the test results


def test_importance_is_plotted_only_from_ten_completed_trials(tmp_path):
    optuna = pytest.importorskip("optuna")
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from lstm_grad.tune import write_plots

    study = optuna.create_study()
    space = {"model.dropout": FloatDistribution(0.0, 0.3), "data.target_mode": CategoricalDistribution(["level", "log_return"])}
    for i in range(12):
        mode = ["level", "log_return"][i % 2]
        study.add_trial(optuna.trial.create_trial(params={"model.dropout": 0.02 * i, "data.target_mode": mode},
                                                  distributions=space, value=1.0 + (mode == "level")))
        if i == 2:  # three trials: nothing to rank yet
            written = write_plots(study, tmp_path)
            assert not (tmp_path / "importance.png").exists()
            paths, skipped = written
            assert [p.name for p in paths] == ["history.png"]
            assert skipped == ["no importance plot: 3 completed trial(s) rank nothing; parameter importances need "
                               ">= 10 (raise --n_trials)"]
    paths, skipped = write_plots(study, tmp_path)
    assert [p.name for p in paths] == ["history.png", "importance.png"] and skipped == []


# ---- E: set-up -------------------------------------------------------------------------------------------
def test_install_block_pins_cpu_torch_first_and_the_license_is_a_spdx_string():
    block = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines() if line.split("#")[0].strip()]
    assert commands[0] == "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    assert commands[1].startswith("pip install -e")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"  # PEP 639; a table is deprecated (setuptools warns on every install)
