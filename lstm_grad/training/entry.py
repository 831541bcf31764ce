"""The one way every command runs: the user's mistakes as one line, our bugs with their traceback.

``main = main_of(fit_main)`` is a command's ``main()``; :func:`run_command` is the guard inside it
(tests call it with an argument list). What reaches the terminal:

- a :class:`~lstm_grad.errors.UserError` (bad data, checkpoint, setting, missing extra): one line
  ``error: <message>`` on stderr, exit status 1 (the error's ``exit_status``); the log lines held
  until then (:mod:`lstm_grad.training.console`) are discarded;
- a usage error of the command line parser (argparse's, or jsonargparse's, which is the same class):
  ``error: <message>; see --help``, exit status 2;
- a ``FloatingPointError``: the non-finite guard's deliberate stop (``GradientMonitor(on_nonfinite="raise")``,
  or ``fit`` after an ``on_nonfinite="stop"``), one line like a user error. ``lstm_grad.diagnostics``
  imports nothing from the package, so it cannot raise a ``UserError``; neither torch nor Lightning
  raise ``FloatingPointError`` (numpy does only under ``np.seterr(all="raise")``, which we never set);
- anything else is a bug in lstm-grad: the held log lines, its traceback, then one line with the
  version, the commit and the command line to report, exit status 1.

``--debug`` anywhere on the command line re-raises whatever escaped (the full traceback, also of a
user error); ``--verbose`` keeps Lightning's chatter and holds no log line back.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from lstm_grad.errors import UserError
from lstm_grad.training.console import FORMAT, Console
from lstm_grad.training.provenance import git_commit, version

Entry = Callable[[Sequence[str]], Any]  # a command: its argument list -> anything (an int is the exit status)
USAGE_ERRORS = (argparse.ArgumentError,)  # jsonargparse.ArgumentError / ParserError are this class
STOPS = (UserError, FloatingPointError, *USAGE_ERRORS)  # printed as one line; everything else is a bug


def one_line(error: BaseException) -> str:
    """Return ``error``'s message on one line (whitespace runs, newlines included, become one space).

    >>> one_line(ValueError("data.window=0\\n  must be >= 1"))
    'data.window=0 must be >= 1'
    """
    return " ".join(str(error).split())


def command_line(entry: Entry, args: Sequence[str]) -> str:
    """Return the command as the user would type it again: ``python -m <module> <args>``.

    >>> def fit_main(args): ...
    >>> fit_main.__module__ = "lstm_grad.fit"
    >>> command_line(fit_main, ["--data.source", "my gold.csv"])
    "python -m lstm_grad.fit --data.source 'my gold.csv'"
    """
    module = getattr(entry, "__module__", None) or ""
    if module == "__main__":  # python -m lstm_grad.fit runs the module as __main__; runpy keeps its spec
        spec = getattr(entry, "__globals__", {}).get("__spec__")
        module = spec.name if spec is not None else ""
    program = f"python -m {module}" if module else Path(sys.argv[0]).name
    return " ".join([program, *([shlex.join(args)] if args else [])])


def bug_report_line(entry: Entry, args: Sequence[str]) -> str:
    """Return the last line printed under a bug's traceback: what to report, and where it came from."""
    return (f"lstm-grad {version()} (commit {git_commit()}): this is a bug in lstm-grad, not in your input; "
            f"please report it with the command you ran: {command_line(entry, args)}")


def run_command(entry: Entry, argv: Sequence[str] | None = None) -> int:
    """Run ``entry(args)`` (``args``: ``argv`` or ``sys.argv[1:]`` without ``--debug`` / ``--verbose``)
    under the console routing; return the exit status (see the module's docstring).

    An ``int`` returned by ``entry`` is its exit status (``diagnose --strict``); anything else means 0.
    """
    given = list(sys.argv[1:] if argv is None else argv)
    debug, verbose = "--debug" in given, "--verbose" in given
    args = [a for a in given if a not in ("--debug", "--verbose")]
    console = Console(verbose=verbose).install()
    try:
        status = entry(args)
    except STOPS as error:
        if debug:
            raise
        console.discard()
        usage = isinstance(error, USAGE_ERRORS)
        print(f"error: {one_line(error)}{'; see --help' if usage else ''}", file=sys.stderr)  # one line, always
        return 2 if usage else getattr(error, "exit_status", 1)
    except Exception:
        if debug:
            raise
        console.release()  # what the command said before it broke, then how it broke
        traceback.print_exc()
        print(bug_report_line(entry, given), file=sys.stderr)
        return 1
    finally:
        console.restore()  # writes what is still held (a success, --debug)
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def main_of(entry: Entry, interrupted: str | None = None) -> Callable[[], NoReturn]:
    """Return a command's ``main()``: log lines as ``LEVEL logger: message``, :func:`run_command` on
    ``sys.argv``, exit with its status. ``interrupted``: what to tell the user after Ctrl-C (exit 130);
    None lets the ``KeyboardInterrupt`` through."""

    def main() -> NoReturn:
        logging.basicConfig(level=logging.INFO, format=FORMAT)
        try:
            status = run_command(entry)
        except KeyboardInterrupt:
            if interrupted is None:
                raise
            print(f"interrupted: {interrupted}", file=sys.stderr)
            status = 130
        sys.exit(status)

    main.__doc__ = f"Run ``{entry.__module__}.{entry.__name__}`` on the command line and exit with its status."
    return main
