"""Tune a forecaster with Optuna: ``python -m lstm_grad.tune --n_trials 20 [any fit flag]``.

Each trial is a normal ``lstm_grad.fit`` training run (TensorBoard, gradient norms, checkpoints)
under ``<out>/<study>/trial_<n>/`` with values drawn from the search space
(``lstm_grad.training.search_space``: ``model.lr`` log-uniform, stacks with and without residual adds,
dropout, weight decay, window, target mode; ``--space my_space.yaml`` overrides it). The
objective is the validation MASE in price units (model MAE / persistence MAE on the validation
targets) of the trial's best checkpoint; checkpointing and early stopping follow ``val/rel_mae`` too.
Trials whose validation MASE falls behind the median of earlier trials at the same epoch are
pruned (Optuna's ``MedianPruner`` through optuna-integration's Lightning callback). The test span
is used once, at the end, by the best trial only.

``--n_trials N`` is the number of finished (complete or pruned) trials the study should hold:
with ``--storage sqlite:///study.db`` or ``--storage study.journal`` (an Optuna journal file),
the same command started in several processes (or on several machines sharing the file or
database), all at once on a new storage too, works on one study and every process stops when it
holds N (``lstm_grad.training.study``); rerunning it after a kill resumes until N trials are done.
Each process then writes the best config and tests the best trial; the files are replaced whole.
Parameter importances are plotted from ``MIN_TRIALS_FOR_IMPORTANCE`` completed trials on: with fewer,
the ranking is noise (three trials rank whichever parameter happened to vary with the luck of the draw).

Needs the optional extra: ``pip install -e ".[tune]"``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lstm_grad.training import search_space
from lstm_grad.errors import ConfigError
from lstm_grad.fit import FitCLI, results_table
from lstm_grad.training.console import QuietRuns
from lstm_grad.training.entry import main_of
from lstm_grad.training.parallel import require_extra
from lstm_grad.training.run_dirs import write_atomic
from lstm_grad.training.study import SURPLUS, claimed, open_storage, process_started, run_until

OBJECTIVE = "val/rel_mae"
MIN_TRIALS_FOR_IMPORTANCE = 10  # completed trials before parameter importances are plotted
#: before the user's flags (they may change them): trials print one line each, not a progress bar
TRIAL_DEFAULTS = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split the command line into the tuner's own flags and the flags handed to every fit."""
    p = argparse.ArgumentParser(prog="python -m lstm_grad.tune", description=__doc__.splitlines()[0],
                                allow_abbrev=False, epilog="Every other flag goes to each trial's fit "
                                "(python -m lstm_grad.fit --help), e.g. --config configs/residual.yaml.")
    p.add_argument("--n_trials", type=int, required=True, help="finished (complete or pruned) trials the study should hold")
    p.add_argument("--storage", default=None, help="sqlite:///study.db, another database URL, or a journal file path; "
                   "default: in memory (one process, no resume)")
    p.add_argument("--study_name", default="lstm_grad", help="study name and folder under --out")
    p.add_argument("--timeout", type=float, default=None, help="stop starting new trials after SEC seconds")
    p.add_argument("--space", default=None, help="YAML file overriding the search space (see lstm_grad.training.search_space)")
    p.add_argument("--out", default="runs/tune", help="trial runs go to OUT/STUDY/trial_<n>")
    p.add_argument("--sampler_seed", type=int, default=None, help="seed of the TPE sampler (default: random)")
    p.add_argument("--pruner_startup_trials", type=int, default=5, help="finished trials before pruning starts")
    p.add_argument("--pruner_warmup_epochs", type=int, default=2, help="epochs of a trial that are never pruned")
    args, fit_args = p.parse_known_args(list(argv))
    if args.n_trials < 1:
        raise ConfigError(f"--n_trials must be >= 1, found {args.n_trials}")
    return args, fit_args


def trial_flags(study_dir: Path, number: int) -> list[str]:
    """Flags after the user's: the trial's folder, and selection / early stopping on the objective."""
    return ["--trainer.logger.init_args.save_dir", str(study_dir), "--trainer.logger.init_args.name=",
            "--trainer.logger.init_args.version", f"trial_{number}",
            "--checkpoint.monitor", OBJECTIVE, "--checkpoint.mode", "min",
            "--early_stopping.monitor", OBJECTIVE, "--early_stopping.mode", "min"]


def preflight(space: dict[str, dict[str, Any]], fit_args: list[str]) -> None:
    """Parse the fit flags with one point of the space and read the data once, before any trial:
    a bad flag, config or data source stops here with one error line instead of failing trial 0."""
    first = {name: spec["choices"][0] if "choices" in spec else spec["low"] for name, spec in space.items()}
    cli = FitCLI(args=[*TRIAL_DEFAULTS, *fit_args, *search_space.as_flags(first), "--trainer.logger=false"], run=False)
    cli.datamodule.setup("fit")


def objective(trial: Any, space: dict[str, dict[str, Any]], fit_args: list[str], study_dir: Path) -> float:
    """Train one trial; return the validation MASE of its best checkpoint (NaN if it never validated)."""
    from optuna_integration import PyTorchLightningPruningCallback

    values = search_space.suggest(trial, space)
    shutil.rmtree(study_dir / f"trial_{trial.number}", ignore_errors=True)  # a rerun never mixes event files
    cli = FitCLI(args=[*TRIAL_DEFAULTS, *fit_args, *search_space.as_flags(values), *trial_flags(study_dir, trial.number)],
                 run=False, run_kind="tune")
    trainer = cli.trainer
    trial.set_user_attr("log_dir", str(trainer.log_dir))
    trainer.callbacks.append(PyTorchLightningPruningCallback(trial, monitor=OBJECTIVE))
    trainer.fit(cli.model, datamodule=cli.datamodule)
    checkpoint = trainer.checkpoint_callback
    trial.set_user_attr("best_checkpoint", checkpoint.best_model_path)
    trial.set_user_attr("epochs", trainer.current_epoch)
    score = checkpoint.best_model_score
    return float(score) if score is not None else math.nan


def progress_line(trial: Any) -> None:
    """Print one line per finished trial: number, state, val MASE, time, params."""
    state = trial.state.name.lower()
    if trial.value is not None:
        value = f"val MASE {trial.value:.4f}"
    elif trial.intermediate_values:
        epoch = max(trial.intermediate_values)
        value = f"val MASE {trial.intermediate_values[epoch]:.4f} at epoch {epoch}"
    else:
        value = "val MASE n/a"
    seconds = trial.duration.total_seconds() if trial.duration else math.nan
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in search_space.decode(trial.params).items())
    print(f"trial {trial.number:>3} | {state:<8} | {value} | {seconds:6.1f} s | {params}", flush=True)


def finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def write_best_config(best: Any, study_name: str, path: Path) -> Path:
    """Write the best trial's full fit config (its ``config.yaml``) as a config for ``lstm_grad.fit``."""
    config = yaml.safe_load((Path(best.user_attrs["log_dir"]) / "config.yaml").read_text())
    config["trainer"]["logger"]["init_args"].update({"save_dir": "runs", "name": f"tuned_{study_name}-{{source}}",
                                                  "version": None})
    config["trainer"].update({"enable_progress_bar": True, "enable_model_summary": True})
    config.pop("ckpt_path", None)  # fit's resume flag: a config without it also serves `lstm_grad.cli fit`
    params = ", ".join(f"{k}={v}" for k, v in search_space.decode(best.params).items())
    header = (f"# Best trial {best.number} of Optuna study '{study_name}': validation MASE {best.value:.6g}\n"
              f"# tuned: {params}\n# checkpoint selection and early stopping follow val/rel_mae (the tuning objective)\n"
              f"# python -m lstm_grad.fit --config {path}\n")
    write_atomic(path, lambda tmp: tmp.write_text(header + yaml.safe_dump(config, sort_keys=False)))
    return path


def evaluate_on_test(best: Any) -> dict[str, float]:
    """Test (and predict) the best trial's best checkpoint: the only use of the test span.

    The trial's ``config.yaml`` is read, never written again (``save_config_callback=None``): another
    process of the same study may be reading it at this moment.
    """
    cli = FitCLI(args=["--config", str(Path(best.user_attrs["log_dir"]) / "config.yaml")], run=False,
                 save_config_callback=None, run_kind="tune")
    ckpt = best.user_attrs["best_checkpoint"]
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, weights_only=True, verbose=False)
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, return_predictions=False, weights_only=True)
    return {k: float(v) for k, v in tested[0].items()}


def write_plots(study: Any, study_dir: Path) -> tuple[list[Path], list[str]]:
    """Write Optuna's optimization history and parameter importances as PNG (matplotlib backend); return
    the files written and one line per plot left out, saying why.

    Importances need ``MIN_TRIALS_FOR_IMPORTANCE`` completed trials: from fewer, fANOVA ranks noise
    (after three trials it put dropout first where the target mode had decided every trial).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    paths, skipped = [], []
    for name, plot in (("history", plot_optimization_history), ("importance", plot_param_importances)):
        path = study_dir / f"{name}.png"
        if name == "importance" and completed < MIN_TRIALS_FOR_IMPORTANCE:
            path.unlink(missing_ok=True)  # an older ranking would pass for this study's
            skipped.append(f"no importance plot: {completed} completed trial(s) rank nothing; parameter importances "
                           f"need >= {MIN_TRIALS_FOR_IMPORTANCE} (raise --n_trials)")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning of the matplotlib backend
            try:
                axes = plot(study)
            except (RuntimeError, ValueError) as error:  # e.g. every completed value equal
                skipped.append(f"no {name} plot: {' '.join(str(error).split())}")
                continue
        write_atomic(path, lambda tmp, figure=axes.figure: figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
        plt.close(axes.figure)
        paths.append(path)
    return paths, skipped


def tune(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the study; return the study, the best trial, its test metrics and the files written.

    One line per trial: Lightning's per-run lines and Optuna's own trial lines are kept to warnings, the
    data lines are said once (the first trial); levels and warning filters are restored afterwards.
    """
    require_extra(["optuna", "optuna_integration"], "python -m lstm_grad.tune", "tune")  # sets up optuna's logger
    args, fit_args = parse_args(sys.argv[1:] if argv is None else argv)
    space = search_space.load_space(args.space)
    with QuietRuns("optuna") as quiet:
        preflight(space, fit_args)
        return run_study(args, fit_args, space, quiet)


def run_study(args: argparse.Namespace, fit_args: list[str], space: dict[str, dict[str, Any]],
              quiet: QuietRuns | None = None) -> dict[str, Any]:
    """Create or load the study, run the trials still missing, then write and test the best one."""
    import optuna

    since = process_started()  # trials running in processes started with this one (or later) count
    study_dir = Path(args.out) / args.study_name
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--out {args.out}: cannot create {study_dir} ({error.strerror or error}); "
                          "choose another --out") from None
    study = optuna.create_study(
        study_name=args.study_name, storage=open_storage(args.storage), direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=args.sampler_seed),
        pruner=optuna.pruners.MedianPruner(args.pruner_startup_trials, args.pruner_warmup_epochs))
    done, busy = finished(study), claimed(study, since) - finished(study)
    print(f"study '{args.study_name}': {done} of {args.n_trials} trials finished{f', {busy} running' if busy else ''}; "
          f"running trials here until it holds {args.n_trials}; objective {OBJECTIVE} (min); runs under {study_dir}",
          flush=True)
    if claimed(study, since) < args.n_trials:

        def once(trial: Any) -> float:
            value = objective(trial, space, fit_args, study_dir)
            if quiet is not None:
                quiet.add("lstm_grad")  # the data lines are said once
            return value

        started = time.perf_counter()
        ran = run_until(study, args.n_trials, once, since, args.timeout, progress_line)
        print(f"{ran} trial(s) done here in {time.perf_counter() - started:.0f} s; the study holds {finished(study)}",
              flush=True)
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"study '{args.study_name}' has no completed trial with a finite val MASE; "
                          f"see the trial lines above (widen the space or train longer)") from None
    config = write_best_config(best, args.study_name, study_dir / "best.yaml")
    metrics = evaluate_on_test(best)
    write_atomic(study_dir / "trials.csv", lambda tmp: trials_table(study).to_csv(tmp, index=False))
    plots, skipped = write_plots(study, study_dir)
    return {"study": study, "best": best, "metrics": metrics, "config": config, "plots": plots,
            "plots_skipped": skipped, "trials_csv": study_dir / "trials.csv"}


def trials_table(study: Any) -> Any:
    """Optuna's trials table without the trials closed unrun because the study was already full."""
    table = study.trials_dataframe()
    column = f"user_attrs_{SURPLUS}"
    if column in table:
        table = table[table[column].isna()].drop(columns=column)
    return table


def report(result: dict[str, Any]) -> str:
    best = result["best"]
    params = "\n".join(f"  {k}: {v}" for k, v in search_space.decode(best.params).items())
    return "\n".join([
        "", f"best trial {best.number}: val MASE {best.value:.4f} (of {finished(result['study'])} finished trials)", params,
        f"best config: {result['config']}  ->  python -m lstm_grad.fit --config {result['config']}",
        f"test span, best trial's best checkpoint ({best.user_attrs['best_checkpoint']}):",
        results_table(result["metrics"]),
        f"trial log: {result['trials_csv']}; plots: {', '.join(str(p) for p in result['plots']) or 'none'}",
        *result.get("plots_skipped", []),
        f"TensorBoard: tensorboard --logdir {Path(result['config']).parent}",
    ])


def tune_main(args: Sequence[str] | None = None) -> None:
    print(report(tune(args)))


main = main_of(tune_main, interrupted="with --storage, rerun the same command to resume the study")


if __name__ == "__main__":
    main()
