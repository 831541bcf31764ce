"""The doctor's rules on planted signals: each kind fires on its pathology with the exact numbers, and
none fires on a healthy run. Every series is tiny and its expected statistic is arithmetic. ``strength``
(which orders findings of one severity) is in decades past the rule's threshold for every rule."""

from __future__ import annotations

import math
import statistics

import pytest

from lstm_grad.diagnostics import thresholds as T
from lstm_grad.diagnostics.doctor import Signals, examine

GROUPS = ["lstm_0", "lstm_1", "lstm_2", "head"]
STEPS = range(40)


def wobble(base: float, amplitude: float = 0.05) -> dict[int, float]:
    """``base * (1 + amplitude * sin(step))`` on 40 logged steps: steady, a little noise (peaks < 2 sd)."""
    return {s: base * (1 + amplitude * math.sin(s)) for s in STEPS}


def healthy(**changes) -> Signals:
    """A run every rule should pass: norms 0.5-1 (first/last layer 0.5), update ratio 1e-3, a falling
    loss, clip rate 0.1 under clip value 1, reach 30 of a 60-step window, forget gates 10 % closed,
    validation 0.9 of persistence's MAE; ``changes`` replace fields."""
    signals = Signals(
        groups=list(GROUPS),
        norms={"lstm_0": wobble(0.5), "lstm_1": wobble(0.8), "lstm_2": wobble(1.0), "head": wobble(0.7),
               "total": wobble(1.6)},
        updates={g: wobble(1e-3) for g in GROUPS},
        loss={s: 1 / (1 + 0.05 * s) for s in STEPS},
        clipped={s: float(s % 10 == 0) for s in STEPS},
        reach={s: 30.0 for s in range(0, 40, 10)},
        gates={f"lstm_{i}/forget_closed": {s: 0.1 for s in range(0, 40, 10)} for i in range(3)},
        val_rel_mae={9: 0.95, 19: 0.9, 29: 0.91, 39: 0.92},
        window=60, clip_value=1.0)
    for name, value in changes.items():
        setattr(signals, name, value)
    return signals


def kinds(signals: Signals) -> list[str]:
    return [f.kind for f in examine(signals)]


def only(signals: Signals, kind: str):
    found = [f for f in examine(signals) if f.kind == kind]
    assert len(found) == 1, [f.kind for f in examine(signals)]
    return found[0]


def test_a_healthy_run_gets_the_one_healthy_line_with_its_evidence():
    findings = examine(healthy())
    assert [f.kind for f in findings] == ["healthy"] and findings[0].severity == "info"
    evidence = findings[0].evidence
    assert evidence["logged_steps"] == 40 and evidence["ratio_first_last"] == pytest.approx(0.5)
    assert evidence["clip_rate"] == pytest.approx(4 / 40) and evidence["reach_of_window"] == "30/60"
    assert findings[0].lines()[0].startswith("[info] healthy: gradients healthy:")


def test_vanishing_depth_compares_the_first_and_last_layer_in_model_order():
    norms = dict(healthy().norms, lstm_0=wobble(1e-4))  # lstm_0 / lstm_2 = 1e-4; the head is not a layer
    finding = only(healthy(norms=norms), "vanishing_depth")
    assert finding.severity == "warning" and finding.groups == ["lstm_0", "lstm_2"] and finding.steps == [0, 39]
    assert finding.evidence["ratio_first_last"] == pytest.approx(1e-4)
    assert finding.evidence["threshold"] == T.DEPTH_RATIO and finding.evidence["source"] == T.DEPTH_RATIO_SOURCE
    assert finding.strength == pytest.approx(2.0)  # 1e-4 is two decades under 1e-2
    assert "vanishing_depth" not in kinds(healthy())  # 0.5


def test_vanishing_depth_needs_two_layers_besides_the_head():
    # one layer and a head: the head is never a layer, so there is no depth to fade across
    two = healthy(groups=["rnn", "head"], norms={"rnn": wobble(1e-4), "head": wobble(1.0), "total": wobble(1.0)},
                  updates={"rnn": wobble(1e-3), "head": wobble(1e-3)}, gates={})
    findings = examine(two)
    assert [f.kind for f in findings] == ["healthy"] and "ratio_first_last" not in findings[0].evidence
    # two layers and a head: lstm_0 against lstm_1, the head left out
    three = healthy(groups=["lstm_0", "lstm_1", "head"],
                    norms={"lstm_0": wobble(1e-4), "lstm_1": wobble(1.0), "head": wobble(1e-6), "total": wobble(1.0)})
    finding = only(three, "vanishing_depth")
    assert finding.groups == ["lstm_0", "lstm_1"] and finding.evidence["ratio_first_last"] == pytest.approx(1e-4)


def test_residual_projections_are_not_layers():
    # the forecaster's order: lstm_0, lstm_1, proj_1, lstm_2, proj_2, head; a projection carries the skip,
    # so a large proj_2 beside the head must not make lstm_0 look faded (0.5 / 60 would be under 1e-2)
    groups = ["lstm_0", "lstm_1", "proj_1", "lstm_2", "proj_2", "head"]
    norms = {"lstm_0": wobble(0.5), "lstm_1": wobble(0.8), "proj_1": wobble(60.0), "lstm_2": wobble(1.0),
             "proj_2": wobble(60.0), "head": wobble(0.7), "total": wobble(85.0)}
    findings = examine(healthy(groups=groups, norms=norms, updates={g: wobble(1e-3) for g in groups}))
    assert [f.kind for f in findings] == ["healthy"]
    assert findings[0].evidence["ratio_first_last"] == pytest.approx(0.5)  # lstm_0 / lstm_2
    norms["lstm_0"] = wobble(1e-4)
    faded = only(healthy(groups=groups, norms=norms, updates={g: wobble(1e-3) for g in groups}), "vanishing_depth")
    assert faded.groups == ["lstm_0", "lstm_2"] and faded.evidence["ratio_first_last"] == pytest.approx(1e-4)


def test_vanishing_depth_fix_names_our_flags_for_our_forecaster():
    norms = dict(healthy().norms, lstm_0=wobble(1e-4))
    ours = only(healthy(norms=norms, hparams={"hidden_sizes": [8, 8, 8], "lr": 1e-3}), "vanishing_depth")
    theirs = only(healthy(norms=norms), "vanishing_depth")
    assert "--model.residual true" in ours.fix and "--model" not in theirs.fix


def test_short_memory_reach_3_of_60():
    finding = only(healthy(reach={s: 3.0 for s in range(0, 40, 10)}), "short_memory")
    assert finding.severity == "warning" and finding.groups == [] and finding.steps == [0, 30]
    assert finding.evidence["reach"] == 3.0 and finding.evidence["window"] == 60
    assert finding.evidence["share_threshold"] == T.REACH_SHARE
    assert finding.strength == pytest.approx(math.log10(0.1 * 60 / 3))  # reach 3 vs the 6 it needs: 0.30 decades
    assert "short_memory" not in kinds(healthy())  # 30 of 60


def spiked(series: dict[int, float], step: int = 20, factor: float = 10.0) -> dict[int, float]:
    return {s: v * factor if s == step else v for s, v in series.items()}


def times_median(series: dict[int, float], step: int = 20) -> float:
    """The value at ``step`` over the median of the 20 logged values before it (the rule's factor)."""
    return series[step] / statistics.median(series[s] for s in range(step - 20, step))


def test_exploding_10x_after_20_steady_steps_names_the_group_that_moved_first():
    base = healthy()
    total = spiked(base.norms["total"])
    norms = dict(base.norms, total=total, lstm_1=spiked(base.norms["lstm_1"], factor=30),
                 head=spiked(base.norms["head"], factor=2))
    finding = only(healthy(norms=norms, clip_value=None), "exploding")  # no clipping to contain it
    assert finding.severity == "warning" and finding.groups == ["lstm_1"] and finding.steps == [20, 20]
    assert finding.evidence["total_norm"] == pytest.approx(16 * (1 + 0.05 * math.sin(20)))
    assert finding.evidence["spikes"] == 1 and finding.evidence["source"] == T.SPIKE_SOURCE
    assert finding.evidence["sigmas"] == 6.0 and finding.evidence["factor"] == T.SPIKE_FACTOR == 10.0
    factor = times_median(total)
    assert factor == pytest.approx(10.41, abs=0.01)  # 10x a value a little above the median
    assert finding.strength == pytest.approx(math.log10(factor / 10))  # decades past 10x
    assert "exploding" not in kinds(healthy())


def test_one_spike_that_clipping_contained_is_info_and_a_second_or_a_loss_spike_makes_it_a_warning():
    base = healthy()  # clip value 1.0
    norms = dict(base.norms, total=spiked(base.norms["total"]), lstm_1=spiked(base.norms["lstm_1"], factor=30))
    contained = only(healthy(norms=norms), "exploding")
    assert contained.severity == "info" and contained.groups == ["lstm_1"]
    assert contained.summary.endswith("; clipping at 1 contained it and the loss did not spike")
    assert contained.fix == "nothing needed; if such spikes recur, lower the learning rate"
    twice = dict(norms, total=spiked(spiked(base.norms["total"]), step=35, factor=30))
    assert only(healthy(norms=twice), "exploding").severity == "warning"
    loss = spiked({s: 1.0 + 0.01 * math.sin(s) for s in STEPS})
    assert only(healthy(norms=norms, loss=loss), "exploding").severity == "warning"


def test_a_3x_spike_of_the_total_norm_is_far_past_6_sd_but_not_exploding():
    total = spiked(healthy().norms["total"], factor=3.0)
    past = [total[s] for s in range(20)]
    z = (total[20] - statistics.fmean(past)) / statistics.pstdev(past)
    assert z > 50 and times_median(total) == pytest.approx(3.12, abs=0.01)  # z alone would call it a spike
    assert "exploding" not in kinds(healthy(norms=dict(healthy().norms, total=total)))


def test_a_total_norm_over_100_is_exploding_without_a_spike():
    finding = only(healthy(norms=dict(healthy().norms, total={s: 150.0 for s in STEPS})), "exploding")
    assert finding.steps == [0, 0] and finding.evidence["total_norm"] == 150.0 and finding.evidence["threshold"] == T.EXPLODE_ABS
    assert finding.evidence["source"] == T.EXPLODE_ABS_SOURCE
    assert finding.strength == pytest.approx(math.log10(1.5))  # 150 vs 100: 0.18 decades


def test_loss_spike_10x_after_20_steady_steps_names_the_group_that_moved_first():
    base = healthy()
    loss = {s: 1.0 + 0.01 * math.sin(s) for s in STEPS}
    planted = spiked(loss)
    finding = only(healthy(loss=planted, norms=dict(base.norms, lstm_2=spiked(base.norms["lstm_2"], factor=3))),
                   "loss_spike")
    assert finding.severity == "warning" and finding.groups == ["lstm_2"] and finding.steps == [20, 20]
    assert finding.evidence["loss"] == pytest.approx(10 * loss[20]) and finding.evidence["spikes"] == 1
    past = [loss[s] for s in range(20)]
    mean = sum(past) / 20
    sd = math.sqrt(sum((v - mean) ** 2 for v in past) / 20)
    assert sd < T.SPIKE_SD_FLOOR * mean  # this steady a loss: the sd is floored at 1 % of the mean
    assert finding.evidence["z"] == pytest.approx((10 * loss[20] - mean) / (T.SPIKE_SD_FLOOR * mean))
    assert finding.evidence["times_median"] == pytest.approx(times_median(planted)) == pytest.approx(10.0, abs=0.1)
    assert finding.evidence["sigmas"] == 6.0 and finding.evidence["factor"] == 10.0
    assert finding.strength == pytest.approx(math.log10(finding.evidence["times_median"] / 10))
    assert "loss_spike" not in kinds(healthy())  # a falling loss


def test_a_loss_3x_its_median_is_no_loss_spike_however_many_sd():
    loss = {s: 1.0 + 0.01 * math.sin(s) for s in STEPS}
    planted = spiked(loss, factor=3.0)  # (3 - 1) / 0.01 = 200 floored sd, but 3x the median: not 10x
    assert times_median(planted) == pytest.approx(3.0, abs=0.05)
    assert "loss_spike" not in kinds(healthy(loss=planted))


def test_clip_saturated_when_every_step_is_clipped_at_8x_the_clip_value():
    norms = dict(healthy().norms, total={s: 8.0 for s in STEPS})
    finding = only(healthy(norms=norms, clipped={s: 1.0 for s in STEPS}), "clip_saturated")
    assert finding.severity == "warning" and finding.groups == ["total"] and finding.steps == [0, 39]
    assert finding.evidence["clip_rate"] == 1.0 and finding.evidence["median_norm_over_clip"] == 8.0
    assert finding.evidence["clip_rate_threshold"] == T.CLIP_RATE
    assert finding.evidence["factor_threshold"] == T.CLIP_FACTOR
    assert finding.strength == pytest.approx(math.log10(8 / 5))  # 8x the clip value vs the 5x threshold
    assert "clip_saturated" not in kinds(healthy(norms=norms))  # 8x but clip rate 0.1


@pytest.mark.parametrize("ratio, kind", [(0.1, "lr_too_high"), (1e-6, "lr_too_low")])
def test_learning_rate_from_update_ratios(ratio, kind):
    updates = {g: {s: ratio for s in STEPS} for g in GROUPS}
    finding = only(healthy(updates=updates), kind)
    assert finding.severity == "warning" and sorted(finding.groups) == sorted(GROUPS) and finding.steps == [0, 39]
    assert finding.evidence["update_ratio"] == pytest.approx(ratio)
    assert finding.evidence["threshold"] == (T.UPDATE_HIGH if kind == "lr_too_high" else T.UPDATE_LOW)
    assert finding.strength == pytest.approx(math.log10(0.1 / 3e-2) if kind == "lr_too_high" else math.log10(3e-5 / 1e-6))
    ours = only(healthy(updates=updates, hparams={"hidden_sizes": [8], "lr": 3e-3}), kind)
    assert ours.fix == ("--model.lr 0.0001" if kind == "lr_too_high" else "--model.lr 0.3")
    assert not {"lr_too_high", "lr_too_low"} & set(kinds(healthy()))


def test_gate_saturation_from_forget_gates_90_percent_closed():
    gates = dict(healthy().gates, **{"lstm_1/forget_closed": {s: 0.9 for s in range(0, 40, 10)}})
    finding = only(healthy(gates=gates), "gate_saturation")
    assert finding.severity == "warning" and finding.groups == ["lstm_1"] and finding.steps == [0, 30]
    assert finding.evidence["closed_share"] == 0.9 and finding.evidence["threshold"] == T.GATE_CLOSED
    assert "keeps no memory" in finding.summary
    assert finding.strength == pytest.approx(1.9)  # 1 + the closed share: a shut gate ranks as a cause
    assert "gate_saturation" not in kinds(healthy())  # 10 % closed


def test_no_gradient_is_an_info_beside_the_healthy_line():
    findings = examine(healthy(no_gradient=["unused"]))
    assert [f.kind for f in findings] == ["no_gradient", "healthy"]
    assert findings[0].severity == "info" and findings[0].groups == ["unused"] and findings[0].evidence["groups"] == 1


def test_nonfinite_is_an_error_with_its_origin():
    events = [{"step": 12, "groups": ["lstm_0"], "origin": "torch.log in lstm_0 (input reached 0)"},
              {"step": 15, "groups": ["lstm_0", "head"]}]
    findings = examine(healthy(nonfinite=events))
    assert findings[0].kind == "nonfinite" and findings[0].severity == "error"
    assert findings[0].groups == ["lstm_0"] and findings[0].steps == [12, 15]
    assert findings[0].evidence["nonfinite_steps"] == 2 and findings[0].evidence["first_step"] == 12
    assert "origin: torch.log in lstm_0 (input reached 0)" in findings[0].summary
    assert "healthy" not in [f.kind for f in findings]


def test_a_nonfinite_step_without_groups_or_origin_says_origin_unknown():
    (finding, *_) = examine(healthy(nonfinite=[{"step": 7}]))
    assert finding.kind == "nonfinite" and finding.groups == [] and finding.steps == [7, 7]
    assert finding.summary == ("the gradient became non-finite at step 7; origin: unknown (this run logged no group; "
                               "the live monitor replays the batch and names it)")
    (named, *_) = examine(healthy(nonfinite=[{"step": 7, "groups": ["lstm_1"]}]))
    assert named.summary.endswith("origin: group lstm_1")


def test_not_learnable_only_when_nothing_else_fires():
    flat = {9: 1.01, 19: 0.99, 29: 1.0}
    findings = examine(healthy(val_rel_mae=flat))
    assert [f.kind for f in findings] == ["not_learnable", "healthy"]
    assert findings[0].evidence["best_val_rel_mae"] == 0.99 and findings[0].evidence["threshold"] == 0.98
    sick = healthy(val_rel_mae=flat, norms=dict(healthy().norms, lstm_0=wobble(1e-4)))
    assert "not_learnable" not in kinds(sick) and "healthy" not in kinds(sick)
    assert "not_learnable" not in kinds(healthy())  # 0.9 of persistence's MAE
    edge = examine(healthy(val_rel_mae={9: 1.05, 19: 1.2}))  # the band's top, 1.05, is still "no better"
    assert [f.kind for f in edge] == ["not_learnable", "healthy"]


def test_worse_than_persistence_above_the_band_is_its_own_kind():
    findings = examine(healthy(val_rel_mae={9: 2.6, 19: 2.478, 29: 2.5}))  # the tiny undertrained run's numbers
    assert [f.kind for f in findings] == ["worse_than_persistence", "healthy"]
    finding = findings[0]
    assert finding.severity == "info" and finding.groups == [] and finding.steps == [9, 29]
    assert finding.evidence == {"best_val_rel_mae": 2.478, "band": 1.05, "source": T.NOT_LEARNABLE_BAND_SOURCE}
    assert T.NOT_LEARNABLE_BAND == 1.05
    assert "worse than persistence (best rel MAE 2.478)" in finding.summary
    assert "train longer" in finding.fix
    ours = examine(healthy(val_rel_mae={9: 1.3}, hparams={"hidden_sizes": [8], "lr": 1e-3}))[0]
    assert ours.kind == "worse_than_persistence" and ours.fix == "--data.target_mode log_return and more --trainer.max_epochs"
    sick = healthy(val_rel_mae={9: 1.3}, norms=dict(healthy().norms, lstm_0=wobble(1e-4)))
    assert "worse_than_persistence" not in kinds(sick)  # a gradient finding comes first


def test_findings_are_ordered_by_severity_then_strength_in_decades():
    base = healthy()
    signals = healthy(norms=dict(base.norms, lstm_0=wobble(1e-4)), reach={s: 3.0 for s in range(0, 40, 10)},
                      updates={g: {s: 0.1 for s in STEPS} for g in GROUPS}, no_gradient=["unused"],
                      gates=dict(base.gates, **{"lstm_1/forget_closed": {s: 0.9 for s in range(0, 40, 10)}}),
                      nonfinite=[{"step": 5, "groups": ["head"]}])
    findings = examine(signals)
    assert [f.kind for f in findings] == ["nonfinite", "vanishing_depth", "gate_saturation", "lr_too_high",
                                          "short_memory", "no_gradient"]
    strengths = [f.strength for f in findings if f.severity == "warning"]
    # 1e-4 vs 1e-2; 1 + 0.9 closed; update 0.1 vs 0.03; reach 3 vs the 6 of a 60-step window
    assert strengths == pytest.approx([2.0, 1.9, math.log10(0.1 / 0.03), math.log10(2)])


# ---- engine issues found while planting, fixed in the recalibration ------------------------------------
def test_a_nan_loss_does_not_stop_the_doctor_and_a_spike_after_it_still_counts():
    loss = {s: 1.0 + 0.01 * math.sin(s) for s in STEPS}
    loss[10] = math.nan  # the nonfinite rule's business (its event), skipped by the spike rule
    assert kinds(healthy(loss=loss)) == ["healthy"]
    loss[25] = 10 * loss[25]
    finding = only(healthy(loss=loss), "loss_spike")
    past = [loss[s] for s in range(4, 25) if s != 10]  # the 20 finite values before step 25: 4 .. 24 but 10
    assert finding.steps == [25, 25]
    assert finding.evidence["times_median"] == pytest.approx(loss[25] / statistics.median(past))
    norms = dict(healthy().norms, total={**healthy().norms["total"], 10: math.nan})
    assert kinds(healthy(norms=norms)) == ["healthy"]


def test_a_tenth_of_a_percent_after_a_flat_stretch_is_not_exploding():
    flat = {s: 1.0 for s in STEPS}
    norms = {g: dict(flat) for g in GROUPS} | {"total": {s: 1.001 if s == 20 else 1.0 for s in STEPS}}
    assert "exploding" not in kinds(healthy(norms=norms))  # z = 0.001 / (1 % of 1) = 0.1
    norms["total"][20] = 10.0  # a real spike after the same flat stretch still is one
    finding = only(healthy(norms=norms), "exploding")
    assert finding.steps == [20, 20] and finding.strength == pytest.approx(0.0)  # exactly 10x: on the threshold


def test_the_healthy_line_shows_the_depth_ratio_the_rule_tested():
    first = wobble(0.5)
    first[39] = 1e-3  # one low last step; the late-half median stays 0.5
    finding = examine(healthy(norms=dict(healthy().norms, lstm_0=first)))[0]
    assert finding.kind == "healthy" and finding.evidence["ratio_first_last"] == pytest.approx(0.5)
