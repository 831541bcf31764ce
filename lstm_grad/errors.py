"""The errors a user can fix: bad data, an unusable checkpoint, a bad setting, a missing extra.

Commands catch :class:`UserError` (and the CLI parser's usage errors) and print its one-line message
as ``error: ...`` with exit status 1 (``lstm_grad.training.entry``). Anything else that escapes a
command is a bug in lstm-grad and keeps its traceback. Each class is also the built-in exception a
caller would expect (``ValueError``, ``ImportError``), so ``except ValueError`` keeps working.
"""
from __future__ import annotations


class UserError(Exception):
    """Input the user can fix; the message is one line naming where (file, column, row, flag) and what to do.

    ``exit_status`` is the command's exit status for it (1; a subclass may say otherwise, e.g.
    ``diagnose`` keeps 2 for a folder that is not a run).
    """

    exit_status: int = 1


class DataError(UserError, ValueError):
    """Bad input data: the file, column / row / value and the fix."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used for this run: missing, unreadable, or made for other settings."""


class ConfigError(UserError, ValueError):
    """A setting (flag, config key, argument) that cannot work: which one, why, and what to use."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is missing; the message names the ``pip install`` that adds it."""
