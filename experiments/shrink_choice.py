"""Choose the rule that shrinks the network's predicted move toward persistence, out of sample, on folds
whose test spans end before every span the results pages report.

``python -m experiments.shrink_choice --run DIR --folds 5 --test_days 250 [the run's fit flags]``

DIR is the ``--output`` of a finished ``lstm_grad.backtest`` run made with the same fit flags (for the
results: ``--data.last_n_days null --data.end 2007-12-31``, once with ``--data.horizon 30``). For every
fold the best checkpoint's raw network prices are recomputed on the fold's validation and test windows; each candidate rule fits its weights
on validation alone and is scored on that fold's test span. The rule with the lowest pooled relative
MAE (MAE / persistence MAE over every fold's test days and steps) wins. Prints the rules pooled and per
fold, and writes ``DIR/shrink_choice.csv`` with the commit.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import torch

from lstm_grad.backtest import plan_folds
from lstm_grad.cli import GoldCLI
from lstm_grad.forecaster.shrinkage import apply_shrink, fit_shrink
from lstm_grad.training.console import QuietRuns
from lstm_grad.training.provenance import git_commit

def significant_shrink(pred: Any, actual: Any, anchor: Any, level: float = 0.05) -> np.ndarray:
    """Keep the network's move at a step only where validation shows it predicts the actual move: pred, actual
    (N, H) prices, anchor (N,) -> (H,) weights in [0, 1].

    ``w_h = clip(b_h, 0, 1)`` if the one-sided test of ``b_h > 0`` rejects at ``level``, else 0 (persistence),
    with ``b_h = sum(m a) / sum(m^2)`` the least-squares weight of the actual move ``a`` on the predicted
    move ``m`` and its t statistic from a heteroskedasticity and autocorrelation consistent variance
    (Newey & West 1987, Bartlett kernel, lag h - 1: consecutive h-step windows share h - 1 target days),
    against the normal quantile. A pretest estimator (Judge & Bock 1978): a weight the validation span
    cannot tell from 0 is 0.

    >>> anchor = np.zeros(60); signal = np.tile([1.0, -1.0, 2.0], 20)
    >>> noise = np.tile([0.2, 0.4, 0.1], 20)  # orthogonal to the signal
    >>> significant_shrink(signal[:, None], 0.5 * signal[:, None] + noise[:, None], anchor).round(6).tolist()
    [0.5]
    >>> significant_shrink(signal[:, None], noise[:, None], anchor).tolist()  # the move predicts nothing
    [0.0]
    """
    pred, actual = np.asarray(pred, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    anchor = np.asarray(anchor, dtype=np.float64)[:, None]
    n, horizon = actual.shape
    weights = np.zeros(horizon)
    critical = NormalDist().inv_cdf(1.0 - level)
    for h in range(horizon):
        move, target = pred[:, h] - anchor[:, 0], actual[:, h] - anchor[:, 0]
        power = float(move @ move)
        if n < 3 or power <= 0:
            continue
        beta = float(move @ target) / power
        score = move * (target - beta * move)  # (N,) the regression's score terms
        variance = float(score @ score)
        for lag in range(1, min(h, n - 1) + 1):  # Bartlett weights 1 - lag / (h + 1) up to lag h (step h + 1)
            variance += 2.0 * (1.0 - lag / (h + 1)) * float(score[lag:] @ score[:-lag])
        t = beta / np.sqrt(variance / power ** 2) if variance > 0 else np.inf
        weights[h] = min(max(beta, 0.0), 1.0) if t > critical else 0.0
    return weights


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
