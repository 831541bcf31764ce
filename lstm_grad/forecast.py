"""Forecast past the data's last day from a checkpoint alone.

``python -m lstm_grad.forecast --ckpt_path last [--data.source my_gold.csv] [--output FILE]``

The checkpoint carries everything: the model's hyperparameters and weights, the data settings
(window, horizon, target mode, loader options), the feature list and the train-span scaler. The
source (by default the one the model was trained on; usually the user's CSV, updated since) must
yield the same features; its last ``window`` rows are scaled with the checkpoint's statistics and
the model predicts the next H trading days after its last date (:mod:`lstm_grad.data.calendar`).
Writes ``FILE`` (default ``<run dir>/forecast.csv``), a PNG beside it, and prints a small table.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from lstm_grad.training.compat import DATA_STATE_KEY, read_checkpoint
from lstm_grad.training.run_dirs import resolve_checkpoint
from lstm_grad.training.console import release_logs
from lstm_grad.training.entry import main_of
from lstm_grad.data import DataError, GoldDataModule, load_series
from lstm_grad.errors import CheckpointError, ConfigError
from lstm_grad.data.features import build_features, parse_feature
from lstm_grad.forecaster.intervals import trailing_scale
from lstm_grad.forecaster.module import CALIBRATION_KEY, LSTMForecaster
from lstm_grad.data.calendar import TradingCalendar, infer_trading_calendar, next_trading_days

LOG = logging.getLogger("lstm_grad.forecast")
PLOT_DAYS = 120  # observed days shown before the forecast


class LastWindow(NamedTuple):
    """The model's input at the forecast origin: ``x`` (1, window, F) float32 scaled with the
    checkpoint's statistics, ``last_price`` (float64, price units), ``last_date``, the observed
    target prices ``history`` (float64 Series by date) and the series' own trading ``calendar``."""

    x: torch.Tensor
    last_price: float
    last_date: pd.Timestamp
    history: pd.Series
    calendar: TradingCalendar


def load_forecaster(path: str | Path) -> tuple[LSTMForecaster, GoldDataModule]:
    """Rebuild the model (eval mode, checkpoint weights) and its data module (checkpoint scaler) from ``path``."""
    checkpoint = read_checkpoint(path)
    model_hp = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    data_hp = {k: v for k, v in (checkpoint.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
    stats = checkpoint.get(DATA_STATE_KEY)
    if not model_hp or not data_hp or not stats:
        raise CheckpointError(f"{path}: not a checkpoint of python -m lstm_grad.fit (no model / data settings or scaler); "
                              "use a checkpoint from a run of lstm_grad")
    model = LSTMForecaster(**model_hp)
    model.load_state_dict(checkpoint["state_dict"])
    model.calibration = dict(checkpoint.get(CALIBRATION_KEY) or {})
    if not model.calibration:
        LOG.warning("%s: no calibration saved (a checkpoint from before validation or an older version): the "
                    "network's forecast is not shrunk and has no intervals", path)
    data = GoldDataModule(**data_hp)
    data.load_state_dict(stats)
    return model.eval(), data


def warmup_rows(features: Sequence[str]) -> int:
    """Rows a derived feature needs before its first value: 1 for a log return, ``days`` otherwise.

    >>> warmup_rows(["gold", "log_return:gold", "volatility:gold:20"])
    20
    """
    return max((days for _, _, days in map(parse_feature, features)), default=0)


def last_window(data: GoldDataModule, source: str | None = None, end: str | None = None) -> LastWindow:
    """Build the input for a forecast from ``source`` (default ``data.source``), up to ``end`` if given.

    Uses the data module's loader settings and restored statistics (``data.state_dict()``). Raises
    DataError naming every column the checkpoint's features need that ``source`` lacks, or how many
    rows a window needs (``window`` + the longest feature warm-up) when the source has fewer.
    """
    stats = data.state_dict()
    names, target, window = list(stats["feature_names"]), stats["target_name"], int(stats["window"])
    where = str(source or data.source)
    needed = list(dict.fromkeys([target, *(parse_feature(name)[1] for name in names)]))
    # only the columns the model reads are cleaned: an empty cell elsewhere drops no row; a date-only end keeps its day
    frame = load_series(where, date_column=data.date_column, dayfirst=data.dayfirst, missing=data.missing,
                        duplicates=data.duplicates, era=data.era, columns=needed, end=end)
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing} that the checkpoint needs (target '{target}', features "
                        f"{names}); this file has {frame.attrs['file_columns']}: use a file of the training data's layout")
    rows = window + warmup_rows(names)
    if len(frame) < rows:
        raise DataError(f"{where}: {len(frame)} row(s); a forecast needs at least {rows} (data.window={window} plus "
                        f"{rows - window} warm-up row(s) of the derived features)")
    features = build_features(frame, names, where).iloc[-window:]
    scaled = (features.to_numpy(dtype="float64") - np.array(stats["feature_mean"])) / np.array(stats["feature_std"])
    if not np.isfinite(scaled).all():
        raise DataError(f"{where}: the last {window} rows give non-finite features; check those rows of the file")
    history = frame[target].astype("float64")
    return LastWindow(torch.from_numpy(scaled.astype("float32")).unsqueeze(0), float(history.iloc[-1]),
                      history.index[-1], history, infer_trading_calendar(history.index, where))


def forecast_frame(model: LSTMForecaster, data: GoldDataModule, source: str | None = None,
                   end: str | None = None) -> pd.DataFrame:
    """Predict the next H trading days after the source's last date; float64 prices.

    Columns: ``date`` (ISO), ``step`` (1..H), ``forecast`` (the network's move shrunk toward persistence by
    the checkpoint's weights), ``lower_80, upper_80, lower_95, upper_95`` (conformal, calibrated on the
    validation span; NaN without a calibration), ``persistence`` (the last price), ``drift`` (last price +
    h x the train span's mean daily change), ``last_date`` (ISO), ``last_price``. ``history`` (observed
    prices) and the calibration's ``method`` / ``calib_n`` are in ``frame.attrs``.
    """
    inputs = last_window(data, source, end)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        scaled = model(inputs.x.to(model.device)).cpu().double()  # (1, H) scaled targets
    model.train(was_training)
    anchor = torch.tensor([inputs.last_price], dtype=torch.float64)
    prices = model.shrink_prices(data.inverse_transform(scaled, anchor), anchor)  # (1, H) price units, float64
    history = inputs.history.to_numpy()
    bounds = model.interval_bounds(prices.numpy(), trailing_scale(history, [len(history) - 1]))
    horizon = prices.shape[1]
    slope = model.calibration.get("drift_slope", np.nan)
    drift = inputs.last_price + slope * np.arange(1, horizon + 1)
    dates = next_trading_days(inputs.last_date, horizon, inputs.calendar)
    stamp = inputs.calendar.date_format  # "%Y-%m-%d", with the time of day for intraday bars
    frame = pd.DataFrame({"date": dates.strftime(stamp), "step": np.arange(1, horizon + 1),
                          "forecast": prices[0].numpy(), **{k: v[0] for k, v in bounds.items()},
                          "persistence": inputs.last_price, "drift": drift,
                          "last_date": f"{inputs.last_date:{stamp}}", "last_price": inputs.last_price})
    frame.attrs.update(history=inputs.history, method=model.calibration.get("method", "none"),
                       calib_n=model.calibration.get("calib_n", 0))
    return frame


def forecast_table(frame: pd.DataFrame, max_rows: int = 10) -> str:
    """Markdown table of the forecast with its 80 % / 95 % intervals and drift; longer horizons show the
    first and last steps.

    >>> print(forecast_table(pd.DataFrame({"step": [1], "date": ["2024-01-08"], "forecast": [2051.25],
    ...     "lower_80": [2031.0], "upper_80": [2071.5], "lower_95": [2020.0], "upper_95": [2082.5],
    ...     "persistence": [2049.5], "drift": [2050.0]})))
    | step | date       |   forecast | 80 % interval     | 95 % interval     | persistence |      drift |
    | ---- | ---------- | ---------- | ----------------- | ----------------- | ----------- | ---------- |
    |    1 | 2024-01-08 |   2051.250 | 2031.00..2071.50  | 2020.00..2082.50  |    2049.500 |   2050.000 |
    """
    shown = frame if len(frame) <= max_rows else pd.concat([frame.head(max_rows // 2), frame.tail(max_rows // 2)])
    lines = ["| step | date       |   forecast | 80 % interval     | 95 % interval     | persistence |      drift |",
             "| ---- | ---------- | ---------- | ----------------- | ----------------- | ----------- | ---------- |"]
    for k, row in enumerate(shown.itertuples()):
        if len(frame) > max_rows and k == max_rows // 2:
            lines.append("|  ... |            |            |                   |                   |             |            |")
        band = {c: f"{getattr(row, f'lower_{c}'):.2f}..{getattr(row, f'upper_{c}'):.2f}"
                if np.isfinite([getattr(row, f"lower_{c}"), getattr(row, f"upper_{c}")]).all() else "unbounded"
                for c in ("80", "95")}
        lines.append(f"| {row.step:>4} | {row.date} | {row.forecast:>10.3f} | {band['80']:<17} | {band['95']:<17} | "
                     f"{row.persistence:>11.3f} | {row.drift:>10.3f} |")
    return "\n".join(lines)


def forecast_line(frame: pd.DataFrame) -> str:
    """One line for ``fit``'s report: the model's next trading day(s) next to persistence.

    >>> print(forecast_line(pd.DataFrame({"step": [1], "date": ["2013-01-01"], "forecast": [917.5],
    ...                                   "persistence": [915.88], "last_date": ["2012-12-31"]})))
    forecast after 2012-12-31: 2013-01-01 model 917.50 vs persistence 915.88
    """
    first, last = frame.iloc[0], frame.iloc[-1]
    band = lambda row: (f" (95 %: {row['lower_95']:.2f}..{row['upper_95']:.2f})"  # noqa: E731
                        if np.isfinite(row.get("lower_95", np.nan)) else "")
    steps = f"{first['date']} model {first['forecast']:.2f}{band(first)}"
    if len(frame) > 1:
        steps += f" ... {last['date']} (step {last['step']}) model {last['forecast']:.2f}{band(last)}"
    drift = f", drift {last['drift']:.2f}" if np.isfinite(last.get("drift", np.nan)) else ""
    return f"forecast after {first['last_date']}: {steps}{drift} vs persistence {first['persistence']:.2f}"


def forecast_figure(frame: pd.DataFrame, history: pd.Series, title: str = "") -> Any:
    """Plot the last ~120 observed prices, the forecast with its 80 % / 95 % fan, drift and persistence."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shown = history.iloc[-PLOT_DAYS:]
    dates = pd.to_datetime(frame["date"])
    figure, axis = plt.subplots(figsize=(10, 4))
    axis.plot(shown.index, shown.to_numpy(), color="black", linewidth=1.2, label="observed")
    for level, alpha in (("95", 0.15), ("80", 0.3)):  # the fan: widest first, from the last observed price
        if f"lower_{level}" in frame and np.isfinite(frame[f"lower_{level}"]).all():
            axis.fill_between([shown.index[-1], *dates], [shown.iloc[-1], *frame[f"lower_{level}"]],
                              [shown.iloc[-1], *frame[f"upper_{level}"]], color="tab:orange", alpha=alpha,
                              linewidth=0, label=f"{level} % interval (conformal)")
    axis.plot([shown.index[-1], *dates], [shown.iloc[-1], *frame["forecast"]], color="tab:orange",
              marker="o", markersize=3, linewidth=1.2, label="model forecast")
    if "drift" in frame and np.isfinite(frame["drift"]).all():
        axis.plot([shown.index[-1], *dates], [shown.iloc[-1], *frame["drift"]], color="tab:blue", linestyle=":",
                  linewidth=0.9, label="drift")
    axis.plot([shown.index[-1], dates.iloc[-1]], [shown.iloc[-1]] * 2, color="tab:gray", linestyle="--",
              linewidth=0.9, label="persistence (last price)")
    axis.axvline(shown.index[-1], color="tab:gray", linewidth=0.6)
    axis.set_ylabel("price")
    axis.set_title(title or f"Forecast after {shown.index[-1]:%Y-%m-%d}")
    axis.legend(loc="best")
    figure.autofmt_xdate()
    figure.tight_layout()
    plt.close(figure)
    return figure


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lstm_grad.forecast", description=__doc__.splitlines()[0],
                                     exit_on_error=False)
    parser.add_argument("--ckpt_path", default="last",
                        help="checkpoint file, or 'last' / 'best' of the newest run under --save_dir (default: last)")
    parser.add_argument("--save_dir", default="runs", help="where 'last' / 'best' look for runs (default: runs)")
    parser.add_argument("--data.source", dest="source", default=None,
                        help="CSV (or 'embedded') to forecast from; default: the checkpoint's training source")
    parser.add_argument("--data.end", dest="end", default=None, help="forecast as of this date (ISO); default: the last row")
    parser.add_argument("--output", default=None, help="forecast CSV (default: <run dir>/forecast.csv); a PNG goes beside it")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise argparse.ArgumentError(None, f"unrecognized arguments: {' '.join(unknown)}")
    return args


def forecast_main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Run the command: resolve and load the checkpoint, forecast, write CSV + PNG, print the table."""
    args = parse_args(argv)
    path = resolve_checkpoint(args.ckpt_path, args.save_dir)
    model, data = load_forecaster(path)
    LOG.info("forecasting with %s (target %s, %s, window %d, horizon %d)", path, data.state_dict()["target_name"],
             data.target_mode, data.window, data.horizon)
    frame = forecast_frame(model, data, args.source, args.end)
    release_logs()  # the input was good: show the held log lines (calendar choice ...) before the table
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    output = Path(args.output) if args.output else run_dir / "forecast.csv"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(output, index=False)  # full float64 precision (shortest repr that round-trips)
        forecast_figure(frame, frame.attrs["history"]).savefig(output.with_suffix(".png"), dpi=120)
    except OSError as error:  # a folder the user cannot write to, a full disk
        raise ConfigError(f"--output {output}: cannot write the forecast ({error.strerror or error}); "
                          "choose another --output") from None
    print(f"forecast from {frame['last_date'].iloc[0]} (last price {frame['last_price'].iloc[0]:.2f}, "
          f"source {args.source or data.source}); checkpoint {path}")
    print(forecast_table(frame))
    if frame.attrs.get("calib_n"):
        few = " (unbounded: too few windows for that level, it needs ceil((n + 1) x level) <= n)" if not np.isfinite(
            frame[["lower_95", "upper_95"]].to_numpy()).all() else ""
        print(f"intervals: {frame.attrs['method']} ({frame.attrs['calib_n']} validation windows){few}")
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return frame


main = main_of(forecast_main)


if __name__ == "__main__":
    main()
