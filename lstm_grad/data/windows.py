"""Windows over a feature table: which rows each window reads and predicts (:func:`index_windows`), and
the Dataset of strided views, scaled targets and raw prices (:class:`GoldWindows`).

A batch is ``(x (B, T, F) float32, y (B, H) scaled float32, anchor (B,) float64 price, index (B,) int64)``.
``index`` numbers the windows of the split, so price-unit math can read the raw float64 prices
(:meth:`GoldWindows.prices`) whatever Lightning's precision plugin did to the batch's floating
tensors (``*-true`` precisions cast every one of them to the network's dtype before any hook runs:
``lightning/pytorch/loops/evaluation_loop.py``, ``precision_plugin.convert_input``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lstm_grad.data.errors import LOG, DataError

Batch = tuple[Tensor, Tensor, Tensor, Tensor]
SPLITS = ("train", "val", "test")


def keep_batch(batch: Batch) -> Batch:
    """Collate nothing: ``GoldWindows.__getitems__`` already returns whole batch tensors."""
    return batch


def persistence(anchor: Tensor, horizon: int) -> Tensor:
    """Return the naive forecast (last observed price for every future day) as (B, H) prices."""
    return anchor.unsqueeze(-1).expand(*anchor.shape, horizon)


class GoldWindows(Dataset):
    """Windows of one standardised feature tensor, with scaled targets and raw float64 prices.

    ``features`` (N, F) float32; window ``i`` is ``features[start[i] : start[i] + window]``, read
    from a strided view made once with ``Tensor.unfold`` (no copy per window). ``targets``
    (N_windows, H) are scaled; ``anchor`` (N_windows,) is the last observed target price (price
    units, at the window's last context day, float64), which is also the persistence forecast;
    ``actual`` (N_windows, H) holds the raw target prices (float64; None when unknown).
    ``target_dates`` holds each window's first target date (for prediction CSVs).
    """

    def __init__(self, features: Tensor, targets: Tensor, anchor: Tensor, start: Tensor, window: int,
                 target_dates: Sequence | None = None, actual: Tensor | None = None) -> None:
        super().__init__()
        if features.ndim != 2 or targets.ndim != 2 or anchor.ndim != 1 or start.ndim != 1:
            raise ValueError("GoldWindows needs features (N, F), targets (W, H), anchor (W,), start (W,)")
        if not len(targets) == len(anchor) == len(start):
            raise ValueError(f"GoldWindows: {len(targets)} targets, {len(anchor)} anchors, {len(start)} starts")
        if actual is not None and actual.shape != targets.shape:
            raise ValueError(f"GoldWindows: actual prices {tuple(actual.shape)} but targets {tuple(targets.shape)}")
        if len(start) and (int(start.min()) < 0 or int(start.max()) + window > len(features)):
            raise ValueError(f"GoldWindows: a window of {window} rows runs past the {len(features)} feature rows")
        self.features = features
        self.window = window
        # N rows, T window, F features: (N, F) -> unfold (N - T + 1, F, T) -> (N - T + 1, T, F), a view
        self.windows = features.unfold(0, window, 1).transpose(1, 2)
        self.targets, self.anchor, self.start = targets, anchor.double(), start.long()
        self.actual = None if actual is None else actual.double()
        self.target_dates = list(target_dates) if target_dates is not None else []
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, i: int) -> Batch:
        return self.windows[self.start[i]], self.targets[i], self.anchor[i], torch.tensor(i)

    def __getitems__(self, indices: list[int]) -> Batch:
        """Gather a batch with one indexing op per tensor; DataLoader calls this when present."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.windows[self.start[idx]], self.targets[idx], self.anchor[idx], idx

    def prices(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Return the raw float64 ``anchor`` (B,) and ``actual`` (B, H) prices of windows ``index`` (B,).

        The tensors are copied to ``index``'s device once and kept there (a few KB per split).
        """
        if self.actual is None:
            raise RuntimeError("GoldWindows.prices needs the raw target prices (GoldWindows(actual=...))")
        if index.device not in self._on_device:
            self._on_device[index.device] = (self.anchor.to(index.device), self.actual.to(index.device))
        anchor, actual = self._on_device[index.device]
        return anchor[index], actual[index]


def index_windows(feats: pd.DataFrame, prices: pd.Series, window: int, horizon: int,
                  split: tuple[float, float, float], target_mode: str, where: str) -> dict[str, Any]:
    """Index every window of ``feats`` (N, F) and ``prices`` (N,), its targets and anchor, and its split.

    Window ``s`` reads rows ``s .. s+window-1``; its anchor is row ``s+window-1`` and its targets rows
    ``s+window .. s+window+horizon-1`` (``level``: the prices; ``log_return``: log(p_target / p_anchor)).
    A window belongs to the split (row fractions ``split``) holding all its target rows; windows whose
    targets straddle a boundary are dropped (logged). Raises DataError when a split gets no window.
    """
    n = len(feats)
    sizes = [round(f * n) for f in split[:2]]
    bounds = np.array([0, sizes[0], sizes[0] + sizes[1], n])
    start = np.arange(max(0, n - window - horizon + 1))
    anchor_row = start + window - 1
    target_rows = anchor_row[:, None] + np.arange(1, horizon + 1)  # (W, H)
    p = prices.to_numpy(dtype="float64")
    if target_mode == "level":
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
            "anchor": p[anchor_row], "actual": p[target_rows],
            "dates": feats.index[target_rows[:, 0]] if len(start) else feats.index[:0],
            "train_rows": int(bounds[1]), "prices": p, "index": feats.index}
