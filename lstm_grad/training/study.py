"""One Optuna study shared by any number of processes: open its storage, run trials until it holds N.

``python -m lstm_grad.tune --storage sqlite:///study.db`` started on several processes (or machines) at
the same moment must all work and stop together once the study holds ``--n_trials`` finished trials:

- **Opening a fresh database together.** Optuna's ``RDBStorage`` creates its tables and stamps the
  schema version on first use; two processes doing it at once collide (SQLite: ``table studies already
  exists``, ``UNIQUE constraint failed: alembic_version.version_num``; PostgreSQL: ``duplicate key``).
  The loser retries after a short random wait and finds the tables made (:func:`open_storage`).
  SQLite waits up to a minute for a lock instead of 5 s. Journal files need nothing: Optuna's journal
  backend locks its appends.
- **Stopping at N.** A process asks for a trial only while fewer than N trials are finished or
  running; right after asking it counts again, with only the trials numbered below its own (Optuna
  numbers trials atomically in the storage), so two processes that asked at the same moment cannot
  both take the last place: the later one's trial is closed as FAIL, marked ``surplus``, never trained
  (:func:`run_until`). A RUNNING trial counts only if it started after this process did
  (:func:`process_started`): one left RUNNING by a killed process (SIGKILL; Ctrl-C closes it as FAIL)
  does not block a resume. A process that joins a study already running may add one trial per
  process that was running before it started.
"""
from __future__ import annotations

import datetime
import logging
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lstm_grad.errors import ConfigError

log = logging.getLogger(__name__)
#: messages of the schema-creation collisions worth a retry (SQLite, PostgreSQL, MySQL)
_RACE = re.compile(r"already exists|UNIQUE constraint|duplicate|database is locked|Deadlock", re.IGNORECASE)
RETRIES = 10
SURPLUS = "surplus"  # user attribute of a trial closed unrun: the study already held N


def open_storage(url: str | None, retries: int = RETRIES) -> Any:
    """Open in memory (None), a database URL (``sqlite:///study.db``) or an Optuna journal file (any path).

    Raises:
        ConfigError: the database cannot be opened (bad URL, missing driver, unwritable path).
    """
    if url is None:
        return None
    if "://" not in url:
        return _journal(url)
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import SQLAlchemyError

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        kwargs = {"connect_args": {"timeout": 60}}  # wait for another process's write instead of failing
        file = url.removeprefix("sqlite:///")
        if file and file != ":memory:":
            _make_parent(Path(file), url)
    for attempt in range(retries + 1):
        try:
            return RDBStorage(url, engine_kwargs=kwargs)
        except SQLAlchemyError as error:
            if attempt == retries or not _RACE.search(str(error)):
                raise ConfigError(f"--storage {url}: cannot open the study database "
                                  f"({_first_line(error)}); check the URL and that the database is reachable") from None
            time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))  # the other process finishes creating it
        except (ImportError, ValueError) as error:  # no driver for the dialect, a malformed URL
            raise ConfigError(f"--storage {url}: {_first_line(error)}; use sqlite:///study.db, another "
                              "database URL with its driver installed, or a journal file path") from None
    raise AssertionError("unreachable")


def _journal(path: str) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    _make_parent(Path(path), path)
    try:
        return JournalStorage(JournalFileBackend(path))
    except OSError as error:
        raise ConfigError(f"--storage {path}: cannot open the journal file ({error.strerror or error}); "
                          "choose another path") from None


def _make_parent(file: Path, given: str) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--storage {given}: cannot create {file.parent} ({error.strerror or error}); "
                          "choose another path") from None


def _first_line(error: BaseException) -> str:
    return " ".join(str(getattr(error, "orig", None) or error).split("\n")[0].split())


def claimed(study: Any, since: datetime.datetime, before: int | None = None) -> int:
    """Count the trials that hold a place among the N: finished (complete or pruned), or running and
    started at or after ``since``; with ``before``, running ones only if numbered below it."""
    from optuna.trial import TrialState

    count = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            count += 1
        elif (trial.state == TrialState.RUNNING and trial.datetime_start is not None and trial.datetime_start >= since
              and (before is None or trial.number < before)):
            count += 1
    return count


def run_trial(study: Any, trial: Any, objective: Callable[[Any], float]) -> Any:
    """Run ``objective(trial)`` and close the trial as Optuna's ``optimize`` would; return the FrozenTrial.

    ``TrialPruned`` closes it as PRUNED; any other exception (Ctrl-C too) as FAIL, then goes on up;
    a NaN value is a FAIL with Optuna's warning.
    """
    import optuna
    from optuna.trial import TrialState

    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return study.tell(trial, state=TrialState.PRUNED)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    return study.tell(trial, value)


def run_until(study: Any, n_trials: int, objective: Callable[[Any], float], since: datetime.datetime,
              timeout: float | None = None, on_trial: Callable[[Any], None] | None = None) -> int:
    """Run trials in this process until the study holds ``n_trials`` (see the module docstring) or
    ``timeout`` seconds have passed; return how many this process trained."""
    from optuna.trial import TrialState

    deadline = None if timeout is None else time.monotonic() + timeout
    ran = 0
    while (deadline is None or time.monotonic() < deadline) and claimed(study, since) < n_trials:
        trial = study.ask()
        if claimed(study, since, before=trial.number) >= n_trials:  # another process took the last place
            trial.set_user_attr(SURPLUS, True)
            study.tell(trial, state=TrialState.FAIL)
            log.info("trial %d not run: the study already holds %d finished or running trials", trial.number, n_trials)
            break
        frozen = run_trial(study, trial, objective)
        ran += 1
        if on_trial is not None:
            on_trial(frozen)
    return ran


def process_started() -> datetime.datetime:
    """When this process started, on the clock Optuna stamps ``datetime_start`` with (local, naive).

    Processes launched together count each other's trials however long their imports take. From
    psutil where installed, else Linux's ``/proc``, else the moment this module was imported.
    """
    try:
        import psutil

        return datetime.datetime.fromtimestamp(psutil.Process().create_time())
    except Exception:  # not installed, or no access
        pass
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        ticks = int(after_name[19])  # field 22, starttime, in clock ticks after boot (proc(5))
        return datetime.datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


_IMPORTED = datetime.datetime.now()
