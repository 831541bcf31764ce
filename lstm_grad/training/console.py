"""What a command writes to the terminal: our log lines and Lightning's useful ones, not its chatter.

Lightning (2.6) logs a seed line, GPU/TPU/HPU availability and "💡 Tip" advertisements at INFO on
its own handlers (``lightning/__init__.py``, ``lightning/pytorch/__init__.py`` add a StreamHandler
and stop propagation), and torch / Lightning internals raise deprecation warnings (``LeafSpec``)
that the user can do nothing about. :class:`Console` routes all of it through one root handler that

- drops that chatter and internal deprecation warnings;
- holds every record until :func:`release_logs` (the commands call it once the input has been read
  and checked), so that a bad input's stderr is only the one ``error:`` line: held records are
  discarded on a bad-input error and written on success or on a bug (with its traceback).

``verbose=True`` (``--verbose``) keeps everything and holds nothing back. :class:`QuietRuns` keeps
the many training runs of one command (backtest folds, tune trials) to warnings, in a worker process
too (where no Console routes anything). This module is the one place that quiets Lightning.
"""
from __future__ import annotations

import logging
import re
import sys
import warnings
from types import TracebackType
from typing import Any

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
FORMAT = "%(levelname)s %(name)s: %(message)s"
_CHATTER = re.compile(
    r"^Seed set to |^(GPU|TPU|HPU|IPU) available|💡 Tip|^LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES"
    r"|set_float32_matmul_precision|LeafSpec|does not have many workers"
    r"|args parameter is intended to run from within Python"
)
# warning filters (matched at the message's start): the same chatter, for processes without a Console
WARNING_CHATTER = r".*(does not have many workers|LeafSpec|args parameter is intended to run from within Python)"
# the commands hand LightningCLI their command line as ``args`` on purpose (to take --debug out of it)
ARGS_WARNING = ".*args parameter is intended to run from within Python"
_active: Console | None = None


def is_chatter(message: str) -> bool:
    """True for Lightning's advertisements, hardware census and internal deprecation noise.

    >>> is_chatter("GPU available: False, used: False"), is_chatter("INFO target 'gold'")
    (True, False)
    """
    return bool(_CHATTER.search(message))


def release_logs() -> None:
    """Write the held log records and pass later ones straight through (no-op outside a command)."""
    if _active is not None:
        _active.release()


class _Held(logging.Handler):
    """Filter chatter, hold records until released, then forward them to the terminal handlers."""

    def __init__(self, targets: list[logging.Handler], verbose: bool) -> None:
        super().__init__(logging.NOTSET)
        self.targets, self.verbose = targets, verbose
        self.held: list[logging.LogRecord] | None = None if verbose else []  # verbose: nothing held back

    def emit(self, record: logging.LogRecord) -> None:
        if not self.verbose and is_chatter(record.getMessage()):
            return
        if self.held is not None:
            self.held.append(record)
            return
        for target in self.targets:
            if record.levelno >= target.level:
                target.handle(record)


class Console:
    """Install the routing for one command (:meth:`install`), then :meth:`restore` what was there."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self._saved: dict[str, tuple[list[logging.Handler], bool]] = {}
        self._root_handlers: list[logging.Handler] = []
        self._warnings: warnings.catch_warnings | None = None  # saves and restores filters and showwarning
        self._handler: _Held | None = None

    def install(self) -> Console:
        global _active
        root = logging.getLogger()
        self._root_handlers = list(root.handlers)
        targets = self._root_handlers or [logging.StreamHandler(sys.stderr)]
        for target in targets:
            if target.formatter is None:
                target.setFormatter(logging.Formatter(FORMAT))
        self._handler = _Held(targets, self.verbose)
        root.handlers = [self._handler]
        for name in LIGHTNING_LOGGERS:  # one route for everything: through the root handler
            logger = logging.getLogger(name)
            self._saved[name] = (list(logger.handlers), logger.propagate)
            logger.handlers, logger.propagate = [], True
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message=ARGS_WARNING)  # ours, even with --verbose
        warnings.showwarning = self._show_warning
        _active = self
        return self

    def _show_warning(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
        """Log a warning as one line; drop internal deprecations and chatter unless verbose."""
        text = " ".join(str(message).split())
        internal = issubclass(category, (DeprecationWarning, FutureWarning)) and (
            "site-packages" in filename or "dist-packages" in filename)
        if not self.verbose and (internal or is_chatter(text)):
            return
        logging.getLogger("py.warnings").warning("%s: %s", category.__name__, text)

    def release(self) -> None:
        handler = self._handler
        if handler is None or handler.held is None:
            return
        held, handler.held = handler.held, None
        for record in held:
            handler.emit(record)

    def discard(self) -> None:
        if self._handler is not None and self._handler.held is not None:
            self._handler.held = []

    def restore(self) -> None:
        global _active
        self.release()
        logging.getLogger().handlers = self._root_handlers
        for name, (handlers, propagate) in self._saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        if self._warnings is not None:
            self._warnings.__exit__(None, None, None)
            self._warnings = None
        _active = None if _active is self else _active


class QuietRuns:
    """Keep the training runs inside one command to warnings and errors, then restore what was there.

    Lightning's per-run INFO lines (``LIGHTNING_LOGGERS``) and ``names`` (e.g. ``lstm_grad`` after the
    first run has said the data lines once, ``optuna``'s trial lines) are raised to WARNING and the
    chatter warnings ignored, also in a joblib / Dask worker, where no :class:`Console` is installed.
    ``backtest`` prints one line per fold and ``tune`` one per trial instead.

    >>> before = logging.getLogger("lstm_grad").level
    >>> with QuietRuns("lstm_grad") as quiet:
    ...     quiet.add("matplotlib")
    ...     logging.getLogger("lightning.pytorch").getEffectiveLevel() >= logging.WARNING
    True
    >>> logging.getLogger("lstm_grad").level == before
    True
    """

    def __init__(self, *names: str) -> None:
        self.names = (*LIGHTNING_LOGGERS, *names)
        self._levels: dict[str, int] = {}
        self._warnings: warnings.catch_warnings | None = None

    def __enter__(self) -> QuietRuns:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message=WARNING_CHATTER)
        self.add(*self.names)
        return self

    def add(self, *names: str) -> None:
        """Quiet more loggers until the end of the block."""
        for name in names:
            logger = logging.getLogger(name)
            self._levels.setdefault(name, logger.level)
            logger.setLevel(max(logger.level, logging.WARNING))

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        if self._warnings is not None:
            self._warnings.__exit__(kind, error, trace)
