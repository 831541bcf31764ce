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

from experiments import CODE_PATHS

MAX_ROUNDS = 3  # the planted run and at most two fixes
LOG_EVERY = 2  # log_every_n_steps: enough logged steps in a few epochs of 16 batches
COMMAND = "python -m experiments.clinic"
PROBLEMS = ("error", "warning")
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


def _present(record: dict[str, Any]) -> list[str]:
    """The kinds still reported that a fix was meant to remove (warnings and errors; ``no_gradient``, an
    info, counts too: its cure is its absence)."""
    return [f["kind"] for f in record["findings"] if f["severity"] in PROBLEMS or f["kind"] == "no_gradient"]


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
def thresholds_used() -> list[dict[str, Any]]:
    """Every threshold of :mod:`lstm_grad.diagnostics.thresholds` with its source, as the run used them."""
    from lstm_grad.diagnostics import thresholds as T

    rows = []
    for name in (n for n in vars(T) if n.isupper() and not n.endswith("_SOURCE")):
        parts = name.split("_")  # SPIKE_MIN_HISTORY -> SPIKE_MIN_HISTORY_SOURCE, SPIKE_MIN_SOURCE, SPIKE_SOURCE
        stems = ("_".join(parts[:k]) for k in range(len(parts), 0, -1))
        source = next((getattr(T, f"{stem}_SOURCE") for stem in stems if hasattr(T, f"{stem}_SOURCE")), "")
        rows.append({"name": name, "value": getattr(T, name), "source": source})
    return rows


def _num(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    return format(int(value), "d") if spec == "d" else format(value, spec)


def _finding_cell(findings: list[dict[str, Any]]) -> str:
    if not findings:
        return "none"
    top = findings[0]
    groups = f" ({', '.join(top['groups'])})" if top["groups"] else ""
    return f"{top['kind']}{groups} [{top['severity']}]"


def _after_cell(case: dict[str, Any]) -> str:
    if len(case["rounds"]) < 2:
        return "—"
    last = case["rounds"][-1]
    left = sorted(_present(last))
    return (", ".join(left) + " left") if left else f"no warning (top: {_finding_cell(last['findings'])})"


def table(cases: list[dict[str, Any]]) -> list[str]:
    lines = [("| case | planted cause | top finding (kind + groups) | fix applied | finding after the fix | "
             "metric before → after | passed |"), "| --- | --- | --- | --- | --- | --- | --- |"]
    for case in cases:
        m = case["metric"]
        before, after = _num(m["before"], m["format"]), _num(m["after"], m["format"])
        metric = f"{m['label']}: {before}" + (f" → {after}" if len(case["rounds"]) > 1 else "")
        fixes = " ; ".join(case["fixes"]) or "—"
        passed = "yes" if case["named"] and case["cured"] else "**no**"
        lines.append(f"| {case['name']} | {case['planted']} | {_finding_cell(case['rounds'][0]['findings'])} | "
                     f"{fixes} | {_after_cell(case)} | {metric} | {passed} |")
    return lines


def headline(cases: list[dict[str, Any]]) -> str:
    planted = [c for c in cases if c["expect"]]
    controls = [c for c in cases if not c["expect"]]
    disagree = [c["name"] for c in cases if not c["agree"]]
    agreement = ("Live and offline (`signals_of(read_run(dir))`) findings agree on every run." if not disagree else
                 f"Live and offline (`signals_of(read_run(dir))`) findings differ in: {', '.join(disagree)}.")
    return (f"**{sum(c['named'] and c['cured'] for c in planted)} of {len(planted)} planted causes named first and "
            f"cured; {sum(c['named'] for c in controls)} of {len(controls)} controls without a warning.** {agreement}")


def failures(cases: list[dict[str, Any]]) -> list[str]:
    """One line per case that did not pass: what the doctor said instead, and where its fix led."""
    lines = []
    for c in cases:
        top = _finding_cell(c["rounds"][0]["findings"])
        if not c["expect"] and not c["named"]:
            lines.append(f"- {c['name']}: top finding {top}; expected no warning")
        elif c["expect"] and not c["named"]:
            fixed = f"; after its fix ({' ; '.join(c['fixes'])}): {_after_cell(c)}" if c["fixes"] else ""
            lines.append(f"- {c['name']}: top finding {top}; expected {' or '.join(c['expect'])}{fixed}")
        elif c["expect"] and not c["cured"]:
            lines.append(f"- {c['name']}: named first, but after its fix ({' ; '.join(c['fixes']) or 'none'}): "
                         f"{_after_cell(c)}")
    return ["Not passed:", "", *lines, ""] if lines else []


def render(data: dict[str, Any]) -> str:
    """The page ``docs/clinic.md``, computed from ``results/clinic.json`` alone."""
    cases = data["cases"]
    lines = ["# The clinic: planted gradient pathologies and the doctor's diagnosis", "",
             "<!-- generated by `python -m experiments.clinic` from results/clinic.json; do not edit -->", "",
             ("Small models (CPU, seconds each) with one planted cause each, trained with `GradientMonitor` and "
             "`TimeGradientProbe`; the live doctor's top finding, its own fix applied, and the run repeated "
             f"(up to {MAX_ROUNDS - 1} fixes while the treated kind remains). A planted case passes when its cause "
             "is the top finding and no warning of that kind is left after the fix; a control passes without any "
             "warning."), "", headline(cases), "", *table(cases), "", *failures(cases)]
    origins = [(c["name"], c["rounds"][0]["origin"]) for c in cases if c["rounds"][0].get("origin")]
    if origins:
        lines += ["Non-finite origin found by the monitor's replay:", ""]
        lines += [f"- {name}: {origin}" for name, origin in origins]
        lines.append("")
    lines += ["## What the doctor said", "", "The top finding of each planted run, as the monitor reported it.", ""]
    for case in (c for c in cases if c["expect"]):
        top = case["rounds"][0]["findings"][0]
        evidence = ", ".join(f"{k} {v}" for k, v in top["evidence"].items() if k != "source")
        lines.append(f"- **{case['name']}**: [{top['severity']}] {top['kind']}: {top['summary']} ({evidence}). "
                     f"Fix: {top['fix']}")
    lines += ["", "## Thresholds used", "", "From `lstm_grad.diagnostics.thresholds` at the run's commit.", "",
              "| name | value | source |", "| --- | --- | --- |"]
    lines += [f"| `{t['name']}` | {t['value']:g} | {t['source']} |" for t in data["thresholds"]]
    lines += ["", "## Provenance", "", (f"`{data['command']}` at commit `{data['commit']}`; torch {data['torch']}, "
              f"lightning {data['lightning']}; {data['runs']} runs, {data['wall_s']:.0f} s wall time in all."), ""]
    return "\n".join(lines)


# ---- the command --------------------------------------------------------------------------------------
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
