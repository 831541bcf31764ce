"""The LightningDataModule that feeds windows of the gold series to the model.

Loading and cleaning live in ``series.py`` (CSV sniffing in ``csv_formats.py``, dates in
``dates.py``, column names in ``columns.py``), feature engineering in ``features.py``, the window
Dataset in ``windows.py``; users import from :mod:`lstm_grad.data`.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lstm_grad.data.columns import default_target
from lstm_grad.data.dates import ERAS, parse_end
from lstm_grad.data.errors import LOG, DataError
from lstm_grad.data.features import N_DEFAULT_FEATURES, choose_features, parse_feature, require_positive, run_columns
from lstm_grad.data.sampler import EpochShuffle
from lstm_grad.data.series import (DUPLICATE_POLICIES, EMBEDDED, MISSING_POLICIES, check_choice, check_target,
                                   clean_series, read_series, usable_columns)
from lstm_grad.data.windows import GoldWindows, index_windows, keep_batch, persistence
from lstm_grad.errors import CheckpointError, ConfigError, UserError

__all__ = ["GoldDataModule"]

TARGET_MODES = ("level", "log_return")

class GoldDataModule(L.LightningDataModule):
    """Chronological train/val/test windows of daily gold prices, scaled on the train span only.

    A window belongs to the split holding all its target rows (its context may reach back into an
    earlier split); windows whose targets straddle a boundary are dropped. Batches are
    ``(x (B, window, F), y (B, H) scaled, anchor (B,) float64 price, index (B,) window numbers)``;
    :meth:`window_prices` reads a batch's raw float64 prices by ``index``, :meth:`inverse_transform`
    turns ``y`` or a prediction back into float64 prices and :func:`persistence` gives the naive
    forecast ``anchor`` repeated H times. The target, features and date column chosen by ``setup``
    are logged in one line and saved in the hyperparameters (``hparams.yaml``, the checkpoint).
    """

    def __init__(self, source: str = EMBEDDED, last_n_days: int | None = 1247, window: int = 60,
                 horizon: int = 1, batch_size: int = 32, target: str | None = None,
                 target_mode: str = "log_return", features: list[str] | None = None, missing: str = "ffill",
                 date_column: str | None = None, dayfirst: bool = False, duplicates: str = "error",
                 split: tuple[float, float, float] = (0.7, 0.1, 0.2), num_workers: int = 0,
                 end: str | None = None, price_levels: bool = False, era: str = "common") -> None:
        """Check the settings; reading the data waits for ``setup``.

        The defaults are the commands' default forecaster's data (``--print_config`` shows them), chosen
        on validation data only (``docs/forecasting.md``): a log-return target and scale-free inputs. The
        recipe's level target and raw-price inputs did worse there: a level target was 2.4-4.4x worse than
        persistence on the validation span, and with raw prices among the inputs a trending price leaves
        the train span's range (walk-forward validation MASE 1.26-1.79). The recipe's configs
        (``configs/{baseline,clipped,orthogonal,residual}.yaml``) pin its ``target_mode: level`` and
        ``price_levels: true``.

        Args:
            source: ``embedded`` (daily gold and silver 1977-12-30..2012-12-31) or a CSV path
                (Yahoo, yfinance, Investing.com, FRED/LBMA or plain date,price files).
            last_n_days: keep the most recent rows (trading days); 1247 is the recipe's five years; null = all.
            window: days of context per sample (the model's sequence length).
            horizon: days predicted at once (1 = next day, 30 = a 30-day direct forecast).
            batch_size: windows per batch.
            target: column to forecast; default gold / Close / Price / the only price column.
            target_mode: ``log_return`` (cumulative log return from the last observed price, rebuilt
                into prices by ``inverse_transform``) or ``level`` (scaled price, the recipe's).
            features: input columns and derived features (``log_return:<col>``,
                ``volatility:<col>:<days>``, ``momentum:<col>:<days>``); default: 5 chosen from the file.
            missing: missing-value policy: ``ffill`` (up to 5 rows), ``drop`` or ``error``.
            date_column: name of the date column when auto-detection picks the wrong one.
            dayfirst: read ambiguous dates like 02/01/2024 as 2 January.
            era: ``common``, or ``buddhist`` for a Thai file's Buddhist-era years (2563 = 2020: minus 543).
            duplicates: ``error`` on a repeated date, or ``last`` to keep the file's last row for it.
            split: train, val, test fractions of the rows (by target date), each > 0, summing to 1.
            num_workers: DataLoader worker processes (0 = load in the main process).
            end: last date to use (ISO, e.g. ``2011-12-30``, or ``2021-02-24 06:00`` for intraday bars); later
                rows are dropped before anything else (features, last_n_days, split): the data as of that
                day (a date alone keeps all of that day's bars). null = all rows.
            price_levels: with the default features (data.features null), false replaces each raw price
                column by its 20-day momentum, so inputs stay in the train span's range when the price
                trends (``features.without_levels``); true feeds the raw prices (the recipe's).
        """
        super().__init__()
        check_choice("target_mode", target_mode, TARGET_MODES)
        check_choice("missing", missing, MISSING_POLICIES)
        check_choice("duplicates", duplicates, DUPLICATE_POLICIES)
        check_choice("era", era, ERAS)
        for name, value, low in (("window", window, 1), ("horizon", horizon, 1), ("batch_size", batch_size, 1),
                                 ("num_workers", num_workers, 0), ("last_n_days", last_n_days or 1, 1)):
            if int(value) != value or value < low:
                raise ConfigError(f"data.{name}={value!r} must be an integer >= {low}")
        split = tuple(float(f) for f in split)
        if len(split) != 3 or min(split) <= 0 or abs(sum(split) - 1) > 1e-6:
            raise ConfigError(f"data.split={split} needs three fractions > 0 (train, val, test) summing to 1")
        if features is not None and len(features) == 0:
            raise ConfigError("data.features is empty; list at least one column or leave it null for the default 5")
        for spec in features or []:
            parse_feature(spec)
        self.save_hyperparameters()
        self.source, self.last_n_days, self.window, self.horizon = str(source), last_n_days, window, horizon
        self.batch_size, self.target, self.target_mode = batch_size, target, target_mode
        self.features, self.missing, self.date_column = list(features) if features else None, missing, date_column
        self.dayfirst, self.duplicates, self.split, self.num_workers = dayfirst, duplicates, split, num_workers
        self.end, self.era = parse_end(end), era
        self.price_levels = bool(price_levels)
        self.feature_names: list[str] = list(self.features or [])
        self.target_name: str | None = target
        self.date_column_name: str | None = date_column  # the file's date column, known after setup
        self.split_dates: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = {}
        self.datasets: dict[str, GoldWindows] = {}
        self._stats: dict[str, Any] | None = None
        self._raw: dict[str, Any] | None = None
        self._shuffle_seed = torch.initial_seed()  # set by seed_everything before the CLI builds us

    @property
    def n_features(self) -> int:
        """Input width, known before ``setup`` so LightningCLI can link it into the model."""
        return len(self.features) if self.features else N_DEFAULT_FEATURES

    @property
    def split_sizes(self) -> dict[str, int]:
        """Windows per split (after ``setup``)."""
        return {name: len(ds) for name, ds in self.datasets.items()}

    def setup(self, stage: str | None = None) -> None:
        """Load, build features, split by target date and fit the scalers on the train span (once)."""
        if self._raw is not None:
            return
        where = self.source
        raw = read_series(self.source, date_column=self.date_column, dayfirst=self.dayfirst, era=self.era,
                          duplicates=self.duplicates, end=self.end)
        check_target(raw, self.target)
        target = self.target or default_target(usable_columns(raw), where)
        # cleaning (row drops, fills, missing-value errors) sees only the columns this run reads
        frame = clean_series(raw, run_columns(raw, target, self.features, self.missing), target=target,
                             missing=self.missing)
        date_column = raw.date_column
        names, feats = choose_features(frame, target, self.features, self._train_rows, where, self.price_levels,
                                       available=list(raw.frame.columns))
        if self.last_n_days is not None:
            feats = feats.iloc[-self.last_n_days:]
        prices = frame[target].loc[feats.index]
        if self.target_mode == "log_return":
            require_positive(prices, where, "target_mode=log_return (log returns)")
        LOG.info("%s: target '%s' (%s), features %s, date column '%s'", where, target, self.target_mode,
                 names, date_column)
        self.feature_names, self.target_name, self.date_column_name = list(names), target, date_column
        # the resolved choices, not null, in hparams.yaml, TensorBoard and the checkpoint
        self.save_hyperparameters({**self.hparams, "target": target, "features": list(names),
                                   "date_column": date_column})
        self._raw = self._make_windows(feats, prices, where)
        if self._stats is None:
            self._stats = self._fit_stats(where)
        self._build_datasets()

    def _train_rows(self, feats: pd.DataFrame) -> pd.DataFrame:
        """Return the rows of ``feats`` that ``_make_windows`` will call the train span."""
        used = feats.iloc[-self.last_n_days:] if self.last_n_days is not None else feats
        return used.iloc[: round(self.split[0] * len(used))]

    def _make_windows(self, feats: pd.DataFrame, prices: pd.Series, where: str) -> dict[str, Any]:
        """Index every window, its raw targets and anchor, and assign it to a split by target rows."""
        return index_windows(feats, prices, self.window, self.horizon, self.split, self.target_mode, where)

    def _fit_stats(self, where: str) -> dict[str, Any]:
        """Fit feature and target mean / std (ddof=0) on the train span rows only."""
        raw = self._raw
        train = raw["features"][: raw["train_rows"]]
        mean, std = train.mean(axis=0), train.std(axis=0)
        for name, s in zip(self.feature_names, std):
            if not s > 0:
                raise DataError(f"{where}: feature '{name}' is constant on the train span; drop it from data.features")
        if self.target_mode == "level":
            y = raw["prices"][: raw["train_rows"]]
        else:
            y = raw["targets"][raw["spans"]["train"]]
        if not y.std() > 0:
            raise DataError(f"{where}: target '{self.target_name}' is constant on the train span; choose data.target")
        return {"feature_names": list(self.feature_names), "target_name": self.target_name,
                "date_column": self.date_column_name, "target_mode": self.target_mode, "window": self.window,
                "horizon": self.horizon,
                "feature_mean": mean.tolist(), "feature_std": std.tolist(),
                "target_mean": float(y.mean()), "target_std": float(y.std())}

    def _build_datasets(self) -> None:
        """Scale with the current statistics and make one ``GoldWindows`` per split."""
        raw, stats = self._raw, self._stats
        x = (raw["features"] - np.array(stats["feature_mean"])) / np.array(stats["feature_std"])
        x = torch.from_numpy(x.astype("float32"))
        y = (raw["targets"] - stats["target_mean"]) / stats["target_std"]
        y, anchor = torch.from_numpy(y.astype("float32")), torch.from_numpy(raw["anchor"])  # anchor float64
        start, actual = torch.from_numpy(raw["start"]), torch.from_numpy(raw["actual"])  # raw prices, float64
        for name, rows in raw["spans"].items():
            idx = torch.from_numpy(rows)
            dates = raw["dates"][rows]
            self.datasets[name] = GoldWindows(x, y[idx], anchor[idx], start[idx], self.window, dates, actual[idx])
            self.split_dates[name] = (dates[0], dates[-1])

    def inverse_transform(self, y_scaled: Tensor, anchor: Tensor) -> Tensor:
        """Map scaled targets (B, H) back to prices (B, H), in float64 whatever the inputs' dtype:
        level ``y*std+mean``; log_return ``anchor * exp(y*std+mean)`` since targets are
        ``log(p_{t+h} / p_t)``, h = 1..H. Any float input (a bf16 network output too) is cast to
        float64 first, so nothing is rounded after the network; read ``anchor`` from :meth:`window_prices`."""
        if self._stats is None:
            raise RuntimeError("GoldDataModule.inverse_transform needs setup() or a restored checkpoint first")
        y = y_scaled.double() * self._stats["target_std"] + self._stats["target_mean"]
        return y if self._stats["target_mode"] == "level" else anchor.double().unsqueeze(-1) * torch.exp(y)

    def window_prices(self, split: str, index: Tensor) -> tuple[Tensor, Tensor]:
        """Return the raw float64 ``anchor`` (B,) and ``actual`` (B, H) prices of windows ``index`` of a split."""
        if split not in self.datasets:
            raise RuntimeError(f"GoldDataModule.window_prices: no '{split}' windows; call setup() first")
        return self.datasets[split].prices(index)

    def persistence(self, anchor: Tensor) -> Tensor:
        """Return the naive forecast for a batch in price units: (B,) -> (B, H)."""
        return persistence(anchor, self.horizon)

    def state_dict(self) -> dict[str, Any]:
        """Save the scaler statistics (plain Python values) with the checkpoint."""
        return dict(self._stats) if self._stats is not None else {}

    def check_state(self, state: dict[str, Any], compare_features: bool = True,
                    error: type[UserError] = CheckpointError) -> None:
        """Raise one ``error`` (``DataError`` when this data module loads a state itself) naming the first data setting where a checkpoint's ``state``
        (window, horizon, target mode, and with ``compare_features`` the features) differs from this
        data module's."""
        for key in ("window", "horizon", "target_mode"):
            if key in state and state[key] != getattr(self, key):
                raise error(f"checkpoint was made with data.{key}={state[key]!r} but this run has "
                                      f"data.{key}={getattr(self, key)!r}; use the checkpoint's data settings "
                                      "or train from scratch (no --ckpt_path)")
        saved = state.get("feature_names")
        if compare_features and self.feature_names and saved and list(self.feature_names) != list(saved):
            raise error(f"checkpoint was made with features {saved} but this run has "
                                  f"{list(self.feature_names)}; set data.features to the checkpoint's or train "
                                  "from scratch")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore scaler statistics; Lightning calls this after ``setup``, so rescale the data then."""
        if not state_dict:
            return
        self.check_state(state_dict, compare_features=self._raw is not None, error=DataError)
        self._stats = dict(state_dict)
        self.feature_names, self.target_name = list(state_dict["feature_names"]), state_dict["target_name"]
        self.date_column_name = state_dict.get("date_column", self.date_column_name)
        if self._raw is not None:
            self._build_datasets()

    def _loader(self, name: str, shuffle: bool = False) -> DataLoader:
        if name not in self.datasets:
            raise RuntimeError(f"GoldDataModule.{name}_dataloader needs setup() first")
        sampler = None
        if shuffle and not (self.trainer is not None and self.trainer.world_size > 1):  # DDP: DistributedSampler
            sampler, shuffle = EpochShuffle(len(self.datasets[name]), self._shuffle_seed), False  # exact resume
        return DataLoader(self.datasets[name], batch_size=self.batch_size, shuffle=shuffle, sampler=sampler,
                          collate_fn=keep_batch, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move our batches, a tuple of tensors ``(x, y, anchor, index)``, tensor by tensor; anything else
        as Lightning does. Lightning's default walks any collection with ``apply_to_collection`` (its
        ``move_data_to_device``): 0.3 ms of Python a batch under cProfile on a 2-core CPU, 0.5 % of a
        3-epoch fit of item 1 of ``python -m benchmarks.bench``. Copies are non-blocking except to the CPU
        and MPS, as Lightning's (``lightning.fabric.utilities.apply_func._BLOCKING_DEVICE_TYPES``)."""
        if isinstance(batch, tuple) and all(isinstance(t, Tensor) for t in batch):
            return tuple(t.to(device, non_blocking=device.type not in ("cpu", "mps")) for t in batch)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_target_dates(self) -> np.ndarray:
        """Return the dates of the predicted days of the predict (test) span as a (N, H) array."""
        dataset = self.datasets["test"]
        rows = dataset.start.numpy()[:, None] + self.window - 1 + np.arange(1, self.horizon + 1)  # (N, H)
        return self._raw["index"].to_numpy()[rows]

    def predict_dataloader(self) -> DataLoader:
        """Predict over the test span, in date order (``datasets['test'].target_dates``)."""
        return self._loader("test")

    def row_dates(self) -> pd.DatetimeIndex:
        """Return the dates of the rows ``setup`` kept (after data.end, the features' warm-up and
        last_n_days), in order: (N,). Walk-forward folds are placed on these rows."""
        if self._raw is None:
            raise RuntimeError("GoldDataModule.row_dates needs setup() first")
        return pd.DatetimeIndex(self._raw["index"])
