"""Run the main command on the embedded data and paste its measured output into the README and the docs.

``python -m experiments.fit_example``

Runs ``python -m lstm_grad.fit`` (no arguments: the default forecaster, seed 42) in a temporary folder,
takes its printed results (from the table to the forecast past the data) and writes them between the
``<!-- fit-example:begin -->`` / ``<!-- fit-example:end -->`` markers: whole in ``docs/forecasting.md``,
abridged (the table, the intervals, the epochs and the forecast) in ``README.md``, each followed by the
commit, the load average and the wall time of the run. Needs committed code and a quiet machine.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lstm_grad.training.provenance import git_commit

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- fit-example:begin -->", "<!-- fit-example:end -->"
README_KEEP = ("| ", "intervals ", "epochs:", "forecast after")  # the lines the README shows


def run_fit() -> tuple[list[str], str]:
    """Run the default fit; return its result lines and the provenance sentence."""
    load, commit, start = os.getloadavg()[0], git_commit(), time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([sys.executable, "-m", "lstm_grad.fit", "--trainer.enable_progress_bar", "false"],
                              cwd=folder, capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    lines = done.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| forecaster"))
    last = next(i for i, line in enumerate(lines) if line.startswith("forecast after"))
    note = (f"(`python -m lstm_grad.fit`, seed 42, commit {commit[:7]}, 2-core CPU, load average {load:.2f} at the "
            f"start, {seconds:.0f} s end to end; pasted by `python -m experiments.fit_example`)")
    return lines[first:last + 1], note


def paste(path: Path, lines: list[str], note: str) -> None:
    """Replace the text between the markers of ``path`` with ``lines`` in a code block and ``note``."""
    text = path.read_text()
    block = "\n".join([BEGIN, "```", *lines, "```", note, END])
    new, count = re.subn(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if count != 1:
        raise SystemExit(f"{path}: expected one {BEGIN} .. {END} block, found {count}")
    path.write_text(new)


def main() -> None:
    lines, note = run_fit()
    paste(ROOT / "docs" / "forecasting.md", lines, note)
    shown = [line.split(" of the test prices")[0] + " ..." if line.startswith("intervals ") else line
             for line in lines if line.startswith(README_KEEP)]
    paste(ROOT / "README.md", shown, note)
    print("\n".join(lines), "\n", note)


if __name__ == "__main__":
    main()
