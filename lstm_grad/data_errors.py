"""The one exception the data pipeline raises, so callers can catch bad input apart from bugs."""
from __future__ import annotations

import logging

LOG = logging.getLogger("lstm_grad.data")


class DataError(ValueError):
    """Bad input data: the message is one line naming the file, column / row / value and the fix."""
