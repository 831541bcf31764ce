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

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lstm_grad.data.columns import is_price_like, is_silver, is_volume
from lstm_grad.data.errors import LOG, DataError

if TYPE_CHECKING:
    from lstm_grad.data.series import RawSeries

N_DEFAULT_FEATURES = 5
_DERIVED = {"log_return": 0, "volatility": 1, "momentum": 1}  # kind -> number of integer arguments


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


def default_candidates(frame: pd.DataFrame, target: str) -> tuple[list[str], list[str]]:
    """Return the 5 default features for ``frame`` and the spare list that replaces rejected ones, in order.

    OHLC files: Open, High, Low, Close, Volume (Investing.com: Price, Open, High, Low, Vol.;
    MetaTrader: OPEN .. CLOSE, TICKVOL); two or more price columns (embedded): target, another
    (silver-like first), their log returns, 20-day volatility of the target; one price column:
    price, log_return, volatility 5 and 20, 5-day momentum. Spares: the file's other volume
    columns, then log return, volatility 20 / 5 and momentum 5 / 20 of the target.
    """
    folded = {c.casefold(): c for c in frame.columns}
    volumes = [c for c in frame.columns if is_volume(c)]
    volume = volumes[0] if volumes else "Volume"  # unknown unless the file has one: replaced from the spares
    others = sorted((c for c in frame.columns if c != target and is_price_like(c)), key=lambda c: not is_silver(c))
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
    spare = volumes[1:] + [f"log_return:{target}", f"volatility:{target}:20", f"volatility:{target}:5",
                           f"momentum:{target}:5", f"momentum:{target}:20"]
    return chosen, [f for f in spare if f not in chosen]


def run_columns(raw: RawSeries, target: str, requested: list[str] | None, missing: str = "ffill",
                ffill_limit: int = 5) -> list[str]:
    """Return the columns a run reads: the target and its features' columns, the only ones cleaned.

    Named features: their columns (one line listing the file's columns when one is unknown). Default
    features: the target and every other non-sparse column that costs none of the target's rows: one
    that starts later or ends earlier than the target (another currency of a World Gold Council
    export, an empty ``Vol.`` on Investing.com's newest row), or holds a gap that ``missing`` cannot
    fill, is left out of the default choice instead, all of them in one log line.
    """
    frame, where = raw.frame, raw.where
    if requested:
        for name in requested:
            if parse_feature(name)[1] not in frame.columns:
                raise DataError(f"{where}: feature '{name}' names an unknown column; available columns: "
                                f"{list(frame.columns)}; fix data.features")
        return list(dict.fromkeys([target, *(parse_feature(name)[1] for name in requested)]))
    observed = frame[target].notna().to_numpy()
    if not observed.any():
        return [target]
    first, stop = int(np.argmax(observed)), len(observed) - int(np.argmax(observed[::-1]))
    index, observed = frame.index[first:stop], observed[first:stop]
    kept, left_out = [target], []
    for column in frame.columns:
        if column == target:
            continue
        values = frame[column].to_numpy(dtype="float64")[first:stop]
        cost = (f"empty in {int(frame[column].isna().sum())} of {len(frame)} rows" if column in raw.sparse
                else _row_cost(np.isnan(values), observed, index, missing, ffill_limit))
        (left_out.append(f"'{column}' ({cost})") if cost else kept.append(column))
    if left_out:
        LOG.info("%s: default features leave out column(s) %s: each would cost rows of target '%s' (%s .. %s); "
                 "name one in data.features to use it anyway", where, ", ".join(left_out), target,
                 f"{index[0]:%Y-%m-%d}", f"{index[-1]:%Y-%m-%d}")
    return kept


def _row_cost(isna: np.ndarray, observed: np.ndarray, index: pd.DatetimeIndex, missing: str, limit: int) -> str:
    """Say how a column missing where ``isna`` (N,) would cost rows where the target is ``observed``
    (N,), over the target's span ``index``; '' when it costs none."""
    if not isna.any():
        return ""
    if isna.all():
        return "no value while the target has values"
    if isna[0]:
        return f"first value on {index[int(np.argmax(~isna))]:%Y-%m-%d}"
    if isna[-1]:
        return f"last value on {index[len(isna) - 1 - int(np.argmax(~isna[::-1]))]:%Y-%m-%d}"
    if missing != "ffill":
        gaps = isna & observed
        return f"missing on {int(gaps.sum())} day(s) with a target price (missing={missing})" if gaps.any() else ""
    run_id = np.cumsum(~isna)
    runs = np.bincount(run_id[isna])
    if runs.max() > limit:
        start = int(np.flatnonzero(isna & (run_id == runs.argmax()))[0])
        return f"{runs.max()} missing values in a row from {index[start]:%Y-%m-%d}, more than ffill_limit={limit}"
    return ""


def choose_features(frame: pd.DataFrame, target: str, requested: list[str] | None,
                    train_rows: Callable[[pd.DataFrame], pd.DataFrame], where: str,
                    price_levels: bool = True, available: list[str] | None = None) -> tuple[list[str], pd.DataFrame]:
    """Return the feature names and their values (N, F), every one finite and non-constant on the train span.

    ``train_rows`` maps computed features to their train-span rows (it knows last_n_days and the
    split). Features the user named (``requested``) stop the run with one line when one is unknown,
    takes the log of a non-positive value, or is constant / non-finite on the train span. Default
    features (plain or derived) are replaced from the spare list of :func:`default_candidates` in
    order instead, all replacements in one log line; only an exhausted spare list stops the run.
    ``available``: the file's columns, for the messages (default: ``frame``'s).
    """
    available = list(frame.columns) if available is None else available
    if requested:
        names = list(requested)
        for name in names:
            problem = name_problem(frame, name, check_log=False)
            if problem:
                raise DataError(f"{where}: feature '{name}' {problem}; available columns: {available}; "
                                "fix data.features")
        feats, warmup = _compute(frame, names, where)
        problems = train_problems(train_rows(feats))
        if problems:
            name, problem = next(iter(problems.items()))
            raise DataError(f"{where}: feature '{name}' {problem}; drop it from data.features or choose "
                            f"others; available columns: {available}")
    else:
        names, spare = default_candidates(frame, target)
        if not price_levels:  # data.price_levels=false: scale-free defaults (see without_levels)
            names = without_levels(names)
        replaced = []
        for _ in range(len(names) + len(spare) + 1):
            bad = {n: p for n in names if (p := name_problem(frame, n, check_log=True))}
            if not bad:
                feats, warmup = _compute(frame, names, where)
                bad = train_problems(train_rows(feats))
                if not bad:
                    break
            if target in bad:  # no spare can stand in for the price itself
                raise DataError(f"{where}: target '{target}' {bad[target]}; choose another column with data.target")
            for name, problem in bad.items():
                while spare and (spare[0] in names or name_problem(frame, spare[0], check_log=True)):
                    spare.pop(0)
                if not spare:
                    raise DataError(f"{where}: default feature '{name}' {problem} and no spare feature is left "
                                    f"(replaced so far: {replaced or 'none'}); list the features with data.features")
                new = spare.pop(0)
                names[names.index(name)] = new
                replaced.append(f"'{name}' {problem}; using '{new}'")
        if replaced:
            LOG.info("%s: default feature %s", where, "; default feature ".join(replaced))
    if warmup:
        LOG.info("%s: dropped %d warm-up row(s) at the start where derived features are undefined", where, warmup)
    return names, feats


def name_problem(frame: pd.DataFrame, name: str, check_log: bool) -> str:
    """Say why ``name`` cannot be computed from ``frame`` ('' when it can): an unknown column, or
    (``check_log``) a log of a non-positive value."""
    kind, column, _ = parse_feature(name)
    if column not in frame.columns:
        return "names an unknown column"
    if check_log and kind != "column" and not (frame[column].to_numpy() > 0).all():
        return "takes the log of a non-positive value"
    return ""


def train_problems(train: pd.DataFrame) -> dict[str, str]:
    """Map each feature that is non-finite or constant (std 0) on the train rows to the reason; with
    fewer than 2 rows there is no verdict (the split itself is then too short, as ``index_windows`` says)."""
    problems: dict[str, str] = {}
    if len(train) < 2:
        return problems
    for name in train.columns:
        values = train[name].to_numpy(dtype="float64")
        if not np.isfinite(values).all():
            problems[name] = "is not finite on the train span"
        elif not values.std() > 0:
            problems[name] = "is constant on the train span"
    return problems


def require_positive(prices: pd.Series, where: str, why: str) -> None:
    """Raise naming the first non-positive price, since a log of it is undefined."""
    bad = np.flatnonzero(prices.to_numpy() <= 0)
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{where}: column '{prices.name}', row {prices.index[i]:%Y-%m-%d}: value {prices.iloc[i]} "
                        f"is not positive; {why} need positive prices: remove the row or use other settings")


def build_features(frame: pd.DataFrame, names: list[str], where: str) -> pd.DataFrame:
    """Compute ``names`` column by column and drop the warm-up rows at the front (logged)."""
    features, warmup = _compute(frame, names, where)
    if warmup:
        LOG.info("%s: dropped %d warm-up row(s) at the start where derived features are undefined", where, warmup)
    return features


def _compute(frame: pd.DataFrame, names: list[str], where: str) -> tuple[pd.DataFrame, int]:
    """Return the features without their warm-up rows (N, F) float64, and how many rows that dropped."""
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
    features = pd.DataFrame(out, index=frame.index, dtype="float64")
    warmup = int(features.isna().any(axis=1).to_numpy().argmin()) if features.isna().any().any() else 0
    return features.iloc[warmup:], warmup


def without_levels(names: list[str], days: int = 20) -> list[str]:
    """Replace each plain price column by its ``days``-row momentum; keep volumes and derived features.

    A price that trends leaves the train span's range, so a scaled price level fed to a network is
    an extrapolation at test time (measured on gold: validation MASE up to 1.6-1.8 with levels);
    ``log(p_t / p_{t-days})`` carries the recent trend without the scale.

    >>> without_levels(["gold", "silver", "log_return:gold", "Volume"])
    ['momentum:gold:20', 'momentum:silver:20', 'log_return:gold', 'Volume']
    """
    return [f"momentum:{name}:{days}" if parse_feature(name)[0] == "column" and not is_volume(name) else name
            for name in names]
