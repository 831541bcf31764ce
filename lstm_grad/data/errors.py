"""The data pipeline's logger and error (:class:`~lstm_grad.errors.DataError`, re-exported)."""
from __future__ import annotations

import logging

from lstm_grad.errors import DataError

LOG = logging.getLogger("lstm_grad.data")

__all__ = ["LOG", "DataError"]
