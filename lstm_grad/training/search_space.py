"""The search space of ``python -m lstm_grad.tune``: defaults, a YAML override, Optuna suggestions.

A space maps a flag of ``python -m lstm_grad.fit`` (without the dashes) to one of

- ``{low: L, high: H}`` (``log: true`` for a log-uniform draw, ``step: S`` for a grid); integers
  when ``low`` and ``high`` are both integers, floats otherwise;
- ``{choices: [...]}``: a categorical draw; a choice may be a list (``[64, 64]``), Optuna stores it
  as its JSON text.

A ``--space`` YAML file overrides the defaults key by key; ``key: null`` drops a default (the
config's value is used). Example::

    model.lr: {low: 1.0e-4, high: 3.0e-3, log: true}
    model.hidden_sizes: {choices: [[32], [64, 64]]}
    data.target_mode: null          # keep the config's target mode
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lstm_grad.errors import ConfigError

#: The default space. Stacks: one to four layers, the recipe's 128/128/128/64 last; each with and
#: without the residual adds (a 1-layer stack has none, so ``residual`` changes nothing there).
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "model.lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "model.hidden_sizes": {"choices": [[32], [64], [64, 64], [128, 64], [64, 64, 64], [128, 128, 128, 64]]},
    "model.residual": {"choices": [True, False]},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "model.weight_decay": {"low": 1e-7, "high": 1e-2, "log": True},
    "data.window": {"choices": [20, 40, 60, 120]},
    "data.target_mode": {"choices": ["level", "log_return"]},
}


def _check(name: str, spec: Any, where: str) -> dict[str, Any]:
    """Return ``spec`` if it describes a range or choices; else raise a one-line ``ConfigError``."""
    if not isinstance(spec, dict) or not ({"choices"} <= spec.keys() or {"low", "high"} <= spec.keys()):
        raise ConfigError(f"{where}: '{name}' must be {{low: .., high: ..}} (optionally log: true, step: ..) or "
                          f"{{choices: [..]}}, found {spec!r}")
    unknown = set(spec) - {"choices", "low", "high", "log", "step"}
    if unknown:
        raise ConfigError(f"{where}: '{name}' has unknown keys {sorted(unknown)}; use low, high, log, step or choices")
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"{where}: '{name}' choices must be a non-empty list, found {spec['choices']!r}")
        return spec
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
        raise ConfigError(f"{where}: '{name}' needs numbers low <= high, found low={low!r} high={high!r}")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"{where}: '{name}' is log-uniform, so low must be > 0 (found {low})")
    return spec


def load_space(path: str | None = None) -> dict[str, dict[str, Any]]:
    """Return the default space, overridden key by key by the YAML file at ``path``.

    Raises ``ConfigError`` (naming the file and key) for a malformed entry, a key that is not a
    ``section.argument`` flag, or an unreadable file.

    >>> sorted(load_space())[:3]
    ['data.target_mode', 'data.window', 'model.dropout']
    """
    space = {name: dict(spec) for name, spec in DEFAULT_SPACE.items()}
    if path is None:
        return space
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"--space {path}: cannot read the search space ({error.strerror or error})") from None
    try:
        override = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(override, dict):
        raise ConfigError(f"{path}: the search space must be a mapping of flag -> range, found {type(override).__name__}")
    for name, spec in override.items():
        if not isinstance(name, str) or "." not in name or name.startswith("-"):
            raise ConfigError(f"{path}: key {name!r} must be a fit flag without dashes, e.g. model.lr or data.window")
        if spec is None:
            space.pop(name, None)
        else:
            space[name] = _check(name, spec, path)
    return space


def _encode(choice: Any) -> Any:
    """Optuna's categorical values are None / bool / int / float / str: lists travel as JSON text."""
    return json.dumps(choice) if isinstance(choice, (list, dict)) else choice


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one value per flag from an ``optuna.Trial``; return ``{flag: value}`` (lists decoded)."""
    values: dict[str, Any] = {}
    for name, spec in space.items():
        if "choices" in spec:
            drawn = trial.suggest_categorical(name, [_encode(c) for c in spec["choices"]])
            values[name] = json.loads(drawn) if isinstance(drawn, str) and drawn[:1] in "[{" else drawn
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and not isinstance(spec.get("step"), float):
            values[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step") or 1,
                                             log=bool(spec.get("log")))
        else:
            values[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), step=spec.get("step"),
                                               log=bool(spec.get("log")))
    return values


def decode(params: dict[str, Any]) -> dict[str, Any]:
    """Turn a finished trial's stored ``params`` back into flag values (JSON text -> lists).

    >>> decode({"model.hidden_sizes": "[64, 64]", "model.lr": 0.001, "data.target_mode": "level"})
    {'model.hidden_sizes': [64, 64], 'model.lr': 0.001, 'data.target_mode': 'level'}
    """
    return {k: json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v for k, v in params.items()}


def in_space(values: dict[str, Any], space: dict[str, dict[str, Any]]) -> bool:
    """Tell whether decoded ``values`` lie in ``space`` (same keys, each value allowed).

    >>> in_space({"model.lr": 0.5}, {"model.lr": {"low": 0.1, "high": 1.0, "log": True}})
    True
    """
    if set(values) != set(space):
        return False
    for name, spec in space.items():
        value = values[name]
        if "choices" in spec:
            if value not in spec["choices"]:
                return False
        elif not spec["low"] <= value <= spec["high"]:
            return False
    return True


def as_flags(values: dict[str, Any]) -> list[str]:
    """Render values as fit flags; lists and booleans as JSON, which jsonargparse reads.

    >>> as_flags({"model.hidden_sizes": [64, 64], "model.residual": False, "model.lr": 0.001})
    ['--model.hidden_sizes=[64, 64]', '--model.residual=false', '--model.lr=0.001']
    """
    return [f"--{name}={value if isinstance(value, str) else json.dumps(value)}" for name, value in values.items()]
