"""python -m lstm_grad.tune: the space, the study, pruning, shared storage, and the best config."""

import csv
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lstm_grad.training import search_space

ROOT = Path(__file__).resolve().parents[1]
# a tiny fit: 300 days, 1 epoch, 8-unit layers
FIT = ["--trainer.max_epochs", "1", "--data.last_n_days", "300", "--trainer.log_every_n_steps", "1"]
SPACE = """\
model.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
model.hidden_sizes: {choices: [[8], [8, 8]]}
model.dropout: {low: 0.0, high: 0.3}
model.weight_decay: {low: 1.0e-7, high: 1.0e-3, log: true}
data.window: {choices: [10, 20]}
"""


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE + "data.target_mode: {choices: [level, log_return]}\n")
    return path


# ---- the search space (fast) ---------------------------------------------------------------------
def test_space_file_overrides_keys_and_drops_nulls(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("model.lr: {low: 0.001, high: 0.01, log: true}\ndata.target_mode: null\nmodel.cell: {choices: [lstm, gru]}\n")
    space = search_space.load_space(str(path))
    assert space["model.lr"] == {"low": 0.001, "high": 0.01, "log": True}
    assert "data.target_mode" not in space and space["model.cell"] == {"choices": ["lstm", "gru"]}
    assert space["model.dropout"] == search_space.DEFAULT_SPACE["model.dropout"]


@pytest.mark.parametrize("text, match", [
    ("model.lr: {low: 0.0, high: 0.1, log: true}", "log-uniform, so low must be > 0"),
    ("model.lr: [0.1, 0.2]", "must be {low: .., high: ..}"),
    ("model.lr: {low: 0.1, high: 0.2, scale: 2}", "unknown keys \\['scale'\\]"),
    ("lr: {low: 0.1, high: 0.2}", "must be a fit flag without dashes"),
    ("model.dropout: {low: 0.5, high: 0.1}", "low <= high"),
])
def test_bad_space_file_names_file_and_key(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError, match=match) as info:
        search_space.load_space(str(path))
    assert str(path) in str(info.value)


def test_suggest_decode_and_flags_round_trip():
    optuna = pytest.importorskip("optuna")
    space = search_space.load_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = search_space.suggest(study.ask(), space)
        assert search_space.in_space(values, space)
    params = search_space.decode(study.trials[0].params)
    assert isinstance(params["model.hidden_sizes"], list) and search_space.in_space(params, space)
    assert not search_space.in_space({**params, "data.window": 7}, space)


def test_tune_flags_are_split_from_fit_flags():
    from lstm_grad.tune import parse_args

    args, fit = parse_args(["--config", "c.yaml", "--n_trials", "4", "--data.window", "20", "--storage", "s.log"])
    assert (args.n_trials, args.storage, args.study_name) == (4, "s.log", "lstm_grad")
    assert fit == ["--config", "c.yaml", "--data.window", "20"]
    with pytest.raises(ValueError, match="--n_trials must be >= 1"):
        parse_args(["--n_trials", "0"])


@pytest.mark.slow  # a fresh interpreter importing Lightning
def test_without_optuna_one_error_line():
    code = ("import sys; sys.modules['optuna'] = None; sys.argv = ['tune', '--n_trials', '1']\n"
            "from lstm_grad.tune import main; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == 'error: python -m lstm_grad.tune needs optuna, which is not installed: pip install -e ".[tune]"'
    assert "Traceback" not in done.stderr


def test_bad_fit_flag_is_one_error_line_before_any_trial(tmp_path, capsys):
    pytest.importorskip("optuna")
    from lstm_grad.cli import run_guarded
    from lstm_grad.tune import tune_main

    assert run_guarded(tune_main, ["--n_trials", "1", "--data.bogus", "3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unrecognized arguments: --data.bogus 3; see --help"]
    assert not (tmp_path / "lstm_grad").exists()  # no study folder, no failed trial


# ---- studies (slow) --------------------------------------------------------------------------------
@pytest.mark.slow
def test_three_trials_best_config_reproduces_val_mase(tmp_path, space_file, capsys):
    pytest.importorskip("optuna")
    from lstm_grad.fit import run
    from lstm_grad.tune import report, tune

    out = tmp_path / "tune"
    result = tune(["--n_trials", "3", "--space", str(space_file), "--out", str(out), "--study_name", "s",
                   "--sampler_seed", "1", *FIT])
    study, best = result["study"], result["best"]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3  # no pruning before 5 trials
    space = search_space.load_space(str(space_file))
    for trial in study.trials:
        assert search_space.in_space(search_space.decode(trial.params), space)
        assert Path(out, "s", f"trial_{trial.number}", "config.yaml").exists()  # a normal run per trial
    assert best.value == min(t.value for t in study.trials)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial ")]
    assert len(lines) == 3 and all("| complete |" in line and "val MASE" in line for line in lines)

    # the test table: model and persistence on the same test targets
    metrics = result["metrics"]
    assert math.isclose(metrics["test/rel_mae"], metrics["test/mae"] / metrics["test/naive_mae"], rel_tol=1e-4)
    with open(result["trials_csv"]) as handle:
        assert len(list(csv.DictReader(handle))) == 3
    assert {p.name for p in result["plots"]} == {"history.png"}  # 3 trials rank no parameter
    assert result["plots_skipped"] == ["no importance plot: 3 completed trial(s) rank nothing; parameter "
                                       "importances need >= 10 (raise --n_trials)"]
    assert result["plots_skipped"][0] in report(result)

    # fit with the written config alone: same seed, same data, same val MASE and test metrics
    again = run(["--config", str(result["config"]), "--trainer.logger.init_args.save_dir", str(tmp_path / "refit"),
                 "--trainer.enable_progress_bar", "false"])
    assert float(again["trainer"].checkpoint_callback.best_model_score) == pytest.approx(best.value, rel=1e-6)
    assert again["metrics"]["test/mae"] == pytest.approx(metrics["test/mae"], rel=1e-6)


@pytest.mark.slow
def test_bad_trial_is_pruned_and_a_rerun_resumes(tmp_path, space_file, capsys):
    optuna = pytest.importorskip("optuna")
    from lstm_grad.tune import tune

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="p", storage=storage, direction="minimize")
    good = {"model.lr": 3e-3, "model.hidden_sizes": "[8]", "model.dropout": 0.0, "model.weight_decay": 1e-7,
            "data.window": 20, "data.target_mode": "log_return"}
    study.enqueue_trial(good)
    study.enqueue_trial({**good, "model.lr": 1e-3})
    study.enqueue_trial({**good, "model.lr": 1e-2, "data.target_mode": "level", "model.weight_decay": 1e-3})
    args = ["--storage", storage, "--study_name", "p", "--space", str(space_file), "--out", str(tmp_path / "tune"),
            "--pruner_startup_trials", "2", "--pruner_warmup_epochs", "0",
            "--sampler_seed", "0", *FIT]  # trial 3 is sampled: seeded, so every run samples the same one
    first = tune(["--n_trials", "3", *args])
    states = [t.state.name for t in first["study"].trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    bad = first["study"].trials[2]
    assert bad.intermediate_values[0] > max(t.value for t in first["study"].trials[:2])
    assert "| pruned   |" in capsys.readouterr().out

    # the same command asking for one more trial runs exactly one (trial 3), then reports again
    second = tune(["--n_trials", "4", *args])
    assert [t.number for t in second["study"].trials] == [0, 1, 2, 3]
    assert tune(["--n_trials", "4", *args])["study"].trials[-1].number == 3  # nothing left to run


@pytest.mark.slow
def test_two_processes_share_one_journal_study(tmp_path, space_file):
    pytest.importorskip("optuna")
    journal = tmp_path / "study.journal"
    command = [sys.executable, "-m", "lstm_grad.tune", "--n_trials", "4", "--storage", str(journal),
               "--study_name", "shared", "--space", str(space_file), "--out", str(tmp_path / "tune"), *FIT]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    ran = [[int(m) for m in re.findall(r"^trial +(\d+) \|", out, flags=re.M)] for out, _ in outputs]

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="shared", storage=JournalStorage(JournalFileBackend(str(journal))))
    finished = sorted(t.number for t in study.trials if t.state.name in ("COMPLETE", "PRUNED"))
    # together they hold exactly the requested trials: a trial asked for the last place after the other
    # process took it is closed unrun (FAIL, user attribute "surplus"; lstm_grad.training.study)
    assert len(finished) == 4
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.number not in finished)
    assert sorted(ran[0] + ran[1]) == finished  # each trial ran once, in one of the two processes
