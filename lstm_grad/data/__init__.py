"""Price series in (user CSVs as people export them, the embedded gold / silver series); windows and
train-span scalers out, as a Lightning ``GoldDataModule``.

Modules: ``csv_formats`` (read a file), ``columns`` / ``dates`` (recognise them), ``series`` (one clean
series), ``features`` (the model's inputs), ``windows`` (strided windows), ``calendar`` (how a series
trades, to date bars past its end), ``sampler`` (resumable shuffle), ``datamodule`` (the DataModule).
"""
from __future__ import annotations

from lstm_grad.data.datamodule import GoldDataModule
from lstm_grad.data.errors import DataError
from lstm_grad.data.series import load_series
from lstm_grad.data.windows import Batch, GoldWindows, keep_batch, persistence

__all__ = ["Batch", "DataError", "GoldDataModule", "GoldWindows", "keep_batch", "load_series", "persistence"]
