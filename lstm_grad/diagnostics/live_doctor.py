"""The doctor during training: signals gathered from the tracker, the probe and the trainer's metrics,
findings reported once each, spike forensics written to the run folder. No Lightning import: the
monitor hands in plain values."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

from lstm_grad.diagnostics.doctor import Finding, Signals, examine
from lstm_grad.diagnostics.findings import _fmt, json_safe
from lstm_grad.diagnostics.origin import nonfinite_origin
from lstm_grad.diagnostics.run_signals import CONTEXT_TAG
from lstm_grad.diagnostics.texts import context_markdown, findings_markdown, with_data
from lstm_grad.diagnostics.timegrad import time_reach
from lstm_grad.diagnostics.tracker import GradientTracker

LOG = logging.getLogger("lstm_grad.diagnostics")
FORENSIC_KINDS = ("exploding", "loss_spike")
AT_THE_END = ("healthy", "not_learnable", "worse_than_persistence")  # judged on the whole run


class LiveDoctor:
    """Collect what the tracker does not see (loss, reach, gates, validation vs persistence, settings)
    and run :func:`~lstm_grad.diagnostics.doctor.examine` at epoch ends; each finding is told once."""

    def __init__(self, warn: Callable[[str], None]) -> None:
        self.warn = warn
        self.loss: dict[int, float] = {}
        self.val_rel_mae: dict[int, float] = {}
        self.reach: dict[int, float] = {}
        self.gates: dict[str, dict[int, float]] = {}
        self.window: Optional[int] = None
        self.clip_value: Optional[float] = None
        self.hparams: dict[str, Any] = {}
        self.told: set[tuple[str, tuple[str, ...]]] = set()
        self.findings: list[Finding] = []
        self.forensics: dict[int, str] = {}  # step -> file written

    def read_probe(self, probe: Any) -> None:
        """Take a ``TimeGradientProbe``'s profiles (reach per probe, the window) and gate shares."""
        fraction = getattr(probe, "fraction", 0.01)
        for entry in getattr(probe, "history", []):
            self.reach[entry["step"]] = float(time_reach(entry["profile"], fraction))
            self.window = len(entry["profile"])
        for key, series in getattr(probe, "gate_history", {}).items():
            self.gates.setdefault(key, {}).update(series)

    def examine(self, trainer: Any, tracker: GradientTracker, step: int, final: bool) -> None:
        """Take the validation comparison with persistence (``val/rel_mae``, or the older ``val/mase``) and
        the probes' profiles from a Lightning trainer (either namespace), then :meth:`check`."""
        metrics = getattr(trainer, "callback_metrics", {}) or {}
        rel_mae = metrics.get("val/rel_mae", metrics.get("val/mase"))
        if rel_mae is not None and not getattr(trainer, "sanity_checking", False):
            self.val_rel_mae[step] = float(rel_mae)
        for callback in trainer.callbacks:
            if type(callback).__name__ == "TimeGradientProbe":
                self.read_probe(callback)
        # the first logger's folder: Trainer.log_dir broadcasts under DDP, a collective rank 0 must not call alone
        run_dir = next((getattr(logger, "log_dir", None) for logger in trainer.loggers), None)
        self.check(tracker, final, run_dir if trainer.is_global_zero else None)

    def texts(self, tracker: GradientTracker) -> dict[str, str]:
        """``{tag: text}`` of ``doctor/context`` (what ``diagnose`` needs besides the scalars) and
        ``doctor/findings``: Markdown for the TEXT tab, the values in a comment (:mod:`.texts`)."""
        context = self.context(tracker)
        findings = [json_safe(f.to_json()) for f in self.findings]
        return {CONTEXT_TAG: with_data(context_markdown(context), context),
                "doctor/findings": with_data(findings_markdown(findings), findings)}

    def write_texts(self, trainer: Any, tracker: GradientTracker, step: int) -> None:
        """Write :meth:`texts` as TensorBoard text on rank 0."""
        texts = self.texts(tracker)
        for logger in trainer.loggers if trainer.is_global_zero else []:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                for tag, text in texts.items():
                    experiment.add_text(tag, text, step)

    def signals(self, tracker: GradientTracker) -> Signals:
        groups = list(tracker.groups.names) if hasattr(tracker, "groups") else []
        return Signals(groups=groups + ["total"], norms=tracker.norm_series, updates=tracker.update_series,
                       loss=self.loss, clipped=tracker.clipped_series, reach=self.reach, gates=self.gates,
                       nonfinite=[dict(e) for e in tracker.nonfinite_events], no_gradient=tracker.missing_groups(),
                       val_rel_mae=self.val_rel_mae, window=self.window, clip_value=self.clip_value,
                       hparams=self.hparams)

    def check(self, tracker: GradientTracker, final: bool, run_dir: Optional[str]) -> list[Finding]:
        """Run the doctor; tell the findings not told before (warnings and errors as warnings, info as
        a log line; ``healthy`` and ``not_learnable`` only when training ends). Returns the new ones."""
        findings = examine(self.signals(tracker))
        self.findings = findings
        new = []
        for finding in findings:
            key = (finding.kind, tuple(finding.groups))
            if finding.kind in ("no_gradient", "nonfinite"):  # the tracker tells those as soon as it knows
                continue
            if key in self.told or (finding.kind in AT_THE_END and not final):
                continue
            self.told.add(key)
            lines = finding.lines()
            if finding.kind in FORENSIC_KINDS and run_dir:
                path = self.write_forensics(tracker, finding, run_dir)
                if path:
                    lines.append(f"    the last {len(tracker.recent)} logged steps' per-group values: {path}")
            if finding.severity == "info":
                LOG.info("%s", "\n".join(lines) if finding.kind != "healthy" else f"{finding.summary} "
                         f"({', '.join(f'{k} {_fmt(v)}' for k, v in finding.evidence.items() if k != 'source')})")
            else:
                self.warn("\n".join(lines))
            new.append(finding)
        return new

    def replay_origin(self, module: Any, batch: Any, batch_idx: int, event: dict[str, Any]) -> None:
        """Replay ``module.training_step(batch, batch_idx)`` once with hooks to find where a non-finite
        value was born (:func:`lstm_grad.diagnostics.origin.nonfinite_origin`); record it in ``event``
        and say it. The module's ``log`` / ``log_dict`` are silenced during the replay (no second point)."""
        def loss_of() -> Any:
            out = module.training_step(batch, batch_idx)
            return out["loss"] if isinstance(out, dict) else out

        silent = {"log": lambda *a, **k: None, "log_dict": lambda *a, **k: None}
        module.__dict__.update(silent)
        try:
            origin = nonfinite_origin(module, loss_of)
        finally:
            for name in silent:
                module.__dict__.pop(name, None)
        if origin is not None:
            event["origin"] = origin.describe()
            self.warn(f"where step {event['step']}'s NaN / Inf came from: {origin.describe()} (found by replaying "
                      "that batch with hooks)")

    def nonfinite_forensics(self, tracker: GradientTracker, event: dict[str, Any], run_dir: str) -> None:
        """Write the last logged steps' per-group values beside the run for a non-finite step; say where."""
        finding = Finding("nonfinite", "error", list(event.get("groups") or []), [event["step"], event["step"]],
                          f"non-finite gradient at step {event['step']}", "", {"source": "any NaN or Inf in a gradient"})
        path = self.write_forensics(tracker, finding, run_dir)
        if path:
            event["forensics"] = path
            self.warn(f"the last {len(tracker.recent)} logged steps before the non-finite step {event['step']}: {path}")

    def write_forensics(self, tracker: GradientTracker, finding: Finding, run_dir: str) -> Optional[str]:
        """Write the kept per-group values of the last logged steps as JSON beside the run."""
        step = finding.steps[0] if finding.steps else tracker.last_step
        if step in self.forensics:
            return self.forensics[step]
        path = Path(run_dir) / f"gradient_forensics_step{step}.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"finding": finding.to_json(), "steps": json_safe(list(tracker.recent))},
                                       indent=1))
        except OSError as error:
            LOG.warning("could not write %s: %s", path, error)
            return None
        self.forensics[step] = str(path)
        return str(path)

    def context(self, tracker: GradientTracker) -> dict[str, Any]:
        """What the event files cannot say, for ``diagnose``: model order, clip value, settings..."""
        return {"groups": list(tracker.groups.names), "clip_value": self.clip_value, "window": self.window,
                "no_gradient": tracker.missing_groups(), "nonfinite": json_safe(tracker.nonfinite_events),
                "hparams": {k: v for k, v in self.hparams.items() if _plain(v)}}


def _plain(value: Any) -> bool:
    """True for what JSON holds as is: numbers, strings, booleans and lists / tuples of them."""
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, (int, float, str, bool)) for v in value)
    return isinstance(value, (int, float, str, bool)) or value is None
