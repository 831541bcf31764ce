"""Trading calendars: how a series trades, read from its own timestamps, to date bars past its end.

A forecast's step h is the h-th bar after its origin on the series' own calendar
(:func:`infer_trading_calendar`): the bar spacing (intraday, daily, weekly, monthly, quarterly, yearly)
and, for daily and intraday bars, when in the week it has bars (Mon-Fri; Sun-Fri for FX quotes with a
Sunday bar; every day for crypto; 09:30-15:30 for an exchange's 30-minute bars). It is read from the
last year of bars, and a weekday or bar time counts when it holds at least a quarter as many bars as
the busiest one, so a stray Sunday quote does not make a 7-day market. Exchange holidays are not in
the data, so they are not skipped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

LOG = logging.getLogger("lstm_grad.data.calendar")
CALENDARS = ("business", "calendar")  # the names of Mon-Fri and 7-day daily calendars
USUAL_SHARE = 0.25  # a weekday / bar time is usual at >= 25 % of the busiest one's bar count
RECENT = pd.Timedelta(days=365)  # the calendar is read from the last year of bars
DAY, WEEK_SECONDS = pd.Timedelta(days=1), 7 * 86400
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = {"monthly": 1, "quarterly": 3, "yearly": 12}
# (kind, lowest, highest median spacing in days); anything else is "fixed" (every <median spacing>)
_KINDS = (("intraday", 0, 0.8), ("daily", 0.8, 4.5), ("weekly", 5, 10), ("monthly", 25, 35),
          ("quarterly", 80, 100), ("yearly", 350, 380))


@dataclass(frozen=True)
class TradingCalendar:
    """When a series has bars: ``kind`` (``intraday`` ``daily`` ``weekly`` ``monthly`` ``quarterly``
    ``yearly`` ``fixed``), the median ``spacing`` between bars, the ``weekdays`` a daily series trades
    (0 = Monday), the intraday bar times in a week ``slots`` (seconds after Monday 00:00), and for
    monthly and coarser bars the day of the month they fall on, ``anchor`` (``start``, ``end``,
    ``business_start``, ``business_end`` or ``day``: the origin's day of the month).

    >>> fx = TradingCalendar("daily", DAY, weekdays=(6, 0, 1, 2, 3, 4))  # a bar every Sunday, none on Saturday
    >>> fx.after(pd.Timestamp("2024-01-19"), 2).strftime("%a %Y-%m-%d").tolist()  # after a Friday
    ['Sun 2024-01-21', 'Mon 2024-01-22']
    """

    kind: str
    spacing: pd.Timedelta
    weekdays: tuple[int, ...] = ()
    slots: tuple[int, ...] = ()
    anchor: str = ""

    @property
    def name(self) -> str:
        """``business`` (daily Mon-Fri), ``calendar`` (daily, every day), else :meth:`describe`."""
        if self.kind == "daily" and self.weekdays in ((0, 1, 2, 3, 4), tuple(range(7))):
            return CALENDARS[len(self.weekdays) == 7]
        return self.describe()

    @property
    def date_format(self) -> str:
        """``strftime`` format of this calendar's bars: with the time of day for intraday bars."""
        if self.kind != "intraday":
            return "%Y-%m-%d"
        return "%Y-%m-%d %H:%M" if all(s % 60 == 0 for s in self.slots) else "%Y-%m-%d %H:%M:%S"

    def describe(self) -> str:
        """Say in words when the series has bars, e.g. ``daily bars on Sun-Fri``."""
        if self.kind == "daily":
            return f"daily bars on {_days_text(self.weekdays)}"
        if self.kind == "intraday":
            slots = np.array(self.slots)
            times = sorted({int(s) % 86400 for s in slots})
            days = tuple(sorted({int(s) // 86400 for s in slots}))
            return (f"{_spacing_text(self.spacing)} bars on {_days_text(days)}, {_clock(times[0])}-{_clock(times[-1])} "
                    f"({len(slots)} bar times a week, {_slot_text(slots[0])} .. {_slot_text(slots[-1])})")
        if self.kind == "weekly":
            return "weekly bars (every 7 days)"
        if self.kind in _MONTHS:
            where = {"start": "the first day", "end": "the last day", "business_start": "the first business day",
                     "business_end": "the last business day", "day": "the origin's day"}[self.anchor]
            return f"{self.kind} bars (on {where} of the month)"
        return f"bars every {self.spacing}"

    def after(self, last: pd.Timestamp, steps: int) -> pd.DatetimeIndex:
        """Return the ``steps`` bars after ``last`` (``last`` itself excluded), named ``date``."""
        last = pd.Timestamp(last)
        k = np.arange(1, int(steps) + 1)
        if self.kind == "daily":
            days = pd.date_range(last.normalize() + DAY, periods=(int(steps) // len(self.weekdays) + 2) * 7, freq="D")
            stamps = days[days.day_of_week.isin(self.weekdays)][: int(steps)] + (last - last.normalize())
        elif self.kind == "intraday":
            week = last.normalize() - pd.Timedelta(days=last.day_of_week)  # Monday 00:00 of the origin's week
            weeks = int(steps) // len(self.slots) + 2
            offsets = (np.arange(weeks)[:, None] * WEEK_SECONDS + np.array(self.slots)[None, :]).ravel()
            stamps = week + pd.to_timedelta(offsets, unit="s")
            stamps = stamps[stamps > last][: int(steps)]
        elif self.kind in _MONTHS:
            stamps = [_month_step(last, self.anchor, _MONTHS[self.kind] * int(i)) for i in k]
        else:  # weekly and fixed: a constant spacing
            stamps = [last + (pd.Timedelta(days=7) if self.kind == "weekly" else self.spacing) * int(i) for i in k]
        return pd.DatetimeIndex(stamps, name="date").as_unit("ns")


BUSINESS = TradingCalendar("daily", DAY, weekdays=(0, 1, 2, 3, 4))
EVERY_DAY = TradingCalendar("daily", DAY, weekdays=tuple(range(7)))


def infer_trading_calendar(dates: pd.DatetimeIndex, where: str = "data") -> TradingCalendar:
    """Read a series' calendar from its timestamps (N,); the choice and its evidence are logged in one line.

    >>> infer_trading_calendar(pd.bdate_range("2024-01-01", periods=20)).name
    'business'
    >>> days, minutes = pd.bdate_range("2024-01-01", periods=15).repeat(13), np.tile(570 + 30 * np.arange(13), 15)
    >>> infer_trading_calendar(days + pd.to_timedelta(minutes, unit="min")).describe()  # an exchange's 30-minute bars
    '30-minute bars on Mon-Fri, 09:30-15:30 (65 bar times a week, Mon 09:30 .. Fri 15:30)'
    """
    index = pd.DatetimeIndex(dates).dropna().unique().sort_values()
    if len(index) == 0:
        raise ValueError(f"{where}: no dates to infer a trading calendar from")
    if len(index) < 2:
        LOG.info("%s: forecast dates are business days Mon-Fri (one bar: nothing to read a calendar from)", where)
        return BUSINESS
    recent = index[index > index[-1] - RECENT]
    recent = recent if len(recent) >= 8 else index[-8:]
    spacing = pd.Timedelta(np.median((recent[1:] - recent[:-1]).total_seconds()), unit="s")
    days = spacing / DAY
    kind = next((k for k, low, high in _KINDS if low <= days < high), "fixed")
    evidence = f"{len(recent)} bars from {recent[0]:%Y-%m-%d}, median spacing {days:.4g} days"
    if kind == "daily":
        counts = np.bincount(recent.day_of_week, minlength=7)
        calendar = TradingCalendar("daily", DAY, weekdays=_usual(np.arange(7), counts, recent, weekdays=True))
        evidence = f"bars per weekday from {recent[0]:%Y-%m-%d}: " + ", ".join(
            f"{WEEKDAYS[d]} {counts[d]}" for d in (0, 1, 2, 3, 4, 5, 6))
    elif kind == "intraday":
        calendar = TradingCalendar("intraday", spacing, slots=_intraday_slots(recent))
        evidence = f"{len(recent)} bars from {recent[0]:%Y-%m-%d %H:%M}"
    elif kind in _MONTHS:
        calendar = TradingCalendar(kind, spacing, anchor=_month_anchor(recent))
    else:
        calendar = TradingCalendar(kind, spacing)
    LOG.info("%s: forecast dates follow the series' own calendar: %s; read from %s; holidays are not skipped",
             where, calendar.describe(), evidence)
    return calendar


def infer_calendar(dates: pd.DatetimeIndex, where: str = "data") -> str:
    """Return the name of :func:`infer_trading_calendar`'s calendar: ``business`` for daily bars on
    Mon-Fri, ``calendar`` for daily bars on every day, else its description.

    >>> infer_calendar(pd.bdate_range("2024-01-01", periods=20)), infer_calendar(pd.date_range("2024-01-01", periods=20))
    ('business', 'calendar')
    """
    return infer_trading_calendar(dates, where).name


def next_trading_days(last: pd.Timestamp, steps: int,
                      calendar: str | TradingCalendar = "business") -> pd.DatetimeIndex:
    """Return the ``steps`` bars after ``last`` on ``calendar`` (a :class:`TradingCalendar`, or
    ``business`` / ``calendar``: daily dates Mon-Fri / every day), ``last`` itself excluded.

    >>> [d.strftime("%a %Y-%m-%d") for d in next_trading_days(pd.Timestamp("2024-01-05"), 2)]  # a Friday
    ['Mon 2024-01-08', 'Tue 2024-01-09']
    >>> next_trading_days(pd.Timestamp("2024-01-06"), 1, "calendar").strftime("%Y-%m-%d").tolist()
    ['2024-01-07']
    """
    if not isinstance(calendar, TradingCalendar):
        if calendar not in CALENDARS:
            raise ValueError(f"calendar={calendar!r} is not one of {list(CALENDARS)} or a TradingCalendar")
        calendar, last = (BUSINESS, EVERY_DAY)[calendar == "calendar"], pd.Timestamp(last).normalize()
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    return calendar.after(last, int(steps))


def stamp_format(dates: pd.DatetimeIndex) -> str:
    """``strftime`` format that keeps what ``dates`` hold: the date, and the time of day where bars have one.

    >>> stamp_format(pd.DatetimeIndex(["2024-01-02"])), stamp_format(pd.DatetimeIndex(["2024-01-02 09:30"]))
    ('%Y-%m-%d', '%Y-%m-%d %H:%M')
    """
    index = pd.DatetimeIndex(dates)
    if (index == index.normalize()).all():
        return "%Y-%m-%d"
    return "%Y-%m-%d %H:%M" if (index.second == 0).all() else "%Y-%m-%d %H:%M:%S"


def _usual(values: np.ndarray, counts: np.ndarray, recent: pd.DatetimeIndex, weekdays: bool = False) -> tuple[int, ...]:
    """The values (weekdays, bar times) holding >= USUAL_SHARE of the busiest one's bars. A span shorter
    than two weeks cannot show which weekdays are missing: Mon-Fri are then taken as trading days."""
    usual = values[counts >= USUAL_SHARE * counts.max()]
    if weekdays and recent[-1] - recent[0] < pd.Timedelta(days=14):
        usual = np.union1d(usual, np.arange(5))
    return tuple(int(v) for v in usual)


def _intraday_slots(recent: pd.DatetimeIndex) -> tuple[int, ...]:
    """Usual bar times in a week (seconds after Monday 00:00); short spans: every weekday has the usual times."""
    tod = (recent - recent.normalize()).total_seconds().to_numpy().astype("int64")
    if recent[-1] - recent[0] < pd.Timedelta(days=14):
        times, counts = np.unique(tod, return_counts=True)
        weekdays = _usual(np.arange(7), np.bincount(recent.day_of_week, minlength=7), recent, weekdays=True)
        times = np.array(_usual(times, counts, recent))
        return tuple(sorted(int(d * 86400 + t) for d in weekdays for t in times))
    slots, counts = np.unique(recent.day_of_week.to_numpy() * 86400 + tod, return_counts=True)
    return _usual(slots, counts, recent)


def _month_anchor(recent: pd.DatetimeIndex) -> str:
    """Which day of the month monthly / quarterly / yearly bars fall on."""
    day = pd.DatetimeIndex(recent.normalize(), freq=None)  # is_month_end follows a business freq if one is set
    if (day.day == 1).all():
        return "start"
    if (day.day == day.days_in_month).all():
        return "end"
    for name, offset in (("business_end", pd.offsets.BMonthEnd()), ("business_start", pd.offsets.BMonthBegin())):
        if all(offset.is_on_offset(d) for d in day):
            return name
    return "day"


def _month_step(last: pd.Timestamp, anchor: str, months: int) -> pd.Timestamp:
    """The bar ``months`` months after ``last`` on the anchor's day, at ``last``'s time of day."""
    day, time = last.normalize(), last - last.normalize()
    if anchor == "end":
        return day + pd.offsets.MonthEnd(months) + time
    if anchor in ("business_end", "business_start"):
        offset = pd.offsets.BMonthEnd if anchor == "business_end" else pd.offsets.BMonthBegin
        return day + offset(months) + time
    return day + pd.DateOffset(months=months) + time  # start (the 1st stays the 1st) and day


def _days_text(days: tuple[int, ...]) -> str:
    """``Mon-Fri``, ``Sun-Fri``, ``every day``, or a list such as ``Mon, Wed, Fri``."""
    if len(days) == 7:
        return "every day"
    for start in days:  # a run of consecutive weekdays, wrapping past Sunday
        run = [(start + i) % 7 for i in range(len(days))]
        if sorted(run) == sorted(days) and len(days) > 2:
            return f"{WEEKDAYS[run[0]]}-{WEEKDAYS[run[-1]]}"
    return ", ".join(WEEKDAYS[d] for d in days)


def _spacing_text(spacing: pd.Timedelta) -> str:
    seconds = int(spacing.total_seconds())
    if seconds == 3600:
        return "hourly"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}-hour"
    return f"{seconds // 60}-minute" if seconds % 60 == 0 else f"{seconds}-second"


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def _slot_text(slot: int) -> str:
    return f"{WEEKDAYS[int(slot) // 86400]} {_clock(int(slot) % 86400)}"
