"""Read what a column's name says it holds (a date, a time of day, gold, a volume) by whole tokens.

A name is split into word tokens: ``"USD (PM)"`` -> usd, pm; ``"Close/Last"`` -> close, last;
``"<DTYYYYMMDD>"`` -> dtyyyymmdd; ``"tick_volume"`` -> tick, volume; ``"GoldPrice"`` -> gold,
price; ``"XAUUSD"`` -> xauusd; ``"GC=F"`` -> gc, f. Every rule here matches whole tokens, never
substrings, so ``EUR/USD`` is a currency pair rather than a gold price and ``Update`` holds no date.
:func:`default_target` picks the column to forecast from these rules, or refuses to guess.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from lstm_grad.data.errors import DataError

_TOKEN = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_GOLD = frozenset({"gold", "gld", "iau", "xau", "gc"})  # gc: COMEX gold futures (Yahoo's GC=F)
_SILVER = frozenset({"silver", "slv", "xag", "si"})
_CURRENCIES = frozenset({"usd", "eur", "euro", "gbp", "jpy", "chf", "cad", "aud", "nzd", "cny", "cnh", "inr",
                         "hkd", "sgd", "rub", "zar", "mxn", "sek", "nok", "dkk", "try", "krw", "brl"})
_DATE = frozenset({"date", "datetime", "timestamp", "dtyyyymmdd", "yyyymmdd", "day"})
_VOLUME = frozenset({"vol", "volume", "volumes", "tickvol", "tickvolume", "realvolume"})
_NOT_PRICES = frozenset({"change", "chg", "spread", "interest", "oi", "dividends", "splits"})
# words of a generic price column (Close, Adj Close, Close/Last, Price, USD (PM), Value): no asset named
_GENERIC = frozenset({"close", "price", "last", "adj", "open", "high", "low", "value", "am", "pm", "fix", "fixing",
                      "settle", "settlement", "spot", "mid", "rate"}) | _CURRENCIES


def tokens(name: object) -> tuple[str, ...]:
    """Split a column name into lower-case word tokens.

    >>> tokens("EUR/USD"), tokens("<DTYYYYMMDD>"), tokens("GoldPrice"), tokens("Close GC=F")
    (('eur', 'usd'), ('dtyyyymmdd',), ('gold', 'price'), ('close', 'gc', 'f'))
    >>> tokens("US dollar"), tokens("U.S. Dollars (PM)"), tokens("Australian dollar")  # World Gold Council's names
    (('usd',), ('usd', 'pm'), ('australian', 'dollar'))
    """
    found = " ".join(t.casefold() for t in _TOKEN.findall(str(name)))
    found = re.sub(r"\b(?:us|u s) dollars?\b", "usd", found)
    return tuple(found.split()) or (str(name).strip().casefold(),)


def _pair(word: str, base: str) -> bool:
    """A six-letter FX-style ticker for ``base`` against a currency: ``xauusd``, ``xageur``."""
    return len(word) == 6 and word.startswith(base) and word[3:] in _CURRENCIES


def is_gold(name: object) -> bool:
    """True for a plainly gold column: Gold, GLD, IAU, XAU, XAUUSD, XAU/USD, GC=F, FRED's GOLDPMGBD228NLBM.

    >>> [is_gold(n) for n in ("GLD", "Gold_Price", "XAUUSD", "EUR/USD", "USD (PM)", "Goldman")]
    [True, True, True, False, False, False]
    """
    return any(t in _GOLD or _pair(t, "xau") or re.fullmatch(r"gold(am|pm)gbd", t) for t in tokens(name))


def is_silver(name: object) -> bool:
    """True for a plainly silver column (Silver, SLV, XAG, XAGUSD, SI=F)."""
    return any(t in _SILVER or _pair(t, "xag") for t in tokens(name))


def is_volume(name: object) -> bool:
    """True for a traded-volume column: Volume, Vol., <VOL>, <TICKVOL>, tick_volume, real_volume."""
    return bool(_VOLUME.intersection(tokens(name)))


def is_price_like(name: object) -> bool:
    """False for columns that are no price series: volumes, change %, spread, open interest, dividends."""
    return not is_volume(name) and not _NOT_PRICES.intersection(tokens(name))


def is_date_name(name: object) -> bool:
    """True for a name that says "date": Date, DATE, observation_date, <DTYYYYMMDD>, Trade Date, Date/Time."""
    return bool(_DATE.intersection(tokens(name)))


def is_time_name(name: object) -> bool:
    """True for a name that says "time" without "date": Time, <TIME>, Gmt time (MT5's ``time`` holds dates)."""
    return "time" in tokens(name) and not is_date_name(name)


def strip_brackets(name: str) -> str:
    """Drop MetaTrader's header brackets: ``<CLOSE>`` -> ``CLOSE``; other names are returned as they are."""
    bare = re.fullmatch(r"<\s*([^<>]+?)\s*>", name.strip())
    return bare.group(1) if bare else name


def _lone(*words: str) -> Callable[[tuple[str, ...]], bool]:
    return lambda t: t == words


def _has(word: str, *unless: str) -> Callable[[tuple[str, ...]], bool]:
    return lambda t: word in t and not set(unless).intersection(t)


def _usd(t: tuple[str, ...]) -> bool:
    """A dollar price (LBMA's ``USD (PM)``), not a pair such as ``EUR/USD`` or ``BTC-USD``."""
    return "usd" in t and set(t) <= (_GENERIC - _CURRENCIES) | {"usd"}


# Applied in order to the pool (the gold columns, else the generically named ones): the first rule
# with exactly one hit names the target; a rule with several hits narrows the pool to them.
_RULES: tuple[Callable[[tuple[str, ...]], bool], ...] = (
    _lone("close"), _lone("price"), _has("close", "adj"), _has("price"), _has("pm"),
    lambda t: any(re.fullmatch(r"goldpmgbd", w) for w in t), _usd, _has("value"),
)


def default_target(columns: Sequence[str], where: str) -> str:
    """Choose the column to forecast, or raise one line listing the candidates and ``--data.target``.

    The only price-like column; else the one plainly gold column (GLD among SPX, USO, SLV,
    EUR/USD). Else the pool is the gold columns, or when none is gold the generically named ones
    (``Close``, ``Adj Close``, ``Close/Last``, ``Price``, ``USD (PM)``, ``Value``: no asset in the
    name, as in a one-asset export), and the first of these picks: ``Close``, ``Price``, a close
    (not ``Adj Close``), a price, a PM fix, a dollar price (not a pair), ``Value``. Anything else,
    such as several assets none of them plainly gold, stops with the candidates listed. Volume,
    change-%, spread and open-interest columns are never candidates.

    >>> default_target(["SPX", "GLD", "USO", "SLV", "EUR/USD"], "f.csv")
    'GLD'
    >>> default_target(["USD (AM)", "USD (PM)", "GBP (AM)", "GBP (PM)"], "lbma.csv")
    'USD (PM)'
    """
    candidates = [c for c in columns if is_price_like(c)]
    if len(candidates) == 1:
        return candidates[0]
    gold = [c for c in candidates if is_gold(c)]
    if len(gold) == 1:
        return gold[0]
    pool = gold or [c for c in candidates if set(tokens(c)) <= _GENERIC]
    for rule in _RULES:
        hits = [c for c in pool if rule(tokens(c))]
        if len(hits) == 1:
            return hits[0]
        pool = hits or pool
    listed = gold or candidates
    kind = "gold columns" if gold else "columns, none of them plainly gold (GLD, Gold, XAU, XAUUSD, GC=F),"
    raise DataError(f"{where}: cannot tell which column is the gold price: {len(listed)} candidate {kind} "
                    f"{listed}; choose one with --data.target (e.g. --data.target '{listed[0]}')")
