"""Choose the rule that shrinks the network's predicted move toward persistence, out of sample, on folds
whose test spans end before every span the results pages report.

``python -m experiments.shrink_choice --run DIR --folds 5 --test_days 250 [the run's fit flags]``

DIR is the ``--output`` of a finished ``lstm_grad.backtest`` run made with the same fit flags (for the
results: ``--data.last_n_days null --data.end 2007-12-31``, once with ``--data.horizon 30``). For every fold the best checkpoint's raw network
prices are recomputed on the fold's validation and test windows; each candidate rule fits its weights
on validation alone and is scored on that fold's test span. The rule with the lowest pooled relative
MAE (MAE / persistence MAE over every fold's test days and steps) wins. Prints the rules pooled and per
fold, and writes ``DIR/shrink_choice.csv`` with the commit.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lstm_grad.backtest import plan_folds
from lstm_grad.cli import GoldCLI
from lstm_grad.forecaster.shrinkage import apply_shrink, fit_shrink, significant_shrink
from lstm_grad.training.console import QuietRuns
from lstm_grad.training.provenance import git_commit

Rule = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
RULES: dict[str, Rule] = {
    "network (no shrinking)": lambda pred, actual, anchor: np.ones(actual.shape[1]),
    "least squares (prior 0)": lambda pred, actual, anchor: fit_shrink(pred, actual, anchor, prior=0),
    "prior 30": lambda pred, actual, anchor: fit_shrink(pred, actual, anchor, prior=30),
    "prior 100": lambda pred, actual, anchor: fit_shrink(pred, actual, anchor, prior=100),
    "prior 300": lambda pred, actual, anchor: fit_shrink(pred, actual, anchor, prior=300),
    "prior 1000": lambda pred, actual, anchor: fit_shrink(pred, actual, anchor, prior=1000),
    "significant at 5 % (HAC t)": lambda pred, actual, anchor: significant_shrink(pred, actual, anchor, 0.05),
    "significant at 1 % (HAC t)": lambda pred, actual, anchor: significant_shrink(pred, actual, anchor, 0.01),
    "persistence": lambda pred, actual, anchor: np.zeros(actual.shape[1]),
}


def network_prices(model: torch.nn.Module, data, stage: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The network's own prices (no shrinking), the actual prices (N, H) and the anchors (N,) of a span."""
    windows = data.datasets[stage]
    anchor, actual = data.window_prices(stage, torch.arange(len(windows)))
    with torch.no_grad():
        scaled = model(windows.windows[windows.start])
    return data.inverse_transform(scaled, anchor).double().numpy(), actual.numpy(), anchor.numpy()


def fold_spans(run: Path, job: dict) -> dict[str, tuple[np.ndarray, ...]]:
    """Rebuild fold ``job`` of backtest output ``run``: its data module and best checkpoint's weights."""
    with QuietRuns("lstm_grad"):
        cli = GoldCLI(args=[*job["args"], "--trainer.logger", "false"], run=False, run_kind="backtest")
        data, model = cli.datamodule, cli.model
        data.setup("fit")
        data.setup("test")
    best = next((run / f"fold_{job['fold']}").glob("version_*/checkpoints/best-*.ckpt"))
    model.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    model.eval()
    return {stage: network_prices(model, data, stage) for stage in ("val", "test")}


def score_rules(spans: dict[str, tuple[np.ndarray, ...]]) -> dict[str, tuple[float, float]]:
    """Each rule's test (sum of absolute errors, sum of persistence's absolute errors) over every step."""
    (vp, va, vn), (tp, ta, tn) = spans["val"], spans["test"]
    naive = float(np.abs(ta - tn[:, None]).sum())
    return {name: (float(np.abs(apply_shrink(tp, tn, rule(vp, va, vn)) - ta).sum()), naive)
            for name, rule in RULES.items()}


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the backtest's --output folder")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--test_days", type=int, default=250)
    own, fit_args = parser.parse_known_args(argv)
    run, rows = Path(own.run), []
    for job in plan_folds(fit_args, own.folds, own.test_days, run):
        for rule, (error, naive) in score_rules(fold_spans(run, job)).items():
            rows.append({"fold": job["fold"], "rule": rule, "abs_error": error, "naive_abs_error": naive})
    table = pd.DataFrame(rows)
    per_fold = (table.abs_error / table.naive_abs_error).to_frame("rel_mae").join(table[["fold", "rule"]])
    per_fold = per_fold.pivot_table(index="rule", columns="fold", values="rel_mae")
    pooled = table.groupby("rule")[["abs_error", "naive_abs_error"]].sum()
    summary = per_fold.assign(pooled=pooled.abs_error / pooled.naive_abs_error).sort_values("pooled")
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    summary.assign(commit=git_commit()).to_csv(run / "shrink_choice.csv")
    return summary

if __name__ == "__main__":
    main()
