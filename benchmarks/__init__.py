"""Benchmarks of lstm_grad: what ``Trainer.fit`` and the diagnostics cost, throughput, peers, memory.

    python -m benchmarks.bench --quick --json docs/benchmarks.json   # the headline items
    python -m benchmarks.report docs/benchmarks.json                 # docs/BENCHMARKS.md, docs/performance.md

A package of its own on top of ``lstm_grad``; ``lstm_grad`` never imports it.
"""
