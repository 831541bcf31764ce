"""Windows over the gold series and the LightningDataModule that feeds them to the model.

Loading and cleaning live in ``series.py`` (CSV sniffing in ``csv_formats.py``), feature
engineering in ``features.py``; this module re-exports :func:`load_series` and :class:`DataError`
so that ``from lstm_grad.data import ...`` is the one import users need.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lstm_grad.checkpoints import EpochShuffle
from lstm_grad.data_errors import LOG, DataError
from lstm_grad.features import (N_DEFAULT_FEATURES, build_features, check_features, default_features,
                                default_target, parse_feature, require_positive)
from lstm_grad.series import DUPLICATE_POLICIES, EMBEDDED, MISSING_POLICIES, check_choice, load_series

__all__ = ["DataError", "GoldDataModule", "GoldWindows", "keep_batch", "load_series", "persistence"]

TARGET_MODES = ("level", "log_return")
SPLITS = ("train", "val", "test")
Batch = tuple[Tensor, Tensor, Tensor]


def keep_batch(batch: Batch) -> Batch:
    """Collate nothing: ``GoldWindows.__getitems__`` already returns whole batch tensors."""
    return batch


def persistence(anchor: Tensor, horizon: int) -> Tensor:
    """Return the naive forecast (last observed price for every future day) as (B, H) prices."""
    return anchor.unsqueeze(-1).expand(*anchor.shape, horizon)


class GoldWindows(Dataset):
    """Windows of one standardised feature tensor, with scaled targets and price anchors.

    ``features`` (N, F) float32; window ``i`` is ``features[start[i] : start[i] + window]``, read
    from a strided view made once with ``Tensor.unfold`` (no copy per window). ``targets``
    (N_windows, H) are scaled; ``anchor`` (N_windows,) is the last observed target price (price
    units, at the window's last context day), which is also the persistence forecast.
    ``target_dates`` holds each window's first target date (for prediction CSVs).
    """

    def __init__(self, features: Tensor, targets: Tensor, anchor: Tensor, start: Tensor, window: int,
                 target_dates: Sequence | None = None) -> None:
        super().__init__()
        if features.ndim != 2 or targets.ndim != 2 or anchor.ndim != 1 or start.ndim != 1:
            raise ValueError("GoldWindows needs features (N, F), targets (W, H), anchor (W,), start (W,)")
        if not len(targets) == len(anchor) == len(start):
            raise ValueError(f"GoldWindows: {len(targets)} targets, {len(anchor)} anchors, {len(start)} starts")
        if len(start) and (int(start.min()) < 0 or int(start.max()) + window > len(features)):
            raise ValueError(f"GoldWindows: a window of {window} rows runs past the {len(features)} feature rows")
        self.features = features
        self.window = window
        # N rows, T window, F features: (N, F) -> unfold (N - T + 1, F, T) -> (N - T + 1, T, F), a view
        self.windows = features.unfold(0, window, 1).transpose(1, 2)
        self.targets, self.anchor, self.start = targets, anchor, start.long()
        self.target_dates = list(target_dates) if target_dates is not None else []

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, i: int) -> Batch:
        return self.windows[self.start[i]], self.targets[i], self.anchor[i]

    def __getitems__(self, indices: list[int]) -> Batch:
        """Gather a batch with one indexing op per tensor; DataLoader calls this when present."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.windows[self.start[idx]], self.targets[idx], self.anchor[idx]


class GoldDataModule(L.LightningDataModule):
    """Chronological train/val/test windows of daily gold prices, scaled on the train span only.

    A window belongs to the split holding all its target rows (its context may reach back into an
    earlier split); windows whose targets straddle a boundary are dropped. Batches are
    ``(x (B, window, F), y (B, H) scaled, anchor (B,) price)``; :meth:`inverse_transform` turns
    ``y`` back into prices and :func:`persistence` gives the naive forecast ``anchor`` repeated H times.
    """

    def __init__(self, source: str = EMBEDDED, last_n_days: int | None = 1247, window: int = 60,
                 horizon: int = 1, batch_size: int = 32, target: str | None = None,
                 target_mode: str = "level", features: list[str] | None = None, missing: str = "ffill",
                 date_column: str | None = None, dayfirst: bool = False, duplicates: str = "error",
                 split: tuple[float, float, float] = (0.7, 0.1, 0.2), num_workers: int = 0) -> None:
        """Check the settings; reading the data waits for ``setup``.

        Args:
            source: ``embedded`` (daily gold and silver 1977-12-30..2012-12-31) or a CSV path
                (Yahoo, yfinance, Investing.com, FRED/LBMA or plain date,price files).
            last_n_days: keep the most recent rows (trading days); 1247 is the recipe's five years; null = all.
            window: days of context per sample (the model's sequence length).
            horizon: days predicted at once (1 = next day, 30 = a 30-day direct forecast).
            batch_size: windows per batch.
            target: column to forecast; default gold / Close / Price / the only price column.
            target_mode: ``level`` (scaled price) or ``log_return`` (cumulative log return from the
                last observed price, rebuilt into prices by ``inverse_transform``).
            features: input columns and derived features (``log_return:<col>``,
                ``volatility:<col>:<days>``, ``momentum:<col>:<days>``); default: 5 chosen from the file.
            missing: missing-value policy: ``ffill`` (up to 5 rows), ``drop`` or ``error``.
            date_column: name of the date column when auto-detection picks the wrong one.
            dayfirst: read ambiguous dates like 02/01/2024 as 2 January.
            duplicates: ``error`` on a repeated date, or ``last`` to keep the file's last row for it.
            split: train, val, test fractions of the rows (by target date), each > 0, summing to 1.
            num_workers: DataLoader worker processes (0 = load in the main process).
        """
        super().__init__()
        check_choice("target_mode", target_mode, TARGET_MODES)
        check_choice("missing", missing, MISSING_POLICIES)
        check_choice("duplicates", duplicates, DUPLICATE_POLICIES)
        for name, value, low in (("window", window, 1), ("horizon", horizon, 1), ("batch_size", batch_size, 1),
                                 ("num_workers", num_workers, 0), ("last_n_days", last_n_days or 1, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"data.{name}={value!r} must be an integer >= {low}")
        split = tuple(float(f) for f in split)
        if len(split) != 3 or min(split) <= 0 or abs(sum(split) - 1) > 1e-6:
            raise ValueError(f"data.split={split} needs three fractions > 0 (train, val, test) summing to 1")
        if features is not None and len(features) == 0:
            raise ValueError("data.features is empty; list at least one column or leave it null for the default 5")
        for spec in features or []:
            parse_feature(spec)
        self.save_hyperparameters()
        self.source, self.last_n_days, self.window, self.horizon = str(source), last_n_days, window, horizon
        self.batch_size, self.target, self.target_mode = batch_size, target, target_mode
        self.features, self.missing, self.date_column = list(features) if features else None, missing, date_column
        self.dayfirst, self.duplicates, self.split, self.num_workers = dayfirst, duplicates, split, num_workers
        self.feature_names: list[str] = list(self.features or [])
        self.target_name: str | None = target
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
        frame = load_series(self.source, date_column=self.date_column, target=self.target, dayfirst=self.dayfirst,
                            missing=self.missing, duplicates=self.duplicates)
        target = self.target or default_target(frame)
        n_span = min(len(frame), self.last_n_days or len(frame))
        train_span = frame.iloc[len(frame) - n_span:][: max(1, round(self.split[0] * n_span))]
        if self.features:
            check_features(frame, self.features, train_span, where)
            names = self.features
        else:
            names = default_features(frame, target, train_span, where)
        feats = build_features(frame, names, where)
        if self.last_n_days is not None:
            feats = feats.iloc[-self.last_n_days:]
        prices = frame[target].loc[feats.index]
        if self.target_mode == "log_return":
            require_positive(prices, where, "target_mode=log_return (log returns)")
        self.feature_names, self.target_name = list(names), target
        self._raw = self._make_windows(feats, prices, where)
        if self._stats is None:
            self._stats = self._fit_stats(where)
        self._build_datasets()

    def _make_windows(self, feats: pd.DataFrame, prices: pd.Series, where: str) -> dict[str, Any]:
        """Index every window, its raw targets and anchor, and assign it to a split by target rows."""
        n, window, horizon = len(feats), self.window, self.horizon
        sizes = [round(f * n) for f in self.split[:2]]
        bounds = np.array([0, sizes[0], sizes[0] + sizes[1], n])
        start = np.arange(max(0, n - window - horizon + 1))
        anchor_row = start + window - 1
        target_rows = anchor_row[:, None] + np.arange(1, horizon + 1)  # (W, H)
        p = prices.to_numpy(dtype="float64")
        if self.target_mode == "level":
            targets = p[target_rows]
        else:
            targets = np.log(p[target_rows]) - np.log(p[anchor_row])[:, None]
        spans = {}
        for k, name in enumerate(SPLITS):
            member = (target_rows[:, 0] >= bounds[k]) & (target_rows[:, -1] < bounds[k + 1])
            spans[name] = np.flatnonzero(member)
            rows = int(bounds[k + 1] - bounds[k])
            if not len(spans[name]):
                need = window + horizon if k == 0 else horizon
                raise DataError(f"{where}: the {name} split has {rows} rows and no complete window; it needs "
                                f">= {need} rows (window + horizon = {window + horizon} for train); use more data "
                                "(data.last_n_days), a smaller data.window / data.horizon or other data.split")
        dropped = len(start) - sum(len(s) for s in spans.values())
        if dropped:
            LOG.info("%s: dropped %d window(s) whose %d target days straddle a split boundary", where, dropped, horizon)
        return {"features": feats.to_numpy(dtype="float64"), "targets": targets, "start": start, "spans": spans,
                "anchor": p[anchor_row], "dates": feats.index[target_rows[:, 0]] if len(start) else feats.index[:0],
                "train_rows": int(bounds[1]), "prices": p, "index": feats.index}

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
                "target_mode": self.target_mode, "window": self.window, "horizon": self.horizon,
                "feature_mean": mean.tolist(), "feature_std": std.tolist(),
                "target_mean": float(y.mean()), "target_std": float(y.std())}

    def _build_datasets(self) -> None:
        """Scale with the current statistics and make one ``GoldWindows`` per split."""
        raw, stats = self._raw, self._stats
        x = (raw["features"] - np.array(stats["feature_mean"])) / np.array(stats["feature_std"])
        x = torch.from_numpy(x.astype("float32"))
        y = (raw["targets"] - stats["target_mean"]) / stats["target_std"]
        y, anchor = torch.from_numpy(y.astype("float32")), torch.from_numpy(raw["anchor"].astype("float32"))
        start = torch.from_numpy(raw["start"])
        for name, rows in raw["spans"].items():
            idx = torch.from_numpy(rows)
            dates = raw["dates"][rows]
            self.datasets[name] = GoldWindows(x, y[idx], anchor[idx], start[idx], self.window, dates)
            self.split_dates[name] = (dates[0], dates[-1])

    def inverse_transform(self, y_scaled: Tensor, anchor: Tensor) -> Tensor:
        """Map scaled targets (B, H) back to prices (B, H): level ``y*std+mean``; log_return
        ``anchor * exp(y*std+mean)`` since targets are ``log(p_{t+h} / p_t)``, h = 1..H."""
        if self._stats is None:
            raise RuntimeError("GoldDataModule.inverse_transform needs setup() or a restored checkpoint first")
        y = y_scaled * self._stats["target_std"] + self._stats["target_mean"]
        return y if self._stats["target_mode"] == "level" else anchor.unsqueeze(-1) * torch.exp(y)

    def persistence(self, anchor: Tensor) -> Tensor:
        """Return the naive forecast for a batch in price units: (B,) -> (B, H)."""
        return persistence(anchor, self.horizon)

    def state_dict(self) -> dict[str, Any]:
        """Save the scaler statistics (plain Python values) with the checkpoint."""
        return dict(self._stats) if self._stats is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore scaler statistics; Lightning calls this after ``setup``, so rescale the data then."""
        if not state_dict:
            return
        for key in ("target_mode", "window", "horizon"):
            if state_dict[key] != getattr(self, key):
                raise DataError(f"checkpoint has data.{key}={state_dict[key]!r} but this run has {getattr(self, key)!r}; "
                                "use the checkpoint's data settings")
        if self._raw is not None and state_dict["feature_names"] != self.feature_names:
            raise DataError(f"checkpoint features {state_dict['feature_names']} differ from this data's "
                            f"{self.feature_names}; set data.features to the checkpoint's")
        self._stats = dict(state_dict)
        self.feature_names, self.target_name = list(state_dict["feature_names"]), state_dict["target_name"]
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
