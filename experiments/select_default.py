"""Choose the default forecaster on VALIDATION data only: candidates x seeds, best checkpoint's val metrics.

    python -m experiments.select_default --out results/default_selection.csv --seeds 3   # stage 1
    python -m experiments.select_default --stage walkforward --runs-dir runs/select_wf       # stage 2

Stage 1 of the choice written up in ``docs/forecasting.md`` (stage 2 is a walk-forward on validation
data only, with ``python -m lstm_grad.backtest --data.end 2012-01-17``). Each candidate is a list of
``python -m lstm_grad.fit`` flags on top of ``configs/residual.yaml`` (the recipe's network and data:
the embedded series, last 1,247 days, 70/10/20 split, raw-price inputs). Every run trains with early stopping on
``val/loss`` and then *validates* its best checkpoint; the test span is never evaluated here, so the
choice cannot peek at it. One CSV row per run (resumable: a (candidate, seed) already in the file is
skipped) and a summary table (mean +- std over seeds) printed at the end.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from experiments.rows import read_rows, write_rows

BASE = Path(__file__).resolve().parents[1] / "configs" / "residual.yaml"
CANDIDATES: dict[str, list[str]] = {
    # the recipe's network (128, 128, 128, 64, residual, orthogonal, clipnorm 1.0) on both targets
    "recipe_level": ["--data.target_mode", "level"],
    "recipe_logret": ["--data.target_mode", "log_return"],
    "recipe_logret_wd1e-4": ["--data.target_mode", "log_return", "--model.weight_decay", "1e-4"],
    # one small layer: fewer parameters to fit noise with
    "lstm64_level": ["--data.target_mode", "level", "--model.hidden_sizes", "[64]"],
    "lstm64_logret": ["--data.target_mode", "log_return", "--model.hidden_sizes", "[64]"],
    "lstm32_logret": ["--data.target_mode", "log_return", "--model.hidden_sizes", "[32]"],
    "lstm32_logret_wd1e-3": ["--data.target_mode", "log_return", "--model.hidden_sizes", "[32]",
                             "--model.weight_decay", "1e-3"],
    "lstm32_logret_huber": ["--data.target_mode", "log_return", "--model.hidden_sizes", "[32]", "--model.loss", "huber"],
}
SCALE_FREE = "[momentum:gold:20, momentum:silver:20, log_return:gold, log_return:silver, volatility:gold:20]"
P3 = ["--model.hidden_sizes", "[128, 64, 32]", "--model.residual", "false", "--model.init", "default"]
WALKFORWARD: dict[str, list[str]] = {  # stage 2: log-return target; (name, flags on top of configs/residual.yaml)
    "recipe": [], "res64x2": ["--model.hidden_sizes", "[64, 64]"], "lstm64": ["--model.hidden_sizes", "[64]"],
    "recipe_sf": ["--data.features", SCALE_FREE],
    **{f"lstm64_sf{tag}": ["--model.hidden_sizes", "[64]", "--data.features", SCALE_FREE, *extra] for tag, extra in (
        ("", []), ("_s1", ["--seed_everything", "1"]), ("_wd1e-3", ["--model.weight_decay", "1e-3"]),
        ("_wd1e-2", ["--model.weight_decay", "1e-2"]), ("_wd1e-2_s1", ["--model.weight_decay", "1e-2", "--seed_everything", "1"]),
        ("_wd3e-2", ["--model.weight_decay", "3e-2"]), ("_wd3e-2_s1", ["--model.weight_decay", "3e-2", "--seed_everything", "1"]),
        ("_lr1e-4", ["--model.lr", "1e-4"]), ("_drop05", ["--model.dropout", "0.5"]))},
    "lstm32_sf_wd1e-2": ["--model.hidden_sizes", "[32]", "--data.features", SCALE_FREE, "--model.weight_decay", "1e-2"],
    **{f"plain3_sf{tag}": [*P3, "--data.features", SCALE_FREE, *extra] for tag, extra in (
        ("_wd0", []), ("_wd1e-2", ["--model.weight_decay", "1e-2"]),
        ("_wd1e-2_s1", ["--model.weight_decay", "1e-2", "--seed_everything", "1"]))},
}
COLUMNS = ["candidate", "seed", "val_mae", "val_naive_mae", "val_rel_mae", "val_dir_acc", "val_loss",
           "epochs", "wall_s", "flags"]


def run_candidate(name: str, flags: list[str], seed: int, runs_dir: str) -> dict[str, object]:
    """Fit one candidate with one seed and return the best checkpoint's validation metrics."""
    from lstm_grad.cli import GoldCLI

    args = ["--config", str(BASE), *flags, "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", runs_dir,
            "--trainer.logger.init_args.name", name, "--trainer.logger.init_args.version", f"seed{seed}"]
    start = time.perf_counter()
    cli = GoldCLI(args=args, run=False)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, datamodule=data)
    best = trainer.checkpoint_callback.best_model_path
    metrics = {k: float(v) for k, v in trainer.validate(model, datamodule=data, ckpt_path=best,
                                                          weights_only=True, verbose=False)[0].items()}
    return {"candidate": name, "seed": seed, "val_mae": metrics["val/mae"], "val_naive_mae": metrics["val/naive_mae"],
            "val_rel_mae": metrics["val/rel_mae"], "val_dir_acc": metrics["val/dir_acc"], "val_loss": metrics["val/loss"],
            "epochs": trainer.current_epoch, "wall_s": time.perf_counter() - start, "flags": " ".join(flags)}


def summary(rows: list[dict[str, str]]) -> str:
    """Markdown table: per candidate, mean +- std of val rel. MAE (MAE / persistence MAE) and val MAE over its seeds."""
    lines = ["| candidate | seeds | val rel. MAE | val MAE | val persistence MAE | epochs |", "| --- | --- | --- | --- | --- | --- |"]
    for name in dict.fromkeys(r["candidate"] for r in rows):
        mine = [r for r in rows if r["candidate"] == name]
        rel = [float(r["val_rel_mae"]) for r in mine]
        mae = [float(r["val_mae"]) for r in mine]
        spread = statistics.stdev(rel) if len(rel) > 1 else 0.0
        lines.append(f"| {name} | {len(mine)} | {statistics.mean(rel):.4f} +- {spread:.4f} | "
                     f"{statistics.mean(mae):.3f} | {float(mine[0]['val_naive_mae']):.3f} | "
                     f"{statistics.mean(float(r['epochs']) for r in mine):.1f} |")
    return "\n".join(lines)


def walk_forward(names: Sequence[str], runs_dir: str, threads: int) -> str:
    """Stage 2: a 4 x 125-day walk-forward ending 2012-01-17 (the last validation day) per candidate.

    Resumable (a candidate with a backtest.csv is not rerun); returns a Markdown summary of the pooled rows.
    """
    import pandas as pd

    from lstm_grad.backtest import backtest

    lines = ["| candidate | pooled val rel. MAE | pooled DM p | fold rel. MAE | smallest fold DM p |",
             "| --- | --- | --- | --- | --- |"]
    for name in names:
        table = Path(runs_dir) / name / "backtest.csv"
        if not table.exists():
            backtest(["--config", str(BASE), "--data.end", "2012-01-17", "--folds", "4", "--test_days", "125",
                      "--threads", str(threads), "--data.target_mode", "log_return", "--output", str(table.parent),
                      *WALKFORWARD[name]])
        rows = pd.DataFrame(read_rows(table))  # strings, old tables' mase read as rel_mae
        rows[["rel_mae", "dm_p"]] = rows[["rel_mae", "dm_p"]].astype(float)
        folds, pooled = rows[rows["fold"] != "all"], rows[rows["fold"] == "all"].iloc[0]
        lines.append(f"| {name} | {pooled['rel_mae']:.4f} | {pooled['dm_p']:.3f} | "
                     f"{' '.join(f'{v:.3f}' for v in folds['rel_mae'])} | {folds['dm_p'].min():.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/default_selection.csv")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--stage", choices=("split", "walkforward"), default="split",
                        help="split: the default split's validation span; walkforward: 4 x 125 validation days")
    parser.add_argument("--candidates", nargs="+", default=None, help="default: all of the stage's")
    parser.add_argument("--runs-dir", default="runs/select_default")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lstm_grad"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|LightningCLI's args).*")
    if args.stage == "walkforward":
        print(walk_forward(args.candidates or list(WALKFORWARD), args.runs_dir, args.threads))
        return
    out = Path(args.out)
    rows = read_rows(out)
    done = {(r["candidate"], int(r["seed"])) for r in rows}
    args.candidates = args.candidates or list(CANDIDATES)
    for name in args.candidates:
        for seed in range(args.seeds):
            if (name, seed) in done:
                continue
            row = run_candidate(name, CANDIDATES[name], seed, args.runs_dir)
            rows.append({k: str(v) for k, v in row.items()})
            out.parent.mkdir(parents=True, exist_ok=True)
            write_rows(out, rows, COLUMNS)
            print(f"{name} seed {seed}: val rel. MAE {row['val_rel_mae']:.4f}, val MAE {row['val_mae']:.3f}, "
                  f"{row['epochs']} epochs, {row['wall_s']:.0f} s", flush=True)
    print(summary([r for r in rows if r["candidate"] in args.candidates]))


if __name__ == "__main__":
    sys.exit(main())
