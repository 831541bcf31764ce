"""TensorBoard TEXT records that a person reads and ``diagnose`` reads back: Markdown, with the numbers
behind it in an HTML comment.

TensorBoard renders a text summary as Markdown and sanitizes the HTML with bleach, which strips
comments (``tensorboard/plugin_util.py``, ``markdown_to_safe_html``): the TEXT tab shows the table, not
the JSON, and the event file still holds every value exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

OPEN, CLOSE = "<!-- lstm-grad data: ", " -->"


def with_data(markdown: str, data: Any) -> str:
    """Return ``markdown`` followed by ``data`` as JSON in an HTML comment (``>`` escaped as ``\\u003e``, so
    no string in it can close the comment).

    >>> with_data("**x**", {"a": "->"})
    '**x**\\n\\n<!-- lstm-grad data: {"a": "-\\\\u003e"} -->'
    """
    payload = json.dumps(data, default=str).replace(">", "\\u003e")  # '>' only occurs inside JSON strings
    return f"{markdown}\n\n{OPEN}{payload}{CLOSE}"


def data_of(text: str) -> Any:
    """Return the data :func:`with_data` put in ``text``; a record that is JSON alone (runs written before
    the TEXT tab was made readable) is read as it is. Raises ``json.JSONDecodeError`` for anything else.

    >>> data_of(with_data("| a |", [1.5, 2])), data_of('{"old": 1}')
    ([1.5, 2], {'old': 1})
    """
    start = text.rfind(OPEN)
    if start < 0:
        return json.loads(text)
    return json.loads(text[start + len(OPEN):text.rindex(CLOSE)])


def _number(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3g}"


def profile_markdown(label: str, profile: Sequence[float], reach: float, fraction: float) -> str:
    """A probe's gradient through time for the TEXT tab: the reach in words and |dL/dx_t| at a few lags
    (lag 1 = the last input step; ``profile`` is time-ordered, its last element lag 1).

    >>> print(profile_markdown("epoch 1", [1e-6, 1e-3, 0.5], 2, 0.01))
    **Gradient through time, epoch 1**: reach 2 of 3 steps (the largest lag whose \\|dL/dx_t\\| is >= 1 % of the largest)
    <BLANKLINE>
    | lag | 1 | 2 | 3 |
    | --- | --- | --- | --- |
    | \\|dL/dx_t\\| | 0.5 | 0.001 | 1e-06 |
    """
    window = len(profile)
    lags = sorted({lag for lag in (1, 2, 5, 10, 20, 40, 60, 120, 250, window) if lag <= window})
    header = (f"**Gradient through time, {label}**: reach {reach:.0f} of {window} steps (the largest lag whose "
              f"\\|dL/dx_t\\| is >= {fraction * 100:g} % of the largest)")
    return "\n".join([header, "", "| lag | " + " | ".join(map(str, lags)) + " |",
                      "| --- | " + " | ".join("---" for _ in lags) + " |",
                      "| \\|dL/dx_t\\| | " + " | ".join(_number(float(profile[-lag])) for lag in lags) + " |"])


def findings_markdown(findings: Sequence[Mapping[str, Any]]) -> str:
    """The doctor's findings for the TEXT tab: one numbered entry each, severity and kind first, then the
    evidence and the fix (``Finding.to_json`` records)."""
    if not findings:
        return "**The doctor**: no findings yet."
    lines = ["**The doctor's findings**", ""]
    for number, finding in enumerate(findings, 1):
        evidence = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in finding.get("evidence", {}).items() if k != "source")
        lines += [f"{number}. **{finding['severity']} · {finding['kind']}**: {finding['summary']}  ",
                  f"   evidence: {evidence or 'n/a'}  ", f"   fix: {finding.get('fix') or 'none needed'}", ""]
    return "\n".join(lines).rstrip()


def context_markdown(context: Mapping[str, Any]) -> str:
    """What the doctor knows of a run besides its scalars, as a two-column table."""
    def words(value: Any) -> str:
        if value in (None, [], {}):
            return "none"
        if isinstance(value, (list, tuple)):
            return ", ".join(str(v.get("step", v)) if isinstance(v, dict) else str(v) for v in value)
        return str(value)

    rows = [("parameter groups (model order)", context.get("groups")), ("gradient clip value", context.get("clip_value")),
            ("window (steps)", context.get("window")), ("groups without a gradient", context.get("no_gradient")),
            ("steps with a non-finite gradient", context.get("nonfinite"))]
    return "\n".join(["**What the doctor read besides the scalars**", "", "| | |", "| --- | --- |",
                      *(f"| {name} | {words(value)} |" for name, value in rows)])
