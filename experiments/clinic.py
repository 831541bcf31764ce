"""The clinic: small models with planted gradient pathologies, and what the doctor makes of them.

    python -m experiments.clinic                 # train every case (about 30 s on 2 CPU cores, 16 runs)
    python -m experiments.clinic --case unused_layer deep_plain_lstm
    python -m experiments.clinic --report-only   # rebuild docs/clinic.md from results/clinic.json

Each case (:mod:`experiments.clinic_cases`) trains with ``GradientMonitor`` + ``TimeGradientProbe`` and a
TensorBoard logger into ``runs/clinic/<case>/round<i>``. The live doctor's findings
(``GradientMonitor().doctor.findings``) are compared with the offline ones (``signals_of(read_run(dir))``),
the TOP finding's own fix is applied (``clinic_cases.FIXES``) and the case is rerun, up to
``MAX_ROUNDS`` times while the fix leaves a warning of the kind it treated (a fix such as "lower the
learning rate ~10-30x" may need two steps). A planted case passes when its cause is the top finding and
no warning of that kind is left after the fix; a control passes without any warning. Writes
``results/clinic.json`` (with the commit and versions) and ``docs/clinic.md`` from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from experiments.clinic_report import MAX_ROUNDS, PROBLEMS, _finding_cell, _present, render, thresholds_used
from experiments import CODE_PATHS

LOG_EVERY = 2  # log_every_n_steps: enough logged steps in a few epochs of 16 batches
COMMAND = "python -m experiments.clinic"
# the number that shows a kind's cure: (key of the round's metrics, label, format)
METRICS = {
    "vanishing_depth": ("ratio_first_last", "grad ratio first/last layer", ".2g"),
    "short_memory": ("reach_share", "reach / window", ".2f"),
    "clip_saturated": ("clip_rate", "clip rate", ".2f"),
    "lr_too_high": ("update_ratio_max", "update ratio (largest group)", ".2g"),
    "lr_too_low": ("update_ratio_max", "update ratio (largest group)", ".2g"),
    "gate_saturation": ("forget_closed", "forget gates closed", ".2f"),
    "no_gradient": ("no_gradient_groups", "groups without gradient", "d"),
    "nonfinite": ("nonfinite_steps", "non-finite steps", "d"),
    "healthy": ("late_loss", "train loss (late median)", ".3f"),
    "not_learnable": ("best_val_rel_mae", "best val MAE / persistence's", ".3f"),
}


# ---- one run ------------------------------------------------------------------------------------------
def _late(series: dict[int, float]) -> list[float]:
    """The last half of a series' logged values (the doctor's "settled state")."""
    steps = sorted(series)
    return [series[s] for s in steps[len(steps) // 2:]]


def _median_late(series: dict[int, float]) -> float | None:
    late = _late(series)
    return statistics.median(late) if late else None


def metrics_of(signals: Any, steps: int) -> dict[str, Any]:
    """The numbers of a run that the findings turn on, computed from the doctor's signals as its rules do
    (medians over the last half of the logged steps), whether or not a rule fired."""
    from lstm_grad.diagnostics.doctor import depth_ratio, layers_of

    layers = layers_of(signals)  # the rule's own layers: the output head and residual projections left out
    out: dict[str, Any] = {"steps": steps, "logged_steps": len(signals.norms.get("total", {})),
                           "late_loss": _median_late(signals.loss)}
    if len(layers) >= 2:
        out["ratio_first_last"] = depth_ratio(signals, layers[0], layers[-1])
    if signals.reach and signals.window:
        out["reach"], out["window"] = _median_late(signals.reach), signals.window
        out["reach_share"] = out["reach"] / signals.window
    if signals.clip_value and signals.clipped:
        out["clip_rate"] = statistics.fmean(_late(signals.clipped))
        out["norm_over_clip"] = _median_late(signals.norms.get("total", {})) / signals.clip_value
    updates = [v for v in (_median_late(s) for s in signals.updates.values()) if v is not None]
    if updates:
        out["update_ratio_max"], out["update_ratio_min"] = max(updates), min(updates)
    closed = [_median_late(s) for k, s in signals.gates.items() if k.endswith("/forget_closed") and s]
    if closed:
        out["forget_closed"] = max(closed)
    out["no_gradient_groups"] = len(signals.no_gradient)
    out["nonfinite_steps"] = len(signals.nonfinite)
    if signals.val_rel_mae:
        out["best_val_rel_mae"] = min(signals.val_rel_mae.values())
    return out


def finding_record(finding: Any) -> dict[str, Any]:
    """A finding as JSON, its evidence rounded to 4 significant digits."""
    record = finding.to_json()
    record["evidence"] = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in record["evidence"].items()}
    return record


def train(case: str, s: dict[str, Any], run_root: Path, version: str) -> dict[str, Any]:
    """Train one case's settings with the monitor and the probe; return the round's record: settings,
    live and offline findings, whether they agree, the metrics and the non-finite origin."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from experiments.clinic_cases import build
    from lstm_grad.diagnostics import GradientMonitor, TimeGradientProbe, read_run
    from lstm_grad.diagnostics.doctor import examine
    from lstm_grad.diagnostics.run_signals import signals_of

    start = time.perf_counter()
    monitor, probe = GradientMonitor(), TimeGradientProbe()
    logger = TensorBoardLogger(save_dir=str(run_root), name=case, version=version, default_hp_metric=False)
    trainer = pl.Trainer(max_epochs=s["epochs"], accelerator="cpu", devices=1, logger=logger,
                         callbacks=[monitor, probe], log_every_n_steps=LOG_EVERY, gradient_clip_val=s["clip"],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0)
    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always")
        if s.get("forecaster"):
            from lstm_grad.data import GoldDataModule
            from lstm_grad.module import LSTMForecaster

            pl.seed_everything(s["seed"], verbose=False)
            trainer.fit(LSTMForecaster(), datamodule=GoldDataModule())
        else:
            module, loader = build(s)
            trainer.fit(module, train_dataloaders=loader)
    live = monitor.doctor.findings
    offline = examine(signals_of(read_run(logger.log_dir)))
    events = monitor.tracker.nonfinite_events
    return {"version": version, "settings": dict(s), "log_dir": str(logger.log_dir),
            "findings": [finding_record(f) for f in live],
            "offline": [{"kind": f.kind, "severity": f.severity, "groups": f.groups} for f in offline],
            "agree": _kinds(live) == _kinds(offline) and [f.kind for f in live[:1]] == [f.kind for f in offline[:1]],
            "metrics": metrics_of(monitor.doctor.signals(monitor.tracker), trainer.global_step),
            "origin": events[0].get("origin") if events else None,
            "warnings_told": sum(w.category.__name__ in ("GradientFinding", "GradientHealthWarning") for w in told),
            "wall_s": time.perf_counter() - start}


def _kinds(findings: Sequence[Any]) -> list[str]:
    """The kinds of the warnings and errors, sorted (what must agree live and offline)."""
    return sorted(f.kind for f in findings if f.severity in PROBLEMS)


def problems(record: dict[str, Any]) -> list[str]:
    return sorted(f["kind"] for f in record["findings"] if f["severity"] in PROBLEMS)


# ---- one case -----------------------------------------------------------------------------------------
def run_case(case: dict[str, Any], run_root: Path) -> dict[str, Any]:
    """Run a case; while the kind of its first top finding is still reported (at most ``MAX_ROUNDS``
    runs), apply that finding's own fix and rerun; judge the outcome (:func:`judge`)."""
    from experiments.clinic_cases import BASE, apply_fix

    shutil.rmtree(run_root / case["name"], ignore_errors=True)
    settings = {**BASE, **case["settings"]}
    rounds, fixes = [train(case["name"], settings, run_root, "round0")], []
    treated = rounds[0]["findings"][0]["kind"]
    while case["expect"] and len(rounds) < MAX_ROUNDS:
        finding = next((f for f in rounds[-1]["findings"] if f["kind"] == treated), None)
        if finding is None or (len(rounds) > 1 and treated not in _present(rounds[-1])):
            break  # cured
        fixed = apply_fix(treated, finding["fix"], settings)
        if fixed is None:
            break  # healthy, not_learnable: nothing to change
        settings, what = fixed
        fixes.append(what)
        rounds.append(train(case["name"], settings, run_root, f"round{len(rounds)}"))
        print(f"  {case['name']}: {treated} -> {what} -> {', '.join(problems(rounds[-1])) or 'no warning'}",
              flush=True)
    return judge(case, rounds, fixes, treated)


def judge(case: dict[str, Any], rounds: list[dict[str, Any]], fixes: list[str], treated: str | None) -> dict[str, Any]:
    first, last = rounds[0], rounds[-1]
    out = {"name": case["name"], "planted": case["planted"], "expect": case["expect"], "fixes": fixes,
           "rounds": rounds, "agree": all(r["agree"] for r in rounds)}
    if not case["expect"]:  # a control
        out["named"] = not problems(first)
        out["cured"] = out["named"]
        out["metric"] = _metric(case.get("metric", "healthy"), first, first)
        return out
    expected = set(case["expect"])
    out["named"] = treated in expected
    out["cured"] = len(rounds) > 1 and not expected & set(_present(last))
    out["metric"] = _metric(treated if treated in METRICS else case["expect"][0], first, last)
    return out


def _metric(kind: str, first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    key, label, spec = METRICS[kind]
    return {"key": key, "label": label, "format": spec, "before": first["metrics"].get(key),
            "after": last["metrics"].get(key)}


# ---- the page -----------------------------------------------------------------------------------------
def provenance() -> dict[str, Any]:
    import lightning
    import torch

    from lstm_grad.training.provenance import git_commit

    return {"commit": git_commit(paths=CODE_PATHS), "torch": torch.__version__, "lightning": lightning.__version__}


@contextlib.contextmanager
def quiet_and_narrow(threads: int) -> Iterator[None]:
    """Lightning's and the monitor's console lines down to errors (the findings are in the JSON) and
    ``threads`` torch threads; both restored on the way out (a test session goes on after it)."""
    import torch

    names = ("lightning", "lightning.pytorch", "lightning.fabric", "lstm_grad")
    levels, previous = {n: logging.getLogger(n).level for n in names}, torch.get_num_threads()
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", default=None, help="run only these cases (default: all)")
    parser.add_argument("--runs", type=Path, default=Path("runs/clinic"), help="where the TensorBoard runs go")
    parser.add_argument("--json", type=Path, default=Path("results/clinic.json"))
    parser.add_argument("--page", type=Path, default=Path("docs/clinic.md"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the models are tiny)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the page from the JSON; train nothing")
    args = parser.parse_args(argv)
    if not args.report_only:
        from experiments.clinic_cases import CASES

        unknown = set(args.case or []) - {c["name"] for c in CASES}
        if unknown:
            parser.error(f"unknown case(s) {sorted(unknown)}; cases: {[c['name'] for c in CASES]}")
        start = time.perf_counter()
        cases = []
        with quiet_and_narrow(args.threads):
            for case in CASES:
                if args.case and case["name"] not in args.case:
                    continue
                cases.append(run_case(case, args.runs))
                done = cases[-1]
                print(f"{done['name']}: top {_finding_cell(done['rounds'][0]['findings'])}; named {done['named']}, "
                      f"cured {done['cured']}, live = offline {done['agree']}", flush=True)
        data = {"command": COMMAND + (f" --case {' '.join(args.case)}" if args.case else ""), **provenance(),
                "wall_s": time.perf_counter() - start, "runs": sum(len(c["rounds"]) for c in cases),
                "thresholds": thresholds_used(), "cases": cases}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    if not args.json.exists():
        parser.error(f"{args.json} does not exist; run {COMMAND} first (without --report-only)")
    data = json.loads(args.json.read_text())
    args.page.parent.mkdir(parents=True, exist_ok=True)
    args.page.write_text(render(data))
    print(f"wrote {args.page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
