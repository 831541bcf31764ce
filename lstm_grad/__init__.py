"""lstm-grad: true per-layer gradient diagnostics for any Lightning model, and gold-price forecasters
that use them.

``from lstm_grad import GradientMonitor, TimeGradientProbe`` (Lightning callbacks, imported on first
use); the pure-torch functions are in :mod:`lstm_grad.diagnostics`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GradientMonitor", "TimeGradientProbe"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lstm_grad import diagnostics

        return getattr(diagnostics, name)
    raise AttributeError(f"module 'lstm_grad' has no attribute {name!r}")
