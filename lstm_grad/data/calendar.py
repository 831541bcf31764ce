"""Trading-day calendars for dating forecasts past the data's last observed day.

A forecast's step h is the h-th trading day after its origin. Exchange holidays differ by market
and are not in the data, so they are not skipped: the calendar is either business days (Mon-Fri)
or, for a series that itself trades on weekends (crypto, some spot quotes), every calendar day.
Which of the two is inferred from the observed dates (:func:`infer_calendar`).
"""
from __future__ import annotations

import logging

import pandas as pd

LOG = logging.getLogger("lstm_grad.data.calendar")
CALENDARS = ("business", "calendar")
WEEKEND_SHARE = 0.1  # Sat + Sun are 2/7 = 29 % of a 7-day series' rows and ~0 % of an exchange's


def infer_calendar(dates: pd.DatetimeIndex, where: str = "data") -> str:
    """Return ``"calendar"`` when at least 10 % of ``dates`` fall on a weekend, else ``"business"``.

    A few stray weekend rows (a data vendor's Sunday quote) do not make a 7-day market; a series
    trading every day has ~29 % weekend rows. The choice is logged in one line.

    >>> infer_calendar(pd.bdate_range("2024-01-01", periods=20))
    'business'
    >>> infer_calendar(pd.date_range("2024-01-01", periods=20))
    'calendar'
    """
    if len(dates) == 0:
        raise ValueError(f"{where}: no dates to infer a trading calendar from")
    weekend = int((pd.DatetimeIndex(dates).dayofweek >= 5).sum())
    share = weekend / len(dates)
    choice = "calendar" if share >= WEEKEND_SHARE else "business"
    LOG.info("%s: forecast dates are %s (%d of %d observed days fall on a weekend; holidays are not skipped)",
             where, "calendar days (the series trades on weekends)" if choice == "calendar"
             else "business days Mon-Fri", weekend, len(dates))
    return choice


def next_trading_days(last: pd.Timestamp, steps: int, calendar: str = "business") -> pd.DatetimeIndex:
    """Return the ``steps`` trading days after ``last`` (``last`` itself excluded).

    >>> [d.strftime("%a %Y-%m-%d") for d in next_trading_days(pd.Timestamp("2024-01-05"), 2)]  # a Friday
    ['Mon 2024-01-08', 'Tue 2024-01-09']
    >>> next_trading_days(pd.Timestamp("2024-01-06"), 1, "calendar").strftime("%Y-%m-%d").tolist()
    ['2024-01-07']
    """
    if calendar not in CALENDARS:
        raise ValueError(f"calendar={calendar!r} is not one of {list(CALENDARS)}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    first = pd.Timestamp(last).normalize() + pd.Timedelta(days=1)
    if calendar == "calendar":
        return pd.date_range(first, periods=int(steps), freq="D", name="date")
    return pd.bdate_range(first, periods=int(steps), name="date")
