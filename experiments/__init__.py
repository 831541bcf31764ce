"""The experiments behind ``results/`` and ``docs/results.md``: the recipe's ablation, the depth /
window sweep, the choice of the default forecaster, and the pages rebuilt from their CSVs.

    bash experiments/full_protocol.sh              # every run of results/, resumable
    python -m experiments.ablation --part ablation # one grid (see --help)
    python -m experiments.results_pages            # the pages, from the CSVs alone

A package of its own on top of ``lstm_grad``; ``lstm_grad`` never imports it.
"""

# What a result row's numbers depend on: a change here that is not committed makes the row
# irreproducible (``experiments.runs.code_commit`` refuses it, ``benchmarks`` record it).
CODE_PATHS = ("lstm_grad", "configs", "pyproject.toml", "benchmarks", "experiments")
