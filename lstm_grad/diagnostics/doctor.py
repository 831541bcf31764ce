"""The gradient doctor: logged signals in, findings out (what is wrong, where, how sure, what to do).

One engine for every model, run live by ``GradientMonitor`` (each finding reported once, when it
becomes certain) and offline by ``python -m lstm_grad.diagnose`` on a run's event files. The
signals are the tags the monitor and the probe log; thresholds and their sources are in
:mod:`lstm_grad.diagnostics.thresholds`. Fixes name the exact flag for lstm-grad's forecaster
(``hparams`` with ``hidden_sizes``) and what to change in code for any other model.
"""

from __future__ import annotations

import math
import re
import statistics
from typing import Any, Optional

from lstm_grad.diagnostics import thresholds as T
from lstm_grad.diagnostics.findings import SEVERITIES, Finding, Series, Signals

__all__ = ["Finding", "Signals", "depth_ratio", "examine", "layers_of"]


def examine(signals: Signals) -> list[Finding]:
    """Return the findings, ordered by severity then strength; a healthy run gets one ``info`` line."""
    found: list[Finding] = []
    for rule in (_nonfinite, _exploding, _loss_spike, _clip_saturated, _vanishing_depth, _short_memory,
                 _learning_rate, _gate_saturation, _no_gradient):
        found.extend(rule(signals))
    if not any(f.severity in ("error", "warning") for f in found):
        found.extend(_not_learnable(signals))
        found.append(_healthy(signals))
    return sorted(found, key=lambda f: (SEVERITIES.index(f.severity), -f.strength))


# ---- helpers ----------------------------------------------------------------------------------------
def _late(series: Series) -> list[float]:
    """The values of the last half of the logged steps (the run's settled state)."""
    steps = sorted(series)
    return [series[s] for s in steps[len(steps) // 2:]]


def _span(series: Series) -> list[int]:
    return [min(series), max(series)] if series else []


def _ours(s: Signals) -> bool:
    return "hidden_sizes" in s.hparams


def layers_of(s: Signals) -> list[str]:
    """The groups that are layers, in model order: the summary tags, the output head (the last group) and
    residual projections (``proj_<k>``, which carry the skip, not the layer) left out."""
    named = [g for g in s.groups if g in s.norms and g not in ("total", "total_clipped")][:-1]
    return [g for g in named if not re.search(r"(^|\.)proj(_\d+)?$", g)] or named


def depth_ratio(s: Signals, first: str, last: str) -> Optional[float]:
    """Median over the last half of the logged steps of ‖∇first‖ / ‖∇last‖ (None without common steps)."""
    a, b = s.norms[first], s.norms[last]
    ratios = [a[x] / b[x] for x in sorted(set(a) & set(b)) if b[x] > 0]
    return statistics.median(ratios[len(ratios) // 2:]) if ratios else None


# ---- rules ------------------------------------------------------------------------------------------
def _nonfinite(s: Signals) -> list[Finding]:
    if not s.nonfinite:
        return []
    first = s.nonfinite[0]
    groups = ", ".join(first.get("groups") or [])
    origin = first.get("origin") or (f"group {groups}" if groups else "unknown (this run logged no group; the live "
                                     "monitor replays the batch and names it)")
    fix = ("--model.lr lower (e.g. a tenth) and keep --trainer.gradient_clip_val 1.0" if _ours(s) else
           "lower the learning rate, clip the gradient, and fix the op named as the origin (a log / sqrt / "
           "division of a value that reaches 0, an overflow in fp16)")
    return [Finding("nonfinite", "error", list(first.get("groups") or []), [first["step"], s.nonfinite[-1]["step"]],
                    f"the gradient became non-finite at step {first['step']}; origin: {origin}", fix,
                    {"nonfinite_steps": len(s.nonfinite), "first_step": first["step"],
                     "source": "any NaN or Inf in a gradient"}, strength=len(s.nonfinite))]


def _decades(value: float, threshold: float) -> float:
    """How far past its threshold a value is, in decades (the common scale of ``strength``)."""
    return math.log10(max(value, 1e-300) / max(threshold, 1e-300))


def _spikes(series: Series) -> list[tuple[int, float, float, float]]:
    """(step, value, z, factor) where a value exceeds the mean + k sd and ``SPIKE_FACTOR`` x the median of
    the previous window of logged steps."""
    steps, out = [x for x in sorted(series) if math.isfinite(series[x])], []  # a NaN is the nonfinite rule's
    for i, step in enumerate(steps):
        past = [series[x] for x in steps[max(0, i - T.SPIKE_WINDOW):i]]
        if len(past) < T.SPIKE_MIN_HISTORY:
            continue
        mean, sd = statistics.fmean(past), statistics.pstdev(past)
        z = (series[step] - mean) / max(sd, T.SPIKE_SD_FLOOR * abs(mean), 1e-30)
        factor = series[step] / max(statistics.median(past), 1e-30)
        if z > T.SPIKE_SIGMAS and factor >= T.SPIKE_FACTOR:
            out.append((step, series[step], z, factor))
    return out


def _first_mover(s: Signals, step: int) -> str:
    """The group whose norm rose most, relative to its own previous value, at ``step``."""
    best, name = -math.inf, "total"
    for group in layers_of(s) + [g for g in s.groups if g not in layers_of(s) and g in s.norms and g != "total"]:
        series = s.norms.get(group, {})
        before = [series[x] for x in sorted(series) if x < step][-1:]
        if step in series and before and before[0] > 0:
            rise = series[step] / before[0]
            if rise > best:
                best, name = rise, group
    return name


def _exploding(s: Signals) -> list[Finding]:
    total = s.norms.get("total", {})
    spikes = _spikes(total)
    huge = [(st, v) for st, v in total.items() if math.isfinite(v) and v > T.EXPLODE_ABS]
    if not spikes and not huge:
        return []
    step, value = (spikes[0][0], spikes[0][1]) if spikes else min(huge)
    group = _first_mover(s, step)
    fix = ("--trainer.gradient_clip_val 1.0 and a lower --model.lr" if _ours(s) else
           "clip the gradient (Trainer(gradient_clip_val=1.0) or clip_grad_norm_), lower the learning rate, "
           "or add a warm-up")
    summary = f"the total gradient norm spiked to {value:.3g} at step {step}; {group} moved first"
    severity = "warning"
    if s.clip_value and len(spikes) == 1 and not huge and not _spikes(s.loss):
        # one spike, under the absolute limit, no loss spike: clipping scaled that update down to the clip
        # value, which is what it is for (full-series folds of the default forecaster show such single spikes)
        severity, summary = "info", f"{summary}; clipping at {s.clip_value:g} contained it and the loss did not spike"
        fix = "nothing needed; if such spikes recur, lower the learning rate"
    return [Finding("exploding", severity, [group], [step, step], summary,
                    fix, {"total_norm": value, "spikes": len(spikes), "sigmas": T.SPIKE_SIGMAS,
                          "factor": T.SPIKE_FACTOR, "source": T.SPIKE_SOURCE} if spikes else
                    {"total_norm": value, "threshold": T.EXPLODE_ABS, "source": T.EXPLODE_ABS_SOURCE},
                    strength=_decades(spikes[0][3], T.SPIKE_FACTOR) if spikes else _decades(value, T.EXPLODE_ABS))]


def _loss_spike(s: Signals) -> list[Finding]:
    spikes = _spikes(s.loss)
    if not spikes:
        return []
    step, value, z, factor = spikes[0]
    group = _first_mover(s, step)
    fix = ("a lower --model.lr, or --model.warmup_steps 100" if _ours(s) else
           "a lower learning rate or a warm-up; look at the batch of that step for outliers")
    return [Finding("loss_spike", "warning", [group], [step, spikes[-1][0]],
                    f"the training loss spiked to {value:.3g} at step {step} ({z:.0f} sd); gradient of {group} moved first",
                    fix, {"loss": value, "z": z, "times_median": factor, "spikes": len(spikes),
                          "sigmas": T.SPIKE_SIGMAS, "factor": T.SPIKE_FACTOR, "source": T.SPIKE_SOURCE},
                    strength=_decades(factor, T.SPIKE_FACTOR))]


def _clip_saturated(s: Signals) -> list[Finding]:
    total, late_clipped = s.norms.get("total", {}), _late(s.clipped)
    if not s.clip_value or not late_clipped or not total:
        return []
    rate, ratio = statistics.fmean(late_clipped), statistics.median(_late(total)) / s.clip_value
    if rate < T.CLIP_RATE or ratio < T.CLIP_FACTOR:
        return []
    fix = (f"lower --model.lr (e.g. {s.hparams.get('lr', 1e-3) / 10:g}) so the gradient fits under "
           f"--trainer.gradient_clip_val {s.clip_value:g}" if _ours(s) else
           "lower the learning rate until clipping acts only on spikes, or raise the clip value")
    return [Finding("clip_saturated", "warning", ["total"], _span(s.clipped),
                    f"clipping changed {rate:.0%} of the logged steps and the median gradient is {ratio:.0f}x the "
                    f"clip value {s.clip_value:g}: the clip value is acting as the learning rate", fix,
                    {"clip_rate": rate, "median_norm_over_clip": ratio, "clip_rate_threshold": T.CLIP_RATE,
                     "factor_threshold": T.CLIP_FACTOR, "source": T.CLIP_SOURCE},
                    strength=_decades(ratio, T.CLIP_FACTOR))]


def _vanishing_depth(s: Signals) -> list[Finding]:
    layers = layers_of(s)
    if len(layers) < 2:
        return []
    first, last = layers[0], layers[-1]
    ratio = depth_ratio(s, first, last)
    if ratio is None or ratio >= T.DEPTH_RATIO:
        return []
    fix = ("--model.residual true --model.init orthogonal (configs/residual.yaml), or fewer layers in "
           "--model.hidden_sizes" if _ours(s) else
           "skip (residual) connections or normalisation between layers, an orthogonal / scaled init, fewer "
           "layers; for recurrent layers a gated cell (LSTM / GRU)")
    return [Finding("vanishing_depth", "warning", [first, last], _span(s.norms[first]),
                    f"the gradient fades across depth: {first} gets {ratio:.2g}x the gradient of {last} "
                    f"(the layers farthest from and nearest to the output head, in model order)", fix,
                    {"ratio_first_last": ratio, "threshold": T.DEPTH_RATIO, "source": T.DEPTH_RATIO_SOURCE},
                    strength=_decades(T.DEPTH_RATIO, ratio))]


def _short_memory(s: Signals) -> list[Finding]:
    if not s.reach or not s.window:
        return []
    reach = statistics.median(_late(s.reach))
    if reach >= T.REACH_SHARE * s.window:
        return []
    fix = ("--model.cell gru or --model.init orthogonal --model.forget_bias 1.0, or a shorter --data.window "
           f"(~{max(2, round(reach * 2))})" if _ours(s) else
           "a gated cell (LSTM / GRU) with orthogonal recurrent weights and a forget-gate bias of 1, attention or "
           "dilation over the window, or a window the model can use")
    return [Finding("short_memory", "warning", [], _span(s.reach),
                    f"the gradient reaches {reach:.0f} steps back of a {s.window}-step window: the rest of the "
                    "window is not learned from", fix,
                    {"reach": reach, "window": s.window, "share_threshold": T.REACH_SHARE,
                     "source": T.REACH_SHARE_SOURCE}, strength=_decades(T.REACH_SHARE * s.window, max(reach, 0.5)))]


def _learning_rate(s: Signals) -> list[Finding]:
    values = {g: statistics.median(_late(series)) for g, series in s.updates.items() if series}
    if not values:
        return []
    high = {g: v for g, v in values.items() if v > T.UPDATE_HIGH}
    low = {g: v for g, v in values.items() if v < T.UPDATE_LOW}
    lr = s.hparams.get("lr")
    found = []
    if high and len(high) * 2 >= len(values):
        worst = max(high.values())
        fix = f"--model.lr {lr / 30:g}" if _ours(s) and lr else "lower the learning rate ~10-30x"
        found.append(Finding("lr_too_high", "warning", sorted(high, key=high.get, reverse=True),
                             _span(next(iter(s.updates.values()))),
                             f"each step moves the weights by {worst:.2g} of their size (rule of thumb ~1e-3): "
                             "the learning rate is far too high", fix,
                             {"update_ratio": worst, "threshold": T.UPDATE_HIGH, "source": T.UPDATE_SOURCE},
                             strength=_decades(worst, T.UPDATE_HIGH)))
    if low and len(low) * 2 >= len(values):
        best = max(low.values())
        fix = f"--model.lr {lr * 100:g}" if _ours(s) and lr else "raise the learning rate ~10-100x"
        found.append(Finding("lr_too_low", "warning", sorted(low, key=low.get), _span(next(iter(s.updates.values()))),
                             f"each step moves the weights by at most {best:.2g} of their size (rule of thumb "
                             "~1e-3): the learning rate is far too low", fix,
                             {"update_ratio": best, "threshold": T.UPDATE_LOW, "source": T.UPDATE_SOURCE},
                             strength=_decades(T.UPDATE_LOW, best)))
    return found


def _gate_saturation(s: Signals) -> list[Finding]:
    found = []
    for key, series in s.gates.items():
        layer, _, gate = key.rpartition("/")
        if gate not in ("forget_closed", "input_closed", "update_closed") or not series:
            continue
        share = statistics.median(_late(series))
        if share <= T.GATE_CLOSED:
            continue
        # a shut LSTM forget gate, or a GRU update gate near 0 (h = (1 - z) n + z h: the old state dropped),
        # keeps no memory; a shut input gate writes nothing
        what = "writes nothing new" if gate == "input_closed" else "keeps no memory"
        fix = ("--model.forget_bias 1.0 --model.init orthogonal" if _ours(s) else
               "initialise the forget-gate bias to 1 (Keras' unit_forget_bias) and check the input scaling")
        found.append(Finding("gate_saturation", "warning", [layer], _span(series),
                             f"{share:.0%} of {layer}'s {gate.split('_')[0]} gates are closed: the layer {what}",
                             fix, {"closed_share": share, "threshold": T.GATE_CLOSED, "source": T.GATE_SOURCE},
                             strength=1.0 + share))  # a shut gate is a cause: ranked as a decade past, and more
    return found


def _no_gradient(s: Signals) -> list[Finding]:
    if not s.no_gradient:
        return []
    return [Finding("no_gradient", "info", list(s.no_gradient), [],
                    f"no gradient reached {', '.join(s.no_gradient)}: not used in forward, frozen, or in no optimizer",
                    "remove the layer, or use it in forward / unfreeze it if it should learn",
                    {"groups": len(s.no_gradient), "source": "its .grad stayed None on every logged step"})]


def _not_learnable(s: Signals) -> list[Finding]:
    if not s.val_rel_mae:
        return []
    best = min(s.val_rel_mae.values())
    if best < T.NOT_LEARNABLE_REL_MAE:
        return []
    if best > T.NOT_LEARNABLE_BAND:
        return [Finding("worse_than_persistence", "info", [], _span(s.val_rel_mae),
                        f"gradients are healthy but validation is worse than persistence (best rel MAE {best:.3f}): "
                        "undertrained, or a target the model cannot use",
                        "--data.target_mode log_return and more --trainer.max_epochs" if _ours(s) else
                        "train longer, predict the change instead of the level, or compare with persistence first",
                        {"best_val_rel_mae": best, "band": T.NOT_LEARNABLE_BAND, "source": T.NOT_LEARNABLE_BAND_SOURCE})]
    return [Finding("not_learnable", "info", [], _span(s.val_rel_mae),
                    f"gradients are healthy but validation is no better than persistence (best rel MAE {best:.3f}): "
                    "the limit is the data, not the gradients", "nothing to fix in the network: compare with "
                    "persistence and drift (backtest), or add information the series itself lacks",
                    {"best_val_rel_mae": best, "threshold": T.NOT_LEARNABLE_REL_MAE, "source": T.NOT_LEARNABLE_SOURCE})]


def _healthy(s: Signals) -> Finding:
    layers = layers_of(s)
    evidence: dict[str, Any] = {"logged_steps": len(s.norms.get("total", {}))}
    ratio = depth_ratio(s, layers[0], layers[-1]) if len(layers) >= 2 else None
    if ratio is not None:
        evidence["ratio_first_last"] = ratio
    if s.clipped:
        evidence["clip_rate"] = statistics.fmean(s.clipped.values())
    if s.reach and s.window:
        evidence["reach_of_window"] = f"{statistics.median(_late(s.reach)):.0f}/{s.window}"
    evidence["source"] = "no rule of lstm_grad.diagnostics.thresholds fired"
    return Finding("healthy", "info", [], _span(s.norms.get("total", {})),
                   "gradients healthy: no vanishing, exploding, saturation or learning-rate finding", "nothing to do",
                   evidence)
