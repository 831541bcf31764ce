"""Choose and compute model input features from a clean price frame.

Feature names (case-sensitive column names, as ``load_series`` returns them):

- ``<col>``: the column itself, e.g. ``gold``, ``Close``, ``Vol.``.
- ``log_return:<col>``: ``log(p_t / p_{t-1})``; undefined on the first row.
- ``volatility:<col>:<days>``: rolling standard deviation (ddof=1) of the last ``<days>`` daily
  log returns; undefined on the first ``<days>`` rows.
- ``momentum:<col>:<days>``: ``log(p_t / p_{t-days})``, the log return over ``<days>`` rows.

Rows where a derived feature is still undefined (the warm-up) are dropped from the front.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lstm_grad.data_errors import LOG, DataError

N_DEFAULT_FEATURES = 5
_DERIVED = {"log_return": 0, "volatility": 1, "momentum": 1}  # kind -> number of integer arguments
_VOLUME_NAMES = ("volume", "vol.", "vol")


def parse_feature(spec: str) -> tuple[str, str, int]:
    """Split a feature name into ``(kind, column, days)``; kind ``column`` for a plain column."""
    kind, _, rest = spec.partition(":")
    if kind not in _DERIVED or not rest:
        return "column", spec, 0
    if _DERIVED[kind] == 0:
        return kind, rest, 1
    column, _, days = rest.rpartition(":")
    if not column or not days.isdigit() or int(days) < 2:
        raise DataError(f"feature '{spec}': write {kind}:<column>:<days> with days >= 2, e.g. {kind}:Close:20")
    return kind, column, int(days)


def default_target(frame: pd.DataFrame) -> str:
    """Pick the price to forecast: gold, Close, Price, a ``Close/Last``-like column, LBMA's USD (PM)
    fix, or the only column."""
    folded = {c.casefold(): c for c in frame.columns}
    for name in ("gold", "close", "price"):
        if name in folded:
            return folded[name]
    for word in ("close", "price", "usd (pm)", "usd pm", "usd"):
        hits = [c for key, c in folded.items() if word in key and "adj" not in key]
        if hits:
            return hits[0]
    if frame.shape[1] == 1:
        return str(frame.columns[0])
    raise DataError(f"cannot tell which column is the price among {list(frame.columns)}; set data.target")


def default_features(frame: pd.DataFrame, target: str, train: pd.DataFrame, where: str) -> list[str]:
    """Return the 5 default features, replacing an empty or train-constant column by a derived one.

    OHLC files: Open, High, Low, Close, Volume (Investing.com: Price, Open, High, Low, Vol.);
    two or more price columns (embedded): target, other, their log returns, 20-day volatility of
    the target; one price column: price, log_return, volatility 5 and 20, 5-day momentum.
    """
    folded = {c.casefold(): c for c in frame.columns}
    volume = next((folded[v] for v in _VOLUME_NAMES if v in folded), "Volume")
    others = [c for c in frame.columns if c != target and c.casefold() not in _VOLUME_NAMES]
    if all(k in folded for k in ("open", "high", "low")):
        close = folded.get("close", target)
        first = [close] if "close" not in folded and "price" in folded else []
        chosen = first + [folded["open"], folded["high"], folded["low"]] + ([] if first else [close]) + [volume]
    elif others:
        other = others[0]
        chosen = [target, other, f"log_return:{target}", f"log_return:{other}", f"volatility:{target}:20"]
    else:
        chosen = [target, f"log_return:{target}", f"volatility:{target}:5", f"volatility:{target}:20",
                  f"momentum:{target}:5"]
    spare = [f for f in (f"log_return:{target}", f"volatility:{target}:20", f"volatility:{target}:5",
                         f"momentum:{target}:5", f"momentum:{target}:20") if f not in chosen]
    for k, name in enumerate(chosen):
        problem = _column_problem(train, name)
        if problem:
            chosen[k] = spare.pop(0)
            LOG.info("%s: default feature '%s' %s; using '%s' instead", where, name, problem, chosen[k])
    return chosen


def check_features(frame: pd.DataFrame, names: list[str], train: pd.DataFrame, where: str) -> None:
    """Refuse an explicit feature whose column is unknown, empty or constant on the train span."""
    for name in names:
        problem = _column_problem(train, name)
        if problem:
            raise DataError(f"{where}: feature '{name}' {problem}; available columns: {list(frame.columns)}; "
                            "fix data.features")


def _column_problem(train: pd.DataFrame, name: str) -> str:
    """Say why a column cannot be a feature ('' when it can), judged on the train span rows."""
    kind, column, _ = parse_feature(name)
    if column not in train.columns:
        return "names an unknown column"
    values = train[column]
    if kind == "column" and (values.isna().all() or values.nunique() <= 1):
        return "is empty or constant on the train span"
    return ""


def require_positive(prices: pd.Series, where: str, why: str) -> None:
    """Raise naming the first non-positive price, since a log of it is undefined."""
    bad = np.flatnonzero(prices.to_numpy() <= 0)
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{where}: column '{prices.name}', row {prices.index[i]:%Y-%m-%d}: value {prices.iloc[i]} "
                        f"is not positive; {why} need positive prices: remove the row or use other settings")


def build_features(frame: pd.DataFrame, names: list[str], where: str) -> pd.DataFrame:
    """Compute ``names`` column by column and drop the warm-up rows at the front (logged)."""
    out = {}
    for name in names:
        kind, column, days = parse_feature(name)
        if column not in frame.columns:
            raise DataError(f"{where}: feature '{name}' names unknown column '{column}'; "
                            f"available: {list(frame.columns)}; fix data.features")
        prices = frame[column]
        if kind == "column":
            out[name] = prices
            continue
        require_positive(prices, where, f"feature '{name}' (log returns)")
        logp = np.log(prices)
        if kind == "log_return":
            out[name] = logp.diff()
        elif kind == "volatility":
            out[name] = logp.diff().rolling(days).std()
        else:
            out[name] = logp.diff(days)
    features = pd.DataFrame(out, index=frame.index)
    warmup = int(features.isna().any(axis=1).to_numpy().argmin()) if features.isna().any().any() else 0
    if warmup:
        LOG.info("%s: dropped %d warm-up row(s) at the start where derived features are undefined", where, warmup)
    return features.iloc[warmup:]
